"""Training checkpoints and signals: an interrupted run resumes bitwise where it stopped.

A checkpoint holds everything the rest of the run depends on: the params, the momentum buffers,
the random streams' states (epoch shuffles, dropout, noise), the update step, the data order of
the current epoch and the metric rows so far. It is written atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RunError

NAME = "checkpoint.npz"
STREAMS = ("shuffle", "dropout", "augment")


class Interrupted(BaseException):
    """SIGINT/SIGTERM during a command: the run is flushed and marked interrupted."""

    status = "interrupted"

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM


_pending: int | None = None
_deferred = False


def _handler(signum, frame):
    global _pending
    if _deferred:
        _pending = signum  # the training loop stops at the next step boundary
    else:
        raise Interrupted(signum)


def install_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


@contextlib.contextmanager
def deferred_signals():
    """Inside, a signal only sets a flag (`pending()`); outside it interrupts at once."""
    global _deferred, _pending
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before
        if _pending is not None and not _deferred:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def pending() -> int | None:
    return _pending


def take_pending() -> int | None:
    global _pending
    signum, _pending = _pending, None
    return signum


@dataclass
class State:
    step: int
    params: dict
    velocity: dict | None
    order: np.ndarray
    rng_states: dict
    rows: list[dict]
    timing: list[dict]


def save(path: Path, state: State) -> None:
    from .runs import save_npz

    arrays = {f"p_{k}": v for k, v in state.params.items()}
    arrays |= {f"v_{k}": v for k, v in (state.velocity or {}).items()}
    meta = {"step": state.step, "rng_states": state.rng_states, "rows": state.rows,
            "timing": state.timing, "momentum": state.velocity is not None}  # fmt: skip
    save_npz(path, order=state.order, meta=np.array(json.dumps(meta)), **arrays)


def load(path: Path) -> State:
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            params = {k[2:]: f[k] for k in f.files if k.startswith("p_")}
            velocity = {k[2:]: f[k] for k in f.files if k.startswith("v_")}
            order = f["order"]
    except FileNotFoundError:
        raise RunError(f"{path}: no checkpoint to resume from") from None
    except (OSError, ValueError, KeyError) as e:
        raise RunError(f"{path}: unreadable checkpoint ({e})") from None
    return State(meta["step"], params, velocity if meta["momentum"] else None, order,
                 meta["rng_states"], meta["rows"], meta["timing"])  # fmt: skip


def rng_states(rngs: dict) -> dict:
    return {k: rngs[k].bit_generator.state for k in STREAMS}


def restore_rngs(rngs: dict, states: dict) -> None:
    for k in STREAMS:
        rngs[k].bit_generator.state = states[k]
