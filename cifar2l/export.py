"""Export run directories to TensorBoard event files (`cifar2l export RUN... --tensorboard DIR`).

Each RUN becomes DIR/<run dir name>/, and each run inside it (the repeats/<k>/ of a --repeat
run, the trials/<i>/ and best-repeat/ of a search) its own TensorBoard run under that, at its
path in the run dir: DIR/<name>/trials/003. A TensorBoard run holds
- a scalar per column of each per-step CSV (metrics.csv, timing.csv, lrrange.csv: every CSV
  with a `step` column) as `<csv name>/<column>` at that step;
- config.yaml (and command.txt) as text;
- hparams: the searched keys of a search (the whole flattened config, scalars only, otherwise),
  and the final metrics of summary.json as `final/<key>` scalars, the hparams table's metrics.

The export is built in a hidden temporary directory and renamed into place at the end, so an
error or an interrupt leaves no half export, and an existing DIR/<name> is never added to.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from . import console, runs
from .errors import ConfigError, RunError, os_reason, shown

INSTALL = "pip install 'cifar2l[tensorboard]'"
OPTION = "--tensorboard"
# Sections of config.yaml that belong to another command (or to the report): no hparams.
COMMAND_SECTIONS = ("gradcheck", "lrrange", "search")
NOT_HPARAMS = ("expected",)
# A summary.json leaf is a final metric when one of its dotted parts is one of these.
METRIC_PARTS = {"accuracy", "accuracy_std", "tta_accuracy", "loss", "cost", "best_val_accuracy",
                "peak_val_accuracy", "suggestion", "suggestion_factor",  # train, lrrange
                "max_rel_error", "floored_rel_error"}  # gradcheck  # fmt: skip


@dataclass
class Part:
    """One TensorBoard run: a run directory (`path`) exported to DIR/`name`."""

    name: str
    path: Path
    summary: dict
    keys: list[str] | None = None  # the hparam keys (a search's); None: the whole config
    hparams: bool = True


def load_writer():
    """tensorboardX's SummaryWriter and its hparams summary; a one-line RunError naming the
    extra that installs it when it is missing or broken."""
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams
    except Exception as e:  # a missing package, or a broken one (a protobuf mismatch)
        raise RunError(f"export {OPTION} needs the tensorboardX package "
                       f"({type(e).__name__}: {e}); install it with: {INSTALL}") from None
    return SummaryWriter, hparams


# ---------------------------------------------------------------- reading runs


def read_summary(run: Path, what: str = "RUN") -> dict:
    """The run's summary.json; a ConfigError (exit 2) naming `run` when it is no run dir."""
    try:
        summary = json.loads((Path(run) / "summary.json").read_text())
    except (OSError, ValueError, RecursionError):
        summary = None
    if not isinstance(summary, dict):
        hint = "; a runs root? give the run directories in it" if nested_summaries(run) else ""
        raise ConfigError(f"{what} {shown(run)}: not a run directory (no readable summary.json"
                          f"{hint})")
    return summary


def read_yaml(path: Path) -> dict:
    """A YAML mapping (read as configs are: `1e-5` is a float), or {} when the file is missing,
    unreadable or no mapping (old or partial runs)."""
    try:
        loaded = config_mod.parse_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def dig(tree, *keys):
    """tree[k1][k2]...; None where a level is missing or no mapping."""
    for k in keys:
        tree = tree.get(k) if isinstance(tree, dict) else None
    return tree


def searched_keys(run: Path) -> list[str]:
    """The dotted keys a search varied: its search.json's space, else its config's."""
    plan = None
    with contextlib.suppress(OSError, ValueError, RecursionError):
        plan = json.loads((run / "search.json").read_text())
    space = dig(plan, "config", "search", "space")
    if not isinstance(space, dict):
        space = dig(read_yaml(run / "config.yaml"), "search", "space")
    return [str(k) for k in space] if isinstance(space, dict) else []


def parts_of(run: Path, name: str) -> list[Part]:
    """The run itself and every run directory inside it (a summary.json), in path order; in a
    search those hold its searched keys, its root none."""
    run = Path(run)
    top = read_summary(run)
    search = top.get("command") == "search"
    keys = searched_keys(run) if search else None
    inner = [Part(f"{name}/{p.parent.relative_to(run).as_posix()}", p.parent,
                  read_json(p), keys) for p in nested_summaries(run)]  # fmt: skip
    return [Part(name, run, top, hparams=not search), *inner]


def read_json(path: Path) -> dict:
    """A JSON object, or {} (a nested run's summary.json that cannot be read: still its CSVs)."""
    with contextlib.suppress(OSError, ValueError, RecursionError):
        loaded = json.loads(path.read_text())
        return loaded if isinstance(loaded, dict) else {}
    return {}


def nested_summaries(run: Path) -> list[Path]:
    """The summary.json files below `run` (not its own), in path order."""
    with contextlib.suppress(OSError):
        return sorted(p for p in Path(run).rglob("*/summary.json") if p.is_file())
    return []


def step_csvs(path: Path) -> list[Path]:
    """The CSVs of a run directory that hold a row per update step (a `step` column)."""
    found = []
    for f in sorted(path.glob("*.csv")):
        with contextlib.suppress(OSError, UnicodeDecodeError), f.open(newline="") as fh:
            if "step" in next(csv.reader(fh), []):
                found.append(f)
    return found


def read_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{"<csv stem>/<column>": [(step, value), ...]} of one per-step CSV; empty or non-numeric
    cells are left out, a row without an integer step is an error naming the line."""
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            step = parse_step(row.get("step"), path, line)
            for column, cell in row.items():
                value = number(cell)
                if column and column != "step" and value is not None:
                    series.setdefault(f"{path.stem}/{column}", []).append((step, value))
    return series


def parse_step(cell, path: Path, line: int) -> int:
    try:
        return int(cell)
    except (TypeError, ValueError):
        raise RunError(f"{shown(path)} line {line}: step {cell!r} is not an integer") from None


def number(cell) -> float | None:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b.c": leaf} of a nested mapping."""
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def hparam_values(cfg: dict, keys: list[str] | None, command) -> dict:
    """The hparams of a run: `keys` of its flattened config, or all of it but the sections of
    other commands; scalars only (None, lists and mappings have no hparams type)."""
    flat = flatten(cfg)
    if keys is None:
        skip = {*NOT_HPARAMS, *(s for s in COMMAND_SECTIONS if s != command)}
        keys = [k for k in flat if k.split(".")[0] not in skip]
    return {k: flat[k] for k in keys if isinstance(flat.get(k), (bool, int, float, str))}


def final_metrics(summary: dict) -> dict[str, float]:
    """{"final/<dotted key>": value} of the accuracies, losses and suggestions in summary.json."""
    return {f"final/{k}": float(v) for k, v in flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and METRIC_PARTS.intersection(k.split("."))}  # fmt: skip


# ---------------------------------------------------------------- writing


def write_part(writer_cls, hparams, part: Part, dest: Path) -> int:
    """One TensorBoard run into `dest`; return the number of scalar points written."""
    series = {}
    for f in step_csvs(part.path):
        series.update(read_series(f))
    last = max((s for points in series.values() for s, _ in points), default=0)
    with writer_cls(logdir=str(dest)) as w:
        for tag, points in series.items():
            for step, value in points:
                w.add_scalar(tag, value, step)
        write_texts(w, part.path)
        if part.hparams:
            write_hparams(w, hparams, part, last)
    return sum(len(p) for p in series.values())


def write_texts(w, path: Path) -> None:
    """config.yaml and command.txt as text, indented into a markdown code block."""
    for name in ("config.yaml", "command.txt"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = (path / name).read_text()
            w.add_text(name, "\n".join("    " + line for line in text.splitlines()), 0)


def write_hparams(w, hparams, part: Part, step: int) -> None:
    """The hparams plugin's session records, into this run's own event file
    (SummaryWriter.add_hparams would open a second run beside it), with the final metrics as
    scalars at the last step. Not its experiment record: TensorBoard takes the columns of the
    first one it finds for the whole logdir, so runs exported with other keys (a search beside
    a train run, another export into the same DIR) would lose theirs; without one it builds
    the columns from every run's session (its keys) and scalars."""
    cfg = read_yaml(part.path / "config.yaml")
    values = hparam_values(cfg, part.keys, part.summary.get("command"))
    metrics = {k: v for k, v in final_metrics(part.summary).items() if math.isfinite(v)}
    _experiment, session_start, session_end = hparams(values, metrics)
    w.file_writer.add_summary(session_start)
    w.file_writer.add_summary(session_end)
    for tag, value in metrics.items():
        w.add_scalar(tag, value, step)


def check_dest(root: Path) -> None:
    """DIR exists (created when missing) and takes new directories; one line otherwise."""
    runs.check_path_length(root, OPTION)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise ConfigError(f"{OPTION} {shown(root)}: path too long ({os_reason(e)})") from None
        raise RunError(f"{OPTION} {shown(root)}: cannot create it ({os_reason(e)})") from None
    if not root.is_dir():
        raise RunError(f"{OPTION} {shown(root)}: not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise RunError(f"{OPTION} {shown(root)}: directory is not writable")


def plan(run_dirs: list[Path], root: Path) -> list[tuple[Path, str]]:
    """(run dir, its name under DIR) for each RUN, checked before anything is written: each a
    run directory, no two of the same name, none exported to DIR before."""
    if not run_dirs:
        raise ConfigError("export: give at least one RUN directory")
    planned, seen = [], {}
    for run in run_dirs:
        read_summary(run)
        name = Path(os.path.abspath(run)).name
        if name in seen and os.path.samefile(seen[name], run):
            continue  # the same run twice
        if name in seen:
            raise ConfigError(f"RUN {shown(run)} and {shown(seen[name])}: both would be exported "
                              f"to {shown(root / name)}; export them to different {OPTION} dirs")
        if os.path.lexists(root / name):
            raise ConfigError(f"{shown(root / name)} exists (an earlier export of {name}?); "
                              f"remove it or choose another {OPTION} DIR")  # fmt: skip
        seen[name] = run
        planned.append((Path(run), name))
    return planned


def remove_stale_exports(root: Path) -> None:
    """Remove the temporary directories that killed exports left in `root` (TensorBoard would
    show them as runs); those of live exports stay. Never fails."""
    now = time.time()
    with contextlib.suppress(OSError):
        for p in root.glob(".*.export.*"):
            if p.is_dir() and not p.is_symlink() and runs.is_stale_temp(p, now):
                shutil.rmtree(p, ignore_errors=True)


def export_run(writer_cls, hparams, run: Path, name: str, root: Path) -> dict:
    """All TensorBoard runs of one RUN, built in a hidden temporary directory of `root` and
    renamed to root/name when complete (removed again on any error)."""
    parts = parts_of(run, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name[:200]}.export.{runs.writer_tag()}.", dir=root))
    try:
        os.chmod(tmp, 0o777 & ~runs.umask())  # mkdtemp's 0700 would hide it from colleagues
        points = sum(write_part(writer_cls, hparams, p, tmp / p.name.partition("/")[2])
                     for p in parts)  # fmt: skip
        os.rename(tmp, root / name)  # fails, rather than merging, if root/name appeared since
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": str(run), "export": str(root / name), "runs": len(parts), "scalars": points}


def run_export(run_dirs: list[Path], tensorboard: Path | None) -> dict:
    """The `export` command: every RUN (and the runs inside it) to TensorBoard event files."""
    started = time.perf_counter()
    if tensorboard is None:
        raise ConfigError(f"export: give {OPTION} DIR (where the event files go)")
    root = Path(tensorboard)
    planned = plan(run_dirs, root)
    writer_cls, hparams = load_writer()
    check_dest(root)
    remove_stale_exports(root)
    done = [export_run(writer_cls, hparams, run, name, root) for run, name in planned]
    console.table("exported to TensorBoard", ["run", "runs", "scalar points", "event files in"],
                  [[d["run"], d["runs"], d["scalars"], d["export"]] for d in done])
    console.log(f"view them with: tensorboard --logdir {root}")
    return {"command": "export", "status": "completed", "tensorboard": str(root),
            "exports": done, "seconds": round(time.perf_counter() - started, 3)}
