"""Training checkpoints and signals: an interrupted run resumes bitwise where it stopped.

A checkpoint holds everything the rest of the run depends on: the params, the momentum buffers,
the random streams' states (epoch shuffles, dropout, noise), the update step, the data order of
the current epoch and the metric rows so far. It is written atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import signal
import zipfile
from pathlib import Path

import numpy as np

from .errors import RunError
from .loop import STREAMS, TrainState
from .runs import save_npz
from .weights import stacked  # a checkpoint of the older single-network layout: T = 1

NAME = "checkpoint.npz"


class Interrupted(BaseException):
    """SIGINT/SIGTERM during a command: the run is flushed and marked interrupted."""

    status = "interrupted"

    def __init__(self, signum: int, state=None):
        global _stopping
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.state = signum, state  # state: the loop's, where it stopped
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM
        # The command is stopping from here on: a second signal (a second Ctrl-C, a SIGTERM
        # sent to a whole process group) must not cut short the writing of what was done.
        _stopping = True


# The signal handler's state (a handler can be given none): a signal deferred to the next step
# boundary, whether signals are deferred now, and whether the command is already stopping.
_pending: int | None = None
_deferred = False
_stopping = False


def _handler(signum, frame):
    global _pending
    if _deferred or _stopping:
        _pending = signum  # the training loop stops at the next step boundary
    else:
        raise Interrupted(signum)


def install_handlers() -> None:
    """Signals interrupt the command (Interrupted), from a clean state (also for the commands
    that tests run one after another in one process)."""
    global _pending, _deferred, _stopping
    _pending, _deferred, _stopping = None, False, False
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


@contextlib.contextmanager
def deferred_signals():
    """Inside, a signal only sets a flag (`pending()`); outside it interrupts at once. Leaving
    the block on an exception keeps that exception (an Interrupted with its loop state, an
    error): a signal that came meanwhile does not replace it."""
    global _deferred, _pending
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before
    if _pending is not None and not _deferred and not _stopping:
        signum, _pending = _pending, None
        raise Interrupted(signum)


def stopping() -> bool:
    """Whether the command is stopping on a signal (an Interrupted was raised)."""
    return _stopping


def pending() -> int | None:
    return _pending


def take_pending() -> int | None:
    global _pending
    signum, _pending = _pending, None
    return signum


def save(path: Path, state) -> None:
    """A loop.TrainState, atomically: its arrays and, as JSON, the rest."""
    arrays = {f"p_{k}": v for k, v in state.params.items()}
    arrays |= {f"v_{k}": v for k, v in (state.velocity or {}).items()}
    meta = {"step": state.step, "rng_states": rng_states(state.rngs), "rows": state.rows,
            "timing": state.timing, "momentum": state.velocity is not None,
            "diverged": {str(k): list(v) for k, v in state.diverged.items()},
            "trials": len(state.rows)}  # fmt: skip
    order = np.zeros(0, np.int64) if state.order is None else state.order
    save_npz(path, order=order, meta=np.array(json.dumps(meta)), **arrays)


def load(path: Path):
    """The loop.TrainState saved in `path`; RunError when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            params = {k[2:]: f[k] for k in f.files if k.startswith("p_")}
            velocity = {k[2:]: f[k] for k in f.files if k.startswith("v_")}
            order = f["order"]
    except FileNotFoundError:
        raise RunError(f"{path}: no checkpoint to resume from") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RunError(f"{path}: unreadable checkpoint ({e})") from None
    rows = meta["rows"] if "trials" in meta else [meta["rows"]]  # older: one network's rows
    return TrainState(stacked(params), stacked(velocity) if meta["momentum"] else None,
                      generators(meta["rng_states"]), meta["step"], order if order.size else None,
                      rows, {int(k): tuple(v) for k, v in meta.get("diverged", {}).items()},
                      meta["timing"])  # fmt: skip


def rng_states(rngs: dict) -> dict:
    return {k: rngs[k].bit_generator.state for k in STREAMS}


def generators(states: dict) -> dict:
    """Generators continuing exactly where the saved ones stood."""
    out = {}
    for k in STREAMS:
        bit = getattr(np.random, states[k]["bit_generator"])()
        bit.state = states[k]
        out[k] = np.random.Generator(bit)
    return out
