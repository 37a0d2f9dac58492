"""Run directories: unique creation, atomic file writes, summaries."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from . import __version__, machine
from .errors import ConfigError, RunError, os_reason, shown

NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a whole path (Linux)


def check_writable(root: Path, option: str = "--out") -> None:
    """Fail before any work when the runs root (`option`'s value) cannot take a new directory:
    a name too long for the file system is a usage error (exit 2), the rest runtime (exit 1)."""
    check_path_length(root, option)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise ConfigError(f"{option} {shown(root)}: path too long ({os_reason(e)})") from None
        raise RunError(f"{shown(root)}: cannot create the runs directory ({os_reason(e)})") \
            from None  # fmt: skip
    if not os.access(root, os.W_OK | os.X_OK):
        raise RunError(f"{shown(root)}: runs directory is not writable")


def check_path_length(path: Path, option: str) -> None:
    """A usage error (exit 2) for a path no file system takes: a component over NAME_MAX bytes
    or the whole over PATH_MAX."""
    encoded = [os.fsencode(part) for part in Path(path).absolute().parts]
    longest = max((len(part) for part in encoded), default=0)
    if longest > NAME_MAX or len(os.fsencode(str(Path(path).absolute()))) >= PATH_MAX:
        raise ConfigError(f"{option} {shown(path)}: path too long (a name of {longest} bytes, "
                          f"at most {NAME_MAX}; {PATH_MAX} bytes in all)")  # fmt: skip


def create_run_dir(root: Path, command: str, name: str) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<command>-<name>[-k]/, unique even for runs started together."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{safe}"
    check_run_name(root, stem, name)
    check_writable(root)
    for k in range(1, 10000):
        path = root / (stem if k == 1 else f"{stem}-{k}")
        try:
            path.mkdir()  # atomic: exactly one process wins each name
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(f"{shown(path)}: cannot create the run directory ({os_reason(e)})") \
                from None  # fmt: skip
    raise RunError(f"{root}: could not find a free run directory name for {stem}")


def check_run_name(root: Path, stem: str, name: str) -> None:
    """Refuse (exit 2) a run name that makes a directory name the file system cannot hold
    (counting the `-k` a clash adds), or a runs root so deep that the files inside the run
    (up to `repeats/NN/snapshots/.step-NNNNNN.npz.<random>.npz`, 64 bytes) would not fit."""
    size = len(os.fsencode(name))
    room = NAME_MAX - len(os.fsencode(stem)) - len("-9999")
    if room < 0:
        raise ConfigError(f"--name {shown(name)}: too long for a run directory name ({size} "
                          f"bytes; at most {size + room} with the date and command; the default "
                          "is the config file's name)")  # fmt: skip
    if len(os.fsencode(str((root / stem).absolute()))) + 64 >= PATH_MAX:
        raise ConfigError(f"--out {shown(root)}: path too long for a run directory in it")


def temp_file(folder: Path, name: str, suffix: str = "") -> tuple[int, str]:
    """An open (fd, path) for a hidden temp file beside `folder / name`, with the permissions
    of any new file (mkstemp makes it 0600: colleagues on a shared cluster could not read it).
    Its name carries its writer (`writer_tag`), so a later start can tell a leftover of a killed
    process from a file being written right now (`remove_stale_temps`)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{writer_tag()}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:  # a signal (umask is Python code: its handler can run there)
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


# Temp files (temp_file) and temp dirs (data.py's cache) are named `.<name>.<host>-<pid>.<8
# random>[suffix]`, <host> the crc32 of the host name in 8 hex digits.
TEMP_NAME = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[a-z0-9_]{8}(?:\.\w+)?$")
# The names mkstemp gave before they carried their writer: `.<name>.<8 random>[suffix]`.
OLD_TEMP_NAME = re.compile(r"^\.(?:.+\.|tmp-)[a-z0-9_]{8}(?:\.(?:npz|png))?$")
# A temp file of another machine (a shared file system) is a leftover only when nobody has
# written to it for this long: a live writer streams into it and renames it within seconds.
STALE_SECONDS = 3600


def writer_tag() -> str:
    """`<host>-<pid>` of this process, as temp names carry it."""
    return f"{zlib.crc32(platform.node().encode()):08x}-{os.getpid()}"


def is_stale_temp(path: Path, now: float) -> bool:
    """Whether `path` is a temp file (or dir) left by a process that died before renaming it.

    The pid check: a writer on this machine is stale when its process is gone (a reused pid
    counts as alive: the file is kept, never wrongly removed). The age check: a writer on
    another machine, or a name without a writer, is stale after STALE_SECONDS untouched.
    """
    m = TEMP_NAME.match(path.name)
    if m and m["host"] == writer_tag().split("-")[0]:
        return not pid_alive(int(m["pid"]))
    if not (m or OLD_TEMP_NAME.match(path.name)):
        return False  # not one of ours
    try:
        return now - newest_mtime(path) > STALE_SECONDS
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def newest_mtime(path: Path) -> float:
    """The last time anything was written to `path` (a dir: to it or any file in it)."""
    times = [path.stat().st_mtime]
    if path.is_dir():
        times += [p.stat().st_mtime for p in path.iterdir()]
    return max(times)


def remove_stale_temps(folder: Path, recursive: bool = True) -> None:
    """Remove the temp files and dirs that killed processes left in `folder` (is_stale_temp);
    those of live writers stay. Never fails: tidying up must not stop a run."""
    now = time.time()
    with contextlib.suppress(OSError):
        found = folder.rglob(".*") if recursive else folder.glob(".*")
        for p in [p for p in found if is_stale_temp(p, now)]:
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def remove_own_temps(folder: Path) -> None:
    """Remove this process's temp files in `folder`, as it stops on an error or a signal: its
    writes are synchronous, so none is being written now; each is one that a signal cut off
    between its creation and the `try` that would have removed it. Never fails."""
    with contextlib.suppress(OSError):
        for p in folder.rglob(".*"):
            m = TEMP_NAME.match(p.name)
            if m and f"{m['host']}-{m['pid']}" == writer_tag() and not p.is_dir():
                with contextlib.suppress(OSError):
                    p.unlink()


def umask() -> int:
    """This process's umask, read without changing it (Linux), else by setting it back."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def writing(path: Path):
    """Turn an OSError while writing `path` (a full disk, a read-only directory, a name too
    long) into a RunError naming `path`, not the temp file it failed on."""
    try:
        yield
    except OSError as e:
        raise RunError(f"{shown(path)}: cannot write ({os_reason(e)})") from None


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file."""
    mode = "wb" if isinstance(data, bytes) else "w"
    with writing(path):
        fd, tmp = temp_file(path.parent, path.name)
        try:
            with os.fdopen(fd, mode) as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# Floats in the CSV and JSON files (and --json) have 10 significant digits: 0.040006, not
# 0.04000600000000001. Far finer than any metric or hyperparameter needs, and still the same
# bytes for equal runs. Nothing that must round-trip exactly (checkpoints, weights, the search
# plan, config.yaml) goes through these writers.
FLOAT_DIGITS = 10


def rounded(x: float) -> float:
    """x at FLOAT_DIGITS significant digits (nan and inf as they are)."""
    return float(f"{x:.{FLOAT_DIGITS}g}") if math.isfinite(x) else float(x)


def rounded_floats(obj):
    """obj with every float in it (numpy's too, in dicts, lists and tuples) rounded."""
    obj = python_scalar(obj)
    if isinstance(obj, float):
        return rounded(obj)
    if isinstance(obj, dict):
        return {k: rounded_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded_floats(v) for v in obj]
    return obj


def python_scalar(v):
    """A numpy scalar as the Python value it shows as (a float32 by its own shortest digits,
    not its float64 expansion); anything else as it is."""
    if isinstance(v, np.floating) and not isinstance(v, np.float64):
        return float(str(v))
    return v.item() if isinstance(v, np.generic) else v


def json_text(obj, **dumps) -> str:
    """JSON of obj, floats rounded (rounded_floats), numpy scalars and paths as values."""
    return json.dumps(rounded_floats(obj), default=_jsonable, **dumps)


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json_text(obj, indent=2) + "\n")


def _jsonable(v):
    if isinstance(v, np.generic):
        return rounded_floats(v)
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def save_npz(path: Path, **arrays) -> None:
    with writing(path):
        fd, tmp = temp_file(path.parent, path.name, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def versions() -> dict:
    from importlib.metadata import version

    return {
        "cifar2l": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pydantic": version("pydantic"),
        "threadpoolctl": version("threadpoolctl"),
    }


def base_summary(command: str, run_dir: Path, seed: int) -> dict:
    return {
        "command": command,
        "status": "running",
        "run_dir": str(run_dir),
        "seed": seed,
        "seconds": None,
        "argv": sys.argv,
        "versions": versions(),
        "machine": machine.describe(),  # what bitwise reproducibility depends on
    }


def as_typed(argv: list[str]) -> str:
    """A command line as the user types it: `cifar2l train configs/default.yaml ...`, whether
    it ran as the console script (argv[0] .venv/bin/cifar2l), as `python -m cifar2l` (argv[0]
    .../cifar2l/__main__.py) or is an old record with the interpreter in front of either."""
    import shlex

    words = list(argv)
    if words and Path(words[0]).name.startswith("python"):  # an interpreter in front
        words = words[1:]
        if words[:1] == ["-m"]:  # python -m cifar2l ...
            words = words[1:]
    return shlex.join(["cifar2l", *words[1:]])  # words[0]: the program, whatever its path


def write_command(run_dir: Path, append: bool = False) -> None:
    line = as_typed(sys.argv) + "\n"
    before = (run_dir / "command.txt").read_text() if append else ""
    atomic_write(run_dir / "command.txt", before + line)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    # Floats at FLOAT_DIGITS significant digits: equal runs give byte-identical files.
    lines = [",".join(columns)]
    lines += [",".join(csv_cell(r[c]) for c in columns) for r in rows]
    atomic_write(path, "\n".join(lines) + "\n")


def csv_cell(v) -> str:
    """A value as the CSV files of a run hold it: a float rounded (FLOAT_DIGITS)."""
    v = python_scalar(v)
    return repr(rounded(v)) if isinstance(v, float) else str(v)


class Run:
    """An open run directory and its summary, finalised by `open_run`."""

    def __init__(self, path: Path, summary: dict):
        self.path = path
        self.summary = summary

    def save_summary(self) -> None:
        write_json(self.path / "summary.json", self.summary)


def open_run(out: Path, command: str, name: str, cfg, config_text: str, started=None):
    """A fresh run directory under `out`, recorded and finalised by `start_run`."""
    return start_run(create_run_dir(Path(out), command, name), command, cfg, config_text, started)


def locked(path: Path) -> bool | None:
    """Whether a process holds a flock on `path` now (dir_lock, a search trial's claim), read
    from Linux's /proc/locks without taking the lock, so a process about to take it is never
    turned away. None where the system cannot say: no /proc/locks, `path` gone, or a network
    file system (LOCAL_FILE_SYSTEMS)."""
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_text()
        if file_system(path) not in LOCAL_FILE_SYSTEMS:
            return None
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any("FLOCK" in line and inode in line.split() for line in table.splitlines())


# File systems whose flocks all show in this machine's /proc/locks. Not a network one (NFS,
# Lustre, GPFS, ...): a shard on another node holds its lock on the server, unseen here.
LOCAL_FILE_SYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs"}


def file_system(path: Path) -> str | None:
    """The type of the file system `path` is on (the longest mount point of /proc/mounts
    that contains it); None when unknown."""
    real, best = os.path.realpath(path), ("", None)
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1].replace("\\040", " ") if len(fields) > 2 else ""
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best[1]


def status_of(path: Path, summary: dict) -> str:
    """The summary's status as a person should read it: a `running` run that no process works
    in (its process was killed with SIGKILL, or its machine went down) says so, and an
    unfinished train or search run names the command that continues it."""
    status = str(summary.get("status"))
    if status == "running" and locked(path) is False:
        status = "running, but no process is working in it (killed?)"
    elif status != "interrupted":
        return status
    resume = resume_command(path, summary)
    return f"{status}: continue it with {resume}" if resume else status


def resume_command(path: Path, summary: dict) -> str | None:
    """The command that continues the unfinished run `path` (None: it cannot be resumed)."""
    if path.parent.name == "trials" and (path.parent.parent / "search.json").is_file():
        return f"cifar2l search --resume {path.parent.parent}"  # a search trial
    if summary.get("command") in ("train", "search"):
        return f"cifar2l {summary['command']} --resume {path}"
    return None


@contextlib.contextmanager
def dir_lock(path: Path):
    """Hold an exclusive flock on the directory `path` itself (nothing is written into it);
    RunError when another process holds it. The operating system releases it when its holder
    dies, however it dies, so a run killed with SIGKILL can still be resumed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise RunError(f"{path}: cannot open the run directory ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{path}: another cifar2l process is working in this run "
                           "directory (training or resuming it); wait for it or stop it") \
                from None  # fmt: skip
        except OSError:  # a file system without locks on directories (e.g. NFS): go unlocked
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def start_run(path: Path, command: str, cfg, config_text: str, started=None, fresh=True,
              locked=False):  # fmt: skip
    """Record config and command in `path`; mark the summary completed, failed or interrupted.

    `started` (a perf_counter value) counts work done before the directory existed. An error
    with a `status` attribute (e.g. "diverged") records that status instead of "failed"; so
    does a failure to write the final summary (a full disk): the run never stays `running`.
    A resumed run (fresh=False) keeps its config.yaml and adds its command to command.txt.
    The directory is locked (dir_lock) meanwhile, unless the caller holds it (`locked`).
    """
    with contextlib.nullcontext() if locked else dir_lock(path), \
            _recorded(path, command, cfg, config_text, started, fresh) as run:  # fmt: skip
        yield run


@contextlib.contextmanager
def _recorded(path: Path, command: str, cfg, config_text: str, started, fresh: bool):
    run = Run(path, base_summary(command, path, cfg.seed))
    start = time.perf_counter() if started is None else started
    try:  # a signal while the directory is laid out still leaves it marked interrupted
        if not fresh:
            remove_stale_temps(run.path)  # of the attempt it resumes, if that was killed
        record_start(run, config_text, fresh)
        yield run
        run.summary["status"] = "completed"
        run.summary["seconds"] = round(time.perf_counter() - start, 3)
        if "timing" in run.summary:
            run.summary["timing"]["total"] = run.summary["seconds"]
        run.save_summary()
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        run.summary["status"] = "interrupted" if interrupted else getattr(e, "status", "failed")
        run.summary["error"] = "interrupted" if interrupted else str(e) or type(e).__name__
        run.summary["seconds"] = round(time.perf_counter() - start, 3)
        save_last_summary(run)
        remove_own_temps(run.path)
        if getattr(e, "status", None) == "interrupted":  # a signal: name where to go on
            e.run_dir, e.resume = run.path, resume_command(run.path, run.summary)
        raise
    remove_stale_temps(run.path)  # a finished run keeps no leftovers of killed attempts


def record_start(run: Run, config_text: str, fresh: bool) -> None:
    """config.yaml, command.txt and a `running` summary. When one cannot be written (a full
    disk), a fresh run's files are removed again, and its directory when that leaves it empty:
    no run directory without a summary is left behind."""
    try:
        if fresh:
            atomic_write(run.path / "config.yaml", config_text)
        write_command(run.path, append=not fresh)
        run.save_summary()
    except BaseException:
        if fresh:
            for name in ("config.yaml", "command.txt", "summary.json"):
                (run.path / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run.path.rmdir()  # only when empty (a repeat's dir keeps its snapshots)
        raise


def save_last_summary(run: Run) -> None:
    """Write a stopped run's summary; never raise (the error that stopped the run is the one
    to report).

    On a full disk the atomic write fails, since it needs a new file. Then the `running`
    summary is overwritten in place instead, by a compact one that fits in the bytes the old
    file holds (so it needs no free space): not atomic, but a reader sees a short torn file
    for an instant rather than a dead run marked `running` for good. If even that fails (a file
    system gone read-only), nothing can be written there and the error line is all there is.
    """
    try:
        run.save_summary()
    except (RunError, OSError):
        with contextlib.suppress(OSError):
            overwrite_in_place(run.path / "summary.json", run.summary)


def overwrite_in_place(path: Path, summary: dict) -> None:
    """Rewrite `path` through its own file (no temp file): the compact summary when it fits in
    the file's present size, else its essentials (command, status, error, ...)."""
    size = path.stat().st_size
    essential = {k: summary[k] for k in ("command", "status", "error", "run_dir", "seed",
                                         "seconds") if k in summary}  # fmt: skip
    data = (json_text(summary) + "\n").encode()
    if len(data) > size:
        data = (json_text(essential) + "\n").encode()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


class Clock:
    """Accumulates wall seconds under names: `with clock("eval"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}
