"""Several trials of one shape trained together as one wide network.

Trials that share the model shape, batch size, step count and data order (search trials do:
common random numbers) train in one pass: the first-layer products of T trials are one matrix
product X @ [W1_1 ... W1_T] (and one for its backward), the second layer is a batched product
over the trials, and per-trial lambda, learning rates, dropout and momentum are vectors. Each
trial sees exactly the batches, noise and dropout draws it would see alone, so it ends where it
would alone, up to floating-point rounding.

Fused shapes: W1 (D, T*H), b1 (T*H,), W2 (T, H, C), b2 (T, C).
"""

from __future__ import annotations

import numpy as np

from . import augment, network
from .network import array_module
from .schedule import make_schedule

FUSABLE = ("optim.lambda", "schedule.eta_min", "schedule.eta_max", "init_seed",
           "model.dropout", "optim.momentum")  # fmt: skip


def unsupported(cfg) -> list[str]:
    """Options the fused path does not implement (trials using them train one at a time)."""
    on = {"optim.label_smoothing": cfg.optim.label_smoothing,
          "optim.weight_decay": cfg.optim.weight_decay, "train.snapshots": cfg.train.snapshots}
    return [k for k, v in on.items() if v]


def stack(plist: list[dict]) -> dict:
    xp = array_module(plist[0]["W1"])
    return {
        "W1": xp.concatenate([p["W1"] for p in plist], axis=1),
        "b1": xp.concatenate([p["b1"] for p in plist]),
        "W2": xp.stack([p["W2"] for p in plist]),
        "b2": xp.stack([p["b2"] for p in plist]),
    }


def unstack(fp: dict, t: int) -> dict:
    """Trial t's own params (copies), in the single-network layout."""
    h = fp["W2"].shape[1]
    cols = slice(t * h, (t + 1) * h)
    return {"W1": fp["W1"][:, cols].copy(), "b1": fp["b1"][cols].copy(),
            "W2": fp["W2"][t].copy(), "b2": fp["b2"][t].copy()}  # fmt: skip


def per_column(v, h: int):
    """A per-trial vector (T,) repeated for each of a trial's H hidden units: (T*H,)."""
    return array_module(v).repeat(v, h)


def forward(fp, x):
    """x (N, D) -> per-trial scores (T, N, C)."""
    t, h, _ = fp["W2"].shape
    hid, _ = network.relu_forward(x @ fp["W1"] + fp["b1"])
    h3 = hid.reshape(len(x), t, h).transpose(1, 0, 2)
    return h3 @ fp["W2"] + fp["b2"][:, None, :]


def softmax_cross_entropy(scores, y):
    """scores (T, N, C), y (N,) -> per-trial mean losses (T,), dscores (T, N, C)."""
    xp = array_module(scores)
    n = scores.shape[1]
    z = scores - scores.max(axis=2, keepdims=True)
    log_p = z - xp.log(xp.exp(z).sum(axis=2, keepdims=True))
    rows = xp.arange(n)
    losses = -log_p[:, rows, y].mean(axis=1)
    dscores = xp.exp(log_p)
    dscores[:, rows, y] -= 1
    return losses, dscores / n


def dropout_mask(shape_nth, p, rng, dtype):
    """One (N, H) uniform draw shared by all trials, kept where >= each trial's p: exactly
    the mask each trial would draw alone from the same stream. Returns (N, T*H) or None."""
    if not np.any(p):
        return None
    n, t, h = shape_nth
    u = rng.random((n, h), dtype=np.float32)
    keep = u[:, None, :] >= p[None, :, None]
    return (keep / (1 - p)[None, :, None]).astype(dtype).reshape(n, t * h)


def loss_and_grads(fp, x, y, lam, mask=None):
    """Per-trial losses (T,) and gradients of the summed per-trial costs (fused shapes).

    lam (T,) per-trial L2 weights; mask (N, T*H) a scaled dropout mask or None.
    """
    t, h, _ = fp["W2"].shape
    n = len(x)
    s1, c1 = network.affine_forward(x, fp["W1"], fp["b1"])
    hid, cr = network.relu_forward(s1)
    hd, cd = network.dropout_forward(hid, 0.0, mask=mask)
    h3 = hd.reshape(n, t, h).transpose(1, 0, 2)
    losses, ds = softmax_cross_entropy(h3 @ fp["W2"] + fp["b2"][:, None, :], y)
    dW2, db2 = h3.transpose(0, 2, 1) @ ds, ds.sum(axis=1)
    dh = (ds @ fp["W2"].transpose(0, 2, 1)).transpose(1, 0, 2).reshape(n, t * h)
    dh = network.relu_backward(network.dropout_backward(dh, cd), cr)
    _, dW1, db1 = network.affine_backward(dh, c1, need_dx=False)
    dW1 += (2 * per_column(lam, h)) * fp["W1"]
    dW2 += (2 * lam)[:, None, None] * fp["W2"]
    return losses, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def shapes_for(key: str, h: int):
    """How a per-trial vector broadcasts against each fused parameter."""
    return {"W1": lambda v: per_column(v, h)[None, :], "b1": lambda v: per_column(v, h),
            "W2": lambda v: v[:, None, None], "b2": lambda v: v[:, None]}[key]  # fmt: skip


def update(fp, grads, lr, velocity, gamma, nesterov: bool) -> None:
    """Per-trial SGD / momentum, the same forms as optim.py with vectors lr, gamma (T,)."""
    h = fp["W2"].shape[1]
    for key, g in grads.items():
        b = shapes_for(key, h)
        step = b(lr) * g
        if velocity is None:
            fp[key] -= step
            continue
        v = velocity[key]
        v *= b(gamma)
        v += step
        fp[key] -= (step + b(gamma) * v) if nesterov else v


def evaluate(fp, x, y, lam, chunk: int = 10000) -> list[dict]:
    """Per trial: loss, cost and accuracy on a whole split (one forward pass for all trials)."""
    xp = array_module(x)
    t = fp["W2"].shape[0]
    nll, correct = np.zeros(t), np.zeros(t)
    for s in range(0, len(x), chunk):
        scores, yb = forward(fp, x[s : s + chunk]), y[s : s + chunk]
        z = scores - scores.max(axis=2, keepdims=True)
        log_p = z - xp.log(xp.exp(z).sum(axis=2, keepdims=True))
        nll -= log_p[:, xp.arange(len(yb)), yb].sum(axis=1)
        correct += (scores.argmax(axis=2) == yb).sum(axis=1)
    out = []
    for i in range(t):
        loss = float(nll[i]) / len(x)
        penalty = network.l2_penalty(unstack_weights(fp, i), float(lam[i]))
        out.append({"loss": loss, "cost": loss + penalty, "accuracy": float(correct[i]) / len(x)})
    return out


def unstack_weights(fp, t: int) -> dict:
    """Views of trial t's W1 and W2 (for the L2 penalty)."""
    h = fp["W2"].shape[1]
    return {"W1": fp["W1"][:, t * h : (t + 1) * h], "W2": fp["W2"][t]}


def vectors(cfgs: list) -> dict:
    """Per-trial settings as (T,) arrays."""
    def vec(f):
        return np.array([f(c) for c in cfgs], dtype=np.float64)

    return {"lam": vec(lambda c: c.optim.lambda_), "dropout": vec(lambda c: c.model.dropout),
            "gamma": vec(lambda c: c.optim.momentum)}  # fmt: skip


def make_step(fp, cfgs: list, rngs: dict, diverged: dict):
    """One fused update; a trial whose loss turns non-finite is frozen (its rate set to 0)
    and recorded in `diverged` {trial: (step, lr)}."""
    v = vectors(cfgs)
    t, h, _ = fp["W2"].shape
    etas = [make_schedule(c.schedule) for c in cfgs]
    aug, nesterov = cfgs[0].augment, cfgs[0].optim.nesterov
    velocity = {k: a * 0 for k, a in fp.items()} if v["gamma"].any() else None
    dtype = fp["W1"].dtype

    def step(xb, yb, s: int) -> None:
        augment.apply(xb, aug, rngs["augment"])  # one augmented batch shared by all trials
        mask = dropout_mask((len(xb), t, h), v["dropout"], rngs["dropout"], dtype)
        losses, grads = loss_and_grads(fp, xb, yb, v["lam"].astype(dtype), mask)
        lr = np.array([eta(s) for eta in etas])
        for i in np.flatnonzero(~np.isfinite(losses)):
            diverged.setdefault(int(i), (s, float(lr[i])))
        if diverged:
            lr[list(diverged)] = 0.0
            for g in grads.values():  # keep a frozen trial's NaNs out of its params
                g[~np.isfinite(g)] = 0
        update(fp, grads, lr.astype(dtype), velocity, v["gamma"].astype(dtype), nesterov)

    step.velocity = velocity
    return step


class GroupInterrupted(BaseException):
    """A signal stopped a fused pass; `states` holds each live trial's checkpoint.State."""

    def __init__(self, signum: int, states: dict, diverged: dict):
        super().__init__(signum)
        self.signum, self.states, self.diverged = signum, states, diverged


def train_group(cfgs: list, prep, on_step=None, clock=None):
    """Train the trials `cfgs` (one fuse key) together; return their params, metric rows and
    {trial: (step, lr)} for those that diverged (their rows stop there).

    On SIGINT/SIGTERM it stops at the next update boundary and raises GroupInterrupted with a
    checkpoint per live trial: each can then be resumed on its own.
    """
    from . import checkpoint
    from .rngs import make_rngs
    from .train import run_loop

    d, c, dtype = prep.train.x.shape[1], len(prep.classes), cfgs[0].dtype
    plist = [network.init_params(d, cf.model.hidden, c, make_rngs(cf.seed, cf.init_seed)["init"],
                                 dtype) for cf in cfgs]  # fmt: skip
    fp, diverged = stack(plist), {}
    rngs = make_rngs(cfgs[0].seed)  # shared: the data order, noise and dropout draws
    etas = [make_schedule(cf.schedule) for cf in cfgs]
    lam = vectors(cfgs)["lam"]
    rows: list[list[dict]] = [[] for _ in cfgs]

    def measure(t: int, epoch: float) -> None:
        tr, va = evaluate(fp, prep.train.x, prep.train.y, lam), evaluate(fp, prep.val.x,
                                                                         prep.val.y, lam)
        for i in range(len(cfgs)):
            if i not in diverged:
                rows[i].append({"step": t, "epoch": epoch, "lr": etas[i](t),
                                **{f"train_{k}": v for k, v in tr[i].items()},
                                **{f"val_{k}": v for k, v in va[i].items()}})  # fmt: skip

    step = make_step(fp, cfgs, rngs, diverged)
    gammas = vectors(cfgs)["gamma"]

    def boundary(t: int, order) -> None:
        if checkpoint.pending() is None:
            return
        states = {i: checkpoint.State(
            t, unstack(fp, i), unstack(step.velocity, i) if gammas[i] > 0 else None, order,
            checkpoint.rng_states(rngs), rows[i], []) for i in range(len(cfgs))
            if i not in diverged}  # fmt: skip
        raise GroupInterrupted(checkpoint.take_pending(), states, diverged)

    # a diverging trial overflows; it is recorded, not printed
    with checkpoint.deferred_signals(), np.errstate(all="ignore"):
        run_loop(prep.train, cfgs[0], rngs, step, measure, on_step, clock, boundary=boundary)
    return [unstack(fp, i) for i in range(len(cfgs))], rows, diverged
