"""The run directories under a runs root, one row each: `cifar2l runs`.

A row says what a run is (command, status, start, wall time), how its config differs from the
config file it came from (its --set and --seed overrides) and its headline accuracies (the mean
+- std of a --repeat run, the best trial of a search). Reading never fails on a damaged run:
a directory without a readable summary.json is a row whose status is `unreadable`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from datetime import datetime
from pathlib import Path

from .errors import ConfigError, shown

COLUMNS = ["name", "command", "status", "when", "wall", "overrides", "val", "test", "ensemble",
           "tta"]  # fmt: skip
ACCURACIES = ["val", "test", "ensemble", "tta"]
SORTS = ["name", "when", "wall", "val", "test", "tta"]
COMMANDS = ["train", "search", "lrrange", "gradcheck", "evaluate", "compare"]
STATUSES = ["completed", "running", "interrupted", "failed", "diverged", "unreadable"]
# Options of the run commands that take a value: the rest of a command line's words are flags
# or its positional arguments (CONFIG, or evaluate's TARGET).
VALUE_OPTIONS = {"--set", "-s", "--out", "--name", "--seed", "--threads", "--repeat", "--resume",
                 "--split", "--tta", "--jobs", "-j", "--shard", "--dir", "--refine",
                 "--repeat-best", "--metric"}  # fmt: skip
STAMP = re.compile(r"^(\d{8}-\d{6})-")
# Keys left out of the overrides: the study's numbers (`expected:`) are no setting of a run.
IGNORED = ("expected",)
# Columns narrower than this fold their text on a narrow terminal, rather than vanish.
MIN_WIDTHS = {"name": 24, "status": 11, "when": 10, "wall": 6, "overrides": 16}


# ---------------------------------------------------------------- finding runs


def read_summary(path: Path) -> dict | None:
    """The run's summary.json as a dict; None when missing or not a JSON object."""
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return summary if isinstance(summary, dict) else None


def find_runs(root: Path) -> list[Path]:
    """The directories under `root` that are (or look meant to be) runs, by name: each child,
    and the runs one level down in a child that is only a folder of runs (an --out of its
    own, e.g. runs/proxy-r4/<run>). Hidden entries are skipped."""
    root = Path(root)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such runs directory"
        raise ConfigError(f"{shown(root)}: {what}")
    if (root / "summary.json").is_file():
        return [root]  # ROOT is one run: its row alone, not its repeats or trials
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += ([] if (child / "summary.json").exists() else runs_inside(child)) or [child]
    return found


def runs_inside(folder: Path) -> list[Path]:
    """The run directories directly in `folder`; [] when it cannot be read."""
    try:
        return sorted(p for p in folder.iterdir() if (p / "summary.json").is_file())
    except OSError:
        return []


# ---------------------------------------------------------------- one row


def run_row(path: Path, root: Path) -> dict:
    """The row of the run `path` (see COLUMNS), its name relative to `root`."""
    from .runs import status_of

    name = path.relative_to(root).as_posix() if path != root else path.name
    summary = read_summary(path)
    if summary is None:
        return {**{c: None for c in COLUMNS}, "name": name, "path": str(path),
                "status": "unreadable", "status_detail": "no readable summary.json",
                "source": None, "overrides": {}, "overrides_error": None,
                **{f"{k}_std": None for k in ACCURACIES}}  # fmt: skip
    detail = status_of(path, summary)
    command = summary.get("command")
    row = {"name": name, "path": str(path), "command": None if command is None else str(command),
           "status": detail.split(":")[0].split(",")[0], "status_detail": detail,
           "when": started(path), "wall": wall_seconds(summary)}  # fmt: skip
    row.update(override_fields(path, summary))
    row.update(accuracies(path, summary))
    return row


def started(path: Path) -> str | None:
    """When the run started: its directory name's stamp, else config.yaml's (or command.txt's)
    modification time, as an ISO date-time."""
    m = STAMP.match(path.name)
    if m:
        return datetime.strptime(m[1], "%Y%m%d-%H%M%S").isoformat()
    for name in ("config.yaml", "command.txt", "summary.json"):
        try:
            return datetime.fromtimestamp(int((path / name).stat().st_mtime)).isoformat()
        except OSError:
            continue
    return None


def wall_seconds(summary: dict) -> float | None:
    seconds = summary.get("seconds")
    return float(seconds) if isinstance(seconds, int | float) else None


# ---------------------------------------------------------------- overrides


def command_words(path: Path, summary: dict) -> list[str]:
    """The words of the command that started the run (after `cifar2l`): command.txt's first
    line (a resume appends its own), else the summary's argv; [] when neither is readable or
    names the summary's command."""
    try:
        first = shlex.split((path / "command.txt").read_text().splitlines()[0])[1:]
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        first = []
    argv = summary.get("argv")
    second = [str(a) for a in argv[1:]] if isinstance(argv, list) else []
    return next((w for w in (first, second) if w and w[0] == summary.get("command")), [])


def positionals(words: list[str]) -> list[str]:
    """The positional arguments of a command line (words[0] is the command)."""
    out, skip = [], False
    for word in words[1:]:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in VALUE_OPTIONS
        else:
            out.append(word)
    return out


def source_config(path: Path, summary: dict) -> Path | None:
    """The config file the run came from, where it is now: the path as typed, taken from the
    directory the command ran in (known from the summary's relative run_dir), else from here.
    An evaluate run came from its target's config.yaml; None: the command names none."""
    words = command_words(path, summary)
    args = positionals(words)
    if not args or (words and words[0] == "search" and args[0] == "collect"):
        return None
    typed = Path(args[0])
    if words[0] == "evaluate":
        typed = typed / "config.yaml" if typed.suffix != ".npz" else typed.parent / "config.yaml"
    if typed.is_absolute():
        return typed
    there = ran_in(path, summary)
    return there / typed if there is not None and (there / typed).exists() else typed


def ran_in(path: Path, summary: dict) -> Path | None:
    """The working directory of the command that made `path`, when its summary's run_dir is
    relative and `path` still ends with it."""
    recorded = Path(str(summary.get("run_dir", "")))
    here = path.resolve()
    if recorded.is_absolute() or not recorded.parts or here.parts[-len(recorded.parts):] != \
            recorded.parts:  # fmt: skip
        return None
    return here.parents[len(recorded.parts) - 1]


def flat_config(path: Path) -> dict:
    """A config file resolved by load_config, as dotted keys. Raises ConfigError."""
    from .config import load_config
    from .items import flatten

    return flatten(load_config(path).to_dict())


def override_fields(path: Path, summary: dict) -> dict:
    """`overrides`: {dotted key: the run's value} where its config.yaml differs from its source
    config; `overrides_error`: why that could not be told (a source gone or unreadable)."""
    if not (path / "config.yaml").is_file():
        return {"source": None, "overrides": {}, "overrides_error": None}
    source = source_config(path, summary)
    if source is None:
        return {"source": None, "overrides": {}, "overrides_error": "no source config named"}
    try:
        ours, theirs = flat_config(path / "config.yaml"), flat_config(source)
    except ConfigError as e:
        missing = not source.exists()
        why = f"source {source} is gone" if missing else f"unreadable: {e}"
        return {"source": str(source), "overrides": {}, "overrides_error": why}
    return {"source": str(source), "overrides": differing(ours, theirs), "overrides_error": None}


def differing(ours: dict, theirs: dict) -> dict:
    """{key: our value} for the dotted keys where `ours` differs from `theirs`. A section that
    is null in ours but set in theirs (train.average) is one key, `train.average: None`."""
    out = {}
    for key in dict.fromkeys([*ours, *theirs]):
        if key.split(".")[0] in IGNORED or (key in ours and ours[key] == theirs.get(key, ours)):
            continue
        if key not in ours:  # ours holds a null where theirs has a section
            parts = key.split(".")
            key = next((p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))
                        if p in ours), None)  # fmt: skip
            if key is None:
                continue
        out[key] = ours[key]
    return out


# ---------------------------------------------------------------- accuracies


def headline(path: Path, summary: dict) -> tuple[Path, dict] | None:
    """The run (directory, summary) whose numbers stand for `path`: a search's best trial,
    else the run itself; None for a search without a readable best trial."""
    if summary.get("command") != "search":
        return path, summary
    best = best_trial(path, summary)
    trial = read_summary(best) if best is not None else None
    return (best, trial) if trial is not None else None


def accuracies(path: Path, summary: dict) -> dict:
    """val, test, ensemble and tta accuracies (each with `<key>_std` for a --repeat run): a
    search's from its best trial, an evaluate run's in the column of its split."""
    found = headline(path, summary)
    if found is None:
        return {k: None for a in ACCURACIES for k in (a, f"{a}_std")}
    summary = found[1]
    out = {}
    for key, block, split in (("val", summary, "val"), ("test", summary, "test"),
                              ("ensemble", summary.get("ensemble"), None),
                              ("tta", summary.get("tta"), None)):  # fmt: skip
        out[key], out[f"{key}_std"] = block_value(block, split)
    if summary.get("command") == "evaluate" and isinstance(summary.get("accuracy"), float):
        out["val"] = out["test"] = None
        if summary.get("split") in ("val", "test"):
            out[summary["split"]] = summary["accuracy"]
    return out


def block_value(block, split: str | None) -> tuple[float | None, float | None]:
    """(mean, std) of `block`'s accuracy on `split` (None: test, else val); std None for one
    run."""
    if not isinstance(block, dict) or not isinstance(block.get("accuracy"), dict):
        return None, None
    acc, std = block["accuracy"], block.get("accuracy_std") or {}
    split = split or ("test" if "test" in acc else "val")
    value, spread = acc.get(split), std.get(split) if isinstance(std, dict) else None
    number = (int, float)
    return (value if isinstance(value, number) else None,
            spread if isinstance(spread, number) else None)


def best_trial(path: Path, summary: dict) -> Path | None:
    """The search's best trial directory (its summary's best.trial)."""
    best = summary.get("best")
    trial = best.get("trial") if isinstance(best, dict) else None
    return path / "trials" / f"{trial:03d}" if isinstance(trial, int) else None


# ---------------------------------------------------------------- the listing


def check_choice(option: str, value: str | None, allowed: list[str]) -> None:
    if value is not None and value not in allowed:
        raise ConfigError(f"{option} {shown(value)}: must be one of {', '.join(allowed)}")


def list_runs(root: Path, command: str | None = None, status: str | None = None,
              name: str | None = None, sort: str = "name") -> list[dict]:  # fmt: skip
    """The rows of the runs under `root`, filtered and sorted (accuracies and wall time
    highest first, rows without one last)."""
    check_choice("--command", command, COMMANDS)
    check_choice("--status", status, STATUSES)
    check_choice("--sort", sort, SORTS)
    rows = [run_row(p, Path(root)) for p in find_runs(root)]
    rows = [r for r in rows if (command is None or r["command"] == command)
            and (status is None or r["status"] == status)
            and (name is None or fnmatch.fnmatchcase(Path(r["name"]).name, name)
                 or fnmatch.fnmatchcase(r["name"], name))]  # fmt: skip
    return sort_rows(rows, sort)


def sort_rows(rows: list[dict], sort: str) -> list[dict]:
    if sort in ("name", "when"):
        return sorted(rows, key=lambda r: (r[sort] is None, r[sort] or "", r["name"]))
    return sorted(rows, key=lambda r: (r[sort] is None, -(r[sort] or 0.0), r["name"]))


# ---------------------------------------------------------------- cells


def cells(row: dict) -> list[str]:
    """The row as the table shows it."""
    return [row["name"], row["command"] or "-", status_cell(row),
            when_cell(row["when"]), duration(row["wall"]), overrides_cell(row),
            *(pm(row[k], row.get(f"{k}_std")) for k in ACCURACIES)]


def status_cell(row: dict) -> str:
    """The status word, `(killed?)` for a `running` run that no process works in, and
    `(resumable)` for an unfinished run that --resume continues."""
    detail = row.get("status_detail") or ""
    return row["status"] + (" (killed?)" if "killed?" in detail else "") + \
        (" (resumable)" if "--resume" in detail else "")  # fmt: skip


def when_cell(when: str | None) -> str:
    return when.replace("T", " ")[:16] if when else "-"


def duration(seconds: float | None) -> str:
    """4.2s, 3m07s, 1h42m."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def overrides_cell(row: dict) -> str:
    """One `key=value` a line (a long value cut in the middle), or why they are unknown."""
    if row.get("overrides_error"):
        return f"? ({row['overrides_error']})"
    items = row.get("overrides") or {}
    return "\n".join(f"{k}={shown(json.dumps(v, default=str), 48)}"
                     for k, v in items.items()) or "-"  # fmt: skip


def table(rows: list[dict], title: str):
    """The rows as a rich Table: names whole, overrides folded."""
    from rich.table import Table

    resumable = "--resume" in "".join(r.get("status_detail") or "" for r in rows)
    caption = "resumable: `cifar2l train|search --resume RUN_DIR` continues it" \
        if resumable else None  # fmt: skip
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c in COLUMNS:
        t.add_column(c, justify="right" if c in SORTS[2:] + ["ensemble"] else "left",
                     overflow="fold", min_width=MIN_WIDTHS.get(c, 8))  # fmt: skip
    for r in rows:
        t.add_row(*cells(r))
    return t


def pm(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} +- {std:.4f}" if std is not None else f"{value:.4f}"
