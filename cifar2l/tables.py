"""`make table1` ... `make best`, `make report`: run the study's experiments through the CLI and
print our numbers (mean ± std over each item's seeds) beside the study's.

The study's numbers and each item's seed count come from the configs' `expected:` blocks
(items.py), never from a copy here. Each run is an ordinary `cifar2l` process, so its run
directory (command.txt included) is exactly what the user would get by typing the command.

A finished run of an item under --out (completed, of the shipped config unmodified, over at
least the item's seeds) is reused, as the run it would make, and named; `--force` (make
FORCE=1) runs every item again.

Usage: python -m cifar2l.tables {table2|table3|final|lrrange|bonus|table4|best|report} [--out DIR]
       [--jobs N] [--force]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from . import console, items, report, threads
from .config import load_config
from .errors import Cifar2lError

CONFIGS = items.CONFIGS
REPORT_ITEMS = items.REPORT_ITEMS


def cifar2l(*args: str) -> dict:
    """Run one cifar2l command, progress on the terminal, and return its summary."""
    cmd = [sys.executable, "-m", "cifar2l", *args, "--json"]
    console.log("$ " + " ".join(["cifar2l", *args]))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)  # the child already printed its Error: line
    return json.loads(proc.stdout)


def expected(stem: str):
    return load_config(CONFIGS / f"{stem}.yaml").expected


def command_args(command: str, stem: str, out: Path, jobs: int, refine: Path | None = None):
    """The command line of one item, with its seeds (`--repeat K`, a search's
    `--repeat-best K`) from its expected: block."""
    args = [command, str(CONFIGS / f"{stem}.yaml"), "--out", str(out)]
    k = expected(stem).seeds
    if command in ("train", "lrrange") and k > 1:
        args += ["--repeat", str(k)]
    if command == "search":
        args += ["--jobs", str(jobs)] + (["--repeat-best", str(k)] if k > 1 else [])
        args += ["--refine", str(refine)] if refine is not None else []
    return args


def pm(summary: dict, split: str, key: str = "accuracy") -> str:
    """`0.4570 ± 0.0030` (or the single value) from a train summary."""
    mean = summary[key][split]
    std = summary.get(f"{key}_std", {}).get(split)
    return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def accuracy_table(title: str, stems: list[str], out: Path, jobs: int, force: bool) -> None:
    """Train each config (over its seeds) and print ours beside the study's accuracies."""
    rows = []
    for stem in stems:
        e = expected(stem)
        s = run_or_reuse("train", stem, out, jobs, force=force)
        for split in ("train", "val", "test"):
            ref = e.accuracy.get(split)
            rows.append([stem, split, pm(s, split), "" if ref is None else ref,
                         "" if ref is None else s["accuracy"][split] - ref])  # fmt: skip
        console.log(f"{stem}: {s['run_dir']} ({s.get('repeat', 1)} seeds, "
                    f"{s['seconds']:.1f} s)")  # fmt: skip
    console.table(title, ["config", "split", "ours (mean ± std)", "study", "difference"], rows)


def table2(out: Path, jobs: int, force: bool = False) -> None:
    accuracy_table("Table 2: accuracy, ours vs the study", ["default", "cycles3"], out, jobs,
                   force)  # fmt: skip


def final(out: Path, jobs: int, force: bool = False) -> None:
    accuracy_table("the tuned network, ours vs the study", ["final", "final-3cycles"], out, jobs,
                   force)  # fmt: skip


def bonus(out: Path, jobs: int, force: bool = False) -> None:
    accuracy_table("bonus models trained with the LR-range picks, ours vs the study",
                   ["model-80", "model-40"], out, jobs, force)  # fmt: skip


def table4(out: Path, jobs: int, force: bool = False) -> None:
    accuracy_table("Table 4: improvements combined, ours vs the study",
                   ["table4-120", "table4-140"], out, jobs, force)  # fmt: skip


def top_rows(run_dir: Path, k: int = 4) -> list[tuple[float, float]]:
    import csv

    with open(run_dir / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "completed"][:k]
    return [(float(r["optim.lambda"]), float(r["val_accuracy"])) for r in rows]


def table3(out: Path, jobs: int, force: bool = False) -> None:
    coarse = run_or_reuse("search", "search-coarse", out, jobs, force=force)
    fine = run_or_reuse("search", "search-fine", out, jobs, Path(coarse["run_dir"]), force)
    for stem, summary in (("search-coarse", coarse), ("search-fine", fine)):
        study = expected(stem).top
        ours = top_rows(Path(summary["run_dir"]))
        rows = [[i + 1, f"{o[0]:.8f}", o[1], f"{s[0]:.8f}", s[1]]
                for i, (o, s) in enumerate(zip(ours, study, strict=False))]  # fmt: skip
        console.table(f"Table 3, {stem}: top 4 by validation accuracy "
                      f"({summary['run_dir']}, {summary['trials']} trials)",
                      ["rank", "lambda (ours)", "val_accuracy (ours)", "lambda (study)",
                       "val_accuracy (study)"], rows)  # fmt: skip
        again = summary.get("best_repeat")
        if again:
            console.log(f"best trial retrained over {again['repeat']} seeds: val "
                        f"{pm(again, 'val')}, test {pm(again, 'test')}")  # fmt: skip
    if fine.get("refined_from"):
        console.log(f"fine range: {fine['refined_from']['ranges']}")


def lrrange(out: Path, jobs: int, force: bool = False) -> None:
    rows = []
    for stem in ("lrrange-80", "lrrange-40"):
        e = expected(stem)
        s = run_or_reuse("lrrange", stem, out, jobs, force=force)
        ours, spread = s["suggestion"], s.get("suggestion_factor", {})
        rows += [[stem, k, ours[k], spread.get(k, ""), getattr(e, k), s["run_dir"]]
                 for k in ("eta_min", "eta_max")]  # fmt: skip
    console.table("LR range test: suggested rates (geometric mean over the seeds, spread as a "
                  "factor) vs the study's picks", ["config", "rate", "ours", "spread (x/÷)",
                                                   "study", "run dir (lrrange.png)"], rows)


def best(out: Path, jobs: int, force: bool = False) -> None:
    """`make best`: train configs/best.yaml over its seeds; the single network beside its
    test-time augmentation, weight average and snapshot ensemble (those it has), mean ± std."""
    s = run_or_reuse("train", "best", out, jobs, force=force)
    cols = best_columns(s)
    rows = [[split, *[pm(block, split) if split in block["accuracy"] else "-"
                      for block in cols.values()]] for split in s["accuracy"]]  # fmt: skip
    console.table(f"Beyond the study: configs/best.yaml ({s['run_dir']}, {s.get('repeat', 1)} "
                  f"seeds, {s['seconds'] / 60:.1f} min)", ["split", *cols], rows)  # fmt: skip
    study_best = expected("table4-140").accuracy["test"]
    console.log(f"test accuracy: the study's best {study_best}; published one-hidden-layer "
                "networks trained from scratch: about 0.55-0.58")  # fmt: skip


def best_columns(s: dict) -> dict:
    """{column title: a block with `accuracy` (and `accuracy_std` for repeats)} of a train
    summary: the single network, then TTA, the weight average (with TTA), the ensemble."""
    cols = {"single network": s}
    if "tta" in s:
        cols[f"TTA ({'+'.join(s['tta']['views'])})"] = s["tta"]
    if "average" in s:
        avg = s["average"]
        cols[f"weight average ({avg['kind']})"] = avg
        if "tta" in avg or "tta_accuracy" in avg:  # a repeat's block / a single run's dict
            cols["weight average + TTA"] = avg.get("tta") or {"accuracy": avg["tta_accuracy"]}
    if "ensemble" in s:
        cols[f"snapshot ensemble of {len(s['ensemble']['members'])}"] = s["ensemble"]
    return cols


# ---------------------------------------------------------------- reusing finished runs


def run_or_reuse(command: str, stem: str, out: Path, jobs: int, refine: Path | None = None,
                 force: bool = False) -> dict:  # fmt: skip
    """The summary of `cifar2l COMMAND configs/STEM.yaml`: of its finished run under `out`
    (finished_item), named on the console, unless `force`; else of a new run."""
    item = None if force else finished_item(out, command, stem, refine)
    if item is None:
        return cifar2l(*command_args(command, stem, out, jobs, refine))
    console.log(f"reusing {item.run} for {command} {stem}.yaml (FORCE=1 runs it again)")
    return {**item.summary, "run_dir": str(item.run)}


def finished_item(out: Path, command: str, stem: str, refine: Path | None = None):
    """The newest run under `out` of `cifar2l COMMAND configs/STEM.yaml` that the report counts
    (its report.Item): completed, unmodified, over at least the item's seeds (a fine search:
    refined from `refine`, the coarse search used)."""
    want = expected(stem).seeds
    for run in sorted(out.glob(f"*-{command}-{stem}"), reverse=True):
        try:
            item = report.load_item(run)
        except (report.Skipped, Cifar2lError):  # an unreadable run is not reused
            continue
        source = (item.summary.get("refined_from") or {}).get("run_dir")
        if refine is not None and (source is None or Path(source) != Path(refine)):
            continue
        if not item.modified and item.seeds >= want:
            return item
    return None


# ---------------------------------------------------------------- make report


def report_target(out: Path, jobs: int, force: bool = False) -> None:
    """`make report`: run every item without a counted run (reusing the others), then report."""
    dirs: dict[str, Path] = {}
    for command, stem in REPORT_ITEMS:
        refine = dirs.get("search-coarse") if stem == "search-fine" else None
        dirs[stem] = Path(run_or_reuse(command, stem, out, jobs, refine, force)["run_dir"])
    subprocess.run([sys.executable, "-m", "cifar2l", "report", *map(str, dirs.values()),
                    "--out", "report"], check=True)  # fmt: skip


TARGETS = {"table2": table2, "table3": table3, "final": final, "lrrange": lrrange,
           "bonus": bonus, "table4": table4, "best": best, "report": report_target}  # fmt: skip


def main(argv: list[str]) -> int:
    target = argv[0] if argv else "table2"
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs")
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else \
        threads.available_cpus()[0]  # fmt: skip
    TARGETS[target](out, jobs, force="--force" in argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
