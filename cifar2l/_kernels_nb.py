"""The numba kernels behind kernels.py (imported on first use: importing numba takes ~0.5 s).

Shapes and semantics are documented on the public functions in kernels.py, which reshape and
check their arguments before calling these. Every kernel is element-wise or row-wise: the
outer `prange` loop hands out independent rows, so the result does not depend on the thread
count. They live at module scope of a real file so that `cache=True` can find them.

Float arithmetic stays in the arrays' dtype: the per-trial vectors come in that dtype and the
only float constants (`zero`) are passed in as scalars of that dtype (a Python float literal
would promote float32 arithmetic to float64 and round differently from NumPy).
"""

from __future__ import annotations

import os

# numba's OpenMP workers busy-wait after each parallel loop by default, on the very cores the
# BLAS threads need for the next product: on 2 cores that made steps several times slower
# (300 small steps on a busy machine, two tries: 28 and 47 s, passive: 1.4 and 19 s). Passive
# workers sleep at once (libgomp reads this when numba first loads it; a user's value stands).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402, F401  (kernels.py reaches numba through this module)
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

BLOCK = 4096  # elements per parallel task in `update`: a (1, T, H*C) view still splits

S = 32  # image side
PLANE = S * S  # one colour plane of a CIFAR row
C = 3  # colour planes


def _kernel(fn):
    """njit(parallel=True, cache=True). numba refuses cache=True when it finds no writable
    cache folder at all (not beside this file, not in the user's cache directory): it raises
    at decoration, that is on import. Then compile in each process instead of failing."""
    try:
        return njit(parallel=True, cache=True)(fn)
    except RuntimeError:
        return njit(parallel=True)(fn)


@_kernel
def update_sgd(p, g, lr, l2, decay):
    """p, g (R*T, K); per-trial vectors (T,). p = (p - decay p) - lr (g + l2 p)."""
    rows, k = p.shape
    t_ = lr.shape[0]
    nb = (k + BLOCK - 1) // BLOCK
    for task in prange(rows * nb):
        row = task // nb
        lo = (task - row * nb) * BLOCK
        t = row % t_
        for j in range(lo, min(lo + BLOCK, k)):
            pj = p[row, j]
            gt = g[row, j] + l2[t] * pj
            q = pj - decay[t] * pj
            p[row, j] = q - lr[t] * gt


@_kernel
def update_momentum(p, g, v, lr, l2, gamma, decay, nesterov):
    """p, g, v (R*T, K); per-trial vectors (T,); heavy-ball or Nesterov momentum."""
    rows, k = p.shape
    t_ = lr.shape[0]
    nb = (k + BLOCK - 1) // BLOCK
    for task in prange(rows * nb):
        row = task // nb
        lo = (task - row * nb) * BLOCK
        t = row % t_
        for j in range(lo, min(lo + BLOCK, k)):
            pj = p[row, j]
            gt = g[row, j] + l2[t] * pj
            q = pj - decay[t] * pj
            vj = gamma[t] * v[row, j] + lr[t] * gt
            v[row, j] = vj
            if nesterov:
                p[row, j] = q - (gamma[t] * vj + lr[t] * gt)
            else:
                p[row, j] = q - vj


@njit(inline="always")
def _relu(x, zero):
    # NumPy's maximum(x, 0) propagates NaN and gives +0 for -0: so does this
    return x if (x > zero or x != x) else zero


@_kernel
def relu_bias(s, b, zero):
    """s (N*T, H) in place: max(s + b[t], 0), b (T, H)."""
    rows, h = s.shape
    t_ = b.shape[0]
    for row in prange(rows):
        t = row % t_
        for k in range(h):
            s[row, k] = _relu(s[row, k] + b[t, k], zero)


@_kernel
def relu_bias_dropout(s, b, u, p, scale, zero):
    """s (N*T, H) in place: max(s + b[t], 0) * (scale[t] if u[n, k] >= p[t] else 0)."""
    rows, h = s.shape
    t_ = b.shape[0]
    for row in prange(rows):
        n = row // t_
        t = row - n * t_
        for k in range(h):
            # multiply by 0 rather than store 0: a NaN stays NaN, as in the reference
            m = scale[t] if u[n, k] >= p[t] else zero
            s[row, k] = _relu(s[row, k] + b[t, k], zero) * m


@_kernel
def relu_backward(dhd, hd, out, zero):
    """out[n, t, k] = dhd[t, n, k] if hd[n, t, k] > 0 else 0; out may be hd itself."""
    n_, t_, h = hd.shape
    for row in prange(n_ * t_):
        n = row // t_
        t = row - n * t_
        for k in range(h):
            out[n, t, k] = dhd[t, n, k] if hd[n, t, k] > zero else zero


@_kernel
def relu_backward_scaled(dhd, hd, scale, out, zero):
    """out[n, t, k] = dhd[t, n, k] * scale[t] if hd[n, t, k] > 0 else 0."""
    n_, t_, h = hd.shape
    for row in prange(n_ * t_):
        n = row // t_
        t = row - n * t_
        for k in range(h):
            out[n, t, k] = dhd[t, n, k] * scale[t] if hd[n, t, k] > zero else zero


@njit(inline="always")
def _xent_row(row, y, e, n):
    """One row of scores (C,), in float64: its loss; the row is overwritten with dscores."""
    c_ = row.shape[0]
    mx = np.float64(row[0])
    for c in range(1, c_):
        mx = max(mx, np.float64(row[c]))
    total = 0.0
    for c in range(c_):
        total += np.exp(np.float64(row[c]) - mx)
    lse = np.log(total)
    e_c, keep = e / c_, 1.0 - e
    sum_logp, logp_y = 0.0, 0.0
    for c in range(c_):
        logp = (np.float64(row[c]) - mx) - lse
        sum_logp += logp
        d = np.exp(logp) - e_c
        if c == y:
            logp_y = logp
            d -= keep
        row[c] = d / n  # the only rounding to the scores' dtype
    return -(keep * logp_y + e_c * sum_logp)


@_kernel
def softmax_xent(scores, y, smoothing, row_loss):
    """scores (T, N, C) -> dscores in place; row_loss (T, N) float64 written."""
    t_, n_, _ = scores.shape
    for i in prange(t_ * n_):
        t = i // n_
        n = i - t * n_
        row_loss[t, n] = _xent_row(scores[t, n], y[n], np.float64(smoothing[t]), n_)


@njit(inline="always")
def _source(j, reflect):
    """Source index of padded coordinate j (0..31 inside the image): -1 for a zero pixel."""
    if 0 <= j < S:
        return j
    if not reflect:
        return -1
    return -j if j < 0 else 2 * (S - 1) - j


@_kernel
def gather_augment(x, idx, flips, dy, dx, reflect, out, zero):
    """out[n] = image x[idx[n]] shifted by (dy, dx), mirrored where flips[n] (rows of 3072)."""
    for task in prange(idx.shape[0] * C):
        n = task // C
        base = (task - n * C) * PLANE
        src = idx[n]
        for i in range(S):
            r = _source(i + dy[n], reflect)
            for j in range(S):
                c = _source((S - 1 - j if flips[n] else j) + dx[n], reflect)
                dst = base + i * S + j
                out[n, dst] = zero if (r < 0 or c < 0) else x[src, base + r * S + c]


ALL = (update_sgd, update_momentum, relu_bias, relu_bias_dropout, relu_backward,
       relu_backward_scaled, softmax_xent, gather_augment)  # fmt: skip
