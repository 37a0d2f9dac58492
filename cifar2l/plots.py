"""Matplotlib figures, written without a display (Agg backend)."""

from __future__ import annotations

import functools
import io
import os
import re
from pathlib import Path

import numpy as np

from . import runs

# Axes box of a run's curves in figure fractions: room for tick labels up to "0.0001", the axis
# labels and a title
MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.92}


def figure_class():
    """matplotlib's Figure, imported without pyplot: a figure saved by its own canvas needs no
    backend and no figure registry, and skipping pyplot's import saves ~0.15 s of each run."""
    import logging

    # Under a read-only or broken XDG_CACHE_HOME matplotlib puts its caches in a temp dir by
    # itself, but logs three lines about it while importing; the data cache's one warning
    # (data._write_cache) already says the cache is not writable.
    log = logging.getLogger("matplotlib")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from matplotlib.figure import Figure
    finally:
        log.setLevel(level)
    return Figure


def new_figure(figsize: tuple, layout: str | None = None):
    """An empty Figure of `figsize` inches (layout: "constrained" or None for fixed margins)."""
    return figure_class()(figsize=figsize, layout=layout)


def warm_up() -> None:
    """Import matplotlib and draw one small figure with text into memory: the first figure of a
    process pays for loading the fonts and the renderer (~0.15 s), so preload.py pays it in
    its thread. The object API (no pyplot figure registry) is safe beside the main thread."""
    figure = figure_class()  # first: matplotlib's first import is the one that logs
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(figsize=(1, 1))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], marker=".", label="x")
    ax.set(xlabel="x", title="x")
    ax.legend()
    FigureCanvasAgg(fig).print_png(io.BytesIO())


def _save(fig, path: Path) -> None:
    # A unique temp name: two processes may write the same figure at once (concurrent collects).
    with runs.writing(path):  # a full disk or a read-only directory: one error naming `path`
        fd, tmp = runs.temp_file(path.parent, path.stem, suffix=path.suffix)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=120)  # no bbox_inches="tight": it would draw the figure twice
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def run_name(path: Path) -> str:
    """A run's name in titles: its directory name without the date and command
    (20261201-225440-train-best -> best); a repeat's or a trial's: its run's and its number."""
    path = Path(path)
    kind = {"repeats": "seed", "trials": "trial"}.get(path.parent.name)
    if kind:
        return f"{run_name(path.parent.parent)} · {kind} {path.name}"
    if path.name == "best-repeat":  # search --repeat-best
        return f"{run_name(path.parent)} · best trial retrained"
    m = re.match(r"\d{8}-\d{6}-[a-z]+-(.+)$", path.name)
    return m.group(1) if m else path.name


def schedule_text(sched) -> str:
    if sched.kind == "cyclical":
        cycles = f"{sched.cycles} cycle{'s' * (sched.cycles > 1)}"
        return f"cyclic eta {sched.eta_min:.3g}..{sched.eta_max:.3g} (n_s {sched.n_s}, {cycles})"
    if sched.kind == "one_cycle":
        return f"one-cycle eta {sched.eta_min:.3g}..{sched.eta_max:.3g} ({sched.steps} steps)"
    return f"constant eta {sched.eta:.3g} ({sched.steps} steps)"


def settings(cfg, schedule: bool = True) -> str:
    """The config's key settings, the ones that tell runs apart: 'hidden 50 · lambda 0.01 ·
    cyclic eta 1e-05..0.1 (n_s 500, 1 cycle)', then whatever is not the study's plain recipe."""
    parts = [f"hidden {cfg.model.hidden}", f"lambda {cfg.optim.lambda_:.3g}"]
    parts += [schedule_text(cfg.schedule)] if schedule else []
    return " · ".join(parts + extras(cfg))


def extras(cfg) -> list[str]:
    o, a, avg = cfg.optim, cfg.augment, cfg.train.average
    found = [(cfg.model.dropout, lambda: f"dropout {cfg.model.dropout:g}"),
             (cfg.data.zca_eps, lambda: f"ZCA eps {cfg.data.zca_eps:g}"),
             (o.momentum, lambda: f"{'nesterov' if o.nesterov else 'momentum'} {o.momentum:g}"),
             (o.label_smoothing, lambda: f"label smoothing {o.label_smoothing:g}"),
             (a.flip, lambda: "flip"), (a.translate, lambda: f"translate {a.translate}"),
             (avg, lambda: avg.kind.upper())]  # fmt: skip
    return [text() for on, text in found if on]


def lrrange_title(path: Path, cfg) -> str:
    r = cfg.lrrange
    sweep = f"lr {r.lr_min:g}..{r.lr_max:g} {r.mode} over {r.epochs} epochs"
    return title_lines(f"{run_name(path)} · LR range test", f"{settings(cfg, False)} · {sweep}",
                       110)


def title_lines(head: str, sub: str = "", width: int = 80) -> str:
    """A title: `head` on its line, `sub` wrapped under it at ' · ' boundaries."""
    lines, line = [head], ""
    for part in sub.split(" · ") if sub else []:
        if line and len(line) + len(part) + 3 > width:
            lines.append(line)
            line = ""
        line = f"{line} · {part}" if line else part
    return "\n".join(lines + ([line] if line else []))


def _titled(fig, ax, title: str, height: float) -> None:
    """`title` over `ax`; the axes box shrinks by the title's extra lines (fixed margins)."""
    lines = title.count("\n") + 1
    ax.set_title(title, fontsize=9 if lines > 1 else 12)
    # the axes' own gridspec: its explicit margins win over fig.subplots_adjust
    ax.get_subplotspec().get_gridspec().update(top=1 - (0.17 + 0.16 * lines) / height)


def curve(rows: list[dict], metric: str, path: Path, title: str):
    """`train_<metric>` and `val_<metric>` against the update step, like the study's figures."""
    # Fixed margins, not layout="constrained": every run draws these, and the layout solver
    # took 40% of each figure's time (0.12 s against 0.07 s).
    fig = new_figure((6, 4))
    ax = fig.subplots(gridspec_kw=MARGINS)
    steps = [r["step"] for r in rows]
    for split, label in (("train", "training"), ("val", "validation")):
        ax.plot(steps, [r[f"{split}_{metric}"] for r in rows], marker=".", label=label)
    ax.set(xlabel="update step", ylabel=metric)
    _titled(fig, ax, title, 4)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig


def learning_rate(lr_fn, total: int, path: Path, title: str = "learning-rate schedule"):
    steps = np.arange(total + 1)
    fig = new_figure((6, 3))
    ax = fig.subplots(gridspec_kw={**MARGINS, "bottom": 0.16, "top": 0.89})
    ax.plot(steps, [lr_fn(int(t)) for t in steps])
    ax.set(xlabel="update step", ylabel="learning rate")
    _titled(fig, ax, title, 3)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return fig


def run_figures(rows: list[dict], cfg, total: int, run_dir: Path) -> list:
    """cost.png, loss.png, accuracy.png and lr.png of a run, titled with its name and settings:
    one call each, which draws and writes that figure (picklable arguments: plotter.py's
    helper draws them)."""
    from .schedule import make_schedule

    name, sub = run_name(run_dir), settings(cfg)
    draws = [functools.partial(curve, rows, metric, run_dir / f"{metric}.png",
                               title_lines(f"{name} · {metric}", sub))
             for metric in ("cost", "loss", "accuracy")]  # fmt: skip
    draws.append(functools.partial(learning_rate, make_schedule(cfg.schedule), total,
                                   run_dir / "lr.png",
                                   title_lines(f"{name} · learning-rate schedule", sub)))
    return draws


PANELS = ("loss", "cost", "accuracy")  # the study's figures, left to right


def panels(trials: list[list[dict]], title: str, path: Path | None = None):
    """Loss, cost and accuracy against the update step side by side, training and validation;
    over several trials (a `--repeat` run's seeds) their mean with a +-1 std band. Written to
    `path` when given; returns the figure (png_bytes renders it)."""
    fig = new_figure((13, 4.2))
    axes = fig.subplots(1, 3, gridspec_kw={"left": 0.055, "right": 0.99, "bottom": 0.13,
                                           "wspace": 0.24})  # fmt: skip
    n = min(len(t) for t in trials)
    steps = [r["step"] for r in trials[0][:n]]
    for ax, metric in zip(axes, PANELS, strict=True):
        for split, label in (("train", "training"), ("val", "validation")):
            values = np.array([[r[f"{split}_{metric}"] for r in t[:n]] for t in trials], float)
            band(ax, steps, values, label)
        ax.set(xlabel="update step", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(top=0.87 - 0.05 * title.count("\n"))
    if path is not None:
        _save(fig, path)
    return fig


def band(ax, steps, values: np.ndarray, label: str) -> None:
    """One line per split: a lone trial's values, or the mean +- 1 std band of several."""
    if len(values) == 1:
        ax.plot(steps, values[0], marker=".", label=label)
        return
    mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
    (line,) = ax.plot(steps, mean, marker=".", label=f"{label}, mean ± 1 std of {len(values)}")
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.25, lw=0)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Rows: true class, columns: predicted class, counts in the cells."""
    fig = new_figure((7, 6), "constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    limit = matrix.max() / 2 if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > limit else "black")  # fmt: skip
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def search_scatter(rows: list[dict], search: dict, path: Path | None, name: str | None = None):
    """Validation accuracy against each searched value (log axis for log-uniform keys); the
    best trial (rows[0]: they come ranked) starred and named in the legend and the title.
    Written to `path` when given; `name`: the search's (default: that of path's folder)."""
    keys = list(search["space"])
    cols = 2 if len(keys) == 4 else min(3, len(keys))  # more keys: more rows, not a strip
    nrows = -(-len(keys) // cols)
    fig = new_figure((4.5 * cols + 1, 3.4 * nrows + 0.8), "constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_axis_off()
    metric, best = search["metric"], rows[0]
    for ax, key in zip(axes.flat, keys, strict=False):
        search_panel(ax, key, search["space"][key], rows, metric)
    values = ", ".join(f"{k} {best['params'][k]:.3g}" if isinstance(best["params"][k], float)
                       else f"{k} {best['params'][k]}" for k in keys)  # fmt: skip
    name = name or run_name(path.parent)
    fig.suptitle(title_lines(f"{name} · {len(rows)} completed trials", f"best: trial "
                             f"{best['trial']}, {metric} {best[metric]:.4f} ({values})",
                             40 + 45 * cols), fontsize=11)  # fmt: skip
    if path is not None:
        _save(fig, path)
    return fig


def grid_positions(ax, values: list, xs: list) -> list[float]:
    """A grid axis as evenly spaced categories in the grid's order, labelled with its values
    (0.001, 0.01, 0.1 read well there, as on a log axis), and the x of each trial: its value's
    place, spread a little so that the trials of one point do not hide each other."""
    labels = [f"{v:.3g}" if isinstance(v, float) else str(v)[:12] for v in values]
    step = max(1, len(values) // 20)  # at most ~20 labels
    ax.set_xticks(range(0, len(values), step), labels[::step],
                  rotation=45 if len(values) > 6 else 0)  # fmt: skip
    ax.set_xlim(-0.5, len(values) - 0.5)
    index = {repr(v): i for i, v in enumerate(values)}
    place = [index.get(repr(x), 0) for x in xs]
    count, seen = np.bincount(place, minlength=len(values)), np.zeros(len(values), int)
    out = []
    for i in place:  # the trials of a point spread evenly over +-0.12 around it
        out.append(i + (0.24 * seen[i] / (count[i] - 1) - 0.12 if count[i] > 1 else 0.0))
        seen[i] += 1
    return out


def search_panel(ax, key: str, space: dict, rows: list[dict], metric: str) -> None:
    """One searched key: every trial's metric against its value, the best one starred."""
    choice = "choice" in space
    xs = [str(r["params"][key]) if choice else r["params"][key] for r in rows]
    if "grid" in space:
        xs = grid_positions(ax, space["grid"], xs)
    if choice:  # categories in the config's order, not in the ranking's
        ax.plot([str(c) for c in space["choice"]], [np.nan] * len(space["choice"]), ls="")
    ax.scatter(xs, [r[metric] for r in rows], s=18, label="trials")
    ax.scatter(xs[:1], [rows[0][metric]], marker="*", s=260, color="tab:red", zorder=3,
               edgecolors="black", linewidths=0.6, label=f"best (trial {rows[0]['trial']})")
    if "log_uniform" in space:
        log_axis(ax, [min(xs), max(xs)])  # the trials' range (a refined search's is narrower)
    ax.set(xlabel=key, ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def log_axis(ax, bounds: list[float]) -> None:
    """A log x axis; over less than a decade, plain numbers at a few ticks (matplotlib's
    minor labels like 2.8x10^-3 would run into each other)."""
    from matplotlib import ticker

    ax.set_xscale("log")
    if bounds[0] > 0 and bounds[1] / bounds[0] < 10:
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
        ax.xaxis.set_major_locator(ticker.MaxNLocator(5))


def loss_limits(losses) -> tuple[float, float]:
    """The loss panel's y range: from the lowest loss to 1.5x the initial one (capped at the
    highest), so the divergent tail of the sweep does not squash the useful part."""
    finite = np.asarray([v for v in losses if np.isfinite(v)], float)
    if not finite.size:
        return 0.0, 1.0
    top = min(finite.max(), 1.5 * finite[: max(1, len(finite) // 20)].max())
    low = finite.min()
    pad = 0.05 * (top - low or 1.0)
    return float(low - pad), float(top + pad)


def lrrange(rows: list[dict], s: dict, log_x: bool, path: Path | None,
            title: str = "LR range test"):  # fmt: skip
    """Accuracy and loss against the learning rate, with the suggested eta_min / eta_max; the
    loss axis stops at 1.5x the initial loss and the diverged tail beyond it is shaded."""
    lrs = [r["lr"] for r in rows]
    fig = new_figure((12, 4.4), "constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    for split, label in (("train", "training (subset)"), ("val", "validation")):
        acc_ax.plot(lrs, [r[f"{split}_accuracy"] for r in rows], ".-", ms=3, label=label)
        loss_ax.plot(lrs, [r[f"{split}_loss"] for r in rows], ".-", ms=3, label=label)
    acc_ax.plot(lrs, s["smoothed_val_accuracy"], "k-", lw=1.5, label="validation, smoothed")
    low, top = loss_limits([r["val_loss"] for r in rows] + [r["train_loss"] for r in rows])
    loss_ax.set_ylim(low, top)
    mark_diverged(loss_ax, rows, top)
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        for key, color in (("eta_min", "tab:green"), ("eta_max", "tab:red")):
            ax.axvline(s[key], color=color, ls="--", label=f"{key} = {s[key]:.3g}")
        if log_x:
            ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=11)
    if path is not None:
        _save(fig, path)
    return fig


def mark_diverged(ax, rows: list[dict], top: float) -> None:
    """Shade the learning rates past the first one whose validation loss exceeds `top` (or is
    not finite), and put a marker on the axis' top edge for each point clipped there."""
    losses = np.nan_to_num([r["val_loss"] for r in rows], nan=np.inf)
    after = rows[int(np.argmin(losses)):]  # the tail past the lowest loss
    over = [r["lr"] for r in after if not np.isfinite(r["val_loss"]) or r["val_loss"] > top]
    if not over:
        return
    ax.axvspan(over[0], rows[-1]["lr"], color="0.5", alpha=0.3,
               label=f"diverged (loss > {top:.3g})")  # fmt: skip
    ax.plot(over, [top] * len(over), "v", color="0.3", ms=6, clip_on=False)
