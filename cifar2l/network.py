"""The two-layer network as pure layer functions (cs231n style), for a stack of T networks.

Shapes: N samples, D = 3072 inputs, T networks (trials) trained together, H hidden units each,
C = 10 classes. Params: W1 (D, T, H), b1 (T, H), W2 (T, H, C), b2 (T, C). A single run is
T = 1; a `--repeat K` run is T = K; a fused search group is T = its trials. W1 is stored
contiguously so that the first layer of all T networks is one product X (N, D) @ W1 (D, T*H);
the study writes s1 = W1 x with W1 (H, D): a row-major batch makes X @ W1 the same product.
The second layer is a batched product over the trials. Per-trial settings (lambda, dropout p,
label smoothing) are (T,) vectors; a scalar means the same value for every trial.

Every function takes its array module from its inputs (`xp`), so NumPy and CuPy arrays share
this code; the element-wise passes are kernels.py's (compiled for NumPy arrays, the plain
reference expression otherwise). Gradients are returned, never applied: the update is optim.py.
"""

from __future__ import annotations

import numpy as np

from . import kernels

PARAM_KEYS = ("W1", "b1", "W2", "b2")
WEIGHT_KEYS = ("W1", "W2")  # regularised (L2, weight decay); the biases are not
EVAL_ELEMENTS = 1 << 25  # hidden activations per evaluation chunk (128 MB in float32)


def array_module(x):
    """numpy, or cupy for CuPy arrays (imported only when such an array is passed)."""
    if type(x).__module__.partition(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def trials(params) -> int:
    return params["W2"].shape[0]


def per_trial(value, t: int, dtype=np.float64) -> np.ndarray:
    """A setting as a (T,) vector: a scalar is repeated, a vector checked."""
    v = np.asarray(value, dtype=dtype)
    if v.ndim == 0:
        return np.full(t, v, dtype=dtype)
    if v.shape != (t,):
        raise ValueError(f"per-trial vector of shape {v.shape}, expected ({t},)")
    return v


def init_params(d: int, h: int, c: int, rngs, dtype="float32") -> dict:
    """Biases 0, W1 ~ N(0, 1/d), W2 ~ N(0, 1/h) (std 1/sqrt(fan_in)), one network per
    Generator in `rngs` (a single Generator: T = 1). Each trial draws exactly what it would
    draw alone, so its initialisation does not depend on the stack it is in."""
    rngs = [rngs] if isinstance(rngs, np.random.Generator) else list(rngs)
    w1, w2 = [], []
    for rng in rngs:
        w1.append(rng.standard_normal((d, h)) / np.sqrt(d))
        w2.append(rng.standard_normal((h, c)) / np.sqrt(h))
    t = len(rngs)
    return {"W1": np.stack(w1, axis=1).astype(dtype), "b1": np.zeros((t, h), dtype=dtype),
            "W2": np.stack(w2).astype(dtype), "b2": np.zeros((t, c), dtype=dtype)}  # fmt: skip


def stack(plist: list[dict]) -> dict:
    """Stacks of networks (each T >= 1) -> one stack, trials in order."""
    xp = array_module(plist[0]["W1"])
    axes = {"W1": 1, "b1": 0, "W2": 0, "b2": 0}
    return {k: xp.ascontiguousarray(xp.concatenate([p[k] for p in plist], axis=axes[k]))
            for k in PARAM_KEYS}  # fmt: skip


def select(params: dict, index: list[int]) -> dict:
    """The trials `index` of a stack, as a new (contiguous) stack."""
    xp = array_module(params["W1"])
    idx = list(index)
    return {"W1": xp.ascontiguousarray(params["W1"][:, idx]),
            **{k: xp.ascontiguousarray(params[k][idx]) for k in ("b1", "W2", "b2")}}


def dropout_scale(p, dtype) -> np.ndarray:
    """(T,) inverted-dropout scale 1/(1-p) of the kept units, in the activations' dtype."""
    p = np.asarray(p, dtype=np.float64)
    return (np.ones(p.shape, dtype) / (1 - p).astype(dtype)).astype(dtype)


def dropout_mask(u, p, dtype):
    """The scaled mask (N, T, H) that draws u (N, H) and drop probabilities p (T,) define:
    1/(1-p_t) where u >= p_t, else 0. One draw shared by the trials is exactly the draw each
    would make alone. (The training step never builds it: kernels apply it in passing.)"""
    xp = array_module(u)
    p32 = np.asarray(p, dtype=np.float32)
    keep = u[:, None, :] >= xp.asarray(p32)[None, :, None]
    return keep.astype(dtype) * xp.asarray(dropout_scale(p, dtype))[None, :, None]


def first_layer(x, w1):
    """x (N, D), W1 (D, T, H) -> s1 = x @ W1 without the bias (N, T, H): one product."""
    d, t, h = w1.shape
    return (x @ w1.reshape(d, t * h)).reshape(len(x), t, h)


def hidden_forward(s1, b1, u=None, p=None):
    """ReLU(s1 + b1) with inverted dropout, in place on s1 (N, T, H) -> hd (N, T, H), cache.

    u (N, H) float32 uniform draws fix the dropout mask (None or p == 0: no dropout); the
    cache is (hd, scale): a unit passes its gradient where hd > 0, scaled by 1/(1-p)."""
    scale = None
    if u is not None and np.any(np.asarray(p) > 0):
        scale = dropout_scale(p, s1.dtype)
        hd = kernels.relu_dropout_forward(s1, b1, u, np.asarray(p, np.float32), scale)
    else:
        hd = kernels.relu_dropout_forward(s1, b1, None, None, None)
    return hd, (hd, scale)


def hidden_backward(dhd, cache, out=None):
    """dhd (T, N, H) -> gradient w.r.t. s1 (N, T, H), written into `out` when given."""
    hd, scale = cache
    xp = array_module(hd)
    out = xp.empty(hd.shape, dtype=hd.dtype) if out is None else out
    return kernels.relu_dropout_backward(dhd, hd, scale, out)


def second_layer_forward(hd, w2, b2):
    """hd (N, T, H), W2 (T, H, C), b2 (T, C) -> scores (T, N, C), cache."""
    h3 = hd.transpose(1, 0, 2)  # (T, N, H), a view
    return h3 @ w2 + b2[:, None, :], (h3, w2)


def second_layer_backward(dscores, cache):
    """dscores (T, N, C) -> dhd (T, N, H), dW2 (T, H, C), db2 (T, C)."""
    h3, w2 = cache
    return dscores @ w2.transpose(0, 2, 1), h3.transpose(0, 2, 1) @ dscores, dscores.sum(axis=1)


def first_layer_backward(ds1, x, dw=None):
    """ds1 (N, T, H), x (N, D) -> dW1 (D, T, H) (written into the buffer `dw` when given: a
    wide layer's gradient is too big to allocate at every step), db1 (T, H)."""
    n, t, h = ds1.shape
    xp = array_module(x)
    out = None if dw is None else dw.reshape(x.shape[1], t * h)
    dw1 = xp.matmul(x.T, ds1.reshape(n, t * h), out=out).reshape(x.shape[1], t, h)
    return dw1, ds1.sum(axis=0)


def softmax_cross_entropy(scores, y, smoothing=0.0):
    """scores (T, N, C), y (N,) int -> per-trial mean cross-entropies (T,) float64 and
    dscores (T, N, C), the gradient of each trial's mean loss (written over `scores`).

    With label smoothing e_t the target is (1 - e_t) on the label and e_t / C on every class.
    """
    e = per_trial(smoothing, scores.shape[0], scores.dtype)
    return kernels.softmax_xent(scores, y, e)


def softmax(scores):
    """scores (..., C) -> probabilities (..., C), stable under large scores."""
    xp = array_module(scores)
    z = scores - scores.max(axis=-1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def forward(params, x):
    """x (N, D) -> class scores (T, N, C)."""
    hd, _ = hidden_forward(first_layer(x, params["W1"]), params["b1"])
    return second_layer_forward(hd, params["W2"], params["b2"])[0]


def l2_penalty(params, lam) -> np.ndarray:
    """(T,) lambda_t * (||W1_t||^2 + ||W2_t||^2); biases are not regularised."""
    lam = per_trial(lam, trials(params))
    out = np.zeros(len(lam))
    for t in np.flatnonzero(lam):
        for key in WEIGHT_KEYS:
            w = params[key][:, t] if key == "W1" else params[key][t]
            w = array_module(w).ascontiguousarray(w).ravel()
            out[t] += float(w @ w)  # BLAS dot: no squared temporaries
        out[t] *= lam[t]
    return out


def add_l2_gradient(grads, params, lam) -> None:
    """grads += 2 lambda_t W for the weights, in place (what the L2 penalty adds to dJ)."""
    if isinstance(lam, float | int) and lam == 0:  # a training step's call: nothing to add
        return
    lam = per_trial(lam, trials(params))
    if not lam.any():
        return
    xp = array_module(params["W1"])
    two = xp.asarray((2 * lam).astype(params["W1"].dtype))
    grads["W1"] += two[None, :, None] * params["W1"]
    grads["W2"] += two[:, None, None] * params["W2"]


def loss_and_grads(params, x, y, lam=0.0, dropout=0.0, u=None, smoothing=0.0,
                   with_cost: bool = True, out=None):  # fmt: skip
    """Per-trial mean losses (T,), costs J_t = loss_t + L2 penalty_t (T,) (None with
    with_cost=False), and the gradient of sum_t J_t (the trials are independent: each trial's
    slice is its own dJ_t/dparams), under the keys of params.

    u (N, H) float32 draws fix the dropout mask of the drop probabilities `dropout` (T,).
    lam, dropout, smoothing: scalars or (T,) vectors. `out`: buffers the step reuses: {W1}
    the first layer's weight gradient, {s1} (N, T, H) the hidden gradient (added when
    missing). A training step passes lam = 0 and lets optim.update add the L2 gradient in its
    pass over the weights.
    """
    p = None if u is None else per_trial(dropout, trials(params))  # no draws: no dropout
    hd, ch = hidden_forward(first_layer(x, params["W1"]), params["b1"], u, p)
    scores, c2 = second_layer_forward(hd, params["W2"], params["b2"])
    losses, dscores = softmax_cross_entropy(scores, y, smoothing)
    dhd, dw2, db2 = second_layer_backward(dscores, c2)
    out = {} if out is None else out
    # Into a buffer of its own, not over hd: the compiled pass cannot vectorise a loop whose
    # input and output alias (table4-140's step: 0.37 ms in place, 0.04 ms apart).
    ds1 = hidden_backward(dhd, ch, out=_buffer(out, "s1", hd))
    dw1, db1 = first_layer_backward(ds1, x, dw=out.get("W1"))
    grads = {"W1": dw1, "b1": db1, "W2": dw2, "b2": db2}
    add_l2_gradient(grads, params, lam)
    return losses, (losses + l2_penalty(params, lam)) if with_cost else None, grads


def _buffer(out: dict, key: str, like):
    """out[key] if it has like's shape and dtype, else a new array (kept in out)."""
    buf = out.get(key)
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
        buf = out[key] = array_module(like).empty_like(like)
    return buf


def cost(params, x, y, lam=0.0, dropout=0.0, u=None, smoothing=0.0) -> np.ndarray:
    """(T,) J = mean cross-entropy + L2 penalty by a forward pass only (what the gradient check
    differentiates numerically); u and dropout fix a dropout mask as in loss_and_grads."""
    t = trials(params)
    hd, _ = hidden_forward(first_layer(x, params["W1"]), params["b1"], u, per_trial(dropout, t))
    scores, _ = second_layer_forward(hd, params["W2"], params["b2"])
    losses, _ = softmax_cross_entropy(scores, y, smoothing)
    return losses + l2_penalty(params, lam)


def eval_chunk(params) -> int:
    """Rows per evaluation chunk: the T * H hidden activations of a chunk stay bounded."""
    t, h, _ = params["W2"].shape
    return int(min(10000, max(500, EVAL_ELEMENTS // (t * h))))


def evaluate(params, x, y, lam=0.0, chunk: int | None = None) -> list[dict]:
    """Per trial: loss, cost and accuracy on a whole split (one forward pass, in row chunks)."""
    xp, t = array_module(x), trials(params)
    chunk = chunk or eval_chunk(params)
    nll, correct = np.zeros(t), np.zeros(t, dtype=np.int64)
    for s in range(0, len(x), chunk):
        scores, yb = forward(params, x[s : s + chunk]), y[s : s + chunk]
        z = scores - scores.max(axis=2, keepdims=True)
        log_p = z - xp.log(xp.exp(z).sum(axis=2, keepdims=True))
        nll -= np.asarray(log_p[:, xp.arange(len(yb)), yb].sum(axis=1), dtype=np.float64)
        correct += np.asarray((scores.argmax(axis=2) == yb).sum(axis=1))
    loss, penalty = nll / len(x), l2_penalty(params, lam)
    return [{"loss": float(loss[i]), "cost": float(loss[i] + penalty[i]),
             "accuracy": float(correct[i]) / len(x)} for i in range(t)]  # fmt: skip


def probabilities(params, x, chunk: int | None = None):
    """x (N, D) -> softmax outputs (T, N, C), computed in chunks of rows."""
    xp, chunk = array_module(x), chunk or eval_chunk(params)
    starts = range(0, x.shape[0], chunk)
    return xp.concatenate([softmax(forward(params, x[s : s + chunk])) for s in starts], axis=1)


def predict(params, x, chunk: int | None = None):
    """x (N, D) -> predicted labels (T, N)."""
    return probabilities(params, x, chunk).argmax(axis=2)
