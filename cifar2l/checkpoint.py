"""Training checkpoints and signals: an interrupted run resumes bitwise where it stopped.

A checkpoint holds everything the rest of the run depends on: the params, the momentum buffers,
the random streams' states (epoch shuffles, dropout, noise), the update step, the data order of
the current epoch and the metric rows so far. It is written atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import console
from .config import Config
from .errors import RunError
from .loop import STREAMS, TrainState
from .runs import save_npz
from .schedule import total_steps
from .weights import stacked  # a checkpoint of the older single-network layout: T = 1

NAME = "checkpoint.npz"
# 2: a sha256 of the payload and a guard (the config and data fingerprints it was trained on).
FORMAT = 2
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


class CorruptCheckpoint(RunError):
    """A checkpoint that cannot be resumed: unreadable, damaged, or not fitting its run."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM during a command: the run is flushed and marked interrupted."""

    status = "interrupted"

    def __init__(self, signum: int, state=None):
        global _stopping
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.state = signum, state  # state: the loop's, where it stopped
        self.step = state.step if state is not None else None
        # The run directory it stopped and the command that continues it (None: it cannot
        # be resumed); runs.start_run sets them as the exception leaves each run it stops.
        self.run_dir: Path | None = None
        self.resume: str | None = None
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM
        # The command is stopping from here on: a second signal (a second Ctrl-C, a SIGTERM
        # sent to a whole process group) must not cut short the writing of what was done.
        _stopping = True

    def message(self) -> str:
        """The one line for the person who stopped the command: where it stopped and the
        exact command that continues it."""
        at = f" at step {self.step}" if self.step is not None else ""
        if self.resume:
            return f"{self}{at}; what was done is saved; resume with: {self.resume}"
        if self.run_dir is not None:
            return (f"{self}{at}; {self.run_dir} is marked interrupted (this command cannot "
                    "be resumed: run it again)")
        return f"{self}{at}"


# The signal handler's state (a handler can be given none): a signal deferred to the next step
# boundary, whether signals are deferred now, and whether the command is already stopping.
_pending: int | None = None
_deferred = False
_stopping = False


def _handler(signum, frame):
    global _pending
    if _deferred or _stopping:
        _pending = signum  # the training loop stops at the next step boundary
    elif in_jit_compiler(frame):
        redeliver(signum)
    else:
        raise Interrupted(signum)


JIT_PACKAGES = (f"{os.sep}numba{os.sep}", f"{os.sep}llvmlite{os.sep}")


def in_jit_compiler(frame) -> bool:
    """Whether the signal came while numba compiles (the first call of a kernel, seconds
    with a cold cache). llvmlite calls back into Python from C there (ctypes), and an
    exception raised in such a callback is printed and dropped: the signal would be lost
    and the command would go on to exit 0."""
    while frame is not None:
        if any(p in frame.f_code.co_filename for p in JIT_PACKAGES):
            return True
        frame = frame.f_back
    return False


def redeliver(signum: int) -> None:
    """Send `signum` to this process again shortly, until it lands outside the compiler."""
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


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


def save(path: Path, state, guard: dict | None = None) -> None:
    """A loop.TrainState, atomically: its arrays and, as JSON, the rest; `guard` (see
    `guard_of`) records what the state was trained on, and a sha256 of the whole payload is
    stored beside it, so that a changed byte is refused rather than resumed."""
    arrays = {f"p_{k}": v for k, v in state.params.items()}
    arrays |= {f"v_{k}": v for k, v in (state.velocity or {}).items()}
    arrays |= {f"a_{k}": v for k, v in (state.average or {}).items()}
    meta = {"format": FORMAT, "step": state.step, "rng_states": rng_states(state.rngs),
            "rows": state.rows, "timing": state.timing, "momentum": state.velocity is not None,
            "diverged": {str(k): list(v) for k, v in state.diverged.items()},
            "trials": len(state.rows), "guard": guard, "averaged": state.averaged}  # fmt: skip
    arrays["order"] = np.zeros(0, np.int64) if state.order is None else state.order
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz(path, sha256=np.array(payload_digest(arrays)), **arrays)


def guard_of(cfg, prep) -> dict:
    """What a checkpoint must be resumed with: the resolved config (a dict) and the prepared
    splits' fingerprints (data.fingerprint)."""
    return {"config": cfg.to_dict(), "fingerprints": dict(prep.fingerprints)}


def payload_digest(arrays: dict) -> str:
    """sha256 of every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class Saved:
    """A checkpoint read back: its state, its guard (None: an older file without one) and its
    format (1: written before checksums and guards)."""

    state: object  # loop.TrainState
    guard: dict | None
    format: int


def load(path: Path):
    """The loop.TrainState saved in `path` (see `read`)."""
    return read(path).state


def read(path: Path) -> Saved:
    """The checkpoint in `path`; RunError when it is missing, CorruptCheckpoint when it is
    unreadable, damaged (checksum) or of a newer format."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise RunError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # any damage (BadZipFile, EOFError, zlib.error, a non-npz file...)
        raise CorruptCheckpoint(f"{path}: unreadable checkpoint ({_brief(e)})") from None
    try:
        return parse(arrays, path)
    except CorruptCheckpoint:
        raise
    except Exception as e:  # a key, a type or a value missing or wrong in what it holds
        raise CorruptCheckpoint(f"{path}: unreadable checkpoint (bad contents: "
                                f"{_brief(e)})") from None  # fmt: skip


def _brief(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 120 else text[:117] + "..."


def parse(arrays: dict, path: Path) -> Saved:
    """The Saved of a checkpoint's arrays, its checksum checked first when it has one."""
    digest = arrays.pop("sha256", None)
    if digest is not None and str(digest) != payload_digest(arrays):
        raise CorruptCheckpoint(f"{path}: damaged checkpoint (its sha256 does not match its "
                                "contents: changed after it was written)")  # fmt: skip
    meta = json.loads(str(arrays["meta"]))
    version = meta.get("format", 1)
    if version > FORMAT:
        raise CorruptCheckpoint(f"{path}: checkpoint format {version} is newer than this "
                                f"cifar2l reads ({FORMAT}); resume with that one")  # fmt: skip
    if version >= 2 and digest is None:
        raise CorruptCheckpoint(f"{path}: damaged checkpoint (its sha256 is missing)")
    params = {k[2:]: v for k, v in arrays.items() if k.startswith("p_")}
    velocity = {k[2:]: v for k, v in arrays.items() if k.startswith("v_")}
    average = {k[2:]: v for k, v in arrays.items() if k.startswith("a_")}
    order = arrays["order"]
    rows = meta["rows"] if "trials" in meta else [meta["rows"]]  # older: one network's rows
    state = TrainState(stacked(params), stacked(velocity) if meta["momentum"] else None,
                       generators(meta["rng_states"]), int(meta["step"]),
                       order if order.size else None, rows,
                       {int(k): tuple(v) for k, v in meta.get("diverged", {}).items()},
                       meta["timing"], stacked(average) if average else None,
                       int(meta.get("averaged", 0)))  # fmt: skip
    check_guard(meta.get("guard"))
    return Saved(state, meta.get("guard"), version)


def check_guard(guard) -> None:
    if guard is not None and not (isinstance(guard, dict) and all(
            isinstance(guard.get(k), dict) for k in ("config", "fingerprints"))):  # fmt: skip
        raise ValueError("its guard is not a config and fingerprints")


# ---------------------------------------------------------------- does it belong to this run?

# Where the data lives may change between a run and its resume (a moved copy, another mount):
# the splits' fingerprints, not the path, decide whether it is the same data.
IGNORED_KEYS = ("data.root",)


def verify(saved: Saved, cfg, prep, trials: int, where: Path) -> None:
    """Refuse to resume `saved` (of the run or trial dir `where`) with another config or other
    data than it was trained on (RunError), or when it does not fit them (CorruptCheckpoint).

    An older checkpoint without a guard is resumed with a warning rather than refused: refusing
    would leave every run interrupted under an older cifar2l unfinishable, the fit checks below
    still catch other shapes or another dataset size, and the warning says what was not checked
    (as `evaluate` does for weights files written before fingerprints).
    """
    if saved.guard is None:
        console.warn(f"{where / NAME}: written by an older cifar2l, without a checksum or a "
                     "record of its config and data; resuming without checking that they are "
                     "the ones it started on")  # fmt: skip
    else:
        check_config(saved.guard["config"], cfg.to_dict(), where)
        check_data(saved.guard["fingerprints"], prep.fingerprints, prep.source, where)
    problems = fit_problems(saved.state, cfg, prep, trials)
    if problems:
        raise CorruptCheckpoint(f"{where / NAME}: does not fit this run's config and data "
                                f"({'; '.join(problems[:3])})")  # fmt: skip


def check_config(then: dict, now: dict, where: Path) -> None:
    keys = config_changes(then, now)
    if keys:
        a, b = flatten(then), flatten(now)
        shown = [f"{k} {_short(b.get(k))} (checkpoint: {_short(a.get(k))})" for k in keys[:3]]
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        raise RunError(f"{where}: the config differs from the one its checkpoint was trained "
                       f"with: {', '.join(shown)}{more}; refusing to resume (restore it, or "
                       "train a new run)")  # fmt: skip


def config_changes(then: dict, now: dict) -> list[str]:
    """Dotted keys whose values differ (IGNORED_KEYS aside), in the order of `now`. A key a
    newer cifar2l added (absent from `then`) counts as its default there."""
    a, b = flatten(with_defaults(then, Config().to_dict())), flatten(now)
    keys = list(b) + [k for k in a if k not in b]
    return [k for k in keys if k not in IGNORED_KEYS and a.get(k, ...) != b.get(k, ...)]


def with_defaults(d: dict, defaults: dict) -> dict:
    """`d` with the keys it lacks taken from `defaults`, section by section."""
    out = dict(defaults) | d
    for k, v in d.items():
        if isinstance(v, dict) and isinstance(defaults.get(k), dict):
            out[k] = with_defaults(v, defaults[k])
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v) -> str:
    text = "(none)" if v is ... else json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_data(then: dict, now: dict, source: str, where: Path) -> None:
    split = next((k for k in [*now, *then] if now.get(k) != then.get(k)), None)
    if split is not None:
        raise RunError(f"{where}: the {split} split from {source} is not the data this run "
                       f"started on (fingerprint {now.get(split)}, checkpoint "
                       f"{then.get(split)}); refusing to resume: point CIFAR2L_DATA or "
                       "data.root at the data it was trained on")  # fmt: skip


def fit_problems(state, cfg, prep, trials: int) -> list[str]:
    """What in a checkpoint's state cannot go on with this config and data: shapes, dtypes,
    the step, the data order, the trials."""
    d, c, h = prep.train.x.shape[1], len(prep.classes), cfg.model.hidden
    want = {"W1": (d, trials, h), "b1": (trials, h), "W2": (trials, h, c), "b2": (trials, c)}
    problems = array_problems(state.params, want, np.dtype(cfg.dtype), "")
    if state.velocity is not None:
        problems += array_problems(state.velocity, want, np.dtype(cfg.dtype), "momentum ")
    elif cfg.optim.momentum > 0:
        problems.append("no momentum buffers")
    if state.average is not None:
        problems += array_problems(state.average, want, np.dtype(cfg.dtype), "average ")
    if (state.averaged > 0) != (state.average is not None) or state.averaged < 0:
        problems.append(f"{state.averaged} weight-average samples but "
                        f"{'an' if state.average is not None else 'no'} average")
    return problems + progress_problems(state, cfg, len(prep.train.y), trials)


def array_problems(arrays: dict, want: dict, dtype, what: str) -> list[str]:
    if set(arrays) != set(want):
        return [f"{what}arrays {sorted(arrays)}, expected {sorted(want)}"]
    return [f"{what}{k} {arrays[k].dtype}{list(arrays[k].shape)}, expected {dtype}{list(shape)}"
            for k, shape in want.items()
            if arrays[k].shape != shape or arrays[k].dtype != dtype]  # fmt: skip


def progress_problems(state, cfg, n: int, trials: int) -> list[str]:
    total, problems = total_steps(cfg.schedule), []
    if not 0 <= state.step <= total:
        problems.append(f"step {state.step} outside 0..{total}")
    if len(state.rows) != trials or not all(isinstance(r, list) for r in state.rows):
        problems.append(f"metric rows of {len(state.rows)} trials, expected {trials}")
    if not isinstance(state.timing, list) or any(not 0 <= k < trials for k in state.diverged):
        problems.append("bad timing or diverged trials")
    order = state.order
    if order is None and state.step % (n // cfg.train.batch_size):
        problems.append("no data order in the middle of an epoch")
    if order is not None and not (order.shape == (n,) and order.dtype.kind in "iu" and
                                  (n == 0 or 0 <= order.min() and order.max() < n)):  # fmt: skip
        problems.append(f"a data order of {order.shape[0]} rows for {n} training rows")
    return problems


def rng_states(rngs: dict) -> dict:
    return {k: rngs[k].bit_generator.state for k in STREAMS}


def generators(states: dict) -> dict:
    """Generators continuing exactly where the saved ones stood."""
    out = {}
    for k in STREAMS:
        name = states[k]["bit_generator"]
        if name not in BIT_GENERATORS:  # never call whatever np.random attribute a file names
            raise ValueError(f"unknown bit generator {name!r}")
        bit = getattr(np.random, name)()
        bit.state = states[k]
        out[k] = np.random.Generator(bit)
    return out
