"""A run's figures drawn in a helper process, while the run itself reads data and trains.

Importing matplotlib (0.5-0.8 s on the 2-core development machine) and drawing a run's four
figures (0.3-0.4 s) is single-threaded Python: in the training process it held the GIL beside
the data loading and then added its drawing to the end of every run. A helper process started
with the command imports matplotlib on another core while the data loads, and draws the figures
while the final evaluation runs. `wait()` returns once every figure is written (so a finished
run directory is complete) and raises the error a figure raised, as drawing in process would.

The helper is forked (Linux) when the command starts, before the data and the kernels load
(numba's thread pool does not exist yet; the helper never calls BLAS or a kernel): it inherits
the imported modules, needs no resource tracker, and `close()` joins it quickly, so a command
that then exits at once (cli.leave) leaves nothing behind. Elsewhere (macOS, where fork is
unsafe with system frameworks, and Windows) the figures are drawn in the command's own
process. `CIFAR2L_PLOT_PROCESS=0` does that too; so does any failure to start or keep the
helper (the figure is then drawn here). A run's four figures are drawn two by the helper and
two by a copy of it forked for them (`in_two`): the helper runs no thread besides its own, so
that fork is safe, and the figures are written in about half the time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

ENV = "CIFAR2L_PLOT_PROCESS"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def enabled(environ=os.environ) -> bool:
    """Whether figures go to a helper: Linux (fork) and not CIFAR2L_PLOT_PROCESS=0."""
    wanted = environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    return wanted and sys.platform.startswith("linux")


def _child_start() -> None:
    """The helper's initializer: it ends with the command even if the command is killed
    (Linux's parent-death signal), Ctrl-C is the command's to handle (no traceback of the
    helper's own), and matplotlib loads now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import plots

    plots.warm_up()


@dataclass
class Plotter:
    """Figures to draw: submit(fn, *args) now or in the helper; wait() for all of them."""

    pool: concurrent.futures.ProcessPoolExecutor | None = None
    pending: list = field(default_factory=list)  # (future, fn, args)

    @classmethod
    def start(cls) -> Plotter:
        """The helper process, started now (it loads matplotlib); inline when disabled."""
        if not enabled():
            return cls()
        try:
            pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("fork"), initializer=_child_start)
            pool.submit(int)  # spawns the process now, not at the first figure
        except (OSError, RuntimeError):  # no process to spare: draw here
            return cls()
        return cls(pool)

    def submit(self, fn: Callable, *args) -> None:
        """fn(*args) (a module-level function, picklable arguments) in the helper, or now."""
        self._submit(fn, fn, args)

    def submit_figures(self, make: Callable, *args) -> None:
        """Every call of make(*args) (module-level; a list of calls that draw one figure
        each): in the helper, half of them in a copy of it forked meanwhile (in_two), or
        here in turn."""
        self._submit(_figures_in_two, _figures_in_turn, (make, *args))

    def _submit(self, task: Callable, here: Callable, args: tuple) -> None:
        """task(*args) in the helper, or here(*args) now (no helper, or it broke)."""
        if self.pool is None:
            here(*args)
            return
        try:
            self.pending.append((self.pool.submit(task, *args), here, args))
        except (RuntimeError, concurrent.futures.BrokenExecutor):
            here(*args)

    def wait(self) -> None:
        """Every submitted figure written; a figure's error is raised here. A helper that died
        (killed, out of memory) leaves its figures to be drawn here."""
        pending, self.pending = self.pending, []
        for future, fn, args in pending:
            try:
                future.result()
            except concurrent.futures.BrokenExecutor:
                fn(*args)

    def close(self) -> None:
        """Stop the helper and wait for it: quick, a forked worker leaves with os._exit (no
        teardown), and its copy of the task pipe must not outlive the command."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _figures_in_turn(make: Callable, *args) -> None:
    for draw in make(*args):
        draw()


def _figures_in_two(make: Callable, *args) -> None:
    """The helper's task of submit_figures."""
    in_two(make(*args))


def in_two(draws: list) -> None:
    """Each call of `draws`, the second half in a forked copy of this process meanwhile: a
    run's four figures took 0.20-0.27 s against 0.35-0.49 s in turn (2 cores). Only for
    the helper, which runs no other thread (a fork copies none). A copy that cannot start or
    that fails leaves its half to this process, which then raises the error there was."""
    half = len(draws) // 2
    pid = _fork()
    if pid == 0:
        _draw_and_leave(draws[half:])
    try:
        for draw in draws[:half]:
            draw()
    finally:  # the copy is waited for even when a figure here fails
        done = pid is not None and _succeeded(pid)
    if not done:
        for draw in draws[half:]:
            draw()


def _fork() -> int | None:
    try:
        return os.fork()
    except OSError:  # no process to spare
        return None


def _draw_and_leave(draws: list) -> None:
    """The forked copy: draw, then exit at once (0 when every figure was written)."""
    code = 1
    try:
        with contextlib.suppress(OSError, AttributeError):  # ends with the helper
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for draw in draws:
            draw()
        code = 0
    finally:
        os._exit(code)


def _succeeded(pid: int) -> bool:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped elsewhere: its figures may be missing, draw them here
        return False
    return os.waitstatus_to_exitcode(status) == 0
