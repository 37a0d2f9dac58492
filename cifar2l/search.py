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

Time: every trial's summary has `seconds` (the wall time charged to it) and `timing: {train,
eval, io, total}` with total == seconds >= train + eval + io; a fused trial is charged an equal
share of its group's pass (see `run_fused`). The search's summary adds the trials up and splits
its own wall time (see `collect`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import checkpoint, console, data, loop, network, plots, runs
from . import config as config_mod
from .errors import ConfigError, DivergedError, RunError
from .loop import METRIC_COLUMNS
from .rngs import init_seeds, make_rngs
from .train import (
    Job,
    check_batch_size,
    final_metrics,
    finish_run,
    run_repeat,
    train_run,
    train_stack,
)

PLAN = "search.json"
FINISHED = ("completed", "failed", "diverged")


# ---------------------------------------------------------------- sampling


def sample_value(dist, rng: np.random.Generator):
    lo_hi = dist.args
    if dist.kind == "log_uniform":
        return float(10 ** rng.uniform(np.log10(lo_hi[0]), np.log10(lo_hi[1])))
    if dist.kind == "uniform":
        return float(rng.uniform(lo_hi[0], lo_hi[1]))
    if dist.kind == "int_uniform":
        return int(rng.integers(lo_hi[0], lo_hi[1], endpoint=True))
    return dist.args[int(rng.integers(len(dist.args)))]


def sample_trials(space: dict, n: int, seed: int) -> list[dict]:
    """n trials of values, drawn in trial order, keys in the order of the space."""
    rng = np.random.default_rng(seed)
    return [{key: sample_value(dist, rng) for key, dist in space.items()} for _ in range(n)]


# ---------------------------------------------------------------- plan


def trial_raw(base: dict, params: dict, init_seed: int) -> dict:
    """The base config (without its search section) with a trial's values and init seed."""
    raw = {k: v for k, v in base.items() if k != "search"}
    for key, value in params.items():
        raw = config_mod.set_dotted(raw, key.split("."), value, f"search.space.{key}")
    return {**raw, "init_seed": init_seed}


def make_plan(cfg, source: str) -> dict:
    """Fix the trials of a search (refining the space first when asked)."""
    search = cfg.search
    if not search.space:
        raise ConfigError(f"{source}: search.space: empty; name at least one key to search")
    refined = None
    if search.refine_from:
        space, refined = refine_space(search.space, Path(search.refine_from), search.refine_top,
                                      search.metric)  # fmt: skip
        search = search.model_copy(update={"space": space})
        cfg = cfg.model_copy(update={"search": search})
    base = cfg.to_dict()
    values = sample_trials(search.space, search.trials, search.seed)
    seeds = init_seeds(search.seed, search.trials)
    for params, seed in zip(values, seeds, strict=True):  # every trial valid, before any work
        config_mod.validate(trial_raw(base, params, seed), f"{source} (search.space)")
    trials = [{"index": i, "params": p, "init_seed": s}
              for i, (p, s) in enumerate(zip(values, seeds, strict=True))]  # fmt: skip
    return {"version": 1, "config": base, "refined_from": refined, "trials": trials}


def refine_space(space: dict, run_dir: Path, top: int, metric: str) -> tuple[dict, dict]:
    """Narrow each (log-)uniform range to the span of the best `top` trials of an earlier run."""
    rows = [r for r in collect_rows(run_dir) if r["status"] == "completed"]
    best = sorted(rows, key=lambda r: (-r[metric], r["trial"]))[:top]
    if not best:
        raise RunError(f"{run_dir}: no completed trials to refine from")
    new, ranges = dict(space), {}
    for key, dist in space.items():
        if dist.kind in ("log_uniform", "uniform") and all(key in r["params"] for r in best):
            vals = [r["params"][key] for r in best]
            ranges[key] = [min(vals), max(vals)]
            new[key] = config_mod.Distribution(**{dist.kind: ranges[key]})
    info = {"run_dir": str(run_dir), "top_trials": [r["trial"] for r in best], "ranges": ranges}
    return new, info


def create_search_dir(path: Path, plan: dict, config_text: str) -> bool:
    """Lay out a search directory once; True if this call created it.

    Safe when many shards start at the same moment: the plan is published with os.link, which
    fails for every process but the first. Later arrivals check that their plan is the same.
    """
    runs.check_writable(path.parent)
    path.mkdir(parents=True, exist_ok=True)
    (path / "trials").mkdir(exist_ok=True)
    text = json.dumps(plan, indent=1)  # unsorted: results.csv keeps the order of the space
    fd, tmp = runs.temp_file(path, PLAN)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        os.link(tmp, path / PLAN)
    except FileExistsError:
        if load_plan(path) != json.loads(text):
            raise ConfigError(f"{path}: holds a different search (other config or values); "
                              "use a new --dir") from None  # fmt: skip
        return False
    finally:
        os.unlink(tmp)
    runs.atomic_write(path / "config.yaml", config_text)
    runs.write_command(path)
    return True


def load_plan(path: Path) -> dict:
    try:
        return json.loads((path / PLAN).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not a search directory (no {PLAN})") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path / PLAN}: unreadable ({e})") from None


# ---------------------------------------------------------------- running trials


def trial_dir(path: Path, index: int) -> Path:
    return path / "trials" / f"{index:03d}"


def trial_status(tdir: Path) -> str | None:
    try:
        return json.loads((tdir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def lock_path(path: Path, index: int) -> Path:
    return path / "trials" / f"{index:03d}.lock"


@contextlib.contextmanager
def claim(path: Path, index: int):
    """Yield True when this process holds trial `index`, False when another process does.

    The claim is an exclusive flock on trials/NNN.lock, which the operating system releases when
    its process dies, however it dies. The holder removes the file while it still holds the
    lock, so no lock file outlives a finished search; `take_lock` keeps that safe.
    """
    f = take_lock(lock_path(path, index))
    if f is None:
        yield False
        return
    try:
        yield True
    finally:
        release_lock(f, lock_path(path, index))


def take_lock(lock: Path):
    """The open lock file, flocked by this process; None when another process holds it.

    A process may open the file just before its holder removes it and then lock that orphan:
    two processes would hold "the" lock. So the lock counts only while the path still names the
    locked file; otherwise try again on the file the path names now (or a new one).
    """
    while True:
        f = open(lock, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        except BaseException:
            f.close()
            raise
        if names_file(lock, f):
            return f
        f.close()


def names_file(path: Path, f) -> bool:
    """Whether `path` names the open file `f` (same inode on the same device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def release_lock(f, lock: Path) -> None:
    """Remove the lock file, then unlock: removed while locked, no other process holds it."""
    try:
        if names_file(lock, f):  # only ever our own file, even if someone removed it by hand
            with contextlib.suppress(OSError):  # a file left behind is harmless, just untidy
                lock.unlink()
    finally:
        f.close()  # releases the flock


def sweep_locks(path: Path) -> None:
    """Remove the lock files of finished trials left by processes that died holding them.

    Safe while other processes work: a lock another process holds is skipped, and a finished
    trial is never run again, so briefly claiming one takes no work away from anyone.
    """
    for lock in sorted((path / "trials").glob("[0-9][0-9][0-9].lock")):
        index = int(lock.stem)
        if trial_status(trial_dir(path, index)) in FINISHED:
            with claim(path, index):
                pass


class DataCache:
    """Prepared splits per (data section, dtype): trials normally share one.

    `seconds` adds up the time spent preparing them: the search's `data` time, charged to no
    trial (else the first trial of a search would carry the data loading of all of them).
    """

    def __init__(self):
        self._prepared = {}
        self.seconds = 0.0

    def get(self, cfg):
        key = (json.dumps(cfg.data.model_dump(), sort_keys=True), cfg.dtype, cfg.seed)
        if key not in self._prepared:
            start = time.perf_counter()
            try:
                split_rng = make_rngs(cfg.seed)["split"]
                self._prepared[key] = data.prepare(cfg.data, cfg.dtype, split_rng)
            finally:
                self.seconds += time.perf_counter() - start
        return self._prepared[key]


def trial_data(cache: DataCache, cfg, index: int):
    """(prepared data, None), or (None, the error to record in the trial's summary).

    Called before the trial's own clock starts, so data preparation is not in its seconds.
    """
    try:
        prep = cache.get(cfg)
        check_batch_size(cfg, prep, f"trial {index}")
        return prep, None
    except Exception as e:  # a data or batch-size error fails the trial, not the search
        return None, e


def charged_start(seconds: float) -> float:
    """A `started` for runs.start_run that also charges the run `seconds` of work done for it
    before its `with` (its directory, its share of a fused pass)."""
    return time.perf_counter() - seconds


def fresh_trial(path: Path, trial: dict, base: dict):
    """An empty trial dir (leftovers of an interrupted attempt removed), its config and text."""
    tdir = trial_dir(path, trial["index"])
    shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True)
    cfg = config_mod.validate(trial_raw(base, trial["params"], trial["init_seed"]), str(tdir))
    return tdir, cfg, config_mod.dump_yaml(cfg)


def resumable(path: Path, trial: dict) -> bool:
    """An interrupted trial with a checkpoint continues from it instead of starting over."""
    tdir = trial_dir(path, trial["index"])
    return trial_status(tdir) == "interrupted" and (tdir / checkpoint.NAME).is_file()


def open_trial(path: Path, trial: dict, base: dict):
    """(dir, config, config text, checkpoint state): the interrupted attempt's checkpoint when
    it left one, else a fresh dir and state None."""
    if not resumable(path, trial):
        return (*fresh_trial(path, trial, base), None)
    tdir = trial_dir(path, trial["index"])
    cfg = config_mod.validate(trial_raw(base, trial["params"], trial["init_seed"]), str(tdir))
    return tdir, cfg, config_mod.dump_yaml(cfg), checkpoint.load(tdir / checkpoint.NAME)


def run_claimed(path: Path, trial: dict, base: dict, cache: DataCache) -> str | None:
    """Train one claimed trial on its own; return its status.

    Its seconds: laying out its directory (io) and its training run; not the data (`trial_data`).
    A resumed trial counts this attempt only, as `train --resume` does.
    """
    clock = runs.Clock()
    with clock("io"):
        tdir, cfg, text, state = open_trial(path, trial, base)
    prep, error = trial_data(cache, cfg, trial["index"])
    started = charged_start(clock.seconds["io"])
    with contextlib.suppress(Exception), runs.start_run(tdir, "train", cfg, text, started,
                                                        fresh=state is None) as run:  # fmt: skip
        if state is not None:
            run.summary["resumed_from_step"] = state.step
        if error is not None:
            raise error
        with console.quiet():
            train_run(run, cfg, prep, text, clock, resume=state)
    return trial_status(tdir)


def fuse_groups(trials: list[dict], base: dict) -> list[list[dict]]:
    """Trials grouped by fuse key, at most search.fuse_max each, in trial order."""
    search = base["search"]
    if search["fuse"] == "off":
        return [[t] for t in trials]
    by_key: dict[str, list[dict]] = {}
    for t in trials:
        cfg = config_mod.validate(trial_raw(base, t["params"], t["init_seed"]), "search")
        by_key.setdefault(loop.fuse_key(cfg), []).append(t)
    size = search["fuse_max"]
    groups = [g[i : i + size] for g in by_key.values() for i in range(0, len(g), size)]
    return sorted(groups, key=lambda g: g[0]["index"])


def run_group(path: Path, group: list[dict], base: dict, cache: DataCache) -> list[tuple]:
    """Claim what is left of a group and train it, fused when more than one trial remains."""
    with contextlib.ExitStack() as held:
        todo = [t for t in group if held.enter_context(claim(path, t["index"]))
                and trial_status(trial_dir(path, t["index"])) not in FINISHED]  # fmt: skip
        alone = [t for t in todo if resumable(path, t)]  # continue from their checkpoints
        todo = [t for t in todo if t not in alone]
        if len(todo) == 1:
            alone, todo = alone + todo, []
        done = [(t, run_claimed(path, t, base, cache)) for t in alone]
        return done + (run_fused(path, todo, base, cache) if todo else [])


@dataclasses.dataclass
class FusedPass:
    """What the trials of a fused group share: their dirs and data, the pass's result
    (the loop's TrainState and the final metrics of every trial) or error, its clock and its
    wall seconds."""

    todo: list[dict]
    made: list[tuple] = dataclasses.field(default_factory=list)
    prep: object = None
    result: loop.TrainState | None = None
    finals: list | None = None
    error: Exception | None = None
    stopped: checkpoint.Interrupted | None = None
    clock: runs.Clock = dataclasses.field(default_factory=runs.Clock)
    seconds: float = 0.0

    def share(self) -> runs.Clock:
        """One trial's equal share of the pass's clock (a copy: finish_run adds to it)."""
        share = runs.Clock()
        share.seconds = {k: v / len(self.todo) for k, v in self.clock.seconds.items()}
        return share

    def started(self) -> float:
        """A start for a trial's start_run that charges it its share of the pass's wall time."""
        return charged_start(self.seconds / len(self.todo))

    def note(self) -> dict:
        return {"fused_with": [t["index"] for t in self.todo],
                "fused_group_seconds": round(self.seconds, 3)}  # fmt: skip


def run_fused(path: Path, todo: list[dict], base: dict, cache: DataCache) -> list[tuple]:
    """Train claimed trials as one wide network, then write each one's own run directory.

    Time: the group's shared pass (laying out the trials' dirs, the fused loop and its metric
    rows; not the data preparation, which is the search's) is split equally between its T
    trials, which have one shape and take the same steps: each trial's timing gets 1/T of the
    pass's train, eval and io, and its seconds 1/T of the pass's wall time (its summary's
    `fused_group_seconds`), plus its own finish (final metrics: eval; files: io).
    """
    start, data_before = time.perf_counter(), cache.seconds
    group = FusedPass(todo)
    with group.clock("io"):
        group.made = [fresh_trial(path, t, base) for t in todo]
    group.prep, group.error = trial_data(cache, group.made[0][1], todo[0]["index"])
    start += cache.seconds - data_before  # data preparation is the search's, not the group's
    if group.error is None:
        train_fused(group)
    group.seconds = time.perf_counter() - start
    if group.stopped is not None:
        interrupt_group(group, group.stopped)
    return [finish_fused(group, i) for i in range(len(todo))]


def train_fused(group: FusedPass) -> None:
    """The fused pass (a trial that diverges is frozen, the others go on) and the final
    metrics of every trial; an error is kept for every trial of the group to record."""
    cfgs = [c for _, c, _ in group.made]
    job = Job(cfgs, [tdir for tdir, _, _ in group.made], group.prep, None, group.clock,
              show_rows=False)  # fmt: skip
    try:
        with console.quiet():
            group.result = train_stack(job, stop_on_divergence=False)
        with group.clock("eval"):
            lam = np.array([c.optim.lambda_ for c in cfgs])
            group.finals = final_metrics(group.result.params, group.prep, lam)
    except checkpoint.Interrupted as stop:
        group.stopped = stop
    except Exception as e:
        group.error = e


def finish_fused(group: FusedPass, i: int) -> tuple:
    """Write trial i of a fused pass (metrics, weights, plots, summary) or record its error."""
    trial, (tdir, cfg, text) = group.todo[i], group.made[i]
    with contextlib.suppress(Exception), \
            runs.start_run(tdir, "train", cfg, text, group.started()) as run:  # fmt: skip
        run.summary.update(group.note())
        if group.error is not None:
            raise group.error
        state = group.result
        if i in state.diverged:
            runs.write_csv(tdir / "metrics.csv", METRIC_COLUMNS, state.rows[i])
            raise DivergedError(f"training diverged at step {state.diverged[i][0]} "
                                f"(lr={state.diverged[i][1]:.6g})")  # fmt: skip
        with console.quiet():
            finish_run(run, cfg, group.prep, network.select(state.params, [i]), state.rows[i],
                       text, group.share(), group.finals[i])  # fmt: skip
    return trial, trial_status(tdir)


def interrupt_group(group: FusedPass, stop) -> None:
    """Leave each trial of an interrupted fused pass resumable on its own, then stop."""
    signum, state = stop.signum, stop.state
    for i, (tdir, cfg, text) in enumerate(group.made):
        with contextlib.suppress(checkpoint.Interrupted, DivergedError), \
                runs.start_run(tdir, "train", cfg, text, group.started()) as run:  # fmt: skip
            run.summary.update(group.note())
            if i in state.diverged:
                t, lr = state.diverged[i]
                raise DivergedError(f"training diverged at step {t} (lr={lr:.6g})")
            mine = state.select([i])
            checkpoint.save(tdir / checkpoint.NAME, mine)
            runs.write_csv(tdir / "metrics.csv", METRIC_COLUMNS, mine.rows[0])
            raise checkpoint.Interrupted(signum)
    raise checkpoint.Interrupted(signum)


def shard_trials(trials: list[dict], shard: tuple[int, int]) -> list[dict]:
    i, n = shard
    return [t for t in trials if t["index"] % n == i]


def run_shard(path: Path, shard: tuple[int, int]) -> dict:
    """Run this shard's unfinished trials in this process; return its work for `collect`:
    `ran` (trials), `trials` (their seconds, as in their summaries), `data` (preparing it)."""
    plan = load_plan(path)
    mine = shard_trials(plan["trials"], shard)
    cache, work = DataCache(), {"workers": 1, "ran": 0, "trials": 0.0}
    with console.progress_bar("trials", total=len(mine)) as advance:
        for group in fuse_groups(mine, plan["config"]):
            for trial, status in run_group(path, group, plan["config"], cache):
                if status is not None:
                    s = read_summary(trial_dir(path, trial["index"]))
                    work["ran"] += 1
                    work["trials"] += s.get("seconds") or 0.0
                    console.log(trial_line(trial, s))
            advance(len(group))
    return {**work, "data": cache.seconds}


def read_summary(tdir: Path) -> dict:
    try:
        return json.loads((tdir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def trial_line(trial: dict, s: dict) -> str:
    """The console line of a finished trial; its seconds are those of its summary."""
    vals = " ".join(f"{k}={fmt_value(v)}" for k, v in trial["params"].items())
    took = f"{s.get('seconds') or 0:.1f} s"
    if "fused_with" in s:  # say that part of it was a share of a pass trained together
        took += f", 1/{len(s['fused_with'])} of a fused pass of {s['fused_group_seconds']:.1f} s"
    if s.get("status") != "completed":
        status, error = s.get("status"), s.get("error", "")
        return f"trial {trial['index']:03d} {vals}: {status}: {error} ({took})"
    ens = s.get("ensemble", {}).get("accuracy", {}).get("val")
    ens = "" if ens is None else f" ensemble_val_accuracy={ens:.4f}"
    return (f"trial {trial['index']:03d} {vals}: val_accuracy={s['accuracy']['val']:.4f}{ens} "
            f"({took})")  # fmt: skip


def fmt_value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def run_jobs(path: Path, jobs: int) -> None:
    """`jobs` worker processes, each a shard of this search; this command's threads (see
    threads.py) are split between them, so the workers never oversubscribe the CPUs."""
    import subprocess
    import sys

    from . import threads

    share = str(threads.split(threads.blas_threads() or threads.available_cpus()[0], jobs))
    env = {**os.environ, threads.ENV: share}
    procs = [
        subprocess.Popen([sys.executable, "-m", "cifar2l", "search", "--resume", str(path),
                          "--shard", f"{i}/{jobs}", "--no-collect", "--quiet"], env=env)
        for i in range(jobs)
    ]  # fmt: skip
    total = len(load_plan(path)["trials"])
    with console.progress_bar("trials", total=total) as advance:
        done = 0
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            now = count_finished(path, total)
            advance(now - done)
            done = now
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        raise RunError(f"{path}: {len(failed)} of {jobs} worker processes failed "
                       f"(exit {failed[0]}); rerun with --resume {path}")  # fmt: skip


def count_finished(path: Path, total: int) -> int:
    return sum(trial_status(trial_dir(path, i)) in FINISHED for i in range(total))


# ---------------------------------------------------------------- collect


def collect_rows(path: Path) -> list[dict]:
    """One row per trial of the plan, ranked: completed by the metric, then the rest by index."""
    plan = load_plan(path)
    metric = plan["config"]["search"]["metric"]
    rows = [trial_row(path, t) for t in plan["trials"]]
    done = sorted((r for r in rows if r["status"] == "completed"),
                  key=lambda r: (-r[metric], r["trial"]))  # fmt: skip
    rest = [r for r in rows if r["status"] != "completed"]
    for rank, r in enumerate(done + rest, start=1):
        r["rank"] = rank
    return done + rest


def trial_row(path: Path, trial: dict) -> dict:
    tdir = trial_dir(path, trial["index"])
    try:
        s = json.loads((tdir / "summary.json").read_text())
    except (OSError, ValueError):
        s = {"status": "pending"}
    acc = s.get("accuracy", {})
    return {
        "trial": trial["index"], "params": trial["params"], "init_seed": trial["init_seed"],
        "val_accuracy": acc.get("val"), "best_val_accuracy": s.get("best_val_accuracy"),
        "ensemble_val_accuracy": s.get("ensemble", {}).get("accuracy", {}).get("val"),
        "train_accuracy": acc.get("train"), "status": s.get("status", "pending"),
        "seconds": s.get("seconds"), "error": s.get("error", ""),
    }  # fmt: skip


def result_columns(space_keys: list[str]) -> list[str]:
    return ["rank", "trial", *space_keys, "val_accuracy", "best_val_accuracy",
            "ensemble_val_accuracy", "train_accuracy", "status", "seconds", "init_seed",
            "error"]  # fmt: skip


def write_results(path: Path, rows: list[dict], keys: list[str]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result_columns(keys))
    for r in rows:
        flat = {**r, **r["params"]}
        writer.writerow(["" if flat.get(c) is None else flat[c] for c in result_columns(keys)])
    runs.atomic_write(path / "results.csv", buf.getvalue())


def collect(path: Path, started: float | None = None, work: dict | None = None) -> dict:
    """Merge the trials into results.csv, best.yaml, search.png and summary.json.

    `seconds` is the wall time of this command (from `started`, a perf_counter value) and
    `timing` splits it: `data` (preparing the splits in this process), `trials` (the trials this
    process ran, each its summary's `seconds`), `jobs` (waiting for --jobs worker processes),
    `collect` (this merge) and `other` (planning, claims, logging); they add up to `seconds`.
    `work` is what this command ran (from `run_shard` or `run_workers`; None: nothing).

    `trial_seconds` adds up the seconds of every trial of the search, wherever and whenever it
    ran. In one process that ran them all it is `timing.trials` <= `seconds`. With N worker
    processes (--jobs, shards, SLURM tasks) working side by side it can be up to N times
    `seconds`, and it includes trials finished by earlier commands (before a --resume, or all of
    them for `search collect`). `workers` says how many processes ran this command's trials (1:
    this one, N: --jobs N, 0: none) and `ran_here` how many trials they ran.
    """
    begun = time.perf_counter()
    started = begun if started is None else started
    plan = load_plan(path)
    sweep_locks(path)  # left by processes killed while holding a claim
    search = plan["config"]["search"]
    keys = list(search["space"])
    rows = collect_rows(path)
    write_results(path, rows, keys)
    done = [r for r in rows if r["status"] == "completed"]
    best = done[0] if done else None
    if best:
        best_cfg = (trial_dir(path, best["trial"]) / "config.yaml").read_text()
        runs.atomic_write(path / "best.yaml", best_yaml_header(path, best, search) + best_cfg)
        plots.search_scatter(done, search, path / "search.png")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "diverged")}
    summary = runs.base_summary("search", path, plan["config"]["seed"])
    summary.update(
        status="completed" if len(rows) == sum(counts.values()) else "running",
        **search_times(rows, work, started, begun),
        trials=len(rows), completed=counts["completed"],
        failed=counts["failed"] + counts["diverged"], diverged=counts["diverged"],
        pending=len(rows) - sum(counts.values()), metric=search["metric"],
        best=best and {"trial": best["trial"], "params": best["params"],
                       "val_accuracy": best["val_accuracy"],
                       search["metric"]: best[search["metric"]]},
        refined_from=plan["refined_from"], best_repeat=best and best_repeat(path, best),
    )  # fmt: skip
    runs.write_json(path / "summary.json", summary)
    return {"summary": summary, "rows": rows, "keys": keys}


def search_times(rows: list[dict], work: dict | None, started: float, begun: float) -> dict:
    """`seconds`, `trial_seconds`, `timing`, `workers` and `ran_here` (see `collect`)."""
    now, work = time.perf_counter(), work or {"workers": 0, "ran": 0}
    parts = {"data": work.get("data", 0.0), "trials": work.get("trials", 0.0),
             "jobs": work.get("jobs", 0.0), "best_repeat": work.get("best_repeat", 0.0),
             "collect": now - begun}  # fmt: skip
    timing = {k: round(v, 3) for k, v in parts.items()}
    seconds = round(now - started, 3)
    timing["other"] = round(seconds - sum(timing.values()), 3)  # the rest: they add up exactly
    return {"seconds": seconds, "trial_seconds": round(sum(r["seconds"] or 0 for r in rows), 3),
            "timing": timing, "workers": work["workers"], "ran_here": work["ran"]}  # fmt: skip


BEST_REPEAT = "best-repeat"


def retrain_best(path: Path, repeat: int) -> float:
    """`--repeat-best K`: train the best trial's config over K initialisation seeds into
    `best-repeat/` (an ordinary `train --repeat` directory); return the seconds it took.

    The best of many noisy trials overstates its own setting (it won partly by luck); the mean
    of K fresh seeds with its std does not, and the std is the seed noise of the search's
    accuracies. A finished best-repeat/ of the same trial and K is kept.
    """
    done = [r for r in collect_rows(path) if r["status"] == "completed"]
    if not done:
        return 0.0
    found = best_repeat(path, done[0])
    if found is not None and found["repeat"] == repeat:
        return 0.0
    start = time.perf_counter()
    shutil.rmtree(path / BEST_REPEAT, ignore_errors=True)  # another trial's, or unfinished
    source = trial_dir(path, done[0]["trial"]) / "config.yaml"
    cfg = config_mod.load_config(source)
    console.log(f"retraining the best trial ({done[0]['trial']:03d}) over {repeat} seeds")
    with console.quiet():  # its table prints with the search's results (collect_and_show)
        run_repeat(cfg, source.read_text(), str(source), path, "best", repeat,
                   into=path / BEST_REPEAT)  # fmt: skip
    return time.perf_counter() - start


def best_repeat(path: Path, best: dict) -> dict | None:
    """The finished retraining of `best` (retrain_best): its accuracies' mean, std, values."""
    target = path / BEST_REPEAT
    try:
        s = json.loads((target / "summary.json").read_text())
        same = (target / "config.yaml").read_text() == \
            (trial_dir(path, best["trial"]) / "config.yaml").read_text()  # fmt: skip
    except (OSError, ValueError):
        return None
    if s.get("status") != "completed" or not same:
        return None
    return {"run_dir": str(target), "trial": best["trial"], "repeat": s["repeat"],
            **{k: s[k] for k in ("accuracy", "accuracy_std", "accuracy_runs")}}  # fmt: skip


def best_yaml_header(path: Path, best: dict, search: dict) -> str:
    vals = ", ".join(f"{k}={fmt_value(v)}" for k, v in best["params"].items())
    return (f"# Best trial {best['trial']:03d} of the search {path}: {vals}\n"
            f"# {search['metric']} = {best[search['metric']]:.4f}. Train it again with:\n"
            f"#   cifar2l train {path / 'best.yaml'}\n")  # fmt: skip


def print_top(result: dict, k: int, title: str) -> None:
    keys = result["keys"]
    done = [r for r in result["rows"][:k] if r["status"] == "completed"]
    metrics = ["val_accuracy", "best_val_accuracy", "train_accuracy"]
    if any(r["ensemble_val_accuracy"] is not None for r in done):
        metrics.insert(2, "ensemble_val_accuracy")
    rows = [[r["rank"], r["trial"], *[r["params"][key] for key in keys], *[r[m] for m in metrics]]
            for r in done]  # fmt: skip
    console.table(title, ["rank", "trial", *keys, *metrics], rows)


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
    if refine is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(
            update={"refine_from": str(refine)})})  # fmt: skip
        config_text = config_mod.dump_yaml(cfg)
    started = time.perf_counter()
    plan = make_plan(cfg, source)
    path = directory or runs.create_run_dir(Path(out), "search", name)
    create_search_dir(path, plan, config_text)
    return execute(path, jobs, parse_shard(shard), collect_after, started, repeat_best)


def check_workers(jobs: int, shard: str | None) -> None:
    part = parse_shard(shard)  # always: a bad --shard must fail before the directory exists
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if jobs > 1 and part != (0, 1):
        raise ConfigError("--jobs and --shard (or a SLURM array) do not combine; use one")


def resume_search(path: Path, *, jobs: int = 1, shard: str | None = None,
                  collect_after: bool = True, repeat_best: int = 1) -> dict:  # fmt: skip
    """`search --resume RUN_DIR`: the stored plan, finished trials skipped."""
    started = time.perf_counter()
    load_plan(path)
    check_workers(jobs, shard)
    return execute(path, jobs, parse_shard(shard), collect_after, started, repeat_best)


def execute(path: Path, jobs: int, part: tuple[int, int], collect_after: bool,
            started: float, repeat_best: int = 1) -> dict:  # fmt: skip
    workers = f", {jobs} worker processes" if jobs > 1 else ""
    console.log(f"search dir: {path}  shard {part[0]}/{part[1]}{workers}")
    work = run_workers(path, jobs) if jobs > 1 else run_shard(path, part)
    if not collect_after or part != (0, 1):
        return {"command": "search", "status": "completed", "run_dir": str(path),
                "shard": f"{part[0]}/{part[1]}", "ran": work["ran"],
                "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
    if repeat_best > 1:
        work["best_repeat"] = retrain_best(path, repeat_best)
    return collect_and_show(path, started, work)


def run_workers(path: Path, jobs: int) -> dict:
    """--jobs: the workers' work for `collect`: how long they took (`jobs`) and the trials that
    finished meanwhile (`ran`: theirs, unless other processes work on the same directory)."""
    total = len(load_plan(path)["trials"])
    before, start = count_finished(path, total), time.perf_counter()
    run_jobs(path, jobs)
    return {"workers": jobs, "ran": count_finished(path, total) - before,
            "jobs": time.perf_counter() - start}  # fmt: skip


def collect_and_show(path: Path, started: float | None = None, work: dict | None = None) -> dict:
    result = collect(path, started, work)
    k = load_plan(path)["config"]["search"]["top_k"]
    print_top(result, k, f"top {k} of {result['summary']['trials']} trials ({path})")
    s = result["summary"]
    console.log(f"completed {s['completed']}, failed {s['failed']}, pending {s['pending']}; "
                f"results: {path / 'results.csv'}")  # fmt: skip
    again = s.get("best_repeat")
    if again:
        console.table(f"best trial {again['trial']:03d} retrained over {again['repeat']} seeds "
                      f"({again['run_dir']})", ["split", "mean", "std"],
                      [[k, v, again["accuracy_std"][k]] for k, v in again["accuracy"].items()])
    return s
