"""The training loop: mini-batch gradient descent under a learning-rate schedule."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import augment, checkpoint, console, data, ensemble, network, optim, plots, runs
from .data import Split
from .errors import ConfigError, DivergedError, RunError
from .evaluate import save_weights
from .rngs import make_rngs
from .schedule import cycle_length, default_log_every, make_schedule, total_steps

# A mean cross-entropy this large means logits of that size: training has blown up (it starts
# near ln 10 = 2.3), even while the numbers are still finite.
EXPLODED = 1e6

METRIC_COLUMNS = [
    "step", "epoch", "lr",
    "train_loss", "train_cost", "train_accuracy",
    "val_loss", "val_cost", "val_accuracy",
]  # fmt: skip


def log_points(total: int, every: int) -> list[int]:
    """Steps (updates done) at which metrics are taken: 0, every, 2 every, ..., and the last."""
    return sorted(set(range(0, total + 1, every)) | {total})


def steps_per_epoch(n: int, batch_size: int) -> int:
    # The partial batch at the end of an epoch is dropped, as in the study (n / batch updates).
    if batch_size > n:
        raise RunError(f"train.batch_size ({batch_size}) exceeds the training split ({n} rows)")
    return n // batch_size


def epoch_order(n: int, shuffle: bool, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n) if shuffle else np.arange(n)


def gather(x, idx, out):
    """out[:] = x[idx] without allocating. NumPy needs mode="clip": with the default "raise"
    it buffers `out` and runs 3x slower (the indices are valid by construction)."""
    xp = network.array_module(x)
    if xp is np:
        return np.take(x, idx, axis=0, out=out, mode="clip")
    return xp.take(x, idx, axis=0, out=out)


def metrics_row(params, t: int, epoch: float, lr: float, train: Split, val: Split, lam: float):
    row = {"step": t, "epoch": epoch, "lr": lr}
    for name, split in (("train", train), ("val", val)):
        m = network.evaluate(params, split.x, split.y, lam)
        row.update({f"{name}_{k}": v for k, v in m.items()})
    return row


def make_step(params: dict, cfg, rngs: dict, velocity: dict | None = None,
              exploded: float = EXPLODED) -> Callable:  # fmt: skip
    """One update on a gathered batch: augment, gradients (with dropout), optimizer step.

    The returned `step(xb, yb, lr) -> loss` owns the momentum buffers (`step.velocity`; a
    resumed run passes its saved ones). Raises DivergedError on a non-finite loss or one above
    `exploded`.
    """
    o = cfg.optim
    if velocity is None and o.momentum > 0:
        velocity = optim.init_velocity(params)
    xp = network.array_module(params["W1"])
    buffers = {k: xp.empty_like(params[k]) for k in ("W1", "W2")}  # reused gradient storage

    def step(xb, yb, lr: float, t: int) -> float:
        augment.apply(xb, cfg.augment, rngs["augment"])
        loss, _, grads = network.loss_and_grads(
            params, xb, yb, o.lambda_, cfg.model.dropout, rngs["dropout"], with_cost=False,
            smoothing=o.label_smoothing, out=buffers)  # fmt: skip
        if not loss < exploded:  # nan compares false too
            raise DivergedError(f"training diverged at step {t} (lr={lr:.6g}, loss {loss:.4g})")
        optim.update(params, grads, lr, velocity, o.momentum, o.nesterov, o.weight_decay)
        return loss

    step.velocity = velocity
    return step


def train(
    params: dict,
    train_split: Split,
    val_split: Split,
    cfg,
    rngs: dict[str, np.random.Generator],
    on_row: Callable[[dict, float], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    clock: runs.Clock | None = None,
    resume=None,
    boundary: Callable | None = None,
) -> list[dict]:
    """Train `params` in place; return the metric rows. `rngs` as from make_rngs.

    `clock` receives "eval" (the metric rows) and "train" (the rest of the loop) seconds.
    `resume` (a checkpoint.State) continues a run; `boundary(t, order, step)` is called between
    updates (checkpoints).
    """
    clock = clock or runs.Clock()
    with clock("loop"):
        rows = _train_loop(params, train_split, val_split, cfg, rngs, on_row, on_step, clock,
                           resume, boundary)  # fmt: skip
    clock.seconds["train"] = clock.seconds.pop("loop") - clock.seconds.get("eval", 0.0)
    return rows


def _train_loop(params, train_split, val_split, cfg, rngs, on_row, on_step, clock, resume,
                boundary) -> list[dict]:  # fmt: skip
    eta = make_schedule(cfg.schedule)
    lam = cfg.optim.lambda_
    step = make_step(params, cfg, rngs, resume.velocity if resume else None)
    rows, start = list(resume.rows) if resume else [], time.perf_counter()

    def measure(t: int, epoch: float) -> None:
        rows.append(metrics_row(params, t, epoch, eta(t), train_split, val_split, lam))
        if on_row:
            on_row(rows[-1], time.perf_counter() - start)

    def at_boundary(t, order):
        if boundary:
            boundary(t, order, step, rows)

    run_loop(train_split, cfg, rngs, lambda xb, yb, t: step(xb, yb, eta(t), t), measure,
             on_step, clock, resume.step if resume else 0,
             resume.order if resume else None, at_boundary)  # fmt: skip
    return rows


def run_loop(train_split: Split, cfg, rngs, step, measure, on_step=None, clock=None,
             start: int = 0, order=None, boundary=None) -> None:  # fmt: skip
    """The update counter, epoch shuffles and batch gathers; `step(xb, yb, t)` updates,
    `measure(t, epoch)` takes the metric rows (timed as "eval" on `clock`).

    A resumed run starts at update `start` with its epoch's saved `order` (its row at `start`
    is already taken). `boundary(t, order)` runs before each update after the first.
    """
    clock = clock or runs.Clock()
    total, batch = total_steps(cfg.schedule), cfg.train.batch_size
    x, y = train_split.x, train_split.y
    per_epoch = steps_per_epoch(len(y), batch)
    log_at = set(log_points(total, cfg.train.log_every or default_log_every(cfg.schedule)))
    xb = network.array_module(x).empty((batch, x.shape[1]), dtype=x.dtype)  # reused buffer
    for t in range(start, total + 1):
        epoch, i = divmod(t, per_epoch)
        if t in log_at and not (t == start and start > 0):
            with clock("eval"):
                measure(t, t / per_epoch)
        if t == total:
            break
        if boundary and t > start:
            boundary(t, order)
        if i == 0:
            order = epoch_order(len(y), cfg.train.shuffle, rngs["shuffle"])
        idx = order[i * batch : (i + 1) * batch]
        gather(x, idx, xb)
        step(xb, y[idx], t)
        if on_step:
            on_step(1)


# ---------------------------------------------------------------- the `train` command

ROW_COLUMNS = [*METRIC_COLUMNS, "seconds"]
TIMING_COLUMNS = ["step", "seconds"]


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


def final_metrics(params, prep, lam: float) -> dict:
    splits = {"train": prep.train, "val": prep.val, "test": prep.test}
    return {k: network.evaluate(params, s.x, s.y, lam) for k, s in splits.items() if s is not None}


def check_batch_size(cfg, prep, source: str) -> None:
    if cfg.train.batch_size > len(prep.train.y):
        raise ConfigError(f"{source}: train.batch_size: {cfg.train.batch_size} exceeds the "
                          f"training split ({len(prep.train.y)} rows)")  # fmt: skip


def train_run(run, cfg, prep, config_text: str, clock: runs.Clock | None = None,
              resume=None) -> dict:  # fmt: skip
    """Train into an open run directory: metrics, timing, weights, plots; return final metrics.

    summary.json gets `timing`: seconds in the training loop without evaluation (`train`), in
    metric evaluation (`eval`), in data loading and writing files (`io`), and `total`.
    Checkpoints go to checkpoint.npz every `train.checkpoint_every` updates, at each cycle end
    and on SIGINT/SIGTERM (then the run stops with checkpoint.Interrupted); `resume` (a
    checkpoint.State) continues from one.
    """
    clock = clock or runs.Clock()
    rngs = make_rngs(cfg.seed, cfg.init_seed)
    total = total_steps(cfg.schedule)
    if resume is None:
        params = network.init_params(prep.train.x.shape[1], cfg.model.hidden, len(prep.classes),
                                     rngs["init"], cfg.dtype)  # fmt: skip
        timing = []
    else:
        params, timing = resume.params, list(resume.timing)
        checkpoint.restore_rngs(rngs, resume.rng_states)

    def on_row(row, seconds):
        if not timing:
            console.log(header())
        timing.append({"step": row["step"], "seconds": round(seconds, 3)})
        console.log(format_row(row, seconds))

    boundary = checkpointer(run, cfg, params, rngs, timing, clock,
                            snapshotter(run, cfg, params, prep, config_text, clock))  # fmt: skip
    try:
        with console.progress_bar("train", total=total - (resume.step if resume else 0)) as adv:
            # A diverging run overflows on its way to the non-finite loss that stops it: that is
            # reported as one error, not as numpy warnings.
            with checkpoint.deferred_signals(), np.errstate(over="ignore", invalid="ignore"):
                rows = train(params, prep.train, prep.val, cfg, rngs, on_row, adv, clock, resume,
                             boundary)  # fmt: skip
                final = finish_run(run, cfg, prep, params, rows, config_text, clock)
                checkpoint.take_pending()  # came while finishing: the run is complete anyway
    finally:  # a diverged or interrupted run keeps the metrics up to where it stopped
        if timing:
            runs.write_csv(run.path / "timing.csv", TIMING_COLUMNS, timing)
    (run.path / checkpoint.NAME).unlink(missing_ok=True)  # superseded by weights.npz
    return final


def snapshotter(run, cfg, params, prep, config_text: str, clock):
    """snap(t): keep the weights after update t when t is a snapshot step."""
    steps = set(ensemble.snapshot_steps(cfg))

    def snap(t: int) -> None:
        if t in steps:
            with clock("io"):
                ensemble.save_snapshot(run.path, t, params, prep, config_text)

    return snap


def checkpointer(run, cfg, params, rngs, timing, clock, snap=None):
    """The boundary callback: keep a snapshot when one is due, save a checkpoint when one is
    due; stop on a pending signal."""
    every = cfg.train.checkpoint_every
    cycle = cycle_length(cfg.schedule)

    def boundary(t, order, step, rows):
        if snap:
            snap(t)  # before the checkpoint: a run resumed from it has all earlier snapshots
        signum = checkpoint.pending()
        if not (signum or (every and t % every == 0) or (cycle and t % cycle == 0)):
            return
        with clock("io"):
            state = checkpoint.State(t, params, step.velocity, order,
                                     checkpoint.rng_states(rngs), rows, timing)  # fmt: skip
            checkpoint.save(run.path / checkpoint.NAME, state)
        if signum:
            runs.write_csv(run.path / "metrics.csv", METRIC_COLUMNS, rows)
            raise checkpoint.Interrupted(checkpoint.take_pending())

    return boundary


def finish_run(run, cfg, prep, params, rows, config_text: str, clock: runs.Clock) -> dict:
    """Write a trained run's metrics, weights, plots and summary; return the final metrics."""
    total = total_steps(cfg.schedule)
    with clock("io"):
        runs.write_csv(run.path / "metrics.csv", METRIC_COLUMNS, rows)
    with clock("eval"):
        final = final_metrics(params, prep, cfg.optim.lambda_)
    with clock("io"):
        save_weights(run.path / "weights.npz", params, prep, config_text)
        plots.training_plots(rows, make_schedule(cfg.schedule), total, run.path)
        if total in ensemble.snapshot_steps(cfg):
            ensemble.save_snapshot(run.path, total, params, prep, config_text)
    if ensemble.snapshot_steps(cfg):
        with clock("eval"):
            run.summary["ensemble"] = ensemble_summary(run.path, prep)
    run.summary.update(
        timing={k: clock.rounded().get(k, 0.0) for k in ("train", "eval", "io")},
        steps=total,
        data=data_summary(prep),
        best_val_accuracy=max(r["val_accuracy"] for r in rows),
        **{m: {k: v[m] for k, v in final.items()} for m in ("accuracy", "loss", "cost")},
    )
    return final


def ensemble_summary(run_path: Path, prep) -> dict:
    """The snapshot ensemble's members (steps) and accuracy on every split."""
    paths = ensemble.members(run_path)
    splits = {"train": prep.train, "val": prep.val, "test": prep.test}
    splits = {k: v for k, v in splits.items() if v is not None}
    return {"members": [ensemble.member_step(p) for p in paths],
            "accuracy": ensemble.ensemble_accuracy(paths, splits)}  # fmt: skip


def data_summary(prep) -> dict:
    """Where the data came from, the split sizes and their fingerprints (data.fingerprint)."""
    return {"source": prep.source, "format": prep.format, "sizes": split_sizes(prep),
            "fingerprints": prep.fingerprints}  # fmt: skip


def split_sizes(prep) -> dict:
    splits = {"train": prep.train, "val": prep.val, "test": prep.test}
    return {k: len(v.y) for k, v in splits.items() if v is not None}


def run_train(cfg, config_text: str, config_path: str, out, name: str) -> dict:
    """The `train` command: prepare data, open a fresh run dir, train, print the final table."""
    started, clock = time.perf_counter(), runs.Clock()
    with clock("io"):
        prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
    check_batch_size(cfg, prep, config_path)
    with runs.open_run(out, "train", name, cfg, config_text, started) as run:
        sizes = "/".join(str(v) for v in split_sizes(prep).values())
        console.log(f"run dir: {run.path}  data: {prep.source} ({prep.format}), "
                    f"train/val/test {sizes}")  # fmt: skip
        final = train_run(run, cfg, prep, config_text, clock)
    print_final(final, run.summary)
    return run.summary


def print_final(final: dict, summary: dict) -> None:
    console.table("final metrics", ["split", "loss", "cost", "accuracy"],
                  [[k, v["loss"], v["cost"], v["accuracy"]] for k, v in final.items()])
    if "ensemble" in summary:
        ens = summary["ensemble"]
        console.table(f"snapshot ensemble of {len(ens['members'])} (steps "
                      f"{', '.join(map(str, ens['members']))})", ["split", "accuracy"],
                      [[k, v] for k, v in ens["accuracy"].items()])  # fmt: skip


def run_repeat(cfg, config_text: str, config_path: str, out, name: str, repeat: int,
               into: Path | None = None) -> dict:  # fmt: skip
    """`train --repeat K`: K initialisation seeds of one config, fused in one pass where the
    fused path supports the config's options, else one after another.

    Each repeat is an ordinary run directory under `repeats/<k>/`; the top summary reports the
    mean accuracies (`accuracy`), their standard deviations (`accuracy_std`) and every value,
    and the same for the snapshot ensemble when the config keeps snapshots. `into`: a new
    directory of that name instead of a fresh one under `out` (a search's best-repeat/).
    """
    from . import fused
    from .search import init_seeds

    started, clock = time.perf_counter(), runs.Clock()
    with clock("io"):
        prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
    check_batch_size(cfg, prep, config_path)
    seeds = init_seeds(cfg.seed if cfg.init_seed is None else cfg.init_seed, repeat)
    cfgs = [cfg.model_copy(update={"init_seed": s}) for s in seeds]
    alone = fused.unsupported(cfg)
    if into is not None:
        into.mkdir()
    opened = runs.start_run(into, "train", cfg, config_text, started) if into is not None else \
        runs.open_run(out, "train", name, cfg, config_text, started)  # fmt: skip
    with opened as run:
        how = f"one after another ({', '.join(alone)} not fused)" if alone else "trained fused"
        console.log(f"run dir: {run.path}  {repeat} repeats, {how}")
        train_repeats = _repeats_alone if alone else _repeats_fused
        subs = train_repeats(run, cfgs, prep, clock)
        run.summary.update(repeat_summary(subs, seeds, clock), fused=not alone,
                           data=data_summary(prep))  # fmt: skip
    print_repeat(run.summary)
    return run.summary


def _repeat_dir(run, k: int) -> Path:
    path = run.path / "repeats" / f"{k:02d}"
    path.mkdir(parents=True)
    return path


def _repeats_fused(run, cfgs: list, prep, clock: runs.Clock) -> list[dict]:
    """Train the repeats as one wide network; each is charged an equal share of the pass."""
    from . import config as config_mod
    from . import fused

    with console.progress_bar("train", total=total_steps(cfgs[0].schedule)) as advance:
        with clock("loop"):
            plist, rows, diverged = fused.train_group(cfgs, prep, advance, clock)
    if diverged:
        k, (t, lr) = next(iter(diverged.items()))
        raise DivergedError(f"repeat {k} diverged at step {t} (lr={lr:.6g})")
    clock.seconds["train"] = clock.seconds.pop("loop") - clock.seconds.get("eval", 0.0)
    subs = []
    for k, c in enumerate(cfgs):
        text = config_mod.dump_yaml(c)
        share = runs.Clock()
        share.seconds = {key: v / len(cfgs) for key, v in clock.seconds.items()}
        # each repeat is charged its share of the fused pass, then its own finish
        charged = time.perf_counter() - sum(share.seconds.values())
        with runs.start_run(_repeat_dir(run, k), "train", c, text, charged) as sub:
            finish_run(sub, c, prep, plist[k], rows[k], text, share)
        subs.append(sub.summary)
    return subs


def _repeats_alone(run, cfgs: list, prep, clock: runs.Clock) -> list[dict]:
    """Train the repeats one after another, each an ordinary run in its own directory."""
    from . import config as config_mod

    subs = []
    for k, c in enumerate(cfgs):
        text, own = config_mod.dump_yaml(c), runs.Clock()
        console.log(f"repeat {k + 1} of {len(cfgs)} (init_seed {c.init_seed})")
        with runs.start_run(_repeat_dir(run, k), "train", c, text) as sub:
            train_run(sub, c, prep, text, own)  # its rows and progress bar show as usual
        for key, v in own.seconds.items():
            clock.seconds[key] = clock.seconds.get(key, 0.0) + v
        subs.append(sub.summary)
    return subs


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
        ens = {k: [s["ensemble"]["accuracy"][k] for s in subs] for k in splits}
        out["ensemble"] = {"members": subs[0]["ensemble"]["members"],
                           "accuracy": {k: mean_std(v)[0] for k, v in ens.items()},
                           "accuracy_std": {k: mean_std(v)[1] for k, v in ens.items()},
                           "accuracy_runs": ens}  # fmt: skip
    return out


def print_repeat(summary: dict) -> None:
    k = summary["repeat"]
    console.table(f"final accuracy over {k} initialisation seeds", ["split", "mean", "std"],
                  [[s, summary["accuracy"][s], summary["accuracy_std"][s]]
                   for s in summary["accuracy"]])  # fmt: skip
    if "ensemble" in summary:
        ens = summary["ensemble"]
        console.table(f"snapshot ensemble accuracy over {k} seeds", ["split", "mean", "std"],
                      [[s, ens["accuracy"][s], ens["accuracy_std"][s]] for s in ens["accuracy"]])


def run_resume(run_dir: Path, out=None) -> dict:
    """`train --resume RUN_DIR`: continue an interrupted run from its checkpoint, in place."""
    from . import config as config_mod

    started, clock = time.perf_counter(), runs.Clock()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = config_mod.load_config(run_dir / "config.yaml")
    state = resume_state(run_dir)
    with clock("io"):
        prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
    text = config_mod.dump_yaml(cfg)
    with runs.start_run(run_dir, "train", cfg, text, started, fresh=False) as run:
        run.summary["resumed_from_step"] = state.step if state else 0
        console.log(f"run dir: {run.path}  resuming at update {state.step if state else 0}")
        final = train_run(run, cfg, prep, text, clock, resume=state)
    print_final(final, run.summary)
    return run.summary


def resume_state(run_dir: Path):
    """The run's checkpoint; None (start over, in place) for a run stopped before its first."""
    if (run_dir / checkpoint.NAME).is_file():
        return checkpoint.load(run_dir / checkpoint.NAME)
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status != "interrupted":
        raise RunError(f"{run_dir}: no checkpoint to resume from (status {status or 'unknown'})")
    return None
