"""Running the trials of a search: claims (file locks), data shared between trials, one trial
on its own or a group of them fused into one stack (loop.py), shards in this process and
--jobs worker processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import checkpoint, console, data, loop, network, runs, threads
from .. import config as config_mod
from ..errors import DataError, DivergedError, RunError
from ..loop import METRIC_COLUMNS
from ..rngs import make_rngs
from ..train import (
    Job,
    average_of,
    check_batch_size,
    final_metrics,
    finish_run,
    train_run,
    train_stack,
)
from .plan import FINISHED, load_plan, read_summary, trial_dir, trial_raw, trial_status

# ---------------------------------------------------------------- claims


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


# ---------------------------------------------------------------- running trials


class DataCache:
    """Prepared splits per (data section, dtype): trials normally share one.

    `seconds` adds up the time spent preparing them: the search's `data` time, charged to no
    trial (else the first trial of a search would carry the data loading of all of them).
    `check(cfg, prep)`, when given, sees each newly prepared one first (`same_data`).
    """

    def __init__(self, check=None):
        self._prepared = {}
        self._check = check
        self.seconds = 0.0

    @staticmethod
    def key(cfg) -> tuple:
        return json.dumps(cfg.data.model_dump(), sort_keys=True), cfg.dtype, cfg.seed

    def get(self, cfg):
        key = self.key(cfg)
        if key not in self._prepared:
            start = time.perf_counter()
            try:
                prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
                if self._check is not None:
                    self._check(cfg, prep)
                self._prepared[key] = prep
            finally:
                self.seconds += time.perf_counter() - start
        return self._prepared[key]


class DataChanged(RunError):
    """The data of a resumed search is not the data its finished trials were trained on."""


def same_data(path: Path, plan: dict):
    """check(cfg, prep) for DataCache: DataChanged when a trial of this search that trained on
    data of the same config recorded other split fingerprints (CIFAR2L_DATA or data.root now
    point elsewhere): its results and those of the trials still to run would not compare."""

    def check(cfg, prep) -> None:
        for t in plan["trials"]:
            prints = recorded_fingerprints(trial_dir(path, t["index"]))
            if prints and prints != prep.fingerprints and DataCache.key(cfg) == \
                    DataCache.key(trial_config(plan["config"], t, path)):  # fmt: skip
                split = next(k for k in [*prep.fingerprints, *prints]
                             if prep.fingerprints.get(k) != prints.get(k))  # fmt: skip
                raise DataChanged(f"{path}: the {split} split from {prep.source} is not the "
                                  f"data trial {t['index']:03d} of this search was trained on "
                                  f"(fingerprint {prep.fingerprints.get(split)}, the trial's "
                                  f"{prints.get(split)}); refusing to mix two datasets in "
                                  "one search: point CIFAR2L_DATA or data.root at its "
                                  "data")  # fmt: skip

    return check


def recorded_fingerprints(tdir: Path) -> dict | None:
    """The split fingerprints a finished trial's summary records (None: none recorded)."""
    summary, _ = read_summary(tdir)
    done = summary.get("data") if isinstance(summary, dict) else None
    prints = done.get("fingerprints") if isinstance(done, dict) else None
    return prints if isinstance(prints, dict) else None


def trial_data(cache: DataCache, cfg, index: int):
    """(prepared data, None), or (None, the error to record in the trial's summary).

    Called before the trial's own clock starts, so data preparation is not in its seconds.
    A DataError (missing, unreadable or corrupt data) is raised: it is the same for every
    trial, so it stops the search, and the trial stays pending for a --resume.
    """
    try:
        prep = cache.get(cfg)
        check_batch_size(cfg, prep, f"trial {index}")
        return prep, None
    except (DataChanged, DataError):  # every later trial would meet it: the search stops
        raise
    except Exception as e:  # e.g. a trial's batch size or split: fails that trial only
        return None, e


def check_sources(plan: dict, load: bool = False) -> None:
    """Fail up front when the data of the search cannot be found (or, with `load`, read):
    one DataError instead of N trials that each fail the same way. With `load` the data is
    also decoded into the cache once, before --jobs workers start."""
    base = plan["config"]
    roots = {t["params"].get("data.root", base.get("data", {}).get("root"))
             for t in plan["trials"]}  # fmt: skip
    for root in sorted(roots, key=str):
        source = data.find_source(root)
        if load:
            data.load_dataset(source)


def retry_failed(path: Path, trials: list[dict]) -> int:
    """Make the failed trials of `trials` pending again (their failure may be gone: the data
    is back, the disk has room); return how many. Diverged trials are a result and stay.

    Done once, when a command starts: a trial that fails again during this command is not
    retried by it. A trial another process holds is left alone.
    """
    count = 0
    for trial in trials:
        tdir = trial_dir(path, trial["index"])
        if trial_status(tdir) != "failed":
            continue
        with claim(path, trial["index"]) as mine:
            if mine and trial_status(tdir) == "failed":
                (tdir / "summary.json").unlink()  # the trial reruns from scratch
                count += 1
    return count


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


def open_trial(path: Path, trial: dict, base: dict, cfg, prep):
    """(dir, config text, checkpoint state, note): the interrupted attempt's checkpoint when it
    left a sound one (see `trial_checkpoint`), else a fresh dir and state None; the note says
    why a checkpoint was set aside (else None)."""
    tdir = trial_dir(path, trial["index"])
    state, note = trial_checkpoint(tdir, trial, cfg, prep) if resumable(path, trial) else \
        (None, None)  # fmt: skip
    if state is None:
        fresh_trial(path, trial, base)
    return tdir, config_mod.dump_yaml(cfg), state, note


def trial_config(base: dict, trial: dict, tdir: Path):
    return config_mod.validate(trial_raw(base, trial["params"], trial["init_seed"]), str(tdir))


def trial_checkpoint(tdir: Path, trial: dict, cfg, prep):
    """The state of a trial's checkpoint, checked against its config and data (prep None: the
    trial fails on its data anyway), and None. A damaged one is moved aside with a warning
    (state None and a note: the trial starts again from scratch), so it never blocks the
    search; one trained on other data or another config is refused (RunError), as `train
    --resume` refuses it."""
    file = tdir / checkpoint.NAME
    try:
        saved = checkpoint.read(file)
        if prep is not None:
            checkpoint.verify(saved, cfg, prep, 1, tdir)
        return saved.state, None
    except checkpoint.CorruptCheckpoint as e:
        aside = tdir.parent / f"{tdir.name}.{checkpoint.NAME}.corrupt"  # fresh_trial empties tdir
        try:
            os.replace(file, aside)
        except OSError as why:
            raise RunError(f"{e}; cannot move it aside to {aside} ({why.strerror})") from None
        note = f"{e}; moved to {aside}, the trial starts again from scratch"
        console.warn(f"trial {trial['index']:03d}: {note}")
        return None, note


def run_claimed(path: Path, trial: dict, base: dict, cache: DataCache) -> str | None:
    """Train one claimed trial on its own; return its status.

    Its seconds: laying out its directory (io) and its training run; not the data (`trial_data`).
    A resumed trial counts this attempt only, as `train --resume` does.
    """
    clock = runs.Clock()
    cfg = trial_config(base, trial, trial_dir(path, trial["index"]))
    prep, error = trial_data(cache, cfg, trial["index"])  # first: the checkpoint is checked on it
    with clock("io"):
        tdir, text, state, note = open_trial(path, trial, base, cfg, prep)
    started = charged_start(clock.seconds["io"])
    with contextlib.suppress(Exception), runs.start_run(tdir, "train", cfg, text, started,
                                                        fresh=state is None) as run:  # fmt: skip
        if state is not None:
            run.summary["resumed_from_step"] = state.step
        if note is not None:  # also for --jobs workers, whose warnings --quiet keeps back
            run.summary["restarted"] = note
        if error is not None:
            raise error
        with console.quiet():
            train_run(run, cfg, prep, text, clock, resume=state)
    return trial_status(tdir)


# ---------------------------------------------------------------- fused groups


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
    late_signal: int | None = None  # a signal that came after the pass's last boundary
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
    first = trial_config(base, todo[0], trial_dir(path, todo[0]["index"]))
    group.prep, group.error = trial_data(cache, first, todo[0]["index"])  # before any writing
    with group.clock("io"):
        group.made = [fresh_trial(path, t, base) for t in todo]
    start += cache.seconds - data_before  # data preparation is the search's, not the group's
    if group.error is None:
        train_fused(group)
    group.seconds = time.perf_counter() - start
    if group.stopped is not None:
        interrupt_group(group, group.stopped)
    with checkpoint.deferred_signals():  # a signal while they are written: all are, then stop
        done = [finish_fused(group, i) for i in range(len(todo))]
        late = checkpoint.take_pending()
    late = group.late_signal if group.late_signal is not None else late
    if late is not None:  # the pass had finished: its trials are written, stop
        raise checkpoint.Interrupted(late)
    return done


def train_fused(group: FusedPass) -> None:
    """The fused pass (a trial that diverges is frozen, the others go on) and the final
    metrics of every trial; an error is kept for every trial of the group to record."""
    cfgs = [c for _, c, _ in group.made]
    job = Job(cfgs, [tdir for tdir, _, _ in group.made], group.prep, None, group.clock,
              show_rows=False)  # fmt: skip
    try:
        with checkpoint.deferred_signals(), console.quiet():
            group.result = train_stack(job, stop_on_divergence=False)
            with group.clock("eval"):
                lam = np.array([c.optim.lambda_ for c in cfgs])
                group.finals = final_metrics(group.result.params, group.prep, lam)
            group.late_signal = checkpoint.take_pending()  # after the last boundary
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
                       text, group.share(), group.finals[i], average_of(state, i))  # fmt: skip
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
            checkpoint.save(tdir / checkpoint.NAME, mine, checkpoint.guard_of(cfg, group.prep))
            runs.write_csv(tdir / "metrics.csv", METRIC_COLUMNS, mine.rows[0])
            raise checkpoint.Interrupted(signum)
    raise checkpoint.Interrupted(signum)


# ---------------------------------------------------------------- shards and workers


def shard_trials(trials: list[dict], shard: tuple[int, int]) -> list[dict]:
    i, n = shard
    return [t for t in trials if t["index"] % n == i]


def run_shard(path: Path, shard: tuple[int, int]) -> dict:
    """Run this shard's unfinished trials in this process; return its work for `collect`:
    `ran` (trials), `trials` (their seconds, as in their summaries), `data` (preparing it)."""
    plan = load_plan(path)
    mine = shard_trials(plan["trials"], shard)
    cache, work = DataCache(same_data(path, plan)), {"workers": 1, "ran": 0, "trials": 0.0}
    with console.progress_bar("trials", total=len(mine)) as advance:
        for group in fuse_groups(mine, plan["config"]):
            for trial, status in run_group(path, group, plan["config"], cache):
                if status is not None:
                    s = read_summary(trial_dir(path, trial["index"]))[0] or {}
                    work["ran"] += 1
                    work["trials"] += s.get("seconds") or 0.0
                    console.log(trial_line(trial, s))
            advance(len(group))
    return {**work, "data": cache.seconds}


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
    threads.py) are split between them, so the workers never oversubscribe the CPUs.

    A SIGINT/SIGTERM to this process is passed on to the workers, which checkpoint their
    trials and exit; this one waits for them (no worker outlives it), then stops too."""
    share = str(threads.split(threads.blas_threads() or threads.available_cpus()[0], jobs))
    env = {**os.environ, threads.ENV: share, WORKER_OF: str(os.getpid())}
    # The workers' error lines go to files of their own: this command reports one line.
    with contextlib.ExitStack() as files, checkpoint.deferred_signals():
        logs = [files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(jobs)]
        procs = [  # a signal meanwhile is forwarded (watch_workers), not raised
            subprocess.Popen([sys.executable, "-m", "cifar2l", "search", "--resume", str(path),
                              "--shard", f"{i}/{jobs}", "--no-collect", "--quiet"], env=env,
                             stderr=logs[i])
            for i in range(jobs)
        ]  # fmt: skip
        signum = watch_workers(path, procs)
        if signum is not None:
            raise checkpoint.Interrupted(signum)
        check_workers_exit(path, procs, logs)


def check_workers_exit(path: Path, procs: list, logs: list) -> None:
    """A RunError naming the first failed worker's own error line, if any failed."""
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        logs[failed[0]].seek(0)
        lines = [ln for ln in logs[failed[0]].read().splitlines() if ln.strip()]
        why = f": {lines[-1]}" if lines else ""
        raise RunError(f"{path}: {len(failed)} of {len(procs)} worker processes failed "
                       f"(exit {procs[failed[0]].returncode}{why}); rerun with --resume "
                       f"{path}")  # fmt: skip


# Set in a --jobs worker's environment: the pid of the command that started it.
WORKER_OF = "CIFAR2L_WORKER_OF"


def follow_parent() -> None:
    """In a --jobs worker: get SIGTERM (checkpoint, exit) when the command that started it
    dies, even by kill -9, instead of training on as an orphan (Linux: PR_SET_PDEATHSIG)."""
    parent = os.environ.pop(WORKER_OF, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def watch_workers(path: Path, procs: list) -> int | None:
    """Wait for the workers, counting finished trials; return the signal this process got
    meanwhile (None: none), which was forwarded to every worker still running."""
    total = len(load_plan(path)["trials"])
    signum = None
    with console.progress_bar("trials", total=total) as advance:
        done = 0
        while any(p.poll() is None for p in procs):
            if signum is None and (signum := checkpoint.take_pending()) is not None:
                forward(procs, signum)
            nap(procs, 0.5)
            now = count_finished(path, total)
            advance(now - done)
            done = now
    return signum if signum is not None else checkpoint.take_pending()


def nap(procs: list, seconds: float, tick: float = 0.02) -> None:
    """Sleep up to `seconds`, waking as soon as a signal is pending (so that it reaches the
    workers within a tick, not after a whole progress interval) or every worker has ended."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and checkpoint.pending() is None and \
            any(p.poll() is None for p in procs):  # fmt: skip
        time.sleep(tick)


def forward(procs: list, signum: int) -> None:
    """Send `signum` to the workers still running (one that just ended is skipped)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)


def count_finished(path: Path, total: int) -> int:
    return sum(trial_status(trial_dir(path, i)) in FINISHED for i in range(total))


def run_workers(path: Path, jobs: int) -> dict:
    """--jobs: the workers' work for `collect`: how long they took (`jobs`) and the trials that
    finished meanwhile (`ran`: theirs, unless other processes work on the same directory)."""
    total = len(load_plan(path)["trials"])
    jobs = min(jobs, total)  # shard i/N with i >= trials would be an idle process (and a file)
    before, start = count_finished(path, total), time.perf_counter()
    run_jobs(path, jobs)
    return {"workers": jobs, "ran": count_finished(path, total) - before,
            "jobs": time.perf_counter() - start}  # fmt: skip
