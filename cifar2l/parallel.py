"""Element-wise work on large arrays spread over the machine's cores.

NumPy ufuncs run on one core; BLAS uses them all. For a wide network the weight updates (a few
passes over a 50 MB matrix per step) would then cost more than the matrix products. Row blocks
of equal-shaped arrays are independent, so `rowwise` runs a function on blocks in threads
(ufuncs release the GIL): the same operations on the same elements, bitwise the same result.
CuPy arrays (and small ones) get one plain call.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

from .threads import affinity_cpus, blas_threads

BLOCK_BYTES = 1 << 21  # 2 MB row blocks: temporaries stay small and in cache
MIN_BYTES = 1 << 22  # below 4 MB, threads cost more than they save


def threads() -> int:
    """The BLAS library's thread count, which the command set from the CPUs it may use
    (threads.py): element-wise blocks and products share one setting."""
    return blas_threads() or affinity_cpus()


@cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="cifar2l-rowwise")


def rowwise(fn, *arrays) -> None:
    """fn(*views) over row blocks of arrays that share their shape (fn works in place)."""
    a = arrays[0]
    if not isinstance(a, np.ndarray) or a.nbytes < MIN_BYTES or a.ndim == 0:
        fn(*arrays)
        return
    n_threads = threads()  # asked only for large arrays: threadpoolctl takes 0.1 ms
    if n_threads < 2:
        fn(*arrays)
        return
    rows = max(1, BLOCK_BYTES // max(1, a.nbytes // a.shape[0]))
    blocks = [slice(i, i + rows) for i in range(0, a.shape[0], rows)]
    # Each thread takes a contiguous run of blocks: neighbours share no cache lines.
    runs = np.array_split(np.arange(len(blocks)), n_threads)

    def work(run) -> None:
        for i in run:
            fn(*(x[blocks[i]] for x in arrays))

    for f in [_pool(n_threads).submit(work, r) for r in runs if len(r)]:
        f.result()
