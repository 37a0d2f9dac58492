"""The learning-rate range test (Smith 2015): train while the rate rises, read off eta bounds.

The suggestion rule, on the validation accuracy smoothed by a centred moving average of
`lrrange.smooth` evaluation points: with `base` the smoothed accuracy at the first point and
`rise` the climb from there to its maximum,
- eta_min is the rate at the first point where the curve has climbed 10% of `rise`
  (the start of the rise);
- eta_max is the rate at the maximum of the smoothed curve: the end of the rise, where it has
  flattened, and the last rate before it turns ragged and falls (Smith's "starts to fall").
  A sweep is cumulative training, so the curve still creeps up while it flattens; a threshold
  such as 90% of the rise lands a decade lower, before the flat top.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import config as config_mod
from . import console, data, loop, network, optim, plots, runs
from .errors import DivergedError, RunError
from .loop import steps_per_epoch
from .rngs import init_seeds, make_rngs
from .train import check_batch_size, data_summary

COLUMNS = ["step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
RISE_START = 0.1


def lr_at(t: int, total: int, lr_min: float, lr_max: float, mode: str) -> float:
    """Rate at step t of `total`: linear or geometric from lr_min (t = 0) to lr_max (last step)."""
    frac = t / max(1, total - 1)
    if mode == "linear":
        return lr_min + frac * (lr_max - lr_min)
    return lr_min * (lr_max / lr_min) ** frac


def sweep_steps(rc, per_epoch: int) -> int:
    return rc.steps if rc.steps is not None else rc.epochs * per_epoch


def sweep_stack(cfg, total: int) -> loop.Stack:
    """The training loop's stack of one network under the rising rate, with metric rows every
    `eval_every` updates and at the end; the sweep has its own stop rule (no explosion bound)."""
    rc = cfg.lrrange

    def eta(t: int) -> float:
        return lr_at(t, total, rc.lr_min, rc.lr_max, rc.mode)

    points = set(range(rc.eval_every, total + 1, rc.eval_every)) | {total}
    return loop.make_stack([cfg], log_at=points, exploded=math.inf, etas=[eta], total=total)


def sweep(params, prep, cfg, rngs, on_row=None, on_step=None) -> tuple[list[dict], str]:
    """Train under the rising rate; return the evaluated rows and why the sweep ended.

    params: a stack of T = 1; rngs: make_rngs(cfg.seed) (the shuffle, dropout, augment streams).
    """
    rc = cfg.lrrange
    total = sweep_steps(rc, steps_per_epoch(len(prep.train.y), cfg.train.batch_size))
    stack = sweep_stack(cfg, total)
    state = loop.TrainState(params, optim.init_velocity(params, stack.opt),
                            {k: rngs[k] for k in loop.STREAMS}, rows=[[]])  # fmt: skip
    rows, ended = [], ["reached lr_max"]
    train_sub = data.Split(prep.train.x[: rc.train_eval_rows], prep.train.y[: rc.train_eval_rows])
    hooks = loop.Hooks(rows=stop_rule(rows, ended, stack, rc, on_row), step=on_step)
    try:
        loop.run(state, stack, loop.Data(prep.train, prep.val, train_sub), hooks)
    except DivergedError:
        t, lr = state.diverged[0]
        ended[0] = f"non-finite loss at step {t} (lr={lr:.4g})"
    return rows, ended[0]


def stop_rule(rows: list, ended: list, stack: loop.Stack, rc, on_row):
    """rows(state, t): the sweep's row (the rate of the update just made), then its stop rule:
    a non-finite train loss, or one above stop_factor x its minimum so far."""

    def hook(state, t: int) -> None:
        r = state.rows[0][-1]
        rows.append({"step": t, "lr": float(stack.etas[0](t - 1)),
                     **{k: r[k] for k in COLUMNS[2:]}})  # fmt: skip
        if on_row:
            on_row(rows[-1])
        loss, lowest = rows[-1]["train_loss"], min(x["train_loss"] for x in rows)
        if not math.isfinite(loss):
            ended[0] = f"non-finite train loss at step {t} (lr={rows[-1]['lr']:.4g})"
        elif loss > rc.stop_factor * lowest:
            ended[0] = f"train loss {loss:.4g} > {rc.stop_factor:g} x its minimum"
        else:
            return
        raise loop.StopTraining(ended[0])

    return hook


def smooth(values: list[float], window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends."""
    v = np.asarray(values, dtype=np.float64)
    half = window // 2
    return np.array([v[max(0, i - half) : i + half + 1].mean() for i in range(len(v))])


def suggest(rows: list[dict], window: int) -> dict:
    """eta_min / eta_max by the module's documented rule; raises RunError without a rise."""
    if len(rows) < 3:
        raise RunError(f"LR range test stopped after {len(rows)} evaluation(s): too few to read")
    acc = smooth([r["val_accuracy"] for r in rows], window)
    peak = int(acc.argmax())
    base, rise = acc[0], acc[peak] - acc[0]
    if rise <= 0:
        raise RunError("validation accuracy never rose: widen lrrange.lr_min..lr_max")
    i_min = int(np.argmax(acc >= base + RISE_START * rise))
    return {"eta_min": rows[i_min]["lr"], "eta_max": rows[peak]["lr"],
            "peak_val_accuracy": float(acc[peak]), "smoothed_val_accuracy": acc.tolist()}


def suggestion_yaml(s: dict, run_dir, source: str) -> str:
    return (f"# Suggested by the LR range test in {run_dir} ({source}).\n"
            f"# Use it with `extends: [your-config.yaml, {Path(run_dir).absolute()}/"
            "suggestion.yaml]` (an absolute path: it works from any directory).\n"
            f"schedule:\n  eta_min: {s['eta_min']!r}\n  eta_max: {s['eta_max']!r}\n")  # fmt: skip


def run_lrrange(cfg, config_text: str, source: str, out, name: str, repeat: int = 1) -> dict:
    """The `lrrange` command; `repeat` K > 1 sweeps K initialisation seeds (same data order),
    one after another, each in `repeats/<k>/`, and suggests their geometric-mean rates."""
    started = time.perf_counter()
    prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
    check_batch_size(cfg, prep, source)
    with runs.open_run(out, "lrrange", name, cfg, config_text, started) as run:
        if repeat == 1:
            s = sweep_into(run, cfg, prep, source)
        else:
            s = repeat_into(run, cfg, prep, source, repeat)
        run.summary["data"] = data_summary(prep)
    console.table("LR range test suggestion", ["eta_min", "eta_max", "peak val_accuracy",
                                               "ended"],
                  [[s["eta_min"], s["eta_max"], s["peak_val_accuracy"], s["ended"]]])  # fmt: skip
    console.log(f"suggestion: {run.path / 'suggestion.yaml'}")
    return run.summary


def sweep_into(run, cfg, prep, source: str, show: bool = True) -> dict:
    """One sweep into an open run directory: lrrange.csv, suggestion.yaml, the plot, summary."""
    rngs = make_rngs(cfg.seed, cfg.init_seed)
    params = network.init_params(prep.train.x.shape[1], cfg.model.hidden, len(prep.classes),
                                 rngs["init"], cfg.dtype)  # fmt: skip
    total = sweep_steps(cfg.lrrange, steps_per_epoch(len(prep.train.y), cfg.train.batch_size))
    if show:
        console.log(f"run dir: {run.path}  {total} steps, lr {cfg.lrrange.lr_min:g} -> "
                    f"{cfg.lrrange.lr_max:g} ({cfg.lrrange.mode})")  # fmt: skip
    # The sweep is meant to end in overflow: numpy's warnings about it are noise here.
    with console.progress_bar("lrrange", total=total) as advance, np.errstate(all="ignore"):
        rows, ended = sweep(params, prep, cfg, rngs, on_step=advance)
    runs.write_csv(run.path / "lrrange.csv", COLUMNS, rows)
    run.summary.update(ended=ended, steps=rows[-1]["step"] if rows else 0)
    s = suggest(rows, cfg.lrrange.smooth)
    runs.atomic_write(run.path / "suggestion.yaml", suggestion_yaml(s, run.path, source))
    plots.lrrange(rows, s, cfg.lrrange.mode == "exponential", run.path / "lrrange.png",
                  plots.lrrange_title(run.path, cfg))
    run.summary.update(suggestion={"eta_min": s["eta_min"], "eta_max": s["eta_max"]},
                       peak_val_accuracy=s["peak_val_accuracy"], rule=RULE)
    return {**s, "ended": ended}


RULE = "eta_min: 10% of the smoothed validation-accuracy rise; eta_max: its maximum"


def repeat_into(run, cfg, prep, source: str, repeat: int) -> dict:
    """K sweeps (one per initialisation seed) in repeats/<k>/; the top suggestion is their
    geometric mean, with the spread as a factor (10 ** std of log10)."""
    seeds = init_seeds(cfg.seed if cfg.init_seed is None else cfg.init_seed, repeat)
    found = []
    for k, seed in enumerate(seeds):
        c = cfg.model_copy(update={"init_seed": seed})
        path = run.path / "repeats" / f"{k:02d}"
        path.mkdir(parents=True)
        with runs.start_run(path, "lrrange", c, config_mod.dump_yaml(c)) as sub:
            found.append(sweep_into(sub, c, prep, source, show=False))
    s = {k: geometric(found, k) for k in ("eta_min", "eta_max")}
    runs.atomic_write(run.path / "suggestion.yaml", suggestion_yaml(s, run.path, source))
    run.summary.update(
        repeat=repeat, init_seeds=seeds, rule=RULE, suggestion=s,
        suggestion_factor={k: spread(found, k) for k in s},
        suggestion_runs={k: [f[k] for f in found] for k in s},
        peak_val_accuracy=float(np.mean([f["peak_val_accuracy"] for f in found])),
        ended=[f["ended"] for f in found])  # fmt: skip
    return {**s, "peak_val_accuracy": run.summary["peak_val_accuracy"],
            "ended": f"{repeat} sweeps"}


def geometric(found: list[dict], key: str) -> float:
    return float(10 ** np.mean([math.log10(f[key]) for f in found]))


def spread(found: list[dict], key: str) -> float:
    """The seeds' spread of a rate as a factor: 10 ** (sample std of log10)."""
    logs = [math.log10(f[key]) for f in found]
    return float(10 ** np.std(logs, ddof=1)) if len(logs) > 1 else 1.0
