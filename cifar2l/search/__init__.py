"""Random search over any config keys: trials, shards, parallel workers, resume, collect, refine.

A search directory holds `search.json` (the plan: base config, every trial's values and
initialisation seed), `trials/<NNN>/` (one ordinary train run directory per trial) and, after
`collect`, `results.csv`, `best.yaml`, `search.png` and `summary.json`.

The plan is fixed when the directory is created, so every process that works on the search
(shards, workers, resubmitted jobs) runs the same trials with the same values. A trial is claimed
with an exclusive file lock, which the operating system releases when its process dies: no trial
runs twice at once, and an interrupted one continues from its checkpoint (or runs again). The
lock file is removed when its claim is released, so a finished search leaves none.
Trials that differ only in per-trial settings train together as one stack of networks (loop.py).

Failures: a trial that fails (its error in its summary) does not stop the others, but the
command exits 1 naming how many failed and why, and the next command over those trials
(--resume, the same --dir or shard, but not a --jobs worker) retries them from scratch, once, at
its start. A diverged trial is a result and is never retried. Missing, unreadable or corrupt data
is the same for every trial: it stops the search (before any directory, when it is missing).

Time: every trial's summary has `seconds` (the wall time charged to it) and `timing: {train,
eval, io, total}` with total == seconds >= train + eval + io; a fused trial is charged an equal
share of its group's pass (see `trials.run_fused`). The search's summary adds the trials up and
splits its own wall time (see `results.collect`).

The package, one job a module, each importing only those above it:

    plan.py     sampling, the plan (search.json), refining a space, the trials' dirs and rows
    trials.py   claims (file locks), running trials alone or fused, shards, --jobs workers
    results.py  collect: results.csv, best.yaml, search.png, summary.json; --repeat-best
    __init__    the `search` command (below), and the names other modules and tests use
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .. import checkpoint, console, runs
from .. import config as config_mod
from ..errors import ConfigError
from ..rngs import init_seeds
from .plan import (
    FINISHED,
    RESULTS,
    create_search_dir,
    load_plan,
    make_plan,
    refine_space,
    sample_trials,
    trial_dir,
    trial_raw,
    trial_status,
)
from .results import check_outcome, collect, collect_and_show, retrain_best
from .trials import (
    check_sources,
    claim,
    follow_parent,
    fuse_groups,
    retry_failed,
    run_shard,
    run_workers,
    shard_trials,
)

__all__ = [
    # the `search` command
    "parse_shard", "run_search", "check_workers", "resume_search", "execute", "collect_command",
    # re-exported for the CLI, benchmarks/bench.py and the tests
    "init_seeds", "sample_trials", "trial_raw", "make_plan", "refine_space",
    "create_search_dir", "load_plan", "trial_dir", "trial_status", "claim", "fuse_groups",
    "collect", "collect_and_show",
]  # fmt: skip


# ---------------------------------------------------------------- the `search` command


def parse_shard(text: str | None) -> tuple[int, int]:
    """--shard I/N, else SLURM's array variables, else the whole search (0/1)."""
    if text is None:
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if not count:
            return (0, 1)
        try:
            first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
            i, n = int(os.environ["SLURM_ARRAY_TASK_ID"]) - first, int(count)
        except (KeyError, ValueError):
            raise ConfigError("SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID/MIN are "
                              "missing or not integers; pass --shard I/N") from None
        if not 0 <= i < n:  # e.g. a stepped array (--array=0-15:4): shards would be skipped
            task = f"SLURM_ARRAY_TASK_ID={i + first} (MIN {first}, COUNT {n})"
            raise ConfigError(f"{task}: no shard 0..{n - 1}; use a contiguous array or --shard")
        return (i, n)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return (i, n)


def run_search(cfg, config_text: str, source: str, out, name: str, *, jobs: int = 1,
               shard: str | None = None, directory: Path | None = None,
               refine: Path | None = None, collect_after: bool = True,
               repeat_best: int = 1) -> dict:  # fmt: skip
    """The `search` command: plan (or reuse) a search directory, run trials, collect, and with
    `repeat_best` K > 1 retrain the best trial over K seeds (retrain_best)."""
    check_workers(jobs, shard)
    check_shared_dir(shard, directory)
    if directory is not None:
        runs.check_path_length(directory, "--dir")  # before anything looks at it
    if refine is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(
            update={"refine_from": str(refine)})})  # fmt: skip
        config_text = config_mod.dump_yaml(cfg)
    started = time.perf_counter()
    plan = make_plan(cfg, source)
    if directory is None or not directory.exists():
        check_sources(plan, load=True)  # missing or unreadable data: one error, no search dir
    path = directory or runs.create_run_dir(Path(out), "search", name)
    create_search_dir(path, plan, config_text)
    return execute(path, jobs, parse_shard(shard), collect_after, started, repeat_best)


def check_workers(jobs: int, shard: str | None) -> None:
    part = parse_shard(shard)  # always: a bad --shard must fail before the directory exists
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if jobs > 1 and part != (0, 1):
        raise ConfigError("--jobs and --shard (or a SLURM array) do not combine; use one")


def check_shared_dir(shard: str | None, directory: Path | None) -> None:
    """A shard without --dir would start a search of its own in a fresh directory: N shards,
    N unrelated part-searches, none of which ever sees the others' trials."""
    part = parse_shard(shard)
    if part != (0, 1) and directory is None:
        what = f"--shard {shard}" if shard else f"a SLURM array task (shard {part[0]}/{part[1]})"
        raise ConfigError(f"{what}: needs --dir DIR, the search directory all shards share")


def resume_search(path: Path, *, jobs: int = 1, shard: str | None = None,
                  collect_after: bool = True, repeat_best: int = 1) -> dict:  # fmt: skip
    """`search --resume RUN_DIR`: the stored plan; completed and diverged trials are skipped,
    failed ones retried (execute)."""
    started = time.perf_counter()
    load_plan(path)
    check_workers(jobs, shard)
    return execute(path, jobs, parse_shard(shard), collect_after, started, repeat_best)


def execute(path: Path, jobs: int, part: tuple[int, int], collect_after: bool,
            started: float, repeat_best: int = 1) -> dict:  # fmt: skip
    """Run the trials of shard `part` (or of `jobs` workers), then collect (the whole search
    only) and raise a RunError when trials failed (check_outcome).

    `collect_after` is false only for the --jobs workers: their parent retries the failed
    trials before it starts them and reports the failures once, after collecting.
    """
    follow_parent()  # a --jobs worker ends with the command that started it
    workers = f", {jobs} worker processes" if jobs > 1 else ""
    console.log(f"search dir: {path}  shard {part[0]}/{part[1]}{workers}")
    with resumable_search(path, part):
        return run_and_collect(path, jobs, part, collect_after, started, repeat_best)


@contextlib.contextmanager
def resumable_search(path: Path, part: tuple[int, int]):
    """A signal that stops the search names the command that continues it (of this shard)."""
    try:
        yield
    except checkpoint.Interrupted as stop:
        shard = f" --shard {part[0]}/{part[1]}" if part != (0, 1) else ""
        stop.run_dir, stop.resume = path, f"cifar2l search --resume {path}{shard}"
        stop.step = None  # a trial's step, not the search's
        raise


def run_and_collect(path: Path, jobs: int, part: tuple[int, int], collect_after: bool,
                    started: float, repeat_best: int) -> dict:  # fmt: skip
    """execute's work: the trials, then (the whole search) best-repeat and collect."""
    prepare(path, jobs, part, retry=collect_after)
    work = run_workers(path, jobs) if jobs > 1 else run_shard(path, part)
    if not collect_after:
        return shard_summary(path, part, work, started)
    if part != (0, 1):
        check_outcome(path, part)
        return shard_summary(path, part, work, started)
    if repeat_best > 1:
        work["best_repeat"] = retrain_best(path, repeat_best)
    summary = collect_and_show(path, started, work)
    warn_pending(path)
    check_outcome(path, part, summary, repeat_best)
    return summary


def prepare(path: Path, jobs: int, part: tuple[int, int], retry: bool) -> None:
    """Before the trials of shard `part`: check that the data is there when any trial still
    needs it (a finished search collects without it), then make its failed trials pending."""
    plan = load_plan(path)
    (path / "trials").mkdir(exist_ok=True)  # the claims' lock files live there
    mine = shard_trials(plan["trials"], part)
    if any(trial_status(trial_dir(path, t["index"])) not in RESULTS for t in mine):
        check_sources(plan, load=jobs > 1)  # with --jobs: decoded once, not by every worker
    if retry:
        retried = retry_failed(path, mine)
        if retried:
            console.log(f"retrying {retried} failed trials")


def collect_command(path: Path) -> dict:
    """`search collect DIR`: merge what has finished; exit 1 (RunError) when trials failed."""
    summary = collect_and_show(path)
    check_outcome(path, (0, 1), summary)
    return summary


def shard_summary(path: Path, part: tuple[int, int], work: dict, started: float) -> dict:
    return {"command": "search", "status": "completed", "run_dir": str(path),
            "shard": f"{part[0]}/{part[1]}", "ran": work["ran"],
            "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def warn_pending(path: Path) -> None:
    """Say which trials are still unfinished after this process ran all it could: other
    processes (shards, workers of another command) hold them now."""
    total = len(load_plan(path)["trials"])
    left = [i for i in range(total) if trial_status(trial_dir(path, i)) not in FINISHED]
    if left:
        names = ", ".join(f"{i:03d}" for i in left[:10]) + (", ..." if len(left) > 10 else "")
        console.warn(f"{path}: {len(left)} trial(s) still pending ({names}): other processes "
                     f"are running them; when they are done: cifar2l search collect {path} "
                     f"(or cifar2l search --resume {path} to run what is left)")  # fmt: skip
