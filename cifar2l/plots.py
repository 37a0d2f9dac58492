"""Matplotlib figures, written without a display (Agg backend)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from . import runs

# Axes box of a run's curves in figure fractions: room for tick labels up to "0.0001", the axis
# labels and a title
MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.92}


def pyplot():
    import logging

    # Under a read-only or broken XDG_CACHE_HOME matplotlib puts its caches in a temp dir by
    # itself, but logs three lines about it while importing; the data cache's one warning
    # (data._write_cache) already says the cache is not writable.
    log = logging.getLogger("matplotlib")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    finally:
        log.setLevel(level)
    return plt


def warm_up() -> None:
    """Import pyplot and draw one small figure with text into memory: the first figure of a
    process pays for loading the fonts and the renderer (~0.15 s), so preload.py pays it in
    its thread. The object API (no pyplot figure registry) is safe beside the main thread."""
    pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
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


def curve(rows: list[dict], metric: str, path: Path, title: str) -> None:
    """`train_<metric>` and `val_<metric>` against the update step, like the study's figures."""
    plt = pyplot()
    # Fixed margins, not layout="constrained": every run draws these, and the layout solver
    # took 40% of each figure's time (0.12 s against 0.07 s).
    fig, ax = plt.subplots(figsize=(6, 4), gridspec_kw=MARGINS)
    steps = [r["step"] for r in rows]
    for split, label in (("train", "training"), ("val", "validation")):
        ax.plot(steps, [r[f"{split}_{metric}"] for r in rows], marker=".", label=label)
    ax.set(xlabel="update step", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def learning_rate(lr_fn, total: int, path: Path) -> None:
    plt = pyplot()
    steps = np.arange(total + 1)
    fig, ax = plt.subplots(figsize=(6, 3), gridspec_kw={**MARGINS, "bottom": 0.16, "top": 0.89})
    ax.plot(steps, [lr_fn(int(t)) for t in steps])
    ax.set(xlabel="update step", ylabel="learning rate", title="learning-rate schedule")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def training_plots(rows: list[dict], lr_fn, total: int, run_dir: Path) -> None:
    for metric in ("cost", "loss", "accuracy"):
        curve(rows, metric, run_dir / f"{metric}.png", f"{metric} plot")
    learning_rate(lr_fn, total, run_dir / "lr.png")


def confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Rows: true class, columns: predicted class, counts in the cells."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
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
    plt.close(fig)


def search_scatter(rows: list[dict], search: dict, path: Path) -> None:
    """Validation accuracy against each searched value (log axis for log-uniform keys)."""
    plt = pyplot()
    keys = list(search["space"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False,
                             layout="constrained")
    metric = search["metric"]
    for ax, key in zip(axes[0], keys, strict=True):
        xs = [r["params"][key] for r in rows]
        if "choice" in search["space"][key]:
            xs = [str(x) for x in xs]
        if "grid" in search["space"][key]:
            xs = grid_positions(ax, search["space"][key]["grid"], xs)
        ax.scatter(xs, [r[metric] for r in rows], s=18)
        if "log_uniform" in search["space"][key]:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(rows)} completed trials")
    _save(fig, path)
    plt.close(fig)


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


def lrrange(rows: list[dict], s: dict, log_x: bool, path: Path) -> None:
    """Accuracy and loss against the learning rate, with the suggested eta_min / eta_max."""
    plt = pyplot()
    lrs = [r["lr"] for r in rows]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for split, label in (("train", "training (subset)"), ("val", "validation")):
        acc_ax.plot(lrs, [r[f"{split}_accuracy"] for r in rows], ".-", ms=3, label=label)
        loss_ax.plot(lrs, [r[f"{split}_loss"] for r in rows], ".-", ms=3, label=label)
    acc_ax.plot(lrs, s["smoothed_val_accuracy"], "k-", lw=1.5, label="validation, smoothed")
    loss_ax.set_yscale("log")  # the last points of a sweep explode
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        for key, color in (("eta_min", "tab:green"), ("eta_max", "tab:red")):
            ax.axvline(s[key], color=color, ls="--", label=f"{key} = {s[key]:.3g}")
        if log_x:
            ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("LR range test")
    _save(fig, path)
    plt.close(fig)
