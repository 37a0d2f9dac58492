"""Work a command needs later, started in a thread while it reads its data.

Loading the compiled kernels from their cache (numba) and importing matplotlib for the plots
take about a second together and mostly wait on files or run Python; reading and
standardising the data runs in NumPy calls and kernels that release the GIL. Overlapping them
shortens every run. The command waits for both before it trains (`join`): matplotlib still
importing beside the first training steps slowed them by more than it saved (a default run:
3.9 s against 3.6 s). A failure here is ignored: the main thread meets the same problem where
it uses the thing, and reports it there in its usual way.
"""

from __future__ import annotations

import contextlib
import threading

from . import kernels


def _load(dtype: str, matplotlib: bool) -> None:
    with contextlib.suppress(Exception):
        kernels.warm_up(dtype)
    if not matplotlib:  # a plotter process (plotter.py) loads it instead
        return
    with contextlib.suppress(Exception):
        from . import plots

        plots.warm_up()


def start(dtype: str, matplotlib: bool = True) -> threading.Thread:
    """Start loading the kernels of `dtype`, then matplotlib; join() the thread before training."""
    thread = threading.Thread(target=_load, args=(dtype, matplotlib), name="cifar2l-preload",
                              daemon=True)  # fmt: skip
    thread.start()
    return thread
