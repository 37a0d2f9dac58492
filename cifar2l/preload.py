"""Work a command needs later, started in a thread while it reads its data.

Loading the compiled kernels from their cache (numba) and importing matplotlib for the plots
take about a second together and mostly wait on files; reading and standardising the data
does too, in NumPy calls that release the GIL. Overlapping them shortens every run. A failure
here is ignored: the main thread meets the same problem where it uses the thing, and reports
it there in its usual way.
"""

from __future__ import annotations

import contextlib
import threading

from . import kernels


def _load(dtype: str) -> None:
    with contextlib.suppress(Exception):
        kernels.warm_up(dtype)
    with contextlib.suppress(Exception):
        from . import plots

        plots.pyplot()


def start(dtype: str) -> threading.Thread:
    """Start loading the kernels of `dtype` and matplotlib; join() the thread before training."""
    thread = threading.Thread(target=_load, args=(dtype,), name="cifar2l-preload", daemon=True)
    thread.start()
    return thread
