"""The `train` command: train, `--repeat K` and `--resume` as one path over a stack of T
networks (T = 1, or T = K initialisation seeds trained together: loop.py).

A single run writes its metrics, weights, plots and summary into its run directory; a repeat
run writes each seed's run into `repeats/<k>/` and the mean and std into its own summary.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, console, data, ensemble, kernels, loop, network, plots, preload, runs, tta
from . import config as config_mod
from .errors import ConfigError, DivergedError, RunError
from .loop import METRIC_COLUMNS
from .plotter import Plotter
from .rngs import init_seeds, make_rngs
from .schedule import cycle_length, total_steps
from .weights import save_weights

ROW_COLUMNS = [*METRIC_COLUMNS, "seconds"]
TIMING_COLUMNS = ["step", "seconds"]
SPLITS = ("train", "val", "test")
TTA_SPLITS = ("val", "test")  # scored with evaluate.tta too (the train split is not: its cost)
AVERAGE_FILE = "weights-avg.npz"  # train.average: the averaged weights, beside weights.npz


def format_row(row: dict, seconds: float) -> str:
    """A console line with the same column names (and order) as metrics.csv."""
    vals = {**row, "seconds": seconds}
    return "  ".join(f"{vals[c]:>{_width(c)}{_spec(c)}}" for c in ROW_COLUMNS)


def _width(col: str) -> int:
    return max(len(col), 8)


def _spec(col: str) -> str:
    return {"step": "d", "epoch": ".2f", "lr": ".3e", "seconds": ".1f"}.get(col, ".4f")


def header() -> str:
    return "  ".join(f"{c:>{_width(c)}}" for c in ROW_COLUMNS)


def check_batch_size(cfg, prep, source: str) -> None:
    if cfg.train.batch_size > len(prep.train.y):
        raise ConfigError(f"{source}: train.batch_size: {cfg.train.batch_size} exceeds the "
                          f"training split ({len(prep.train.y)} rows)")  # fmt: skip


def splits_of(prep) -> dict:
    splits = {"train": prep.train, "val": prep.val, "test": prep.test}
    return {k: v for k, v in splits.items() if v is not None}


def final_metrics(params, prep, lam) -> list[dict]:
    """Per trial: {split: loss, cost, accuracy}, one stacked pass per split."""
    per_split = {k: network.evaluate(params, s.x, s.y, lam) for k, s in splits_of(prep).items()}
    return [{k: v[i] for k, v in per_split.items()} for i in range(network.trials(params))]


@dataclass
class Job:
    """A stack being trained: its trials' configs, the directories their snapshots (and, for
    a repeat, their runs) go to, the stack's checkpoint file, and the prepared data."""

    cfgs: list
    dirs: list[Path]
    prep: object
    checkpoint: Path | None = None  # None: a checkpoint only to hand to the caller on a signal
    clock: runs.Clock = field(default_factory=runs.Clock)
    show_rows: bool = True  # console lines of the metric rows (one network's)
    guard: dict | None = None  # saved with each checkpoint: checkpoint.guard_of


def trial_configs(cfg, repeat: int) -> tuple[list, list[int] | None]:
    """The configs of a run's trials: the config itself, or K initialisation seeds of it."""
    if repeat == 1:
        return [cfg], None
    seeds = init_seeds(cfg.seed if cfg.init_seed is None else cfg.init_seed, repeat)
    return [cfg.model_copy(update={"init_seed": s}) for s in seeds], seeds


def train_stack(job: Job, resume=None, stop_on_divergence: bool = True) -> loop.TrainState:
    """Train the job's stack from scratch or from a resumed TrainState; return the state.

    Snapshots go to each trial's directory when due; checkpoints go to job.checkpoint every
    `train.checkpoint_every` updates, at each cycle end and on SIGINT/SIGTERM, which then stop
    the run with checkpoint.Interrupted (carrying the state, `.state`).
    """
    stack = loop.make_stack(job.cfgs, stop_on_divergence=stop_on_divergence)
    d, c = job.prep.train.x.shape[1], len(job.prep.classes)
    state = resume or loop.init_state(stack, d, c)
    done = state.step
    with console.progress_bar("train", total=stack.total - done) as advance:
        hooks = loop.Hooks(rows=row_printer(job, time.perf_counter()), step=advance,
                           boundary=checkpointer(job, stack), clock=job.clock)  # fmt: skip
        # A diverging run overflows on its way to the non-finite loss that stops it: that is
        # reported as one error (or a frozen trial), not as numpy warnings.
        with checkpoint.deferred_signals():
            try:
                loop.run(state, stack, loop.Data(job.prep.train, job.prep.val), hooks)
            except DivergedError as e:
                e.state = state  # the rows up to the divergence are kept
                raise
    return state


def row_printer(job: Job, start: float):
    """rows(state, t): the console line of a metric row and its seconds (timing.csv). The
    column header comes before the first row this command prints, a resumed run's too."""
    shown = False

    def rows(state, t: int) -> None:
        nonlocal shown
        seconds = time.perf_counter() - start
        state.timing.append({"step": t, "seconds": round(seconds, 3)})
        if job.show_rows:
            if not shown:
                console.log(header())
            shown = True
            console.log(format_row(state.rows[0][-1], seconds))

    return rows


def checkpointer(job: Job, stack: loop.Stack):
    """boundary(state): keep the snapshots due, save a checkpoint when one is due, stop on a
    pending signal."""
    every, cycle = job.cfgs[0].train.checkpoint_every, cycle_length(job.cfgs[0].schedule)
    snaps = set(loop.snapshot_steps(job.cfgs[0]))

    def boundary(state) -> None:
        t = state.step
        if t in snaps:  # before the checkpoint: a run resumed from it has all earlier snapshots
            save_snapshots(job, state.params, t)
        signum = checkpoint.pending()
        due = every and t % every == 0 or cycle and t % cycle == 0
        if job.checkpoint is not None and (signum or due):
            with job.clock("io"):
                checkpoint.save(job.checkpoint, state, job.guard)
        if signum:
            raise checkpoint.Interrupted(checkpoint.take_pending(), state)

    return boundary


def save_snapshots(job: Job, params, t: int) -> None:
    with job.clock("io"):
        for i, path in enumerate(job.dirs):
            text = config_mod.dump_yaml(job.cfgs[i])
            ensemble.save_snapshot(path, t, network.select(params, [i]), job.prep, text)


def finish_run(run, cfg, prep, params, rows, config_text: str, clock: runs.Clock,
               final: dict | None = None, average: tuple | None = None,
               plot: Plotter | None = None) -> dict:  # fmt: skip
    """Write one trained network's metrics, weights, plots and summary (params: a stack of
    T = 1; average: (its averaged weights, samples) under train.average); return its final
    metrics (computed here unless given). The plots are drawn by `plot` (plotter.py: in its
    helper process, during the evaluation here) or in this process."""
    total, plot = total_steps(cfg.schedule), plot or Plotter()
    with clock("io"):
        runs.write_csv(run.path / "metrics.csv", METRIC_COLUMNS, rows)
        plot.submit_figures(plots.run_figures, rows, cfg, total, run.path)
    if final is None:
        with clock("eval"):
            final = final_metrics(params, prep, cfg.optim.lambda_)[0]
    with clock("io"):
        save_weights(run.path / "weights.npz", params, prep, config_text)
        if total in loop.snapshot_steps(cfg):
            ensemble.save_snapshot(run.path, total, params, prep, config_text)
    if loop.snapshot_steps(cfg):
        with clock("eval"):
            run.summary["ensemble"] = ensemble_summary(run.path, prep, cfg)
    finish_extras(run, cfg, prep, params, average, config_text, clock)
    with clock("io"):
        plot.wait()
    run.summary.update(
        timing={k: clock.rounded().get(k, 0.0) for k in ("train", "eval", "io")},
        steps=total, data=data_summary(prep),
        best_val_accuracy=max(r["val_accuracy"] for r in rows),
        **{m: {k: v[m] for k, v in final.items()} for m in ("accuracy", "loss", "cost")},
    )  # fmt: skip
    return final


def finish_extras(run, cfg, prep, params, average, config_text: str, clock) -> None:
    """The TTA accuracies (evaluate.tta) and the averaged weights (train.average: written to
    weights-avg.npz, scored plainly and with TTA) into the summary, beside the plain ones."""
    views, reflect = cfg.evaluate.tta, cfg.augment.pad == "reflect"
    with clock("eval"):
        if views:
            run.summary["tta"] = {"views": list(views),
                                  "accuracy": tta.accuracy(params, tta_splits(prep), views,
                                                           reflect)[0]}  # fmt: skip
    if average is None:
        return
    avg, samples = average
    with clock("io"):
        save_weights(run.path / AVERAGE_FILE, avg, prep, config_text)
    with clock("eval"):
        accs = {k: v["accuracy"] for k, v in final_metrics(avg, prep, 0.0)[0].items()}
        entry = {**cfg.train.average.model_dump(), "samples": samples, "accuracy": accs}
        if views:
            entry["tta_accuracy"] = tta.accuracy(avg, tta_splits(prep), views, reflect)[0]
    run.summary["average"] = entry


def average_of(state, i: int) -> tuple | None:
    """(trial i's averaged weights (T = 1), samples) of a trained state; None without one."""
    if state.average is None:
        return None
    return network.select(state.average, [i]), state.averaged


def tta_splits(prep) -> dict:
    return {k: v for k, v in splits_of(prep).items() if k in TTA_SPLITS}


def ensemble_summary(run_path: Path, prep, cfg) -> dict:
    """The snapshot ensemble's members (the steps of train.snapshots) and accuracy on every
    split (and with evaluate.tta, on the TTA splits); RunError when a member's file is gone,
    rather than a smaller ensemble."""
    steps = loop.snapshot_steps(cfg)
    paths = [ensemble.snapshot_path(run_path, t) for t in steps]
    check_snapshots(paths)
    out = {"members": steps, "accuracy": ensemble.ensemble_accuracy(paths, splits_of(prep))}
    if cfg.evaluate.tta:
        out["tta_accuracy"] = ensemble.ensemble_accuracy(
            paths, tta_splits(prep), cfg.evaluate.tta, cfg.augment.pad == "reflect")
    return out


def check_snapshots(paths: list[Path]) -> None:
    """RunError naming the first snapshot file of `paths` that is missing."""
    for path in paths:
        if not path.is_file():
            raise RunError(f"{path}: snapshot missing (removed after it was taken?); the "
                           "ensemble of train.snapshots needs every member, so train the "
                           "run again")  # fmt: skip


def kept_snapshots(run_dir: Path, cfg, step: int, repeat: int) -> None:
    """Before a resume from update `step`: the snapshots taken up to it must still be there
    (they are not taken again), else RunError and the run is left as it was."""
    subs = [run_dir / "repeats" / f"{k:02d}" for k in range(repeat)] if repeat > 1 else [run_dir]
    taken = [t for t in loop.snapshot_steps(cfg) if t < step]  # one at `step`: at the end
    check_snapshots([ensemble.snapshot_path(d, t) for d in subs for t in taken])


def data_summary(prep) -> dict:
    """Where the data came from, the split sizes and their fingerprints (data.fingerprint)."""
    return {"source": prep.source, "format": prep.format, "sizes": split_sizes(prep),
            "fingerprints": prep.fingerprints}  # fmt: skip


def split_sizes(prep) -> dict:
    return {k: len(v.y) for k, v in splits_of(prep).items()}


def train_run(run, cfg, prep, config_text: str, clock: runs.Clock | None = None,
              resume=None, plot: Plotter | None = None) -> dict:  # fmt: skip
    """Train one network into an open run directory; return its final metrics.

    summary.json gets `timing`: seconds in the training loop without evaluation (`train`), in
    metric evaluation (`eval`), in data loading and writing files (`io`), and `total`.
    """
    job = Job([cfg], [run.path], prep, run.path / checkpoint.NAME, clock or runs.Clock(),
              guard=checkpoint.guard_of(cfg, prep))  # fmt: skip
    state = resume
    try:
        with checkpoint.deferred_signals():
            state = train_stack(job, resume)
            final = finish_run(run, cfg, prep, state.params, state.rows[0], config_text,
                               job.clock, average=average_of(state, 0), plot=plot)  # fmt: skip
            checkpoint.take_pending()  # came while finishing: the run is complete anyway
    except (checkpoint.Interrupted, DivergedError) as stop:  # both carry the loop's state
        state = getattr(stop, "state", None) or state
        if state is not None:
            with _unless_failing():
                runs.write_csv(run.path / "metrics.csv", METRIC_COLUMNS, state.rows[0])
        raise
    finally:  # a diverged or interrupted run keeps the metrics up to where it stopped
        if state is not None and state.timing:
            with _unless_failing():
                runs.write_csv(run.path / "timing.csv", TIMING_COLUMNS, state.timing)
    (run.path / checkpoint.NAME).unlink(missing_ok=True)  # superseded by weights.npz
    return final


def _unless_failing():
    """While an error propagates (a full disk, a signal), a file written on the way out may
    fail too: that must not hide the error that stopped the run (nor its exit code)."""
    failing = sys.exc_info()[1] is not None
    return contextlib.suppress(*((RunError, OSError) if failing else ()))


def prepare(cfg, config_path: str, clock: runs.Clock, matplotlib: bool = True):
    """The prepared splits; the kernels (and matplotlib, unless a plotter process draws the
    figures) load meanwhile (preload.py)."""
    loading = preload.start(cfg.dtype, matplotlib)
    with clock("io"):
        prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
        loading.join()
        kernels.have_numba()  # a numba that failed to load in the thread: its error, now
    check_batch_size(cfg, prep, config_path)
    return prep


def run_train(cfg, config_text: str, config_path: str, out, name: str, repeat: int = 1,
              into: Path | None = None) -> dict:  # fmt: skip
    """The `train` command (`repeat` K > 1: `--repeat K`): prepare the data, open a fresh run
    dir (`into`: a new directory of that name instead, e.g. a search's best-repeat/), train,
    print the final table."""
    started, clock = time.perf_counter(), runs.Clock()
    plot = Plotter.start()
    try:
        summary, final = train_new(cfg, config_text, config_path, (out, name, into), repeat,
                                   (started, clock, plot))  # fmt: skip
    finally:
        plot.close()
    show(final, summary)
    return summary


def train_new(cfg, config_text: str, config_path: str, where: tuple, repeat: int,
              timing: tuple) -> tuple[dict, dict | None]:  # fmt: skip
    """run_train's run: where = (out, name, into), timing = (started, clock, plotter)."""
    (out, name, into), (started, clock, plot) = where, timing
    prep = prepare(cfg, config_path, clock, matplotlib=plot.pool is None)
    if into is not None:
        into.mkdir()
    opened = runs.start_run(into, "train", cfg, config_text, started) if into is not None else \
        runs.open_run(out, "train", name, cfg, config_text, started)  # fmt: skip
    with opened as run:
        if repeat > 1:  # first: a run interrupted before its first checkpoint resumes as K,
            run.summary["repeat"] = repeat  # also one killed with SIGKILL (its summary on disk)
            run.save_summary()
        sizes = "/".join(str(v) for v in split_sizes(prep).values())
        what = f"{repeat} repeats trained together" if repeat > 1 else f"data: {prep.source} " \
            f"({prep.format}), train/val/test {sizes}"  # fmt: skip
        console.log(f"run dir: {run.path}  {what}")
        final = train_into(run, cfg, prep, config_text, clock, repeat, plot=plot)
    return run.summary, final


def run_repeat(cfg, config_text: str, config_path: str, out, name: str, repeat: int,
               into: Path | None = None) -> dict:  # fmt: skip
    """`train --repeat K`: K initialisation seeds of one config trained as one stack. Each
    repeat is an ordinary run directory under `repeats/<k>/`; the top summary reports the
    mean accuracies (`accuracy`), their standard deviations (`accuracy_std`) and every value,
    and the same for the snapshot ensemble when the config keeps snapshots."""
    return run_train(cfg, config_text, config_path, out, name, repeat, into)


def train_into(run, cfg, prep, config_text: str, clock, repeat: int, resume=None,
               plot: Plotter | None = None):  # fmt: skip
    """One network into the run dir, or `repeat` of them into repeats/<k>/; return the final
    metrics (one network's, or the repeat summary). `plot` draws the figures (plotter.py)."""
    plot = plot or Plotter()
    if repeat == 1:
        return train_run(run, cfg, prep, config_text, clock, resume, plot)
    cfgs, seeds = trial_configs(cfg, repeat)
    run.summary.update(repeat=repeat, init_seeds=seeds)  # kept if the run is interrupted
    dirs = [run.path / "repeats" / f"{k:02d}" for k in range(repeat)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    job = Job(cfgs, dirs, prep, run.path / checkpoint.NAME, clock, show_rows=False,
              guard=checkpoint.guard_of(cfg, prep))  # fmt: skip
    with checkpoint.deferred_signals():
        state = train_repeats(job, resume)
        subs = finish_trials(job, state, share=True, plot=plot)
        with clock("io"):
            plot.submit(mean_plot, run.path, cfg, state.rows)
            plot.wait()
        checkpoint.take_pending()  # came while finishing: the run is complete anyway
    run.summary.update(repeat_summary(subs, seeds, clock), fused=True, data=data_summary(prep))
    (run.path / checkpoint.NAME).unlink(missing_ok=True)
    return None


REPEAT_PLOT = "curves.png"


def mean_plot(run_dir: Path, cfg, rows: list[list[dict]]) -> None:
    """A repeat run's curves.png: loss, cost and accuracy over its seeds, mean +- 1 std."""
    title = plots.title_lines(f"{plots.run_name(run_dir)} · mean ± std over {len(rows)} seeds",
                              plots.settings(cfg), 110)  # fmt: skip
    plots.panels(rows, title, run_dir / REPEAT_PLOT)


def train_repeats(job: Job, resume=None) -> loop.TrainState:
    """train_stack for `--repeat`: a run stopped by a signal (its checkpoint is written) or by
    a divergence keeps each repeat's metric rows so far in repeats/<k>/metrics.csv, as a
    single run keeps its own."""
    try:
        return train_stack(job, resume)
    except (checkpoint.Interrupted, DivergedError) as stop:
        state = getattr(stop, "state", None)
        for path, rows in zip(job.dirs, state.rows if state else [], strict=False):
            runs.write_csv(path / "metrics.csv", METRIC_COLUMNS, rows)
        raise


def finish_trials(job: Job, state, share: bool, plot: Plotter | None = None) -> list[dict]:
    """Write every trial of a trained stack into its directory as an ordinary run; each is
    charged an equal share of the stack's pass, then its own finish. Returns their summaries."""
    t = len(job.cfgs)
    with job.clock("eval"):
        finals = final_metrics(state.params, job.prep, np.array([c.optim.lambda_
                                                                for c in job.cfgs]))
    subs = []
    for k, c in enumerate(job.cfgs):
        text = config_mod.dump_yaml(c)
        mine = runs.Clock()
        mine.seconds = {key: v / t for key, v in job.clock.seconds.items()} if share else {}
        charged = time.perf_counter() - sum(mine.seconds.values())
        with runs.start_run(job.dirs[k], "train", c, text, charged) as sub:
            finish_run(sub, c, job.prep, network.select(state.params, [k]), state.rows[k],
                       text, mine, finals[k], average_of(state, k), plot)  # fmt: skip
        subs.append(sub.summary)
    return subs


def show(final, summary: dict) -> None:
    if "repeat" in summary:
        print_repeat(summary)
    else:
        print_final(final, summary)


def print_final(final: dict, summary: dict) -> None:
    console.table("final metrics", ["split", "loss", "cost", "accuracy"],
                  [[k, v["loss"], v["cost"], v["accuracy"]] for k, v in final.items()])
    if "tta" in summary or "average" in summary:
        print_extras(summary)
    if "ensemble" in summary:
        ens = summary["ensemble"]
        console.table(f"snapshot ensemble of {len(ens['members'])} (steps "
                      f"{', '.join(map(str, ens['members']))})", ["split", "accuracy"],
                      [[k, v] for k, v in ens["accuracy"].items()])  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def repeat_summary(subs: list[dict], seeds: list[int], clock: runs.Clock) -> dict:
    splits = list(subs[0]["accuracy"])
    values = {k: [s["accuracy"][k] for s in subs] for k in splits}
    stats = {k: mean_std(v) for k, v in values.items()}
    out = {
        "repeat": len(subs), "init_seeds": seeds,
        "accuracy": {k: m for k, (m, _) in stats.items()},
        "accuracy_std": {k: sd for k, (_, sd) in stats.items()},
        "accuracy_runs": values,
        "timing": {k: clock.rounded().get(k, 0.0) for k in ("train", "eval", "io")},
    }  # fmt: skip
    if all("ensemble" in s for s in subs):
        out["ensemble"] = {"members": subs[0]["ensemble"]["members"],
                           **spread([s["ensemble"]["accuracy"] for s in subs])}  # fmt: skip
    for key in ("tta", "average"):  # evaluate.tta, train.average: the same over the repeats
        if all(key in s for s in subs):
            out[key] = {**{k: v for k, v in subs[0][key].items() if "accuracy" not in k},
                        **spread([s[key]["accuracy"] for s in subs])}  # fmt: skip
    if all("tta_accuracy" in s.get("average", {}) for s in subs):
        out["average"]["tta"] = spread([s["average"]["tta_accuracy"] for s in subs])
    return out


def spread(accs: list[dict]) -> dict:
    """Per split, the mean (`accuracy`), std (`accuracy_std`) and values (`accuracy_runs`) of
    the repeats' accuracies `accs` ({split: accuracy} each)."""
    runs_ = {k: [a[k] for a in accs] for k in accs[0]}
    return {"accuracy": {k: mean_std(v)[0] for k, v in runs_.items()},
            "accuracy_std": {k: mean_std(v)[1] for k, v in runs_.items()},
            "accuracy_runs": runs_}  # fmt: skip


def print_extras(summary: dict) -> None:
    """The TTA and weight-average accuracies beside the plain ones, split by split."""
    cols = {"plain": summary["accuracy"]}
    if "tta" in summary:
        cols[f"tta ({'+'.join(summary['tta']['views'])})"] = summary["tta"]["accuracy"]
    if "average" in summary:
        avg = summary["average"]
        cols[f"average ({avg['kind']}, {avg['samples']} samples)"] = avg["accuracy"]
        if "tta_accuracy" in avg:
            cols["average + tta"] = avg["tta_accuracy"]
    splits = list(summary["accuracy"])
    console.table("accuracy with test-time augmentation / weight averaging", ["split", *cols],
                  [[k, *[c.get(k, "-") for c in cols.values()]] for k in splits])  # fmt: skip


def print_repeat(summary: dict) -> None:
    k = summary["repeat"]
    console.table(f"final accuracy over {k} initialisation seeds", ["split", "mean", "std"],
                  [[s, summary["accuracy"][s], summary["accuracy_std"][s]]
                   for s in summary["accuracy"]])  # fmt: skip
    parts = {"ensemble": "snapshot ensemble", "tta": "test-time augmentation",
             "average": "weight average"}  # fmt: skip
    blocks = [(name, summary[key]) for key, name in parts.items() if key in summary]
    if "tta" in summary.get("average", {}):
        blocks.append(("weight average with test-time augmentation", summary["average"]["tta"]))
    for name, block in blocks:
        console.table(f"{name} accuracy over {k} seeds", ["split", "mean", "std"],
                      [[s, m, block["accuracy_std"][s]] for s, m in block["accuracy"].items()])


def run_resume(run_dir: Path, out=None) -> dict:
    """`train --resume RUN_DIR`: continue an interrupted run (or repeat run) from its
    checkpoint, in place.

    Everything is checked before anything is written: the directory is an unfinished train
    run that no other process is working in, its checkpoint is sound and was trained with this
    config and this data (checkpoint.verify). A refusal leaves the run exactly as it was.
    """
    started, clock = time.perf_counter(), runs.Clock()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    plot = Plotter.start()
    try:
        with runs.dir_lock(run_dir):  # held until the run is written: no two resumes at once
            summary, final = resume_locked(run_dir, started, clock, plot)
    finally:
        plot.close()
    show(final, summary)
    return summary


def resume_locked(run_dir: Path, started: float, clock, plot: Plotter) -> tuple:
    """run_resume's checks and training, under the run's lock: (summary, final metrics)."""
    summary = resumable_run(run_dir)
    cfg = config_mod.load_config(run_dir / "config.yaml")
    saved, repeat = resume_state(run_dir, summary)
    prep = prepare(cfg, str(run_dir / "config.yaml"), clock, matplotlib=plot.pool is None)
    if saved is not None:
        checkpoint.verify(saved, cfg, prep, repeat, run_dir)
        kept_snapshots(run_dir, cfg, saved.state.step, repeat)
    state, text = saved.state if saved else None, config_mod.dump_yaml(cfg)
    with runs.start_run(run_dir, "train", cfg, text, started, fresh=False,
                        locked=True) as run:  # fmt: skip
        run.summary["resumed_from_step"] = state.step if state else 0
        console.log(f"run dir: {run.path}  resuming at update {state.step if state else 0}")
        final = train_into(run, cfg, prep, text, clock, repeat, resume=state, plot=plot)
    return run.summary, final


def resumable_run(run_dir: Path) -> dict:
    """The summary of an unfinished `train` run in `run_dir`; RunError for anything else."""
    if (run_dir / "search.json").is_file():  # search.plan.PLAN (not imported: search imports us)
        raise RunError(f"{run_dir}: a search directory, not a train run; continue it with "
                       f"`cifar2l search --resume {run_dir}`")  # fmt: skip
    if run_dir.parent.name == "trials" and (run_dir.parent.parent / "search.json").is_file():
        raise RunError(f"{run_dir}: a trial of the search {run_dir.parent.parent}; continue it "
                       f"with `cifar2l search --resume {run_dir.parent.parent}`")  # fmt: skip
    summary = read_run_summary(run_dir)
    command, status = summary.get("command"), summary.get("status")
    if command != "train":
        what = f"a `{str(command)[:40]}` run" if command else "no run's (no command)"
        raise RunError(f"{run_dir}: its summary.json is {what}, not a train run's; only train "
                       "runs resume")  # fmt: skip
    if status == "completed":
        raise RunError(f"{run_dir}: already completed; no checkpoint to resume from, nothing "
                       "to do")  # fmt: skip
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir}: not a run directory (no config.yaml)")
    return summary


def read_run_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir}: not a run directory (no summary.json)") from None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise RunError(f"{path}: unreadable ({type(e).__name__}); cannot tell what run this "
                       "is or where it stopped, so it is not resumed") from None  # fmt: skip
    if not isinstance(summary, dict):
        raise RunError(f"{path}: not a run summary (a JSON {type(summary).__name__})")
    return summary


def resume_state(run_dir: Path, summary: dict):
    """(the run's checkpoint (checkpoint.Saved), its number of trials); (None, trials) (start
    over, in place) for a run stopped or killed before its first checkpoint.

    The trials are the summary's `repeat`; a repeat run killed (SIGKILL) before its summary
    recorded it has only its checkpoint's count to go by (its guard still checks the rest).
    """
    trials = summary.get("repeat")
    if trials is not None and (type(trials) is not int or trials < 1):
        raise RunError(f"{run_dir / 'summary.json'}: repeat: {trials!r} is not a count")
    if (run_dir / checkpoint.NAME).is_file():
        saved = checkpoint.read(run_dir / checkpoint.NAME)
        return saved, trials or len(saved.state.rows)
    status = summary.get("status")
    # `running` with the directory's lock ours (run_resume holds it): its process was killed
    # (SIGKILL, a lost machine) before its first checkpoint, and it starts over like this too
    if status not in ("interrupted", "running"):
        raise RunError(f"{run_dir}: no checkpoint to resume from (status {status or 'unknown'})")
    return None, trials or 1
