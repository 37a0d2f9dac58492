"""`cifar2l report RUN_DIR...`: the study's items, our numbers beside the study's.

Each run directory names the item it reproduces through its config's `expected:` block (the
study's numbers are data in configs/*.yaml, not code). A row is `ok` when ours lands within the
block's tolerance of the study's (accuracies: absolute difference; learning-rate picks: a ratio;
the gradient check: at most the allowed error; targets: at least the minimum) and `MISS`
otherwise; an item's `note` explains its misses. Every number links to the run directory that
produced it; the run's figures are copied next to the report.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, console, runs
from . import config as config_mod
from .errors import RunError

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("Table 1", "Table 2", "Table 3", "The tuned network", "LR range", "Bonus", "Table 4",
         "Beyond")  # fmt: skip
FIGURES = {"train": ("accuracy.png", "loss.png", "cost.png"), "search": ("search.png",),
           "lrrange": ("lrrange.png",), "gradcheck": ()}  # fmt: skip


@dataclass
class Row:
    label: str
    ours: float | None
    study: float | None = None
    ok: bool | None = None  # None: nothing to compare with
    kind: str = "acc"  # acc | lr | err | lambda

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
    rows: list[Row] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def misses(self) -> int:
        return sum(r.ok is False for r in self.rows)

    @property
    def status(self) -> str:
        if not self.misses:
            return "ok"
        return "explained" if self.expected.note else "MISS"


# ---------------------------------------------------------------- reading runs


def load_item(run: Path) -> Item:
    """A finished run directory and the study's numbers for it."""
    run = Path(run)
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        raise RunError(f"{run}: not a run directory (no readable summary.json)") from None
    if summary.get("status") != "completed":
        raise RunError(f"{run}: run not completed (status {summary.get('status')})")
    expected = expected_for(run, summary)
    if expected is None:
        raise RunError(f"{run}: its config has no expected: block (nothing to compare with)")
    item = Item(run, summary, expected)
    item.rows = ROWS[summary["command"]](item)
    item.figures = [run / f for f in FIGURES.get(summary["command"], ()) if (run / f).is_file()]
    return item


def expected_for(run: Path, summary: dict):
    """The run's own config's `expected:`; for runs made before configs carried one, the
    shipped config its command line names."""
    cfg = config_mod.load_config(run / "config.yaml")
    if cfg.expected is not None:
        return cfg.expected
    named = [a for a in summary.get("argv", []) if a.endswith((".yaml", ".yml"))]
    for arg in named:
        path = Path(arg) if Path(arg).is_file() else ROOT / "configs" / Path(arg).name
        if path.is_file():
            return config_mod.load_config(path).expected
    return None


def accuracy_rows(item: Item) -> list[Row]:
    e, acc = item.expected, item.summary.get("accuracy", {})
    rows = [Row(f"{k} accuracy", acc.get(k), v, within(acc.get(k), v, e.tolerance))
            for k, v in e.accuracy.items()]  # fmt: skip
    rows += [Row(f"{k} accuracy (target >= {v})", acc.get(k), v, at_least(acc.get(k), v))
             for k, v in e.minimum.items()]  # fmt: skip
    ens = item.summary.get("ensemble", {}).get("accuracy", {})
    rows += [Row(f"snapshot ensemble, {k} accuracy (target >= {v})", ens.get(k), v,
                 at_least(ens.get(k), v)) for k, v in e.ensemble_minimum.items()]  # fmt: skip
    if not rows:  # an item with no study numbers: ours alone
        rows = [Row(f"{k} accuracy", v) for k, v in acc.items()]
    return rows


def search_rows(item: Item) -> list[Row]:
    with open(item.run / "results.csv", newline="") as f:
        done = [r for r in csv.DictReader(f) if r["status"] == "completed"]
    rows = []
    for rank, (lam, val) in enumerate(item.expected.top, start=1):
        ours = done[rank - 1] if rank <= len(done) else {}
        ours_val = float(ours["val_accuracy"]) if ours else None
        rows.append(Row(f"rank {rank}: lambda", float(ours["optim.lambda"]) if ours else None,
                        lam, None, "lambda"))  # fmt: skip
        rows.append(Row(f"rank {rank}: val accuracy", ours_val, val,
                        within(ours_val, val, item.expected.tolerance)))  # fmt: skip
    return rows


def lrrange_rows(item: Item) -> list[Row]:
    e, s = item.expected, item.summary.get("suggestion", {})
    return [Row(k, s.get(k), getattr(e, k), ratio_ok(s.get(k), getattr(e, k), e.lr_factor), "lr")
            for k in ("eta_min", "eta_max") if getattr(e, k) is not None]  # fmt: skip


def gradcheck_rows(item: Item) -> list[Row]:
    limit = item.expected.max_rel_error
    errors = {**{f"{k} (reduced)": v for k, v in item.summary["max_rel_error"].items()},
              **{f"{k} (full size)": v
                 for k, v in item.summary["full_size"]["max_rel_error"].items()}}  # fmt: skip
    full_limit = item.summary["full_size"]["tolerance"]
    return [Row(f"max relative error, {k}", v, limit if "reduced" in k else full_limit,
                v <= (limit if "reduced" in k else full_limit), "err") for k, v in errors.items()]


ROWS = {"train": accuracy_rows, "search": search_rows, "lrrange": lrrange_rows,
        "gradcheck": gradcheck_rows}  # fmt: skip


def within(ours, study, tol: float) -> bool | None:
    return None if ours is None else abs(ours - study) <= tol


def at_least(ours, target: float) -> bool:
    return ours is not None and ours >= target


def ratio_ok(ours, study, factor: float) -> bool | None:
    return None if ours is None else 1 / factor <= ours / study <= factor


# ---------------------------------------------------------------- writing


def fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if kind == "acc" else f"{value:.3g}"


def sort_key(item: Item) -> tuple:
    label = item.expected.item
    rank = next((i for i, p in enumerate(ORDER) if label.startswith(p)), len(ORDER))
    return rank, label


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def benchmark_text(name: str) -> str | None:
    path = ROOT / "benchmarks" / name
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


def markdown(items: list[Item], out: Path, meta: dict) -> str:
    def link(value, kind, run):
        return f"[{fmt(value, kind)}]({os.path.relpath(run, out)})" if value is not None else "-"

    lines = ["# Reproduction report", "",
             f"Generated {meta['date']} by cifar2l {meta['version']} on {meta['machine']}.",
             f"Data: {meta['data']}. Tolerance: rows marked MISS differ from the study by more "
             "than the item's tolerance (default 0.015 absolute accuracy); `explained` items "
             "carry a note.", "", "## Summary", "",
             "| item | rows within tolerance | status | run | wall time |", "|---|---|---|---|---|"]
    for it in items:
        n = sum(r.ok is not None for r in it.rows)
        lines.append(f"| {it.expected.item} | {n - it.misses} / {n} | {it.status} | "
                     f"[{it.run.name}]({os.path.relpath(it.run, out)}) | "
                     f"{it.summary.get('seconds', 0):.1f} s |")  # fmt: skip
    for it in items:
        lines += ["", f"## {it.expected.item}", ""]
        if it.expected.source:
            lines += [f"Study: {it.expected.source}. Run: `{' '.join(it.summary.get('argv', []))}`",
                      ""]  # fmt: skip
        lines += ["| | ours | study | difference | |", "|---|---|---|---|---|"]
        for r in it.rows:
            diff = "-" if r.difference is None else f"{r.difference:+.4f}"
            mark = {True: "ok", False: "**MISS**", None: ""}[r.ok]
            lines.append(f"| {r.label} | {link(r.ours, r.kind, it.run)} | "
                         f"{fmt(r.study, r.kind)} | {diff} | {mark} |")  # fmt: skip
        if it.expected.note:
            lines += ["", f"Note: {it.expected.note}"]
        lines += [""] + [f"![{f.name}](figures/{figure_name(it, f)})" for f in it.figures]
    lines += performance_md() + runs_md(items, out)
    return "\n".join(lines) + "\n"


def run_facts(item: Item) -> list[str]:
    s = item.summary
    data = s.get("data", {})
    return [item.run.name, s.get("command", ""), f"{s.get('seconds', 0):.1f} s",
            f"{data.get('source', '-')} ({data.get('format', '-')})" if data else "-",
            s.get("versions", {}).get("cifar2l", "-"), " ".join(s.get("argv", []))]


RUN_COLUMNS = ["run", "command", "wall time", "data", "cifar2l", "command line"]


def runs_md(items: list[Item], out: Path) -> list[str]:
    lines = ["## Runs", "", "| " + " | ".join(RUN_COLUMNS) + " |",
             "|" + "---|" * len(RUN_COLUMNS)]  # fmt: skip
    for it in items:
        facts = run_facts(it)
        facts[0] = f"[{facts[0]}]({os.path.relpath(it.run, out)})"
        facts[-1] = f"`{facts[-1]}`"
        lines.append("| " + " | ".join(facts) + " |")
    return lines


def performance_md() -> list[str]:
    lines = ["", "## Performance benchmarks", ""]
    for title, name in (("CPU", "results.md"), ("GPU", "results-gpu.md")):
        text = benchmark_text(name)
        lines += [f"### {title} (benchmarks/{name})", "",
                  text or f"Not measured here (no benchmarks/{name}).", ""]  # fmt: skip
    return lines


def figure_name(item: Item, fig: Path) -> str:
    return f"{item.run.name}-{fig.name}"


def to_html(items: list[Item], out: Path, meta: dict) -> str:
    """A self-contained page: the same tables, figures inlined as data URIs."""
    esc = html.escape
    parts = [f"<h1>Reproduction report</h1><p>Generated {esc(meta['date'])} by cifar2l "
             f"{esc(meta['version'])} on {esc(meta['machine'])}. Data: {esc(meta['data'])}.</p>"]
    for it in items:
        href = esc(os.path.relpath(it.run, out))
        rows = "".join(
            f"<tr><td>{esc(r.label)}</td><td><a href='{href}'>{fmt(r.ours, r.kind)}</a></td>"
            f"<td>{fmt(r.study, r.kind)}</td><td>"
            f"{'' if r.difference is None else f'{r.difference:+.4f}'}</td>"
            f"<td>{ {True: 'ok', False: '<b>MISS</b>', None: ''}[r.ok]}</td></tr>"
            for r in it.rows)
        note = f"<p>Note: {esc(it.expected.note)}</p>" if it.expected.note else ""
        imgs = "".join(f"<img alt='{esc(f.name)}' width='480' src='data:image/png;base64,"
                       f"{base64.b64encode(f.read_bytes()).decode()}'>" for f in it.figures)
        parts.append(f"<h2>{esc(it.expected.item)} ({esc(it.status)})</h2><p>run "
                     f"<a href='{href}'>{esc(it.run.name)}</a>, "
                     f"{it.summary.get('seconds', 0):.1f} s</p><table border='1'><tr><th></th>"
                     f"<th>ours</th><th>study</th><th>difference</th><th></th></tr>{rows}"
                     f"</table>{note}{imgs}")  # fmt: skip
    for title, name in (("CPU", "results.md"), ("GPU", "results-gpu.md")):
        text = benchmark_text(name)
        parts.append(f"<h2>Performance benchmarks, {title}</h2><pre>"
                     f"{esc(text or f'Not measured here (no benchmarks/{name}).')}</pre>")
    cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in run_facts(it)) + "</tr>"
                    for it in items)  # fmt: skip
    head = "".join(f"<th>{esc(c)}</th>" for c in RUN_COLUMNS)
    parts.append(f"<h2>Runs</h2><table border='1'><tr>{head}</tr>{cells}</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>cifar2l reproduction "
            f"report</title></head><body>{''.join(parts)}</body></html>\n")


def run_report(run_dirs: list[Path], out: Path) -> dict:
    """Read every run first (an error writes nothing), then write REPORT.md, report.html and
    the figures into `out`."""
    started = time.perf_counter()
    items = sorted((load_item(Path(r)) for r in run_dirs), key=sort_key)
    if not items:
        raise RunError("no run directories given")
    sources = sorted({f"{i.summary['data']['source']} ({i.summary['data']['format']})"
                      for i in items if "data" in i.summary})  # fmt: skip
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "version": __version__,
            "machine": machine(), "data": "; ".join(sources) or "unknown"}  # fmt: skip
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for it in items:
        for f in it.figures:
            shutil.copyfile(f, out / "figures" / figure_name(it, f))
    runs.atomic_write(out / "REPORT.md", markdown(items, out, meta))
    runs.atomic_write(out / "report.html", to_html(items, out, meta))
    console.table("reproduction report", ["item", "status", "run"],
                  [[i.expected.item, i.status, str(i.run)] for i in items])  # fmt: skip
    console.log(f"wrote {out / 'REPORT.md'} and {out / 'report.html'}")
    return {"command": "report", "status": "completed", "report": str(out / "REPORT.md"),
            "seconds": round(time.perf_counter() - started, 3),
            "items": [{"item": i.expected.item, "status": i.status, "run_dir": str(i.run),
                       "misses": i.misses} for i in items]}  # fmt: skip
