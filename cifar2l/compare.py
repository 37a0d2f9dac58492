"""Runs side by side: `cifar2l compare RUN...`.

Any run directories, of any command: their config differences (the dotted keys whose values
differ between them), their final accuracies, and their curves overlaid (curves.png: one colour
per run, a --repeat run as the mean with a +-1 std band over its repeats, a search as its best
trial), in a fresh compare run directory with a self-contained compare.html.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import catalog, console, runs
from .errors import ConfigError, shown

# The columns of a run's metrics.csv that can be plotted against the update step.
METRICS = ["val_accuracy", "train_accuracy", "val_cost", "train_cost", "val_loss", "train_loss",
           "lr"]  # fmt: skip
DEFAULT_METRICS = ["val_accuracy", "train_accuracy", "val_cost", "train_cost"]
# The final metrics table: (row label, summary block or None for the top level, split).
FINAL = [("val accuracy", None, "val"), ("test accuracy", None, "test"),
         ("ensemble val", "ensemble", "val"), ("ensemble test", "ensemble", "test"),
         ("TTA val", "tta", "val"), ("TTA test", "tta", "test"),
         ("EMA val", "average", "val"), ("EMA test", "average", "test")]  # fmt: skip


@dataclass
class Curves:
    """A run's metrics against the update step: the mean over its repeats and their std
    (None for a single run)."""

    step: np.ndarray
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray] | None = None


@dataclass
class Compared:
    label: str
    path: Path
    summary: dict
    config: dict = field(default_factory=dict)  # dotted keys; {} when unreadable
    curves: Curves | None = None


# ---------------------------------------------------------------- reading the runs


def load(path: Path, label: str) -> Compared:
    """The run `path` with its config and curves; ConfigError when it is no run directory."""
    path = Path(path)
    summary = catalog.read_summary(path) if path.is_dir() else None
    if summary is None:
        raise ConfigError(f"{shown(path)}: not a run directory (no readable summary.json)")
    source, numbers = catalog.headline(path, summary) or (path, summary)
    config = run_config(source, numbers.get("command"))
    return Compared(label, path, summary, config, read_curves(source, numbers))


# Config sections only their own command reads: a train run's `search:` defaults (or a
# search's best trial's) are no difference between two trainings.
COMMAND_SECTIONS = ("search", "lrrange", "gradcheck")


def run_config(path: Path, command: str | None = None) -> dict:
    """The run's config.yaml as dotted keys, without the study's `expected:` and the sections
    of other commands than `command`; {} when it has none or it cannot be read."""
    try:
        flat = catalog.flat_config(path / "config.yaml")
    except ConfigError:
        return {}
    drop = set(catalog.IGNORED) | (set(COMMAND_SECTIONS) - {command})
    return {k: v for k, v in flat.items() if k.split(".")[0] not in drop}


def metrics_files(path: Path, summary: dict) -> list[Path]:
    """The metrics CSVs behind a run: its own, or one per repeat of a --repeat run."""
    if summary.get("repeat", 1) != 1 or not (path / "metrics.csv").is_file():
        found = sorted((path / "repeats").glob("*/metrics.csv"))
        if found:
            return found
    return [path / "metrics.csv"] if (path / "metrics.csv").is_file() else []


def read_metrics(path: Path) -> dict[str, np.ndarray] | None:
    """{column: values} of a metrics CSV with a step column; None when unreadable."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        columns = {c: np.array([float(r[c]) for r in rows]) for c in rows[0]}
    except (OSError, ValueError, TypeError, IndexError, UnicodeDecodeError, csv.Error):
        return None
    return columns if "step" in columns else None


def read_curves(path: Path, summary: dict) -> Curves | None:
    """The run's curves: the mean and std over its repeats at the steps they all logged."""
    tables = [read_metrics(p) for p in metrics_files(path, summary)]
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    steps = tables[0]["step"]
    for t in tables[1:]:
        steps = np.intersect1d(steps, t["step"])
    names = [c for c in METRICS if all(c in t for t in tables)]
    stacked = {c: np.stack([t[c][np.searchsorted(t["step"], steps)] for t in tables])
               for c in names}  # fmt: skip
    mean = {c: v.mean(axis=0) for c, v in stacked.items()}
    std = {c: v.std(axis=0, ddof=1) for c, v in stacked.items()} if len(tables) > 1 else None
    return Curves(steps, mean, std)


def labels_of(paths: list[Path]) -> list[str]:
    """Each run's name in the tables and legend: its directory name, or the path as given
    when two runs share a name."""
    names = [Path(p).resolve().name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


# ---------------------------------------------------------------- tables


def differences(found: list[Compared]) -> list[list[str]]:
    """[key, value per run] for every dotted key whose values differ between the runs."""
    keys = dict.fromkeys(k for c in found for k in c.config)
    missing = object()
    rows = []
    for key in keys:
        values = [c.config.get(key, missing) for c in found]
        if any(v != values[0] for v in values[1:]):
            rows.append([key, *("-" if v is missing else json.dumps(v, default=str)
                                for v in values)])  # fmt: skip
    return rows


def final_rows(found: list[Compared]) -> list[list[str]]:
    """[metric, value per run] for the run facts and every accuracy some run has."""
    rows = [["command", *(str(c.summary.get("command", "-")) for c in found)],
            ["status", *(str(c.summary.get("status", "-")) for c in found)],
            ["wall time", *(catalog.duration(catalog.wall_seconds(c.summary)) for c in found)]]
    for label, block, split in FINAL:
        cells = [final_cell(c, block, split) for c in found]
        if any(cell != "-" for cell in cells):
            rows.append([label, *cells])
    return rows


def final_cell(c: Compared, block: str | None, split: str) -> str:
    found = catalog.headline(c.path, c.summary)
    if found is None:
        return "-"
    summary = found[1]
    if block is None and isinstance(summary.get("accuracy"), float):  # an old evaluate run
        return catalog.pm(summary["accuracy"]) if summary.get("split") == split else "-"
    return catalog.pm(*catalog.block_value(summary if block is None else summary.get(block),
                                           split))  # fmt: skip


def rich_table(title: str, columns: list[str], rows: list[list[str]]):
    """A table whose long run names fold rather than being cut."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold", justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*r)
    return t


# ---------------------------------------------------------------- the figure


def title_of(labels: list[str]) -> str:
    return "\n".join(textwrap.wrap("compare: " + ", ".join(labels), 110)[:3])


def figure(found: list[Compared], metrics: list[str], path: Path) -> None:
    """One panel per metric against the update step, one colour per run."""
    from .plots import _save, new_figure

    ncols = 1 if len(metrics) == 1 else 2
    nrows = -(-len(metrics) // ncols)
    fig = new_figure((6.4 * ncols, 4.2 * nrows + 0.8), "constrained")  # imports matplotlib
    from matplotlib import colormaps

    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = colormaps["tab10"].colors
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for k, c in enumerate(found):
            draw(ax, c, metric, colours[k % len(colours)])
        ax.set(xlabel="update step", ylabel=metric, title=metric.replace("_", " "))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 3),
               fontsize=9)  # fmt: skip
    fig.suptitle(title_of([c.label for c in found]), fontsize=11)
    _save(fig, path)


def draw(ax, c: Compared, metric: str, colour) -> None:
    """The run's `metric`: its line (the mean of a --repeat run) and a +-1 std band."""
    if c.curves is None or metric not in c.curves.mean:
        return
    x, y = c.curves.step, c.curves.mean[metric]
    label = c.label + (" (mean +- std)" if c.curves.std is not None else "") + \
        (" (best trial)" if c.summary.get("command") == "search" else "")  # fmt: skip
    ax.plot(x, y, color=colour, marker="." if len(x) <= 60 else None, label=label)
    if c.curves.std is not None:
        sd = c.curves.std[metric]
        ax.fill_between(x, y - sd, y + sd, color=colour, alpha=0.2, lw=0)


# ---------------------------------------------------------------- the page


def html_table(columns: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:75em}"
         "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
         "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:90%}"
         "th{background:#eee}img{max-width:100%}code{font-size:90%}")  # fmt: skip


def to_html(found: list[Compared], tables: dict, png: Path | None, notes: list[str]) -> str:
    """The page: the runs, both tables and the figure as a data URI; no external resource."""
    esc = html.escape
    labels = [c.label for c in found]
    runs_list = "".join(f"<li><b>{esc(c.label)}</b>: <code>{esc(str(c.path))}</code></li>"
                        for c in found)  # fmt: skip
    parts = [f"<h1>{esc('compare: ' + ', '.join(labels))}</h1><ul>{runs_list}</ul>",
             "<h2>Final metrics</h2>", html_table(["", *labels], tables["final"]),
             "<h2>Config differences</h2>",
             html_table(["key", *labels], tables["differences"]) if tables["differences"]
             else "<p>The configs do not differ.</p>"]  # fmt: skip
    if png is not None:
        data = base64.b64encode(png.read_bytes()).decode()
        parts += ["<h2>Curves</h2>", f"<img alt='{esc(png.name)}' src='data:image/png;base64,"
                  f"{data}'>"]  # fmt: skip
    parts += [f"<p>{esc(n)}</p>" for n in notes]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(', '.join(labels))}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------- the command


def check_inputs(paths: list[Path], metrics: list[str]) -> None:
    if len(paths) < 2:
        raise ConfigError(f"compare: give at least 2 run directories (got {len(paths)})")
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"--metric {shown(m)}: must be one of {', '.join(METRICS)}")


def run_compare(paths: list[Path], metrics: list[str] | None, out: Path,
                name: str | None) -> dict:  # fmt: skip
    """Read every run first (a bad one writes nothing), then write the compare directory."""
    start = time.perf_counter()
    metrics = list(dict.fromkeys(metrics or DEFAULT_METRICS))
    check_inputs(paths, metrics)
    found = [load(p, label) for p, label in zip(paths, labels_of(paths), strict=True)]
    tables = {"differences": differences(found), "final": final_rows(found)}
    labels = [c.label for c in found]
    console.show(rich_table("final metrics", ["", *labels], tables["final"]), whole=True)
    console.show(rich_table("config differences", ["key", *labels], tables["differences"]),
                 whole=True)  # fmt: skip
    path = runs.create_run_dir(Path(out), "compare", name or f"{len(found)}-runs")
    try:
        summary = write_outputs(path, found, tables, metrics)
        summary["seconds"] = round(time.perf_counter() - start, 3)
        runs.write_json(path / "summary.json", summary)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no half-written compare directory
        raise
    console.log(f"wrote {path / 'compare.html'}")
    return summary


def write_outputs(path: Path, found: list[Compared], tables: dict, metrics: list[str]) -> dict:
    """curves.png (when a run has curves), compare.html, command.txt and the summary."""
    drawn = [c for c in found if c.curves is not None]
    notes = [f"{c.label}: no metrics.csv to draw curves from ({c.summary.get('command')} run)"
             for c in found if c.curves is None]  # fmt: skip
    notes += [f"{c.label}: no readable config.yaml (its keys show as -)" for c in found
              if not c.config]  # fmt: skip
    png = path / "curves.png" if drawn else None
    if png is not None:
        figure(found, metrics, png)
    runs.atomic_write(path / "compare.html", to_html(found, tables, png, notes))
    runs.write_command(path)
    summary = {**runs.base_summary("compare", path, None), "status": "completed",
               "runs": [str(c.path) for c in found], "labels": [c.label for c in found],
               "metrics": metrics, "figures": [png.name] if png else [], "notes": notes,
               "differences": tables["differences"], "final": tables["final"]}  # fmt: skip
    return summary
