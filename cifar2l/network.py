"""The two-layer network as pure layer functions (cs231n style).

Shapes: N samples, D = 3072 inputs, H hidden units, C = 10 classes.
Params: W1 (D, H), b1 (H,), W2 (H, C), b2 (C,). The study writes s1 = W1 x with W1 (H, D);
a row-major batch X (N, D) makes X @ W1 the same product with W1 stored transposed.

Every function takes its array module from its inputs (`xp`), so NumPy and CuPy arrays share
this code. Gradients are returned, never applied: the optimizer update lives in optim.py.
"""

from __future__ import annotations

import numpy as np

from .parallel import rowwise

PARAM_KEYS = ("W1", "b1", "W2", "b2")


def array_module(x):
    """numpy, or cupy for CuPy arrays (imported only when such an array is passed)."""
    if type(x).__module__.partition(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def init_params(d: int, h: int, c: int, rng: np.random.Generator, dtype="float32") -> dict:
    """Biases 0, W1 ~ N(0, 1/d), W2 ~ N(0, 1/h) (std 1/sqrt(fan_in))."""
    return {
        "W1": (rng.standard_normal((d, h)) / np.sqrt(d)).astype(dtype),
        "b1": np.zeros(h, dtype=dtype),
        "W2": (rng.standard_normal((h, c)) / np.sqrt(h)).astype(dtype),
        "b2": np.zeros(c, dtype=dtype),
    }


def affine_forward(x, w, b):
    """x (N, D), w (D, M), b (M,) -> out (N, M), cache."""
    return x @ w + b, (x, w)


def affine_backward(dout, cache, need_dx: bool = True, dw=None):
    """dout (N, M) -> dx (N, D) or None, dw (D, M), db (M,). `dw`: a buffer to write dw into
    (a wide layer's weight gradient is too big to allocate at every step)."""
    x, w = cache
    dx = dout @ w.T if need_dx else None
    return dx, array_module(x).matmul(x.T, dout, out=dw), dout.sum(axis=0)


def relu_forward(x):
    """x (N, M) -> max(0, x), cache. Overwrites x (the pre-activation is not needed again)."""
    xp = array_module(x)
    out = xp.maximum(x, 0, out=x)
    return out, out


def relu_backward(dout, cache):
    """Gradient passes where the unit was active."""
    return dout * (cache > 0)


def dropout_forward(x, p: float, rng=None, mask=None):
    """Inverted dropout on x (N, M): zero each unit with probability p, scale the kept by 1/(1-p).

    At evaluation (p = 0) it is the identity. `mask` (N, M), already scaled, fixes the draw
    (the gradient check uses one); otherwise `rng` draws it.
    """
    if mask is None:
        if p == 0:
            return x, None
        xp = array_module(x)
        keep = xp.asarray(rng.random(x.shape, dtype=np.float32) >= p)
        mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dout, cache):
    return dout if cache is None else dout * cache


def softmax(scores):
    """scores (N, C) -> probabilities (N, C), stable under large scores."""
    xp = array_module(scores)
    z = scores - scores.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(scores, y, smoothing: float = 0.0):
    """scores (N, C), y (N,) int -> mean cross-entropy, dscores (N, C).

    With label smoothing e the target is (1 - e) on the label and e / C on every class.
    """
    xp = array_module(scores)
    n, c = scores.shape
    z = scores - scores.max(axis=1, keepdims=True)
    log_z = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    log_p = z - log_z
    rows = xp.arange(n)
    loss = -log_p[rows, y].mean()
    dscores = xp.exp(log_p)
    if smoothing:
        loss = (1 - smoothing) * loss - smoothing / c * log_p.sum(axis=1).mean()
        dscores -= smoothing / c
    dscores[rows, y] -= 1 - smoothing  # softmax gradient indexed by label: no one-hot matrix
    return loss, dscores / n


def forward(params, x):
    """x (N, D) -> class scores (N, C)."""
    h, _ = relu_forward(x @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def l2_penalty(params, lam: float) -> float:
    """lambda * (||W1||^2 + ||W2||^2); biases are not regularised."""
    if lam == 0:
        return 0.0
    xp = array_module(params["W1"])
    w1, w2 = params["W1"].ravel(), params["W2"].ravel()
    return lam * float(xp.dot(w1, w1) + xp.dot(w2, w2))  # BLAS dot: no squared temporaries


def loss_and_grads(params, x, y, lam: float, dropout: float = 0.0, rng=None, mask=None,
                   with_cost: bool = True, smoothing: float = 0.0, out=None):  # fmt: skip
    """Mean cross-entropy loss, cost J = loss + L2 penalty, and dJ/dparams (same keys).

    With dropout > 0 (or a fixed `mask`), the hidden layer is dropped out as in training.
    with_cost=False skips the penalty's pass over the weights (cost None): a training step
    needs only the loss and the gradients. `smoothing` is the label smoothing of the loss.
    `out`: buffers {W1, W2} the weight gradients are written into (and returned).
    """
    out = out or {}
    s1, c1 = affine_forward(x, params["W1"], params["b1"])
    h, cr = relu_forward(s1)
    hd, cd = dropout_forward(h, dropout, rng, mask)
    scores, c2 = affine_forward(hd, params["W2"], params["b2"])
    loss, dscores = softmax_cross_entropy(scores, y, smoothing)
    dhd, dW2, db2 = affine_backward(dscores, c2, dw=out.get("W2"))
    dh = dropout_backward(dhd, cd)
    _, dW1, db1 = affine_backward(relu_backward(dh, cr), c1, need_dx=False, dw=out.get("W1"))
    if lam:
        rowwise(_add_l2(2 * lam), dW1, params["W1"])
        rowwise(_add_l2(2 * lam), dW2, params["W2"])
    grads = {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
    loss = float(loss)
    return loss, (loss + l2_penalty(params, lam)) if with_cost else None, grads


def _add_l2(scale: float):
    def add(dw, w):
        dw += scale * w

    return add


def cost(params, x, y, lam: float, mask=None, smoothing: float = 0.0) -> float:
    """J = mean cross-entropy + L2 penalty by a forward pass only (what the gradient check
    differentiates numerically); `mask` applies a fixed dropout mask to the hidden layer."""
    h, _ = relu_forward(x @ params["W1"] + params["b1"])
    hd, _ = dropout_forward(h, 0.0, mask=mask)
    scores = hd @ params["W2"] + params["b2"]
    loss, _ = softmax_cross_entropy(scores, y, smoothing)
    return float(loss) + l2_penalty(params, lam)


def evaluate(params, x, y, lam: float, chunk: int = 10000) -> dict:
    """Loss, cost and accuracy on a whole split, one forward pass in chunks of rows."""
    xp = array_module(x)
    n = x.shape[0]
    total_nll, correct = 0.0, 0
    for start in range(0, n, chunk):
        scores = forward(params, x[start : start + chunk])
        yb = y[start : start + chunk]
        z = scores - scores.max(axis=1, keepdims=True)
        log_p = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        total_nll -= float(log_p[xp.arange(len(yb)), yb].sum())
        correct += int((scores.argmax(axis=1) == yb).sum())
    loss = total_nll / n
    return {"loss": loss, "cost": loss + l2_penalty(params, lam), "accuracy": correct / n}


def probabilities(params, x, chunk: int = 10000):
    """x (N, D) -> softmax outputs (N, C), computed in chunks of rows."""
    xp = array_module(x)
    starts = range(0, x.shape[0], chunk)
    return xp.concatenate([softmax(forward(params, x[s : s + chunk])) for s in starts])


def predict(params, x, chunk: int = 10000):
    """x (N, D) -> predicted labels (N,)."""
    xp = array_module(x)
    starts = range(0, x.shape[0], chunk)
    return xp.concatenate([forward(params, x[s : s + chunk]).argmax(axis=1) for s in starts])
