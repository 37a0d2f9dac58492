"""Terminal output: progress bars and row printing on stderr, result tables on stdout.

Progress goes to stderr so that `--json` leaves stdout holding one JSON object.
"""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Off a terminal (logs, pipes) rich would wrap tables at 80 columns; keep them whole.
_WIDTH = None if sys.stdout.isatty() else 160
stdout = Console(soft_wrap=True, width=_WIDTH)
stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
_quiet = False
_keep_bars = False  # --json: stdout holds the JSON, but a terminal still sees progress


def set_quiet(value: bool, keep_bars: bool = False) -> None:
    global _quiet, _keep_bars
    _quiet, _keep_bars = value, keep_bars


@contextlib.contextmanager
def quiet():
    """Silence rows, tables and bars for a while (e.g. inside a search trial)."""
    global _quiet, _keep_bars
    before, _quiet, _keep_bars = (_quiet, _keep_bars), True, False
    try:
        yield
    finally:
        _quiet, _keep_bars = before


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, unit: str = ""):
    """Yield `advance(n)`; shows a bar only on an interactive terminal and when not quiet."""
    if (_quiet and not _keep_bars) or not stderr.is_terminal:
        yield lambda n=1: None
        return
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n=1: progress.advance(task, n)


def log(message: str) -> None:
    if not _quiet:
        stderr.print(message, highlight=False)


def table(title: str, columns: list[str], rows: list[list], text: tuple = ()) -> None:
    """Numbers right-aligned; the first column and the `text` columns left-aligned."""
    if _quiet:
        return
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] or c in text else "right")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    stdout.print(t)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if (abs(v) < 1e-3 and v != 0) else f"{v:.4f}"
    return str(v)


def warn(message: str) -> None:
    """A `Warning: ...` line on stderr (shown with --json too: stdout keeps only the JSON)."""
    if not _quiet or _keep_bars:
        stderr.print(f"Warning: {message}", highlight=False)


def error(message: str) -> None:
    from .errors import one_line

    print(f"Error: {one_line(message)}", file=sys.stderr)


def show(renderable, whole: bool = False) -> None:
    """Print a rich renderable (a Table built by the caller) on stdout, unless quiet. `whole`:
    off a terminal, at its natural width however wide (a log or a pipe is not cut)."""
    if _quiet:
        return
    before = stdout.width
    if whole and not stdout.is_terminal:
        wide = stdout.options.update(width=100_000)
        stdout.width = max(before, stdout.measure(renderable, options=wide).maximum)
    try:
        stdout.print(renderable)
    finally:
        stdout.width = before
