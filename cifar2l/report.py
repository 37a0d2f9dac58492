"""`cifar2l report RUN_DIR...`: the study's items, our numbers beside the study's.

Each run directory names the item it reproduces through its config's `expected:` block; the
study's numbers come from the item's shipped config (configs/*.yaml: items.py), never from a
copy. A run counts towards its item only when it is an unmodified reproduction: its config
equals the item's shipped config up to keys that cannot change the result (items.py); any
other difference is listed and the run is shown as `modified`, not counted.

Our numbers are means over the item's initialisation seeds (`--repeat K`) with their standard
deviation. A row is `ok` when |mean - study| <= max(tolerance, 2 std) (accuracies), when the
geometric-mean rate is within max(lr_factor, spread^2) of the study's (LR range picks), when
the gradient check passes, or when the mean reaches its target; `MISS` otherwise, and an item's
`note` explains its misses. Run directories of other commands (evaluate, ...), unfinished runs
and runs without an `expected:` block are skipped with a note. Every number links to the run
directory that produced it; the run's figures are copied next to the report.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, console, items, machine, runs
from . import config as config_mod
from .errors import RunError

ROOT = items.ROOT
ORDER = ("Table 1", "Table 2", "Table 3", "The tuned network", "LR range", "Bonus", "Table 4",
         "Beyond")  # fmt: skip
# A train run's figure is drawn from its metrics (render_figures); the others' are copied.
FIGURES = {"train": (), "search": ("search.png",), "lrrange": ("lrrange.png",), "gradcheck": ()}
CURVES = "curves.png"  # a train item's loss / cost / accuracy panels


class Skipped(Exception):
    """A run directory the report does not compare (the message says why)."""


@dataclass
class Row:
    label: str
    ours: float | None
    study: float | None = None
    ok: bool | None = None  # None: nothing to compare with, or not counted
    kind: str = "acc"  # acc | lr | err | lambda
    std: float | None = None  # seed std of an accuracy; spread factor of an LR pick

    @property
    def difference(self) -> float | None:
        if self.ours is None or self.study is None or self.kind != "acc":
            return None
        return self.ours - self.study


@dataclass
class Item:
    run: Path
    summary: dict
    expected: object  # config.ExpectedConfig
    seeds: int = 1  # initialisation seeds behind our numbers
    modified: list[str] = field(default_factory=list)  # how the run differs from the item
    rows: list[Row] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    cfg: object = None  # the run's config (titles of its figure)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # render_figures: (name, png)

    @property
    def misses(self) -> int:
        return sum(r.ok is False for r in self.rows)

    @property
    def status(self) -> str:
        if self.modified:
            return "modified"
        if not self.misses:
            return "ok"
        return "explained" if self.expected.note else "MISS"

    @property
    def label(self) -> str:
        return self.expected.item + (" (modified)" if self.modified else "")


# ---------------------------------------------------------------- reading runs


def load_item(run: Path) -> Item:
    """A finished run directory and the study's numbers for it; Skipped for a run directory
    that is not a comparable run, RunError for a path that is no run directory at all."""
    run = Path(run)
    summary = read_summary(run)
    command = summary.get("command")
    if command not in ROWS:
        raise Skipped(f"{run}: a {command or 'unknown'} run (the report compares "
                      f"{', '.join(ROWS)} runs)")  # fmt: skip
    if summary.get("status") != "completed":
        raise Skipped(f"{run}: run not completed (status {runs.status_of(run, summary)})")
    cfg = config_mod.load_config(run / "config.yaml")
    expected = expected_for(run, summary, cfg)
    if expected is None:
        raise Skipped(f"{run}: its config has no expected: block (nothing to compare with)")
    item = Item(run, summary, expected, seeds=seeds_of(summary), cfg=cfg)
    shipped = items.item_config(expected.item)
    if shipped is not None:  # the study's numbers from their one place, the shipped config
        item.expected = shipped.expected
        item.modified = items.config_differences(cfg, shipped, command)
        item.modified += items.data_differences(data_sizes(run, summary), cfg)
    item.rows = ROWS[command](item)
    if item.modified:
        for r in item.rows:
            r.ok = None  # shown, never counted
    item.figures = figure_files(run, FIGURES.get(command, ()))
    return item


def figure_files(run: Path, names) -> list[Path]:
    """The run's own figures; a repeat run's (lrrange --repeat): those of its first seed."""
    found = [run / f if (run / f).is_file() else next(iter(sorted(run.glob(f"repeats/*/{f}"))),
                                                      None) for f in names]  # fmt: skip
    return [f for f in found if f is not None]


def read_summary(run: Path) -> dict:
    if not run.is_dir():
        raise RunError(f"{run}: not a run directory")
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply
        summary = None
    if not isinstance(summary, dict):  # a list or a number is no summary either
        raise Skipped(f"{run}: not a run directory (no readable summary.json)")
    return summary


def seeds_of(summary: dict) -> int:
    """How many initialisation seeds a run's numbers average over."""
    if summary.get("command") == "search":
        return (summary.get("best_repeat") or {}).get("repeat", 1)
    return summary.get("repeat", 1)


def data_sizes(run: Path, summary: dict) -> dict | None:
    """The split sizes a run trained on (a search: those of its first finished trial)."""
    if "data" in summary:
        return summary["data"].get("sizes")
    for trial in sorted((run / "trials").glob("*/summary.json")):
        with _suppress():
            return json.loads(trial.read_text())["data"]["sizes"]
    return None


def _suppress():
    return contextlib.suppress(OSError, ValueError, KeyError, TypeError)


def expected_for(run: Path, summary: dict, cfg):
    """The run's own config's `expected:`; for runs made before configs carried one, the
    shipped config its command line names."""
    if cfg.expected is not None:
        return cfg.expected
    named = [a for a in summary.get("argv", []) if a.endswith((".yaml", ".yml"))]
    for arg in named:
        path = Path(arg) if Path(arg).is_file() else items.CONFIGS / Path(arg).name
        if path.is_file():
            return config_mod.load_config(path).expected
    return None


def accuracy_rows(item: Item) -> list[Row]:
    e, s = item.expected, item.summary
    acc, std = s.get("accuracy", {}), s.get("accuracy_std", {})
    rows = [Row(f"{k} accuracy", acc.get(k), v, within(acc.get(k), v, e.tolerance, std.get(k)),
                std=std.get(k)) for k, v in e.accuracy.items()]  # fmt: skip
    rows += [Row(f"{k} accuracy (target >= {v})", acc.get(k), v, at_least(acc.get(k), v),
                 std=std.get(k)) for k, v in e.minimum.items()]  # fmt: skip
    rows += target_rows("snapshot ensemble", s.get("ensemble", {}), e.ensemble_minimum)
    rows += target_rows("test-time augmentation", s.get("tta", {}), e.tta_minimum)
    if not rows:  # an item with no study numbers: ours alone
        rows = [Row(f"{k} accuracy", v, std=std.get(k)) for k, v in acc.items()]
    return rows


def target_rows(what: str, block: dict, minimum: dict) -> list[Row]:
    """Rows of a summary block ({accuracy, accuracy_std}: the ensemble's, TTA's) against its
    targets (expected.ensemble_minimum, expected.tta_minimum)."""
    acc, std = block.get("accuracy", {}), block.get("accuracy_std", {})
    return [Row(f"{what}, {k} accuracy (target >= {v})", acc.get(k), v, at_least(acc.get(k), v),
                std=std.get(k)) for k, v in minimum.items()]  # fmt: skip


def search_rows(item: Item) -> list[Row]:
    """Our top trials beside the study's; the seed noise is that of the best trial retrained
    over K seeds (`search --repeat-best K`), which also gets its own row."""
    with open(item.run / "results.csv", newline="") as f:
        done = [r for r in csv.DictReader(f) if r["status"] == "completed"]
    again = item.summary.get("best_repeat") or {}
    noise = (again.get("accuracy_std") or {}).get("val")
    rows = []
    for rank, (lam, val) in enumerate(item.expected.top, start=1):
        ours = done[rank - 1] if rank <= len(done) else {}
        ours_val = float(ours["val_accuracy"]) if ours else None
        rows.append(Row(f"rank {rank}: lambda", float(ours["optim.lambda"]) if ours else None,
                        lam, None, "lambda"))  # fmt: skip
        rows.append(Row(f"rank {rank}: val accuracy", ours_val, val,
                        within(ours_val, val, item.expected.tolerance, noise)))  # fmt: skip
    if again and item.expected.top:
        mean, study = again["accuracy"]["val"], item.expected.top[0][1]
        rows.append(Row(f"best trial retrained over {again['repeat']} seeds: val accuracy",
                        mean, study, within(mean, study, item.expected.tolerance, noise),
                        std=noise))  # fmt: skip
    return rows


def lrrange_rows(item: Item) -> list[Row]:
    e, s = item.expected, item.summary.get("suggestion", {})
    spread = item.summary.get("suggestion_factor", {})
    rows = []
    for k in ("eta_min", "eta_max"):
        if getattr(e, k) is not None:
            factor = max(e.lr_factor, spread.get(k, 1.0) ** 2)  # 2 "std" in log space
            rows.append(Row(k, s.get(k), getattr(e, k), ratio_ok(s.get(k), getattr(e, k),
                                                                factor), "lr", spread.get(k)))
    return rows


def gradcheck_rows(item: Item) -> list[Row]:
    """Our max relative error (the study's measure) beside the study's bound, per parameter.

    The row is judged by the check's floored relative error (cifar2l/gradcheck.py), not by the
    raw one: on entries with tiny gradients the raw error is float64 rounding (~1e-6 at h =
    1e-5, either side of the bound depending on the CPU), the floored one is >= 100x under it.
    Runs made before the floored error existed are judged by the raw error, as they were.
    """
    s, full = item.summary, item.summary["full_size"]
    rows = []
    for part, name, limit in ((s, "reduced", item.expected.max_rel_error or s["tolerance"]),
                              (full, "full size", full["tolerance"])):  # fmt: skip
        floored = part.get("floored_rel_error")
        for k, v in part["max_rel_error"].items():
            note, judged = (f"; floored {floored[k]:.2g}", floored[k]) if floored else ("", v)
            rows.append(Row(f"max relative error, {k} ({name}{note})", v, limit,
                            judged <= limit, "err"))  # fmt: skip
    return rows


ROWS = {"train": accuracy_rows, "search": search_rows, "lrrange": lrrange_rows,
        "gradcheck": gradcheck_rows}  # fmt: skip


def within(ours, study, tol: float, std: float | None = None) -> bool | None:
    """|mean - study| <= max(tolerance, 2 std): a miss must exceed the seed noise too."""
    return None if ours is None else abs(ours - study) <= max(tol, 2 * (std or 0.0))


def at_least(ours, target: float) -> bool:
    return ours is not None and ours >= target


def ratio_ok(ours, study, factor: float) -> bool | None:
    return None if ours is None else 1 / factor <= ours / study <= factor


# ---------------------------------------------------------------- figures


def render_figures(item: Item) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of an item's figures: a train run's loss, cost and accuracy side by
    side like the study's figures (a `--repeat` run's: mean +- 1 std over its seeds), drawn
    from its metrics.csv; the other runs' own figures as they are."""
    from . import plots

    if item.summary.get("command") == "search":
        done = search_results(item)
        if done:
            fig = plots.search_scatter(done, item.cfg.search.model_dump(exclude_none=True), None,
                                       plots.run_name(item.run))  # fmt: skip
            return [("search.png", plots.png_bytes(fig))]
    if item.summary.get("command") == "lrrange":
        return lrrange_figure(item) or [(f.name, f.read_bytes()) for f in item.figures]
    trials = train_metrics(item.run) if item.summary.get("command") == "train" else []
    if not trials:
        return [(f.name, f.read_bytes()) for f in item.figures]

    seeds = f" · mean ± std over {len(trials)} seeds" if len(trials) > 1 else ""
    title = plots.title_lines(f"{plots.run_name(item.run)}{seeds}", plots.settings(item.cfg),
                              110)  # fmt: skip
    return [(CURVES, plots.png_bytes(plots.panels(trials, title)))]


def lrrange_figure(item: Item) -> list[tuple[str, bytes]]:
    """The LR range test's plot redrawn from its lrrange.csv (a `--repeat` run's: its first
    seed's sweep), with the rates the run suggests (over all its seeds); [] when unreadable."""
    from . import lrrange, plots

    files = sorted(item.run.glob("repeats/*/lrrange.csv")) or [item.run / "lrrange.csv"]
    try:
        with open(files[0], newline="") as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        s = {**lrrange.suggest(rows, item.cfg.lrrange.smooth), **item.summary["suggestion"]}
    except (OSError, ValueError, KeyError, IndexError, RunError):
        return []
    seeds = f" · sweep of seed {files[0].parent.name}" if len(files) > 1 else ""
    title = plots.lrrange_title(item.run, item.cfg).replace("\n", f"{seeds}\n", 1)
    fig = plots.lrrange(rows, s, item.cfg.lrrange.mode == "exponential", None, title)
    return [("lrrange.png", plots.png_bytes(fig))]


def search_results(item: Item) -> list[dict]:
    """A search's ranked completed trials from its results.csv, as plots.search_scatter takes
    them ([] for a file it cannot read: the search's own search.png is shown instead)."""
    space, metric = item.cfg.search.space, item.cfg.search.metric
    try:
        with open(item.run / "results.csv", newline="") as f:
            done = [r for r in csv.DictReader(f) if r["status"] == "completed" and r[metric]]
        return [{"trial": int(r["trial"]), metric: float(r[metric]),
                 "params": {k: r[k] if space[k].choice else float(r[k]) for k in space}}
                for r in done]  # fmt: skip
    except (OSError, ValueError, KeyError):
        return []


def train_metrics(run: Path) -> list[list[dict]]:
    """The metric rows of a train run: [its own], or one list per seed of a `--repeat` run;
    [] when a file is missing or unreadable (the report then shows no curves)."""
    files = sorted((run / "repeats").glob("*/metrics.csv")) or [run / "metrics.csv"]
    try:
        return [read_metrics(f) for f in files if f.is_file()]
    except (OSError, ValueError, KeyError):
        return []


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


# ---------------------------------------------------------------- writing


def fmt(value, kind: str, std: float | None = None) -> str:
    if value is None:
        return "-"
    if kind == "acc":
        return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    return f"{value:.3g}" + (f" ×/÷ {std:.2f}" if std is not None and kind == "lr" else "")


def sort_key(item: Item) -> tuple:
    label = item.expected.item
    rank = next((i for i, p in enumerate(ORDER) if label.startswith(p)), len(ORDER))
    return rank, label, bool(item.modified)


def verdict(item: Item) -> str:
    """The summary table's status cell."""
    if item.modified:
        return "modified, not counted: " + ", ".join(item.modified)
    return item.status


def seeds_cell(item: Item) -> str:
    wanted = item.expected.seeds
    if item.seeds < wanted:
        return f"{item.seeds} (the item asks for {wanted})"
    return str(item.seeds)


def markdown(items_: list[Item], out: Path, meta: dict) -> str:
    def link(r: Row, run):
        return f"[{fmt(r.ours, r.kind, r.std)}]({os.path.relpath(run, out)})" \
            if r.ours is not None else "-"

    lines = ["# Reproduction report", "",
             f"Generated {meta['date']} by cifar2l {meta['version']} on {meta['machine']}.",
             f"Data: {meta['data']}.", "",
             "Ours: the mean ± standard deviation over each item's initialisation seeds. A row "
             "is ok when |mean - study| <= max(tolerance, 2 std) (default tolerance 0.015 "
             "absolute accuracy; LR picks: within a factor, widened by the seeds' spread); "
             "`explained` items carry a note; a `modified` run differs from the item's shipped "
             "config and is not counted.", "", "## Summary", "",
             "| item | seeds | rows within tolerance | status | run | wall time |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for it in items_:
        n = sum(r.ok is not None for r in it.rows)
        lines.append(f"| {it.label} | {seeds_cell(it)} | {n - it.misses} / {n} | {verdict(it)} "
                     f"| [{it.run.name}]({os.path.relpath(it.run, out)}) | "
                     f"{it.summary.get('seconds') or 0:.1f} s |")  # fmt: skip
    for it in items_:
        lines += ["", f"## {it.label}", ""]
        if it.modified:
            lines += [f"**Modified** (not counted): {', '.join(it.modified)}.", ""]
        if it.expected.source:
            lines += [f"Study: {it.expected.source}. Run: `{command_line(it.summary, it.run)}`"
                      f" ({it.seeds} seed{'s' if it.seeds > 1 else ''})", ""]  # fmt: skip
        lines += ["| | ours | study | difference | |", "|---|---|---|---|---|"]
        for r in it.rows:
            diff = "-" if r.difference is None else f"{r.difference:+.4f}"
            mark = {True: "ok", False: "**MISS**", None: ""}[r.ok]
            lines.append(f"| {r.label} | {link(r, it.run)} | {fmt(r.study, r.kind)} | {diff} | "
                         f"{mark} |")  # fmt: skip
        if it.expected.note:
            lines += ["", f"Note: {it.expected.note}"]
        lines += [""] + [f"![{name}](figures/{figure_name(it, name)})" for name, _ in it.images]
    lines += skipped_md(meta["skipped"]) + performance_md(meta["benchmarks"]) + runs_md(items_, out)
    return "\n".join(lines) + "\n"


def skipped_md(notes: list[str]) -> list[str]:
    if not notes:
        return []
    return ["", "## Skipped", ""] + [f"- {n}" for n in notes]


def run_facts(item: Item) -> list[str]:
    s = item.summary
    data = s.get("data", {})
    m = s.get("machine")
    return [item.run.name, s.get("command", ""), f"{s.get('seconds') or 0:.1f} s",
            f"{data.get('source', '-')} ({data.get('format', '-')})" if data else "-",
            machine.one_line(m) if m else "-", s.get("versions", {}).get("cifar2l", "-"),
            command_line(s, item.run)]  # fmt: skip


def command_line(summary: dict, run: Path | None = None) -> str:
    """The command as typed: `cifar2l train ...`, the first line of the run's command.txt (a
    resumed run's later lines are its resumes), else its summary's argv; either way with the
    program as the user names it (runs.as_typed: never the interpreter or __main__.py)."""
    with _suppress():
        first = (Path(run) / "command.txt").read_text().splitlines()[0]
        return runs.as_typed(shlex.split(first))
    argv = summary.get("argv") or []
    return runs.as_typed(argv) if argv else "-"


RUN_COLUMNS = ["run", "command", "wall time", "data", "machine", "cifar2l", "command line"]


def runs_md(items_: list[Item], out: Path) -> list[str]:
    lines = ["## Runs", "", "| " + " | ".join(RUN_COLUMNS) + " |",
             "|" + "---|" * len(RUN_COLUMNS)]  # fmt: skip
    for it in items_:
        facts = run_facts(it)
        facts[0] = f"[{facts[0]}]({os.path.relpath(it.run, out)})"
        facts[-1] = f"`{facts[-1]}`"
        lines.append("| " + " | ".join(facts) + " |")
    return lines


# ---------------------------------------------------------------- benchmarks


def benchmarks(here: dict, folder: Path | None = None) -> list[dict]:
    """The CPU and GPU benchmark tables, each labelled with the machine and date it was
    measured on and whether that is this report's machine."""
    folder = folder or ROOT / "benchmarks"
    out = []
    for title, stem in (("CPU", "results"), ("GPU", "results-gpu")):
        text = benchmark_text(folder / f"{stem}.md")
        facts = benchmark_facts(folder / f"{stem}.json")
        same = machine.same_machine(facts.get("machine_facts"), here)
        where = facts.get("machine", "an unrecorded machine")
        label = (f"measured on this machine ({where}) on {facts.get('date', 'an unknown date')}"
                 if same else f"measured on another machine than this report's, or one not "
                 f"recorded: {where}, on {facts.get('date', 'an unknown date')}; for reference "
                 "only")  # fmt: skip
        out.append({"title": title, "name": f"{stem}.md", "text": text,
                    "label": label if text else None, "same_machine": same})  # fmt: skip
    return out


def benchmark_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


def benchmark_facts(path: Path) -> dict:
    with _suppress():
        return json.loads(path.read_text())
    return {}


def performance_md(tables: list[dict]) -> list[str]:
    lines = ["", "## Performance benchmarks", ""]
    for b in tables:
        lines += [f"### {b['title']} (benchmarks/{b['name']})", ""]
        if b["text"] is None:
            lines += [f"Not measured (no benchmarks/{b['name']}).", ""]
        else:
            lines += [f"*{b['label'][0].upper()}{b['label'][1:]}.*", "", b["text"], ""]
    return lines


def figure_name(item: Item, name: str) -> str:
    return f"{item.run.name}-{name}"


# ---------------------------------------------------------------- html

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 max-width:1240px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:28px;margin:0 0 4px}h2{font-size:21px;margin:36px 0 8px;padding-top:8px;
 border-top:1px solid #d0d7de}h3{font-size:16px;margin:20px 0 6px}
.meta,.run{color:#57606a;font-size:13.5px;margin:4px 0}
table{border-collapse:collapse;margin:10px 0 14px;font-size:14px}
th,td{padding:5px 12px;text-align:left;border-bottom:1px solid #e6e8eb;vertical-align:top}
th{background:#f6f8fa;font-weight:600;border-bottom:2px solid #d0d7de;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:hover{background:#f6f8fa}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f6f8fa;
 padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
pre{font:12.5px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;background:#f6f8fa;
 padding:12px;border-radius:6px;overflow-x:auto}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12.5px;
 font-weight:600;vertical-align:middle}
.ok{background:#dafbe1;color:#116329}.MISS{background:#ffebe9;color:#a40e26}
.explained{background:#fff8c5;color:#7d4e00}.modified{background:#eaeef2;color:#57606a}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:8px 12px;margin:10px 0;
 font-size:14px}.warn{background:#ffebe9;border-left:4px solid #cf222e;padding:8px 12px}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #e6e8eb;
 border-radius:4px}figcaption{color:#57606a;font-size:13px}
.item{scroll-margin-top:12px}.nowrap{white-space:nowrap}.small{font-size:12.5px}
.wide{overflow-x:auto}.top{font-size:13px;float:right;font-weight:normal}
"""


def anchor(index: int, item: Item) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", item.label.lower()).strip("-")
    return f"item-{index + 1}-{slug}"


def badge(status: str) -> str:
    return f"<span class='badge {html.escape(status)}'>{html.escape(status)}</span>"


def headline(item: Item) -> str:
    """The summary's first comparable row: ours and the study's, side by side."""
    row = next((r for r in item.rows if r.ok is not None), None)  # a judged row
    row = row or next((r for r in item.rows if r.study is not None), None)
    if row is None:
        return "-"
    return (f"{html.escape(row.label)}: <b>{html.escape(fmt(row.ours, row.kind, row.std))}</b>"
            f" vs {html.escape(fmt(row.study, row.kind))}")  # fmt: skip


def summary_html(items_: list[Item], out: Path) -> str:
    esc = html.escape
    body = "".join(
        f"<tr><td><a href='#{anchor(i, it)}'>{esc(it.label)}</a></td>"
        f"<td class='num'>{esc(seeds_cell(it))}</td><td class='num'>"
        f"{sum(r.ok is True for r in it.rows)} / {sum(r.ok is not None for r in it.rows)}</td>"
        f"<td>{badge(it.status)}</td><td>{headline(it)}</td>"
        f"<td class='num'>{it.summary.get('seconds') or 0:.1f} s</td></tr>"
        for i, it in enumerate(items_))  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in ("item", "seeds", "rows ok", "status",
                                             "ours vs study", "wall time"))
    return (f"<h2 id='summary'>Summary</h2><table class='summary'><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>")  # fmt: skip


def rows_html(it: Item, href: str) -> str:
    esc = html.escape
    cells = "".join(
        f"<tr><td>{esc(r.label)}</td><td class='num'><a href='{href}'>"
        f"{esc(fmt(r.ours, r.kind, r.std))}</a></td><td class='num'>{esc(fmt(r.study, r.kind))}"
        f"</td><td class='num'>{'' if r.difference is None else f'{r.difference:+.4f}'}</td>"
        f"<td>{ {True: badge('ok'), False: badge('MISS'), None: ''}[r.ok]}</td></tr>"
        for r in it.rows)  # fmt: skip
    return ("<table class='compare'><thead><tr><th></th><th>ours</th><th>study</th>"
            f"<th>difference</th><th></th></tr></thead><tbody>{cells}</tbody></table>")


def item_html(index: int, it: Item, out: Path) -> str:
    esc = html.escape
    href = esc(os.path.relpath(it.run, out))
    seeds = f"{it.seeds} seed{'s' * (it.seeds > 1)}"
    study = f"Study: {esc(it.expected.source)}. " if it.expected.source else ""
    mod = (f"<p class='warn'><b>Modified</b> (not counted): {esc(', '.join(it.modified))}</p>"
           if it.modified else "")  # fmt: skip
    note = f"<p class='note'>Note: {esc(it.expected.note)}</p>" if it.expected.note else ""
    imgs = "".join(f"<figure><img alt='{esc(it.label)}: {esc(name)}' src='data:image/png;"
                   f"base64,{base64.b64encode(png).decode()}'><figcaption>{esc(name)} of "
                   f"<a href='{href}'>{esc(it.run.name)}</a></figcaption></figure>"
                   for name, png in it.images)  # fmt: skip
    return (f"<section class='item' id='{anchor(index, it)}'><h2>{esc(it.label)} "
            f"{badge(it.status)}<a class='top' href='#summary'>summary ↑</a></h2>{mod}"
            f"<p class='run'>{study}Run: <code>{esc(command_line(it.summary, it.run))}</code>"
            f" ({seeds}, {it.summary.get('seconds') or 0:.1f} s) in <a href='{href}'>"
            f"{esc(it.run.name)}</a></p>{rows_html(it, href)}{note}{imgs}</section>")


def tail_html(items_: list[Item], meta: dict) -> str:
    """Skipped runs, the benchmark tables and the runs' facts, after the items."""
    esc = html.escape
    parts = []
    if meta["skipped"]:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{esc(n)}</li>"
                                                      for n in meta["skipped"]) + "</ul>")
    parts.append("<h2>Performance benchmarks</h2>")
    for b in meta["benchmarks"]:
        body = (f"<p class='meta'>{esc(b['label'])}</p>{md_blocks(b['text'])}" if b["text"]
                else f"<p>Not measured (no benchmarks/{esc(b['name'])}).</p>")  # fmt: skip
        parts.append(f"<h3>{b['title']} (benchmarks/{esc(b['name'])})</h3>{body}")
    parts.append(runs_html(items_))
    return "".join(parts)


def runs_html(items_: list[Item]) -> str:
    esc = html.escape
    cells = "".join(
        f"<tr><td class='nowrap'>{esc(f[0])}</td><td>{esc(f[1])}</td><td class='num'>"
        f"{esc(f[2])}</td><td class='small'>{esc(f[3])}</td><td class='small'>{esc(f[4])}</td>"
        f"<td>{esc(f[5])}</td><td><code>{esc(f[6])}</code></td></tr>"
        for f in map(run_facts, items_))  # fmt: skip
    head = "".join(f"<th>{esc(c)}</th>" for c in RUN_COLUMNS)
    return (f"<h2>Runs</h2><div class='wide'><table><thead><tr>{head}</tr></thead><tbody>"
            f"{cells}</tbody></table></div>")


def md_blocks(text: str) -> str:
    """A benchmark file's markdown (paragraphs and pipe tables) as HTML."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if not all(line.startswith("|") for line in lines):
            out.append(f"<p>{md_inline(' '.join(lines))}</p>")
            continue
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines
                if not re.fullmatch(r"[|\s:-]+", line)]  # fmt: skip
        head = "".join(f"<th>{md_inline(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{md_inline(c)}</td>" for c in r) + "</tr>"
                       for r in rows[1:])  # fmt: skip
        out.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}"
                   "</tbody></table></div>")
    return "".join(out)


def md_inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def to_html(items_: list[Item], out: Path, meta: dict) -> str:
    """One self-contained page (inline stylesheet, figures as data URIs, no external URL):
    the summary table first, linking each item's section; then the items, in order."""
    esc = html.escape
    intro = (f"<h1>Reproduction report</h1><p class='meta'>Generated {esc(meta['date'])} by "
             f"cifar2l {esc(meta['version'])} on {esc(meta['machine'])}. Data: "
             f"{esc(meta['data'])}.</p><p>Ours: the mean ± standard deviation over each "
             "item's initialisation seeds. A row is ok when |mean - study| &lt;= "
             "max(tolerance, 2 std); <i>explained</i> items carry a note; a <i>modified</i> "
             "run differs from the item's shipped config and is not counted.</p>")  # fmt: skip
    items_part = "".join(item_html(i, it, out) for i, it in enumerate(items_))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width,initial-scale=1'><title>cifar2l reproduction report"
            f"</title><style>{STYLE}</style></head><body>{intro}{summary_html(items_, out)}"
            f"{items_part}{tail_html(items_, meta)}</body></html>\n")


# ---------------------------------------------------------------- the command


def load_items(run_dirs: list[Path]) -> tuple[list[Item], list[str]]:
    """The comparable runs, in the study's order, and a note for every skipped one."""
    found, skipped = [], []
    for r in run_dirs:
        try:
            found.append(load_item(Path(r)))
        except Skipped as note:
            skipped.append(str(note))
    return sorted(found, key=sort_key), skipped


def run_report(run_dirs: list[Path], out: Path) -> dict:
    """Read every run first (an error writes nothing), then write REPORT.md, report.html and
    the figures into `out`."""
    started = time.perf_counter()
    found, skipped = load_items(run_dirs)
    if not found:
        raise RunError("nothing to report: " + ("; ".join(skipped) or "no run directories given"))
    for note in skipped:
        console.log(f"skipped {note}")
    here = machine.describe()
    sources = sorted({f"{i.summary['data']['source']} ({i.summary['data']['format']})"
                      for i in found if "data" in i.summary})  # fmt: skip
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "version": __version__,
            "machine": machine.one_line(here), "data": "; ".join(sources) or "unknown",
            "skipped": skipped, "benchmarks": benchmarks(here)}  # fmt: skip
    write_report(Path(out), found, meta)
    console.table("reproduction report", ["item", "seeds", "status", "run"],
                  [[i.label, seeds_cell(i), verdict(i), str(i.run)] for i in found])
    console.log(f"wrote {Path(out) / 'REPORT.md'} and {Path(out) / 'report.html'}")
    return {"command": "report", "status": "completed", "report": str(Path(out) / "REPORT.md"),
            "seconds": round(time.perf_counter() - started, 3), "skipped": skipped,
            "items": [{"item": i.expected.item, "status": i.status, "run_dir": str(i.run),
                       "misses": i.misses, "seeds": i.seeds, "modified": i.modified}
                      for i in found]}  # fmt: skip


def write_report(out: Path, found: list[Item], meta: dict) -> None:
    runs.check_path_length(out, "--out")
    for it in found:  # drawn before anything is written
        it.images = render_figures(it)
    with runs.writing(out / "figures"):  # --out read-only, a file, or under a file
        (out / "figures").mkdir(parents=True, exist_ok=True)
    for it in found:
        for name, png in it.images:
            runs.atomic_write(out / "figures" / figure_name(it, name), png)
    runs.atomic_write(out / "REPORT.md", markdown(found, out, meta))
    runs.atomic_write(out / "report.html", to_html(found, out, meta))
