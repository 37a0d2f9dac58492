"""Optimizer updates, kept apart from the gradient so gradients can be checked on their own.

One update for every optimizer and every trial of a stack: plain SGD, heavy-ball momentum
(the study's form: v = gamma v + lr g; p -= v) or Nesterov (p -= gamma v + lr g), the L2
gradient 2 lambda W and decoupled weight decay (Loshchilov & Hutter 2019: W -= lr wd W), with
per-trial (T,) vectors lr, lambda, gamma, wd. kernels.update does it in one pass over each
parameter (its NumPy reference for other arrays): the L2 gradient is added there rather than
in a separate pass over the weight gradient (network.add_l2_gradient is that pass, for checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .network import PARAM_KEYS, WEIGHT_KEYS, array_module, trials


@dataclass(frozen=True)
class Optimizer:
    """Per-trial settings (T,) float64: L2 coefficient, momentum, decoupled weight decay."""

    lam: np.ndarray
    gamma: np.ndarray
    weight_decay: np.ndarray
    nesterov: bool = False

    @property
    def momentum(self) -> bool:
        return bool(np.any(self.gamma > 0))


def init_velocity(params: dict, opt: Optimizer | None = None) -> dict | None:
    """Zero momentum buffers, one per parameter (None when no trial uses momentum)."""
    if opt is not None and not opt.momentum:
        return None
    return {k: v * 0 for k, v in params.items()}


def trial_view(key: str, a):
    """A parameter as (R, T, K), the trial on the middle axis: W1 (D, T, H) as it is,
    b1 (T, H) -> (1, T, H), W2 (T, H, C) -> (1, T, H*C), b2 (T, C) -> (1, T, C)."""
    if key == "W1":
        return a
    return a.reshape(1, a.shape[0], -1)


def rate_and_decay(opt: Optimizer, lr, dtype) -> tuple:
    """The step's (T,) rate lr and the weights' decay lr * wd, in the parameters' dtype."""
    lr = np.asarray(lr, dtype=np.float64)
    return lr.astype(dtype), (lr * opt.weight_decay).astype(dtype)


def step_vectors(opt: Optimizer, lr, dtype) -> dict:
    """Per parameter key, (lr, l2, gamma, decay) (T,) in the parameters' dtype: the biases
    get no L2 and no decay. Computed once per step (the kernels want the parameter dtype)."""
    rate, decay = rate_and_decay(opt, lr, dtype)
    zero = np.zeros(len(rate), dtype=dtype)
    gamma = opt.gamma.astype(dtype)
    weight = (rate, (2 * opt.lam).astype(dtype), gamma, decay)
    return {k: weight if k in WEIGHT_KEYS else (rate, zero, gamma, zero) for k in PARAM_KEYS}


def update(params: dict, grads: dict, lr, velocity: dict | None, opt: Optimizer) -> None:
    """One step, in place: p (and v) of every trial with its own rate lr (T,). `grads` are
    the data gradients (the L2 term is added here) and are not modified."""
    xp = array_module(params["W1"])
    vectors = step_vectors(opt, lr, params["W1"].dtype)
    for key, g in grads.items():
        vec = vectors[key] if xp is np else [xp.asarray(v) for v in vectors[key]]
        v = None if velocity is None else trial_view(key, velocity[key])
        kernels.update(trial_view(key, params[key]), trial_view(key, g), v, *vec, opt.nesterov)


@dataclass
class Updater:
    """`update` for one training loop: a single network's update (T = 1, NumPy arrays, the
    compiled kernels) is checked and laid out once (kernels.plan_update), so a step passes
    only its gradients and rate. The same passes and bits as `update`, which it calls for
    everything else: stacks, other array modules, and params or velocity other than the
    arrays it was made for."""

    params: dict
    velocity: dict | None
    opt: Optimizer
    plan: kernels.UpdatePlan | None = None

    @classmethod
    def make(cls, params: dict, velocity: dict | None, opt: Optimizer) -> Updater:
        dtype = params["W1"].dtype
        if array_module(params["W1"]) is not np or trials(params) != 1:
            return cls(dict(params), None if velocity is None else dict(velocity), opt)
        l2 = (2 * opt.lam).astype(dtype)
        zero = np.zeros(1, dtype)
        vs = None if velocity is None else [trial_view(k, velocity[k]) for k in PARAM_KEYS]
        plan = kernels.plan_update([trial_view(k, params[k]) for k in PARAM_KEYS], vs,
                                   [l2 if k in WEIGHT_KEYS else zero for k in PARAM_KEYS],
                                   opt.gamma.astype(dtype), [k in WEIGHT_KEYS for k in PARAM_KEYS],
                                   [params[k].shape for k in PARAM_KEYS])  # fmt: skip
        return cls(dict(params), None if velocity is None else dict(velocity), opt, plan)

    def __call__(self, params: dict, grads: dict, lr, velocity: dict | None) -> None:
        """update(params, grads, lr, velocity, opt), in place."""
        planned = self.plan is not None and self._same(params, velocity)
        if not (planned and self._planned(grads, lr)):
            update(params, grads, lr, velocity, self.opt)

    def _same(self, params: dict, velocity: dict | None) -> bool:
        """Whether params and velocity hold the very arrays the plan was made for."""
        if any(params.get(k) is not a for k, a in self.params.items()):
            return False
        if velocity is None or self.velocity is None:
            return velocity is self.velocity
        return all(velocity.get(k) is a for k, a in self.velocity.items())

    def _planned(self, grads: dict, lr) -> bool:
        """Run the plan: step_vectors' rate and decay of a single trial (False: not run)."""
        rate, decay = rate_and_decay(self.opt, lr, self.plan.gamma.dtype)
        gs = [grads.get(k) for k in PARAM_KEYS]
        return kernels.run_plan(self.plan, gs, rate, decay, self.opt.nesterov)


def sgd_update(params: dict, grads: dict, lr) -> None:
    """Vanilla mini-batch gradient descent, in place: p -= lr * dp."""
    t = params["W2"].shape[0]
    zero = np.zeros(t)
    update(params, grads, np.broadcast_to(lr, (t,)), None, Optimizer(zero, zero, zero))
