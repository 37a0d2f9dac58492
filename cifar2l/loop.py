"""The training loop: one loop over an explicit state, for a stack of T >= 1 networks.

`run(state, stack, data, hooks)` takes a TrainState (params, momentum buffers, update step,
the epoch's data order, the random streams, metric rows) and returns it, advanced to the end
(or to where a hook stopped it). A checkpoint is that state saved; resume is that state
loaded. What a run does around its training (run directories, console lines, progress bars,
snapshots, checkpoints, signals) lives in hooks called at metric rows and between updates.

The life of one update t: gather the epoch's next batch (with flips and translations, one
compiled gather) and augment it, draw the dropout mask's uniforms, forward and backward pass
of all T networks (network.loss_and_grads), check each trial's loss, and one optimizer pass
over each parameter with each trial's own rate (optim.update).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import augment, kernels, network, optim, runs
from . import average as avg_mod
from .errors import DivergedError, RunError
from .rngs import make_rngs
from .schedule import cycle_length, default_log_every, make_schedule, total_steps

# A mean cross-entropy this large means logits of that size: training has blown up (it starts
# near ln 10 = 2.3), even while the numbers are still finite.
EXPLODED = 1e6
STREAMS = ("shuffle", "dropout", "augment")  # the random streams the trials of a stack share
# Config keys that may differ between the trials of one stack: each is a (T,) vector (or, for
# the schedule, each trial's own rate function) in the loop.
PER_TRIAL = ("init_seed", "optim.lambda", "optim.momentum", "optim.weight_decay",
             "optim.label_smoothing", "model.dropout")  # fmt: skip

METRIC_COLUMNS = [
    "step", "epoch", "lr",
    "train_loss", "train_cost", "train_accuracy",
    "val_loss", "val_cost", "val_accuracy",
]  # fmt: skip


def log_points(total: int, every: int) -> list[int]:
    """Steps (updates done) at which metrics are taken: 0, every, 2 every, ..., and the last."""
    return sorted(set(range(0, total + 1, every)) | {total})


def steps_per_epoch(n: int, batch_size: int) -> int:
    # The partial batch at the end of an epoch is dropped, as in the study (n / batch updates).
    if batch_size > n:
        raise RunError(f"train.batch_size ({batch_size}) exceeds the training split ({n} rows)")
    return n // batch_size


def epoch_order(n: int, shuffle: bool, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n) if shuffle else np.arange(n)


def snapshot_steps(cfg) -> list[int]:
    """The updates after which the weights are kept (ascending): train.snapshots."""
    snaps = cfg.train.snapshots
    if snaps == "cycles":
        n = cycle_length(cfg.schedule)
        return list(range(n, total_steps(cfg.schedule) + 1, n))
    return list(snaps or [])


def fuse_key(cfg) -> str:
    """Configs with equal keys can train as one stack: they differ only in PER_TRIAL settings
    and in their schedules' rates (not in the steps, the metric points, cycles or snapshots)."""
    raw = cfg.model_dump(by_alias=True, exclude={"schedule", "expected", "search", "name"})
    for key in PER_TRIAL:
        section, _, leaf = key.rpartition(".")
        (raw[section] if section else raw).pop(leaf, None)
    s = cfg.schedule
    raw["schedule"] = {"steps": total_steps(s), "cycle": cycle_length(s),
                       "log_every": cfg.train.log_every or default_log_every(s),
                       "snapshots": snapshot_steps(cfg)}  # fmt: skip
    raw["train"].pop("snapshots", None)
    return json.dumps(raw, sort_keys=True, default=str)


@dataclass(frozen=True)
class Stack:
    """What the T trials of a stack share (batches, steps, augmentation) and what each has
    on its own: a rate schedule and the optimizer and loss settings as (T,) vectors."""

    cfgs: tuple
    etas: tuple
    opt: optim.Optimizer
    dropout: np.ndarray
    smoothing: np.ndarray
    total: int
    log_at: frozenset
    exploded: float = EXPLODED
    stop_on_divergence: bool = True  # False: a diverged trial is frozen, the others go on
    average: object = None  # train.average (config.AverageConfig), or None

    @property
    def cfg(self):
        return self.cfgs[0]

    @functools.cached_property
    def drops(self) -> bool:
        """Whether a trial uses dropout (then each step draws the mask's uniforms)."""
        return bool(self.dropout.any())

    def lr(self, t: int) -> np.ndarray:
        return np.array([eta(t) for eta in self.etas], dtype=np.float64)


def make_stack(cfgs: list, log_at=None, exploded: float = EXPLODED, etas=None,
               stop_on_divergence: bool = True, total: int | None = None) -> Stack:  # fmt: skip
    """The stack of `cfgs` (all of one fuse_key). `log_at`, `etas`, `total` replace the
    configs' metric points, schedules and step count (the LR range test's own)."""
    if len({fuse_key(c) for c in cfgs}) > 1:
        raise ValueError("configs of one stack must share their fuse_key")

    def vec(f):
        return np.array([f(c) for c in cfgs], dtype=np.float64)

    cfg = cfgs[0]
    total = total_steps(cfg.schedule) if total is None else total
    opt = optim.Optimizer(vec(lambda c: c.optim.lambda_), vec(lambda c: c.optim.momentum),
                          vec(lambda c: c.optim.weight_decay), cfg.optim.nesterov)  # fmt: skip
    every = cfg.train.log_every or default_log_every(cfg.schedule)
    return Stack(tuple(cfgs), tuple(etas or [make_schedule(c.schedule) for c in cfgs]), opt,
                 vec(lambda c: c.model.dropout), vec(lambda c: c.optim.label_smoothing), total,
                 frozenset(log_points(total, every) if log_at is None else log_at), exploded,
                 stop_on_divergence, cfg.train.average)  # fmt: skip


@dataclass
class TrainState:
    """Everything the rest of a stack's training depends on (a checkpoint saves it)."""

    params: dict
    velocity: dict | None
    rngs: dict  # STREAMS -> numpy Generator, shared by the trials
    step: int = 0  # updates done
    order: np.ndarray | None = None  # the current epoch's data order
    rows: list = field(default_factory=list)  # per trial: its metric rows
    diverged: dict = field(default_factory=dict)  # trial -> (step, lr): frozen there
    timing: list = field(default_factory=list)  # {step, seconds} at each metric row
    average: dict | None = None  # train.average: the running average of params (average.py)
    averaged: int = 0  # samples folded into it

    def select(self, index: list[int]) -> TrainState:
        """Trials `index` as a state of their own (each can then be resumed alone)."""
        vel = None if self.velocity is None else network.select(self.velocity, index)
        avg = None if self.average is None else network.select(self.average, index)
        return dataclasses.replace(
            self, params=network.select(self.params, index), velocity=vel, average=avg,
            rows=[self.rows[i] for i in index], timing=list(self.timing),
            diverged={j: self.diverged[i] for j, i in enumerate(index) if i in self.diverged})


def init_state(stack: Stack, d: int, c: int) -> TrainState:
    """Fresh networks (each trial from its own init seed) and the shared streams."""
    cfgs = stack.cfgs
    inits = [make_rngs(cf.seed, cf.init_seed)["init"] for cf in cfgs]
    params = network.init_params(d, stack.cfg.model.hidden, c, inits, stack.cfg.dtype)
    rngs = {k: v for k, v in make_rngs(stack.cfg.seed).items() if k in STREAMS}
    return TrainState(params, optim.init_velocity(params, stack.opt), rngs,
                      rows=[[] for _ in cfgs])  # fmt: skip


class StopTraining(Exception):
    """Raised by a hook to end the loop early (the LR range test's stop rule)."""


@dataclass
class Hooks:
    """Observers of the loop. rows(state, t): after metric rows at step t; boundary(state):
    between two updates (snapshots, checkpoints, signals); step(n): n updates done."""

    rows: Callable | None = None
    boundary: Callable | None = None
    step: Callable | None = None
    clock: runs.Clock = field(default_factory=runs.Clock)


@dataclass
class Data:
    """The training split, the validation split, and the rows the train metrics use."""

    train: object
    val: object
    train_eval: object = None


def metric_rows(params, t: int, epoch: float, lr: np.ndarray, data: Data, lam) -> list[dict]:
    """The metric row of every trial: train and val loss, cost and accuracy at step t."""
    tr = network.evaluate(params, data.train_eval.x, data.train_eval.y, lam)
    va = network.evaluate(params, data.val.x, data.val.y, lam)
    return [{"step": t, "epoch": epoch, "lr": float(lr[i]),
             **{f"train_{k}": v for k, v in tr[i].items()},
             **{f"val_{k}": v for k, v in va[i].items()}} for i in range(len(lr))]  # fmt: skip


def measure(state: TrainState, stack: Stack, data: Data, per_epoch: int) -> None:
    t = state.step
    rows = metric_rows(state.params, t, t / per_epoch, stack.lr(t), data, stack.opt.lam)
    for i, row in enumerate(rows):
        if i not in state.diverged:
            state.rows[i].append(row)


def train_step(state: TrainState, stack: Stack, xb, yb, buffers: dict,
               updater: optim.Updater | None = None) -> None:  # fmt: skip
    """One update of every trial on the batch (xb, yb); a trial whose loss is not finite or
    explodes diverges: an error, or (stop_on_divergence False) frozen at a rate of 0.
    `updater`: the loop's optim.Updater (None: optim.update, the same passes)."""
    p, t = state.params, state.step
    u = None
    if stack.drops:
        u = network.array_module(xb).asarray(  # drawn on the host: CuPy gets the same bits
            kernels.random_f32(state.rngs["dropout"], (len(xb), p["W2"].shape[1])))
    losses, _, grads = network.loss_and_grads(p, xb, yb, 0.0, stack.dropout, u,
                                              stack.smoothing, with_cost=False, out=buffers)
    lr = stack.lr(t)
    finite = np.asarray(losses) < stack.exploded  # nan compares false too
    for i in [] if np.logical_and.reduce(finite) else np.flatnonzero(~finite):
        state.diverged.setdefault(int(i), (t, float(lr[i])))
        if stack.stop_on_divergence:
            who = f"trial {i} " if len(lr) > 1 else ""
            raise DivergedError(f"{who}training diverged at step {t} (lr={lr[i]:.6g}, "
                                f"loss {losses[i]:.4g})")  # fmt: skip
    if state.diverged:
        lr[list(state.diverged)] = 0.0
    if updater is None:
        optim.update(p, grads, lr, state.velocity, stack.opt)
    else:
        updater(p, grads, lr, state.velocity)


def average_step(state: TrainState, stack: Stack) -> None:
    """Fold the weights after state.step updates into the running average when a sample is due."""
    if stack.average is not None and avg_mod.due(stack.average, state.step, stack.total):
        state.averaged += 1
        w = avg_mod.sample_weight(stack.average, state.averaged)
        state.average = avg_mod.fold(state.average, state.params, w)


def run(state: TrainState, stack: Stack, data: Data, hooks: Hooks | None = None) -> TrainState:
    """Train from state.step to the end; return the state. The clock gets "eval" (metric rows)
    and "train" (the rest of the loop) seconds. A hook's StopTraining ends it early."""
    hooks = hooks or Hooks()
    data = dataclasses.replace(data, train_eval=data.train_eval or data.train)
    with hooks.clock("loop"), np.errstate(over="ignore", invalid="ignore"):
        try:
            _loop(state, stack, data, hooks)
        except StopTraining:
            pass
    seconds = hooks.clock.seconds
    seconds["train"] = seconds.get("train", 0.0) + seconds.pop("loop") - seconds.get("eval", 0.0)
    return state


def _loop(state: TrainState, stack: Stack, data: Data, hooks: Hooks) -> None:
    """The update counter, epoch shuffles, batch gathers and steps. A resumed state starts at
    its step with its epoch's saved order (its row at that step is already taken)."""
    cfg, x, y, start = stack.cfg, data.train.x, data.train.y, state.step
    if isinstance(y, np.memmap):  # a cached split's labels: y[idx] as a memmap costs 3 us more
        y = np.asarray(y)
    batch = cfg.train.batch_size
    per_epoch = steps_per_epoch(len(y), batch)
    xp = network.array_module(x)
    xb = xp.empty((batch, x.shape[1]), dtype=x.dtype)  # reused batch and gradient buffers
    buffers = {"W1": xp.empty_like(state.params["W1"])}
    updater = optim.Updater.make(state.params, state.velocity, stack.opt)
    for t in range(start, stack.total + 1):
        state.step = t
        epoch, i = divmod(t, per_epoch)
        if t in stack.log_at and not (t == start and start > 0):
            with hooks.clock("eval"):
                measure(state, stack, data, per_epoch)
            if hooks.rows:
                hooks.rows(state, t)
        if t == stack.total:
            break
        if hooks.boundary and t > start:
            hooks.boundary(state)
        if i == 0:
            state.order = epoch_order(len(y), cfg.train.shuffle, state.rngs["shuffle"])
        idx = state.order[i * batch : (i + 1) * batch]
        augment.batch(x, idx, cfg.augment, state.rngs["augment"], xb)
        train_step(state, stack, xb, y[idx], buffers, updater)
        state.step = t + 1
        average_step(state, stack)
        if hooks.step:
            hooks.step(1)
