"""Element-wise passes of a training step, compiled with numba, each beside its NumPy reference.

Why numba: a NumPy expression such as the optimizer update (L2 gradient, weight decay,
momentum, step) makes several passes over a 50 MB weight matrix, each allocating a temporary,
on one core. A compiled loop reads and writes each element once, on every core the command
was given (`set_threads`). The ReLU/dropout, softmax, gather and standardisation passes gain
the same way, and so do the float32 normal draws of input noise and the dropout masks'
uniforms (NumPy's own algorithms and bits, with the generator's state in registers). (Each
element loop is its own compiled 1-D function, called from the parallel task: written inline
in the prange body it was not vectorised; see _kernels_nb._run.)

Why the references stay: `<name>_ref` is the plain array expression. It takes its module from
its inputs, so it is the path for CuPy arrays (and for NumPy arrays that are not C-contiguous,
or when numba is not installed), and it is what tests/test_kernels.py checks each kernel
against (within 2 ulp; the gather bitwise).

Determinism: every kernel is element-wise or row-wise. The parallel loop hands out independent
rows and no reduction is split over threads (the per-row losses of `softmax_xent` are summed
by NumPy after the loop), so results are bitwise the same whatever the thread count. Float
arithmetic stays in the arrays' dtype (float32 or float64), in the reference's order of
operations, without fastmath (no reassociation, no fused multiply-add).

Caching: the kernels are `@njit(cache=True)` functions of cifar2l/_kernels_nb.py, imported on
first use (so `import cifar2l.kernels` stays cheap and the CuPy path never imports numba).
numba 0.68 picks the first cache locator that applies (numba/core/caching.py,
CacheImpl._locator_classes): `NUMBA_CACHE_DIR` if set (UserProvidedCacheLocator); else the
`__pycache__` folder beside _kernels_nb.py if it can be created and written
(InTreeCacheLocator); else, as in a non-editable install into a read-only site-packages, a
user-wide folder, $XDG_CACHE_HOME/numba or ~/.cache/numba on Linux, ~/Library/Caches/numba on
macOS (UserWideCacheLocator, through numba's appdirs). If none is writable, numba refuses
cache=True when the module is imported ("no locator available"); _kernels_nb then compiles
without a cache, in every process. An entry is keyed by the source file's content hash (not
its mtime), the signature, the CPU and the numba version. A cold compile of all kernels for
one dtype takes ~9 s (2 cores), a load from the cache ~0.6 s (make bench, 2026-12-01).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

PIXELS = 3 * 32 * 32  # a CIFAR row: the R, G, B planes of a 32x32 image
MAX_SHIFT = 31  # np.pad mode="reflect" cannot pad an axis by more than its length - 1

_UNSET = object()
_nb_module = _UNSET  # cifar2l._kernels_nb once loaded, None without numba, or why it failed
_load_lock = threading.Lock()
_warming = threading.Event()  # set while warm_up loads the compiled kernels
_threads: int | None = None  # the count set_threads asked for
PARALLEL_MIN = 1 << 20  # elements: smaller passes run on one thread
FLOATS = "fd"  # dtype.char of float32 and float64, the dtypes the kernels are compiled for
_applied = threading.local()  # numba's thread count is per calling thread: apply it in each


def array_module(x):
    """numpy, or cupy for CuPy arrays (imported only when such an array is passed)."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


# --- numba loading and threads -----------------------------------------------------------


def _load():
    """The numba kernels module (imported once), or None when numba is not installed."""
    global _nb_module
    loaded = _nb_module
    if loaded is not _UNSET and not isinstance(loaded, Exception):
        return loaded  # every kernel call comes here: no lock once it is loaded
    with _load_lock:  # preload's thread and the main one: one import, one outcome for both
        if _nb_module is _UNSET:
            try:
                _nb_module = _import_kernels()
            except Exception as e:  # kept: importing the half-imported module again would
                _nb_module = e  # fail differently ("cannot import name")
    if isinstance(_nb_module, Exception):
        raise _nb_module
    return _nb_module


def _import_kernels():
    try:
        from . import _kernels_nb
    except ModuleNotFoundError as exc:
        if exc.name != "numba":
            raise
        return None
    except (ValueError, ImportError) as e:  # e.g. NUMBA_NUM_THREADS=0, at decoration
        raise _numba_setting_error(e) from None
    _start_numba(_kernels_nb.numba)
    return _kernels_nb


def _start_numba(numba) -> None:
    """Start numba's thread pool now: a bad NUMBA_THREADING_LAYER raises a ValueError there, at
    the first kernel, which a caller could take for bad data (the decoded-data cache would be
    thrown away) and which is the user's setting, not a bug."""
    try:
        numba.get_num_threads()  # launches the threading layer
    except (ValueError, ImportError, RuntimeError) as e:
        raise _numba_setting_error(e) from None


def _numba_setting_error(e: Exception):
    """A ConfigError naming the NUMBA_* variables that are set (the likely cause)."""
    import os

    from .errors import ConfigError

    names = ", ".join(sorted(k for k in os.environ if k.startswith("NUMBA_"))) or "NUMBA_*"
    return ConfigError(f"{names}: numba cannot start: {e}")


def have_numba() -> bool:
    """Whether NumPy arrays take the compiled path (numba importable)."""
    return _load() is not None


def importing() -> bool:
    """Whether another thread is importing or warming up the kernels right now (preload.py's):
    the data preparation takes the bitwise-equal references meanwhile rather than wait for
    numba (a kernel's first call waits while another thread loads one from the cache)."""
    return (_nb_module is _UNSET and _load_lock.locked()) or _warming.is_set()


def _apply_threads(nb, n: int | None) -> None:
    """numba's thread count for this Python thread (numba keeps it per thread)."""
    if n is not None and getattr(_applied, "threads", None) != n:
        nb.numba.set_num_threads(min(n, nb.numba.config.NUMBA_NUM_THREADS))
        _applied.threads = n


def set_threads(n: int) -> None:
    """Run the kernels on n threads (capped at numba's NUMBA_NUM_THREADS), the BLAS count.

    Does not import numba: the count is applied when the kernels load, and again in any other
    Python thread that calls a kernel (numba's setting is thread-local)."""
    global _threads
    if int(n) < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    _threads = int(n)


def _compiled(dtype, *arrays):
    """The kernels module if numba is there and every array is a C-contiguous NumPy array
    (of dtype float32/float64 when dtype is given), else None: take the reference.

    A kernel over fewer than PARALLEL_MIN elements (the first array) runs on one thread: waking
    the pool would cost more than the pass (a 50-unit layer's update is ~10 us of work)."""
    if dtype is not None and dtype.char not in FLOATS:
        return None
    for a in arrays:
        if a is not None and not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
            return None
    nb = _load()
    if nb is not None:
        many = _threads or nb.numba.config.NUMBA_NUM_THREADS
        _apply_threads(nb, 1 if arrays[0].size < PARALLEL_MIN else many)
    return nb


def _vec(a):
    return np.ascontiguousarray(a)


# --- argument checks (the kernels do no bounds checks: shapes are checked before) ---------


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _ndim(name: str, a, n: int, axes: str) -> None:
    """a.ndim == n, or a ValueError naming the axes: '{name} must be {axes}, got shape ...'
    (the message is built only on failure: the checks run at every step)."""
    if a.ndim != n:
        raise ValueError(f"{name} must be {axes}, got shape {tuple(a.shape)}")


def _dtypes(dtype, **arrays) -> None:
    for name, a in arrays.items():
        if a is not None and a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, expected {np.dtype(dtype)}")


def _shapes(shape, **arrays) -> None:
    shape = tuple(shape)
    for name, a in arrays.items():
        if a is not None and a.shape != shape:
            raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {shape}")


def _in_range(name: str, a, lo: int, hi: int, nb=None) -> None:
    """lo <= a <= hi (NumPy arrays only: checking a CuPy array would wait for the device).
    With the kernels module nb, a (N,) int64 array is checked in one compiled pass (NumPy's
    min and max: two reductions, ~6 us for a batch's indices, at every step)."""
    if not isinstance(a, np.ndarray) or not a.size:
        return
    if nb is not None and a.dtype == np.int64 and a.ndim == 1 and a.flags.c_contiguous:
        ok = nb.in_range(a, lo, hi)
    else:
        ok = not (a.min() < lo or a.max() > hi)
    if not ok:
        raise ValueError(f"{name} has values outside [{lo}, {hi}]")


# --- 1. optimizer update ------------------------------------------------------------------


def update_ref(p, g, v, lr, l2, gamma, decay, nesterov: bool) -> None:
    """The reference of `update`: the same expression with temporaries (g is not modified)."""

    def col(a):
        return a[None, :, None]

    gt = g + col(l2) * p
    q = p - col(decay) * p
    if v is None:
        p[...] = q - col(lr) * gt
        return
    v[...] = col(gamma) * v + col(lr) * gt
    p[...] = q - (col(gamma) * v + col(lr) * gt) if nesterov else q - v


def update(p, g, v, lr, l2, gamma, decay, nesterov: bool) -> None:
    """One optimizer step in place on p (R, T, K) and the velocity v (R, T, K), or v = None
    for plain SGD; g (R, T, K) is the data gradient and is not modified. lr, l2 (2 lambda,
    already doubled), gamma (ignored without v) and decay (lr * weight decay): (T,) vectors in
    p's dtype. Per element of trial t, in this order:

        gt = g + l2 p;  q = p - decay p
        SGD:  p = q - lr gt
        momentum: v = gamma v + lr gt;  p = q - (gamma v + lr gt) if nesterov else q - v
    """
    if not _plain_update(p, g, v, (lr, l2, decay) if v is None else (lr, l2, gamma, decay)):
        _check_update(p, g, v, lr, l2, gamma, decay)
    nb = _compiled(p.dtype, p, g, v)
    if nb is None:
        return update_ref(p, g, v, lr, l2, gamma, decay, nesterov)
    r, t, k = p.shape
    if t > 1:
        return _update_rows(nb, p, g, v, (lr, l2, gamma, decay), nesterov)
    rows = (1, r * k)  # one trial: one long row, split into BLOCK-element tasks
    v2 = None if v is None else v.reshape(rows)
    _update_row(nb, p.reshape(rows), g.reshape(rows), v2, _vec(lr), _vec(l2),
                None if v is None else _vec(gamma), _vec(decay), nesterov)  # fmt: skip


def _update_row(nb, p, g, v, lr, l2, gamma, decay, nesterov: bool) -> None:
    """The compiled update of one trial's parameter as a (1, size) row (arguments checked)."""
    if v is None:
        nb.update_sgd(p, g, lr, l2, decay)
    else:
        nb.update_momentum(p, g, v, lr, l2, gamma, decay, bool(nesterov))


@dataclass(frozen=True)
class UpdatePlan:
    """`update` of fixed parameters of one network (T = 1), checked once (plan_update): each
    step then passes only the gradients and the (1,) rate and decay vectors (run_plan). The
    per-call checks and dispatch of a step's four `update` calls cost ~80 us a step on a
    2-core machine, about what a 50-unit network's own W1 pass costs."""

    p: tuple  # (1, size) views of the parameters
    v: tuple | None  # the same of the velocities, or None (SGD)
    shapes: tuple  # each parameter's own shape (its gradient's)
    l2: tuple  # per parameter (1,) vectors in the dtype: 2 lambda (weights) or 0
    gamma: np.ndarray  # (1,) momentum
    decays: tuple  # per parameter: whether weight decay applies (the weights)
    zero: np.ndarray  # (1,) 0 in the dtype: the decay of the others
    nb: object  # the kernels module


def plan_update(ps, vs, l2s, gamma, decays, shapes) -> UpdatePlan | None:
    """The plan of `update` over parameters ps ((R, 1, K) arrays, all of one float dtype) with
    velocities vs (or None), per-parameter l2 (1,) vectors, gamma (1,), which parameters
    decay and the shape each one's gradient comes in (its size: R * K); None where the
    compiled path does not apply (call `update`). Checked as `update` checks its arguments."""
    vs = [None] * len(ps) if vs is None else vs
    dt = ps[0].dtype
    for p, v, l2 in zip(ps, vs, l2s, strict=True):
        _check_update(p, p, v, gamma, l2, gamma, gamma)  # gamma: the (1,) shape of lr, decay
        if p.shape[1] != 1 or _compiled(dt, p, v, l2, gamma) is None or p.dtype != dt:
            return None
    sizes = [p.size for p in ps]
    _require(sizes == [int(np.prod(s)) for s in shapes],
             f"gradient shapes {list(shapes)} do not match the parameters' sizes {sizes}")
    views = (None if vs[0] is None else tuple(v.reshape(1, -1) for v in vs))
    return UpdatePlan(tuple(p.reshape(1, -1) for p in ps), views, tuple(map(tuple, shapes)),
                      tuple(_vec(a) for a in l2s), _vec(gamma), tuple(decays),
                      np.zeros(1, dt), _load())  # fmt: skip


def run_plan(plan: UpdatePlan, gs, rate, decay, nesterov: bool) -> bool:
    """`update` of each planned parameter with gradient gs[i] (its shape, C-contiguous, in its
    dtype), rate and decay (1,) vectors in that dtype (decay where the plan says, 0
    elsewhere). False, with nothing done, when an argument is not of that kind."""
    dt = plan.gamma.dtype
    for a in (rate, decay):
        if type(a) is not np.ndarray or a.shape != (1,) or a.dtype != dt:
            return False
    for g, shape in zip(gs, plan.shapes, strict=True):
        if not (type(g) is np.ndarray and g.shape == shape and g.dtype == dt):
            return False
        if not g.flags.c_contiguous:
            return False
    nb = plan.nb
    many = _threads or nb.numba.config.NUMBA_NUM_THREADS
    for i, g in enumerate(gs):
        p, v = plan.p[i], None if plan.v is None else plan.v[i]
        _apply_threads(nb, 1 if p.size < PARALLEL_MIN else many)
        _update_row(nb, p, g.reshape(p.shape), v, rate, plan.l2[i], plan.gamma,
                    decay if plan.decays[i] else plan.zero, nesterov)  # fmt: skip
    return True


def _plain_update(p, g, v, vectors) -> bool:
    """True for the usual call (four times a step): p (R, T, K), g and v of its shape and
    every vector (T,), all in p's dtype. It only ever says yes where _check_update would
    pass; anything else goes through _check_update, which names what is wrong."""
    shape, dtype = p.shape, p.dtype
    if len(shape) != 3 or g.shape != shape or g.dtype != dtype:
        return False
    if v is not None and (v.shape != shape or v.dtype != dtype):
        return False
    for a in vectors:
        if a is None or a.shape != shape[1:2] or a.dtype != dtype:
            return False
    return True


def _check_update(p, g, v, lr, l2, gamma, decay) -> None:
    _ndim("p", p, 3, "(R, T, K)")
    _require(v is None or gamma is not None, "momentum (v given) needs gamma")
    gamma_used = None if v is None else gamma
    _shapes(p.shape, g=g, v=v)
    _shapes(p.shape[1:2], lr=lr, l2=l2, gamma=gamma_used, decay=decay)
    _dtypes(p.dtype, g=g, v=v, lr=lr, l2=l2, gamma=gamma_used, decay=decay)


def _update_rows(nb, p, g, v, vectors, nesterov: bool) -> None:
    """`update` of a stack (T > 1): rows of T*K elements with per-element coefficient rows."""
    r, t, k = p.shape
    rows = (r, t * k)
    lr, l2, gamma, decay = (None if a is None else np.repeat(a, k) for a in vectors)
    p2, g2 = p.reshape(rows), g.reshape(rows)
    if v is None:
        nb.update_sgd_rows(p2, g2, lr, l2, decay)
    else:
        nb.update_momentum_rows(p2, g2, v.reshape(rows), lr, l2, gamma, decay, bool(nesterov))


# --- 2. ReLU + bias + inverted dropout, forward --------------------------------------------


def relu_dropout_forward_ref(s, b, u, p, scale):
    """The reference of `relu_dropout_forward` (in place on s, returns s)."""
    xp = array_module(s)
    xp.add(s, b, out=s)
    xp.maximum(s, 0, out=s)  # propagates NaN
    if u is not None:
        keep = xp.asarray(u)[:, None, :] >= xp.asarray(p)[None, :, None]
        s *= (keep * xp.asarray(scale)[None, :, None]).astype(s.dtype)  # scale or 0
    return s


def _check_forward(s, b, u, p, scale) -> None:
    _ndim("s", s, 3, "(N, T, H)")
    n, t, h = s.shape
    _shapes((t, h), b=b)
    _dtypes(s.dtype, b=b)
    if u is not None:
        _require(p is not None and scale is not None, "dropout draws u need p and scale")
        _shapes((n, h), u=u)
        _shapes((t,), p=p, scale=scale)
        _dtypes(np.float32, u=u, p=p)
        _dtypes(s.dtype, scale=scale)


def relu_dropout_forward(s, b, u, p, scale):
    """h = max(s + b[t], 0), times scale[t] where u[n, k] >= p[t] and times 0 elsewhere,
    written over s (N, T, H) C-contiguous and returned. b (T, H) in s's dtype; u (N, H)
    float32 uniform draws, or None for no dropout (p and scale are then ignored); p (T,)
    float32 drop probabilities (compared in float32); scale (T,) = 1/(1-p) in s's dtype.
    NaN propagates as in NumPy's maximum (a dropped NaN stays NaN: NaN * 0)."""
    _check_forward(s, b, u, p, scale)
    nb = _compiled(s.dtype, s, b, u)
    if nb is None:
        return relu_dropout_forward_ref(s, b, u, p, scale)
    n, t, h = s.shape
    zero = s.dtype.type(0)
    if u is None:
        nb.relu_bias(s.reshape(n * t, h), b, zero)
    else:
        nb.relu_bias_dropout(s.reshape(n * t, h), b, u, _vec(p), _vec(scale), zero)
    return s


# --- 3. ReLU + dropout, backward ----------------------------------------------------------


def relu_dropout_backward_ref(dhd, hd, scale, out):
    """The reference of `relu_dropout_backward`."""
    xp = array_module(hd)
    d = dhd.transpose(1, 0, 2)
    if scale is not None:
        d = d * xp.asarray(scale)[None, :, None]
    out[...] = xp.where(hd > 0, d, 0)
    return out


def relu_dropout_backward(dhd, hd, scale, out):
    """out[n, t, k] = dhd[t, n, k] * scale[t] where hd[n, t, k] > 0, else 0; returns out.

    dhd (T, N, H): the gradient w.r.t. the dropped-out hidden layer, as the batched second
    layer gives it; hd (N, T, H): relu_dropout_forward's output; scale (T,) in hd's dtype, or
    None (no dropout: no multiply); out (N, T, H), written, may be hd itself (each element of
    hd is read before it is overwritten). All C-contiguous for the compiled path."""
    _ndim("hd", hd, 3, "(N, T, H)")
    n, t, h = hd.shape
    _shapes((t, n, h), dhd=dhd)
    _shapes(hd.shape, out=out)
    _shapes((t,), scale=scale)
    _dtypes(hd.dtype, dhd=dhd, out=out, scale=scale)
    nb = _compiled(hd.dtype, dhd, hd, out)
    if nb is None:
        return relu_dropout_backward_ref(dhd, hd, scale, out)
    zero = hd.dtype.type(0)
    if scale is None:
        nb.relu_backward(dhd, hd, out, zero)
    else:
        nb.relu_backward_scaled(dhd, hd, _vec(scale), out, zero)
    return out


# --- 4. softmax cross-entropy with label smoothing -----------------------------------------


def _mean_rows(row_loss):
    """(T, N) float64 -> (T,): the same NumPy reduction on both paths (add.reduce is what
    ndarray.sum calls, without its Python wrapper; CuPy's sum for its arrays)."""
    if isinstance(row_loss, np.ndarray):
        return np.add.reduce(row_loss, axis=1) / row_loss.shape[1]
    return row_loss.sum(axis=1) / row_loss.shape[1]


def softmax_xent_ref(scores, y, smoothing):
    """The reference of `softmax_xent`, row by row in float64 like the kernel."""
    xp = array_module(scores)
    t, n, c = scores.shape
    y = xp.asarray(y)
    s = scores.astype(xp.float64)
    z = s - s.max(axis=2, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=2, keepdims=True))
    e = xp.asarray(smoothing).astype(xp.float64)[:, None]  # (T, 1)
    rows = xp.arange(n)
    row_loss = -((1 - e) * logp[:, rows, y] + e / c * logp.sum(axis=2))
    ds = xp.exp(logp) - (e / c)[:, :, None]
    ds[:, rows, y] -= 1 - e
    scores[...] = ds / n  # the only rounding to the scores' dtype
    return _mean_rows(row_loss), scores


def softmax_xent(scores, y, smoothing):
    """Per-trial mean (label-smoothed) cross-entropy and its gradient.

    scores (T, N, C) C-contiguous, float32 or float64, overwritten with dscores, the gradient
    of each trial's mean loss; y (N,) integer labels in [0, C); smoothing (T,) e_t in scores'
    dtype (0: none; the target is 1 - e_t on the label plus e_t / C on every class). Each row
    is computed in float64 and only dscores are rounded to the dtype. Returns (losses (T,)
    float64, of the inputs' array module, bitwise independent of the thread count; scores)."""
    _ndim("scores", scores, 3, "(T, N, C)")
    t, n, c = scores.shape
    _shapes((n,), y=y)
    _shapes((t,), smoothing=smoothing)
    _dtypes(scores.dtype, smoothing=smoothing)
    nb = _compiled(scores.dtype, scores)
    if nb is None:
        return softmax_xent_ref(scores, y, smoothing)
    y64 = np.ascontiguousarray(y, dtype=np.int64)
    _in_range("y", y64, 0, c - 1, nb)
    row_loss = np.empty((t, n))
    nb.softmax_xent(scores, y64, _vec(smoothing), row_loss)
    return _mean_rows(row_loss), scores


# --- 5. gather ----------------------------------------------------------------------------


def gather_rows_ref(x, idx, out):
    """The reference of `gather_rows`. NumPy needs mode="clip": with the default "raise" it
    buffers `out` and runs 3x slower (the indices are checked before)."""
    xp = array_module(x)
    if xp is np:
        return np.take(x, idx, axis=0, out=out, mode="clip")
    return xp.take(x, xp.asarray(idx), axis=0, out=out)


def gather_rows(x, idx, out):
    """out[i] = x[idx[i]]: the batch rows (N, D) of x (M, D), written into out and returned;
    idx (N,) int in [0, M). The compiled path copies the rows on several threads (a batch
    of 100 rows from a 45,000-row split: half the time of np.take)."""
    _ndim("x", x, 2, "(M, D)")
    _shapes((len(idx), x.shape[1]), out=out)
    _dtypes(x.dtype, out=out)
    idx64 = np.ascontiguousarray(idx, dtype=np.int64)
    nb = _compiled(None, out, x)  # the size of the work is out's
    _in_range("idx", idx64, 0, x.shape[0] - 1, nb)
    if nb is None:
        return gather_rows_ref(x, idx64, out)
    _require(not np.may_share_memory(x, out), "out must not overlap x")
    nb.gather_rows(x, idx64, out)
    return out


# --- 6. gather + translate + flip ----------------------------------------------------------


def gather_augment_ref(x, idx, flips, dy, dx, k: int, reflect: bool, out):
    """The reference of `gather_augment`: pad the gathered batch, then one fancy-index gather."""
    xp = array_module(x)
    idx, flips, dy, dx = (np.asarray(a) for a in (idx, flips, dy, dx))
    n = idx.shape[0]
    img = x[xp.asarray(idx)].reshape(n, 3, 32, 32)
    padded = xp.pad(img, ((0, 0), (0, 0), (k, k), (k, k)),
                    mode="reflect" if reflect else "constant")  # fmt: skip
    j = np.arange(32)
    rows = xp.asarray((k + dy)[:, None] + j)  # (N, 32): padded source row of each output row
    cols = xp.asarray((k + dx)[:, None] + np.where(flips[:, None], 31 - j, j))
    gathered = padded[xp.arange(n)[:, None, None, None], xp.arange(3)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip
    out[...] = gathered.reshape(n, PIXELS)
    return out


def _check_gather(x, idx, flips, dy, dx, k, out) -> None:
    _require(x.ndim == 2 and x.shape[1] == PIXELS, f"x must be (M, {PIXELS})")
    n = len(idx)
    _shapes((n,), idx=idx, flips=flips, dy=dy, dx=dx)
    _shapes((n, PIXELS), out=out)
    _dtypes(x.dtype, out=out)
    _require(0 <= k <= MAX_SHIFT, f"translation k must be in [0, {MAX_SHIFT}], got {k}")


def gather_augment(x, idx, flips, dy, dx, k: int, reflect: bool, out):
    """out[i] = image x[idx[i]] shifted by (dy[i], dx[i]) pixels, then mirrored left-right
    where flips[i]; returns out.

    x (M, 3072) C-contiguous rows, the R, G, B 32x32 planes; idx (N,) int row indices in
    [0, M); flips (N,) bool; dy, dx (N,) int in [-k, k]; k translation range, 0 <= k <= 31;
    reflect: fill the uncovered border by reflection (np.pad mode="reflect": no edge repeat),
    else with zeros; out (N, 3072) in x's dtype, written, not overlapping x. Bitwise equal to
    padding the batch by k and gathering (the reference), without building the padded copy.
    """
    _check_gather(x, idx, flips, dy, dx, k, out)
    nb = _compiled(None, out, x)  # the size of the work is out's
    if nb is None:
        return gather_augment_ref(x, idx, flips, dy, dx, k, reflect, out)
    _require(not np.may_share_memory(x, out), "out must not overlap x")
    idx64, dy64, dx64 = (np.ascontiguousarray(a, dtype=np.int64) for a in (idx, dy, dx))
    _in_range("idx", idx64, 0, x.shape[0] - 1, nb)
    _in_range("dy", dy64, -k, k, nb)
    _in_range("dx", dx64, -k, k, nb)
    nb.gather_augment(x, idx64, np.ascontiguousarray(flips, dtype=np.bool_), dy64, dx64,
                      bool(reflect), out, out.dtype.type(0))  # fmt: skip
    return out


# --- 7. standardisation --------------------------------------------------------------------


def standardize_ref(x, mean, std, out):
    """The reference of `standardize`."""
    out[...] = x
    out -= mean
    out /= std
    return out


def standardize(x, mean, std, out):
    """out = (x - mean) / std, row by row, in out's dtype: x (N, D) raw pixels, mean and std
    (D,) in out's dtype, out (N, D) float32 or float64, written and returned. The compiled
    path (uint8 x) makes one parallel pass instead of three."""
    _require(x.ndim == 2, f"x must be (N, D), got shape {tuple(x.shape)}")
    _shapes(x.shape, out=out)
    _shapes(x.shape[1:], mean=mean, std=std)
    _dtypes(out.dtype, mean=mean, std=std)
    nb = _compiled(out.dtype, out, x, mean, std)
    if nb is None or x.dtype != np.uint8:
        return standardize_ref(x, mean, std, out)
    nb.standardize(x, mean, std, out)
    return out


# --- 8. column sums of pixels ----------------------------------------------------------------


SUM_ROWS = 256  # rows per chunk of column_sums_ref


def column_sums_ref(x):
    """The reference of `column_sums`: exact integer sums over chunks of rows. A uint8 chunk is
    squared in uint16 (255^2 fits), so no int64 copy of x is made: 10,000 CIFAR rows in 0.05 s
    against 0.12 s for float sums (data.fit_standardizer's path while numba loads)."""
    xp = array_module(x)
    wide = xp.uint16 if x.dtype == xp.uint8 else xp.int64
    s, q = xp.zeros(x.shape[1], xp.int64), xp.zeros(x.shape[1], xp.int64)
    for start in range(0, x.shape[0], SUM_ROWS):
        chunk = x[start : start + SUM_ROWS].astype(wide)
        s += chunk.sum(axis=0, dtype=xp.int64)
        chunk *= chunk
        q += chunk.sum(axis=0, dtype=xp.int64)
    return s, q


def column_sums(x):
    """Per column of x (N, D) uint8: the sum and the sum of squares, (D,) int64 each, exact
    (so bitwise the same in any order and on any thread count). The compiled path reads x
    once, without the float copy a float sum needs (45,000 rows on 2 cores: 0.08 s against
    0.32 s for data.fit_standardizer's float sums)."""
    _require(x.ndim == 2, f"x must be (N, D), got shape {tuple(x.shape)}")
    nb = _compiled(None, x)
    if nb is None or x.dtype != np.uint8:
        return column_sums_ref(x)
    s, q = np.zeros(x.shape[1], np.int64), np.zeros(x.shape[1], np.int64)
    nb.column_sums(x, s, q)
    return s, q


# --- 9. float32 normal and uniform draws ---------------------------------------------------

DRAW_MIN = 4096  # draws: fewer take NumPy's own call (reading and writing the state costs ~10 us)


def standard_normal_f32_ref(rng: np.random.Generator, shape):
    """The reference of `standard_normal_f32`: NumPy's draw."""
    return rng.standard_normal(shape, dtype=np.float32)


def standard_normal_f32(rng: np.random.Generator, shape):
    """rng.standard_normal(shape, dtype=float32), bit for bit, and rng advanced exactly as
    that call would advance it. The compiled path (a PCG64 generator, NumPy's default) runs
    NumPy's ziggurat with the generator's state inlined: 2.5-3x faster (table4-140's noise)."""
    out = _pcg64_fill(rng, shape, lambda nb: nb.ZIGGURAT and (
        lambda st, out: nb.normal_f32(st, out, *nb.ZIGGURAT)))  # fmt: skip
    return standard_normal_f32_ref(rng, shape) if out is None else out


def random_f32_ref(rng: np.random.Generator, shape):
    """The reference of `random_f32`: NumPy's draw."""
    return rng.random(shape, dtype=np.float32)


def random_f32(rng: np.random.Generator, shape):
    """rng.random(shape, dtype=float32), bit for bit, and rng advanced exactly as that call
    would advance it: the dropout masks' uniforms (500 x 140 in table4-140's step). The
    compiled path (PCG64) keeps the generator's state in registers: the pass runs 2x faster
    than NumPy's, the whole call (the state's round trip through its dict) 1.2-1.4x."""
    out = _pcg64_fill(rng, shape, lambda nb: nb.uniform_f32)
    return random_f32_ref(rng, shape) if out is None else out


def _pcg64_fill(rng: np.random.Generator, shape, kernel):
    """A new float32 array of `shape` filled by kernel(nb)(st, out) from rng's PCG64 state
    words st, rng advanced to the words it leaves; None (take NumPy's draw) for a small
    draw, another bit generator, or no compiled kernel (kernel(nb) falsy)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    size, bg = int(np.prod(shape)), rng.bit_generator
    nb = _load() if size >= DRAW_MIN and type(bg) is np.random.PCG64 else None  # serial
    fill = nb and kernel(nb)
    if not fill:
        return None
    out = np.empty(size, np.float32)
    with bg.lock:  # the generator's own lock, as NumPy's draw takes it
        state = bg.state
        st = _pcg64_words(state)
        fill(st, out)
        bg.state = _pcg64_state(state, st)
    return out.reshape(shape)


def _pcg64_words(state: dict) -> np.ndarray:
    """PCG64's state dict -> [state hi, state lo, inc hi, inc lo, has_uint32, uinteger]."""
    s, inc = state["state"]["state"], state["state"]["inc"]
    low = (1 << 64) - 1
    return np.array([s >> 64, s & low, inc >> 64, inc & low, state["has_uint32"],
                     state["uinteger"]], dtype=np.uint64)  # fmt: skip


def _pcg64_state(state: dict, st: np.ndarray) -> dict:
    """The state dict of words st (the increment is unchanged)."""
    return {**state, "state": {**state["state"], "state": (int(st[0]) << 64) | int(st[1])},
            "has_uint32": int(st[4]), "uinteger": int(st[5])}  # fmt: skip


# --- warm-up ------------------------------------------------------------------------------


def warm_up(dtype) -> None:
    """Call every kernel once on tiny arrays of dtype: compiles it, or loads it from the
    cache, before the first timed step (no-op without numba)."""
    if _load() is None:
        return
    _warming.set()
    try:
        _warm_all(np.dtype(dtype))
    finally:
        _warming.clear()


def _warm_all(dt: np.dtype) -> None:
    """warm_up's calls: each kernel once on tiny arrays of dt."""
    t, n, h, c = 2, 3, 4, 10
    vec = np.full(t, 0.5, dt)
    p, g, v = np.ones((1, t, h), dt), np.ones((1, t, h), dt), np.zeros((1, t, h), dt)
    for sl in (slice(0, 1), slice(None)):  # T = 1 (one long row) and T > 1 (rows of T*K)
        one = (p[:, sl].copy(), g[:, sl].copy())
        vs = (vec[sl], vec[sl], vec[sl], vec[sl])
        update(*one, None, *vs, False)
        update(*one, v[:, sl].copy(), *vs, True)
    s, b = np.ones((n, t, h), dt), np.zeros((t, h), dt)
    relu_dropout_forward(s, b, None, None, None)
    u, p32 = np.full((n, h), 0.5, np.float32), np.full(t, 0.25, np.float32)
    hd = relu_dropout_forward(s, b, u, p32, vec)
    relu_dropout_backward(np.ones((t, n, h), dt), hd, None, np.empty_like(hd))
    relu_dropout_backward(np.ones((t, n, h), dt), hd, vec, hd)
    softmax_xent(np.zeros((t, n, c), dt), np.zeros(n, np.int64), vec)
    x = np.zeros((2, PIXELS), dt)
    gather_rows(x, np.zeros(n, np.int64), np.empty((n, PIXELS), dt))
    standardize(np.zeros((n, PIXELS), np.uint8), x[0], x[0] + 1, np.empty((n, PIXELS), dt))
    column_sums(np.zeros((n, PIXELS), np.uint8))
    flips, shift = np.zeros(n, bool), np.zeros(n, np.int64)
    for reflect in (False, True):  # one compiled version serves both: a runtime flag
        gather_augment(x, shift, flips, shift, shift, 1, reflect, np.empty((n, PIXELS), dt))
    nb = _load()
    words = _pcg64_words(np.random.PCG64(0).state)  # float32 draws whatever the dtype
    nb.uniform_f32(words, np.empty(3, np.float32))
    nb.in_range(np.zeros(1, np.int64), 0, 0)
    if nb.ZIGGURAT is not None:
        nb.normal_f32(words, np.empty(2, np.float32), *nb.ZIGGURAT)


if __name__ == "__main__":  # `python -m cifar2l.kernels` (make setup): compile into the cache
    import time

    start = time.perf_counter()
    for name in ("float32", "float64"):
        warm_up(name)
    state = "compiled or loaded" if have_numba() else "numba not installed: references only"
    print(f"cifar2l kernels {state} in {time.perf_counter() - start:.1f} s")
