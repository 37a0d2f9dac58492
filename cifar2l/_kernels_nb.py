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
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

BLOCK = 4096  # elements per parallel task: a one-row view of a wide parameter still splits

S = 32  # image side
PLANE = S * S  # one colour plane of a CIFAR row
C = 3  # colour planes


def _kernel(fn):
    """njit(parallel=True, cache=True). numba refuses cache=True when it finds no writable
    cache folder at all (not beside this file, not in the user's cache directory): it raises
    at decoration, that is on import. Then compile in each process instead of failing."""
    try:
        return njit(parallel=True, cache=True, nogil=True)(fn)
    except RuntimeError:
        return njit(parallel=True, nogil=True)(fn)


def _run(fn):
    """A serial 1-D pass, compiled on its own and called from a parallel kernel's task. Its
    loop vectorises (SIMD); the same loop written inline in a prange body does not, and ran
    3-6x slower (a 3072x50 SGD update, one thread: 0.17 ms inline, 0.03 ms as a call)."""
    try:
        return njit(cache=True)(fn)
    except RuntimeError:
        return njit(fn)


@njit(inline="always")
def _tasks(rows, k):
    """Tasks of a pass over (rows, K): whole rows, `per` at a time, when rows are short;
    BLOCK-element pieces of one row (`nb` per row) when they are long."""
    per = max(1, BLOCK // k)
    nb = (k + BLOCK - 1) // BLOCK
    return per, nb, ((rows + per - 1) // per) * nb


@njit(inline="always")
def _span(task, per, nb, rows, k):
    """Rows [r0, r1) and columns [lo, hi) of a task of _tasks."""
    r0 = (task // nb) * per
    lo = (task % nb) * BLOCK
    return r0, min(r0 + per, rows), lo, min(lo + BLOCK, k)


@_run
def _sgd_run(p, g, lr, l2, decay):
    for j in range(p.shape[0]):
        pj = p[j]
        gt = g[j] + l2 * pj
        q = pj - decay * pj
        p[j] = q - lr * gt


# Heavy-ball and Nesterov as two loops rather than one with a flag: no branch in the element
# loop, whatever the compiler would make of it.
@_run
def _heavy_ball_run(p, g, v, lr, l2, gamma, decay):
    for j in range(p.shape[0]):
        pj = p[j]
        gt = g[j] + l2 * pj
        q = pj - decay * pj
        vj = gamma * v[j] + lr * gt
        v[j] = vj
        p[j] = q - vj


@_run
def _nesterov_run(p, g, v, lr, l2, gamma, decay):
    for j in range(p.shape[0]):
        pj = p[j]
        gt = g[j] + l2 * pj
        q = pj - decay * pj
        vj = gamma * v[j] + lr * gt
        v[j] = vj
        p[j] = q - (gamma * vj + lr * gt)


@_kernel
def update_sgd(p, g, lr, l2, decay):
    """p, g (R*T, K); per-trial vectors (T,). p = (p - decay p) - lr (g + l2 p)."""
    rows, k = p.shape
    per, nb, tasks = _tasks(rows, k)
    for task in prange(tasks):
        r0, r1, lo, hi = _span(task, per, nb, rows, k)
        for row in range(r0, r1):
            t = row % lr.shape[0]
            _sgd_run(p[row, lo:hi], g[row, lo:hi], lr[t], l2[t], decay[t])


@_kernel
def update_momentum(p, g, v, lr, l2, gamma, decay, nesterov):
    """p, g, v (R*T, K); per-trial vectors (T,); heavy-ball or Nesterov momentum."""
    rows, k = p.shape
    per, nb, tasks = _tasks(rows, k)
    for task in prange(tasks):
        r0, r1, lo, hi = _span(task, per, nb, rows, k)
        for row in range(r0, r1):
            t = row % lr.shape[0]
            a = (p[row, lo:hi], g[row, lo:hi], v[row, lo:hi], lr[t], l2[t], gamma[t], decay[t])
            if nesterov:
                _nesterov_run(*a)
            else:
                _heavy_ball_run(*a)


# The same three updates with a coefficient per element: a stack's row of T*K elements holds
# T trials of K, so its coefficients are each trial's value repeated K times. One call per row
# keeps the element loop long (a 16-trial W1 row: 800 elements rather than 16 calls of 50).
@_run
def _sgd_rows_run(p, g, lr, l2, decay):
    for j in range(p.shape[0]):
        pj = p[j]
        gt = g[j] + l2[j] * pj
        q = pj - decay[j] * pj
        p[j] = q - lr[j] * gt


@_run
def _heavy_ball_rows_run(p, g, v, lr, l2, gamma, decay):
    for j in range(p.shape[0]):
        pj = p[j]
        gt = g[j] + l2[j] * pj
        q = pj - decay[j] * pj
        vj = gamma[j] * v[j] + lr[j] * gt
        v[j] = vj
        p[j] = q - vj


@_run
def _nesterov_rows_run(p, g, v, lr, l2, gamma, decay):
    for j in range(p.shape[0]):
        pj = p[j]
        gt = g[j] + l2[j] * pj
        q = pj - decay[j] * pj
        vj = gamma[j] * v[j] + lr[j] * gt
        v[j] = vj
        p[j] = q - (gamma[j] * vj + lr[j] * gt)


@_kernel
def update_sgd_rows(p, g, lr, l2, decay):
    """p, g (R, T*K); coefficient rows (T*K,): each trial's value repeated K times."""
    rows, k = p.shape
    per, nb, tasks = _tasks(rows, k)
    for task in prange(tasks):
        r0, r1, lo, hi = _span(task, per, nb, rows, k)
        for row in range(r0, r1):
            _sgd_rows_run(p[row, lo:hi], g[row, lo:hi], lr[lo:hi], l2[lo:hi], decay[lo:hi])


@_kernel
def update_momentum_rows(p, g, v, lr, l2, gamma, decay, nesterov):
    """p, g, v (R, T*K); coefficient rows (T*K,); heavy-ball or Nesterov momentum."""
    rows, k = p.shape
    per, nb, tasks = _tasks(rows, k)
    for task in prange(tasks):
        r0, r1, lo, hi = _span(task, per, nb, rows, k)
        for row in range(r0, r1):
            a = (p[row, lo:hi], g[row, lo:hi], v[row, lo:hi], lr[lo:hi], l2[lo:hi],
                 gamma[lo:hi], decay[lo:hi])  # fmt: skip
            if nesterov:
                _nesterov_rows_run(*a)
            else:
                _heavy_ball_rows_run(*a)


@njit(inline="always")
def _relu(x, zero):
    # NumPy's maximum(x, 0) propagates NaN and gives +0 for -0: so does this
    return x if (x > zero or x != x) else zero


@_run
def _relu_bias_run(s, b, zero):
    for k in range(s.shape[0]):
        s[k] = _relu(s[k] + b[k], zero)


@_run
def _relu_bias_dropout_run(s, b, u, p, scale, zero):
    for k in range(s.shape[0]):
        # multiply by 0 rather than store 0: a NaN stays NaN, as in the reference
        m = scale if u[k] >= p else zero
        s[k] = _relu(s[k] + b[k], zero) * m


@_kernel
def relu_bias(s, b, zero):
    """s (N*T, H) in place: max(s + b[t], 0), b (T, H)."""
    for row in prange(s.shape[0]):
        _relu_bias_run(s[row], b[row % b.shape[0]], zero)


@_kernel
def relu_bias_dropout(s, b, u, p, scale, zero):
    """s (N*T, H) in place: max(s + b[t], 0) * (scale[t] if u[n, k] >= p[t] else 0)."""
    t_ = b.shape[0]
    for row in prange(s.shape[0]):
        n = row // t_
        t = row - n * t_
        _relu_bias_dropout_run(s[row], b[t], u[n], p[t], scale[t], zero)


@_run
def _relu_backward_run(dhd, hd, out, zero):
    for k in range(hd.shape[0]):
        out[k] = dhd[k] if hd[k] > zero else zero


@_run
def _relu_backward_scaled_run(dhd, hd, scale, out, zero):
    for k in range(hd.shape[0]):
        out[k] = dhd[k] * scale if hd[k] > zero else zero


@_kernel
def relu_backward(dhd, hd, out, zero):
    """out[n, t, k] = dhd[t, n, k] if hd[n, t, k] > 0 else 0; out may be hd itself."""
    n_, t_, _ = hd.shape
    for row in prange(n_ * t_):
        n = row // t_
        t = row - n * t_
        _relu_backward_run(dhd[t, n], hd[n, t], out[n, t], zero)


@_kernel
def relu_backward_scaled(dhd, hd, scale, out, zero):
    """out[n, t, k] = dhd[t, n, k] * scale[t] if hd[n, t, k] > 0 else 0."""
    n_, t_, _ = hd.shape
    for row in prange(n_ * t_):
        n = row // t_
        t = row - n * t_
        _relu_backward_scaled_run(dhd[t, n], hd[n, t], scale[t], out[n, t], zero)


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


@_run
def in_range(a, lo, hi):
    """Whether lo <= a[i] <= hi for every element of a (N,) int64 (the indices a kernel
    will use unchecked)."""
    for i in range(a.shape[0]):
        if a[i] < lo or a[i] > hi:
            return False
    return True


@_run
def _copy_run(src, out):
    for j in range(src.shape[0]):
        out[j] = src[j]


@_kernel
def gather_rows(x, idx, out):
    """out[n] = x[idx[n]] (rows), the rows copied in parallel."""
    for n in prange(idx.shape[0]):
        _copy_run(x[idx[n]], out[n])


@_run
def _standardize_run(x, mean, std, out):
    for j in range(x.shape[0]):
        out[j] = (x[j] - mean[j]) / std[j]  # uint8 - float: exact in the float dtype


@_kernel
def standardize(x, mean, std, out):
    """out[n] = (x[n] in out's dtype - mean) / std, row by row; mean, std (D,) in that dtype."""
    for n in prange(x.shape[0]):
        _standardize_run(x[n], mean, std, out[n])


COLS = 256  # columns per task of column_sums


@_run
def _column_sums_run(row, s, q):
    for j in range(row.shape[0]):
        v = np.int64(row[j])
        s[j] += v
        q[j] += v * v


@_kernel
def column_sums(x, s, q):
    """s[j] += sum_n x[n, j], q[j] += sum_n x[n, j]^2 in int64 (exact: any order, any split)."""
    n_, d_ = x.shape
    for task in prange((d_ + COLS - 1) // COLS):
        lo = task * COLS
        hi = min(lo + COLS, d_)
        for n in range(n_):
            _column_sums_run(x[n, lo:hi], s[lo:hi], q[lo:hi])


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


# --- normal and uniform draws (float32) from a PCG64 state: NumPy's own algorithms, inlined -
# NumPy's Generator.standard_normal(dtype=float32) is the ziggurat of numpy/random/src/
# distributions (random_standard_normal_f) over PCG64's next_uint32, one call through a function
# pointer per 32 bits. The same two algorithms with the generator's state in registers give the
# same bits 3x faster (153,600 draws: 0.63 ms against 1.87 ms; table4-140's input noise).
# The ziggurat tables are the ones numba ports from NumPy (numba.np.random._constants; tests
# compare the draws with NumPy's bit for bit, and kernels.py falls back to NumPy without them).
try:
    from numba.np.random import _constants as zig

    ZIGGURAT = (zig.ki_float, zig.wi_float, zig.fi_float, zig.ziggurat_nor_r_f,
                zig.ziggurat_nor_inv_r_f)  # fmt: skip
except ImportError:  # another numba's layout: kernels.standard_normal_f32 takes NumPy's draw
    ZIGGURAT = None

# PCG64's 128-bit multiplier (PCG_DEFAULT_MULTIPLIER_128), as two 64-bit halves
PCG_MULT_HI = np.uint64(2549297995355413924)
PCG_MULT_LO = np.uint64(4865540595714422341)
LOW32 = np.uint64(0xFFFFFFFF)


@intrinsic
def _mulhi64(typingctx, a, b):
    """The high 64 bits of the 128-bit product of two uint64: one widening multiply in LLVM
    IR (numba has no 128-bit integer; the same from 32-bit halves took four multiplies, and
    multiplies bound the PCG64 step)."""

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        x, y = builder.zext(args[0], wide), builder.zext(args[1], wide)
        return builder.trunc(builder.lshr(builder.mul(x, y), ir.Constant(wide, 64)),
                             ir.IntType(64))  # fmt: skip

    return types.uint64(types.uint64, types.uint64), codegen


@njit(inline="always")
def _pcg64_step(s_hi, s_lo, i_hi, i_lo):
    """PCG64 (XSL-RR 128/64): state = state * MULT + inc mod 2^128, then the output of the new
    state. Returns (new state hi, lo, 64-bit output)."""
    lo = s_lo * PCG_MULT_LO
    hi = _mulhi64(s_lo, PCG_MULT_LO) + s_lo * PCG_MULT_HI + s_hi * PCG_MULT_LO
    nlo = lo + i_lo
    nhi = hi + i_hi + np.uint64(nlo < lo)
    x = nhi ^ nlo
    rot = nhi >> np.uint64(58)
    return nhi, nlo, (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))


@njit(inline="always")
def _next32(st):
    """NumPy's pcg64_next32 on st = [state hi, state lo, inc hi, inc lo, has_uint32, uinteger]:
    the low half of a 64-bit output now, its high half at the next call."""
    if st[4] != 0:
        st[4] = np.uint64(0)
        return st[5]
    st[0], st[1], out = _pcg64_step(st[0], st[1], st[2], st[3])
    st[4], st[5] = np.uint64(1), out >> np.uint64(32)
    return out & LOW32


@njit(inline="always")
def _next_float(st):
    return np.float32(np.float32(_next32(st) >> np.uint64(8)) * np.float32(1.0 / 16777216.0))


@_run
def _normal_rare(st, idx, rabs, x, fi, r_f, inv_r_f):
    """The 0.7% branch of the ziggurat (the tail at idx 0, or the wedge test): (accepted, x)."""
    if idx == 0:
        while True:  # 1 - U for log1p, as NumPy (its GH 13361)
            xx = np.float32(-inv_r_f * np.log1p(-_next_float(st)))
            yy = np.float32(-np.log1p(-_next_float(st)))
            if np.float32(yy + yy) > np.float32(xx * xx):
                r = np.float32(r_f + xx)
                return True, -r if (rabs >> np.uint64(8)) & np.uint64(1) else r
    u = _next_float(st)
    x64 = np.float64(x)  # NumPy compares with exp(-0.5 * x * x) in double (C's promotion)
    return np.float64((fi[idx - 1] - fi[idx]) * u + fi[idx]) < np.exp(-0.5 * x64 * x64), x


@_run
def normal_f32(st, out, ki, wi, fi, r_f, inv_r_f):
    """out (M,) float32 = the next M standard normals of the PCG64 state st (advanced, see
    _next32), in the order and bits of NumPy's Generator.standard_normal(M, dtype=float32)."""
    s_hi, s_lo, i_hi, i_lo, has, buf = st[0], st[1], st[2], st[3], st[4], st[5]
    i = 0
    while i < out.shape[0]:
        if has != 0:  # _next32 with the state in locals (the common path stays in registers)
            has, r = np.uint64(0), buf
        else:
            s_hi, s_lo, nxt = _pcg64_step(s_hi, s_lo, i_hi, i_lo)
            has, buf, r = np.uint64(1), nxt >> np.uint64(32), nxt & LOW32
        idx = r & np.uint64(0xFF)
        rabs = (r >> np.uint64(9)) & np.uint64(0x7FFFFF)
        # NumPy negates x when bit 8 is set; a multiply by -1 is exact (same bits, -0.0 too)
        # and takes no branch: that random 50/50 branch mispredicted half the draws, and
        # the draw took 10.5 ns with it, 5.0 ns without (AMD EPYC, 153,600 draws).
        sign = np.float32(1.0) - np.float32(2.0) * np.float32((r >> np.uint64(8)) & np.uint64(1))
        x = np.float32(np.float32(rabs) * wi[idx]) * sign
        if rabs >= ki[idx]:
            st[0], st[1], st[4], st[5] = s_hi, s_lo, has, buf
            ok, x = _normal_rare(st, idx, rabs, x, fi, r_f, inv_r_f)
            s_hi, s_lo, has, buf = st[0], st[1], st[4], st[5]
            if not ok:
                continue
        out[i] = x
        i += 1
    st[0], st[1], st[4], st[5] = s_hi, s_lo, has, buf


@njit(inline="always")
def _unit_f32(r, scale):
    """NumPy's next_float: the top 24 of 32 random bits times 2^-24 (exact)."""
    return np.float32(np.int32(r >> np.uint64(8))) * scale


@_run
def uniform_f32(st, out):
    """out (M,) float32 = the next M uniforms in [0, 1) of the PCG64 state st (advanced, see
    _next32), in the order and bits of NumPy's Generator.random(M, dtype=float32): 32-bit
    draws, the low half of each 64-bit output first, then its high half."""
    s_hi, s_lo, i_hi, i_lo, has, buf = st[0], st[1], st[2], st[3], st[4], st[5]
    scale = np.float32(1.0 / 16777216.0)
    n, i = out.shape[0], 0
    if has != 0 and n > 0:  # the pending high half of the last output comes first
        out[0] = _unit_f32(buf, scale)
        has, i = np.uint64(0), 1
    while i < n:
        s_hi, s_lo, nxt = _pcg64_step(s_hi, s_lo, i_hi, i_lo)
        buf = nxt >> np.uint64(32)  # NumPy keeps the high half even once it is used
        out[i] = _unit_f32(nxt & LOW32, scale)
        if i + 1 < n:
            out[i + 1] = _unit_f32(buf, scale)
        else:  # an odd end: the high half waits for the next draw, as in NumPy
            has = np.uint64(1)
        i += 2
    st[0], st[1], st[4], st[5] = s_hi, s_lo, has, buf


ALL = (update_sgd, update_momentum, update_sgd_rows, update_momentum_rows, relu_bias,
       relu_bias_dropout, relu_backward, relu_backward_scaled, softmax_xent, gather_rows,
       gather_augment, standardize, column_sums, normal_f32, uniform_f32, in_range)  # fmt: skip
