"""`make table2`, `make table3`, `make final`: run the study's experiments through the CLI and
print our numbers beside the study's.

Each run is an ordinary `cifar2l` process, so its run directory (command.txt included) is exactly
what the user would get by typing the command.

Usage: python -m cifar2l.tables {table2|table3|final|lrrange|bonus|table4|best|report} [--out DIR]
       [--jobs N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import console

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# The study's Table 2 (eta 1e-5..1e-1, lambda 0.01, batch 100).
TABLE2 = {
    "default": {"label": "n_s=500, 1 cycle", "train": 0.6213, "val": 0.4597, "test": 0.4602},
    "cycles3": {"label": "n_s=800, 3 cycles", "train": 0.7784, "val": 0.4608, "test": 0.4524},
}
# The study's Table 3: (lambda, validation accuracy), best first.
TABLE3 = {
    "coarse": [(0.00925069, 0.5328), (0.00599464, 0.5310), (0.01357111, 0.5292),
               (0.03065967, 0.5006)],
    "fine": [(0.00878554, 0.5388), (0.00925069, 0.5342), (0.00692494, 0.5320),
             (0.00832039, 0.5318)],
}  # fmt: skip
FINAL = {"lambda": 0.00878554, "train": 0.6139, "val": 0.5384, "test": 0.5221}
# The study's LR range picks, bonus models and Table 4.
LRRANGE = {"lrrange-80": (0.000262144, 0.067108864), "lrrange-40": (0.004782, 0.12914)}
BONUS = {
    "model-80": {"train": 0.6359, "val": 0.5286, "test": 0.5206},
    "model-40": {"train": 0.5995, "val": 0.523, "test": 0.5069},
}
TABLE4 = {
    "table4-120": {"train": 0.7083, "val": 0.5564, "test": 0.5534},
    "table4-140": {"train": 0.7229, "val": 0.5700, "test": 0.5567},
}


def cifar2l(*args: str) -> dict:
    """Run one cifar2l command, progress on the terminal, and return its summary."""
    cmd = [sys.executable, "-m", "cifar2l", *args, "--json"]
    console.log("$ " + " ".join(["cifar2l", *args]))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)  # the child already printed its Error: line
    return json.loads(proc.stdout)


def table2(out: Path, jobs: int) -> None:
    rows, run_dirs = [], []
    for stem, study in TABLE2.items():
        summary = cifar2l("train", str(CONFIGS / f"{stem}.yaml"), "--out", str(out))
        for split in ("train", "val", "test"):
            ours = summary["accuracy"][split]
            rows.append([study["label"], split, ours, study[split], ours - study[split]])
        run_dirs.append(f"{study['label']}: {summary['run_dir']} ({summary['seconds']:.1f} s)")
    console.table("Table 2: accuracy, ours vs the study", ["config", "split", "ours", "study",
                                                           "difference"], rows)  # fmt: skip
    for line in run_dirs:
        console.log(line)


def top_rows(run_dir: Path, k: int = 4) -> list[tuple[float, float]]:
    import csv

    with open(run_dir / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "completed"][:k]
    return [(float(r["optim.lambda"]), float(r["val_accuracy"])) for r in rows]


def table3(out: Path, jobs: int) -> None:
    j = ["--jobs", str(jobs)]
    coarse = cifar2l("search", str(CONFIGS / "search-coarse.yaml"), "--out", str(out), *j)
    fine = cifar2l("search", str(CONFIGS / "search-fine.yaml"), "--out", str(out), *j,
                   "--refine", coarse["run_dir"])  # fmt: skip
    for label, summary in (("coarse", coarse), ("fine", fine)):
        ours = top_rows(Path(summary["run_dir"]))
        rows = [[i + 1, f"{o[0]:.8f}", o[1], f"{s[0]:.8f}", s[1]]
                for i, (o, s) in enumerate(zip(ours, TABLE3[label], strict=False))]  # fmt: skip
        console.table(f"Table 3, {label} search: top 4 by validation accuracy "
                      f"({summary['run_dir']}, {summary['trials']} trials)",
                      ["rank", "lambda (ours)", "val_accuracy (ours)", "lambda (study)",
                       "val_accuracy (study)"], rows)  # fmt: skip
    if fine.get("refined_from"):
        console.log(f"fine range: {fine['refined_from']['ranges']}")


def accuracy_table(title: str, studies: dict, out: Path) -> None:
    """Train each config of `studies` ({stem: study accuracies or None}) and compare."""
    rows = []
    for stem, study in studies.items():
        summary = cifar2l("train", str(CONFIGS / f"{stem}.yaml"), "--out", str(out))
        for split in ("train", "val", "test"):
            ours = summary["accuracy"][split]
            ref = study[split] if study else None
            rows.append([stem, split, ours, "" if ref is None else ref,
                         "" if ref is None else ours - ref])  # fmt: skip
        console.log(f"{stem}: {summary['run_dir']} ({summary['seconds']:.1f} s)")
    console.table(title, ["config", "split", "ours", "study", "difference"], rows)


def final(out: Path, jobs: int) -> None:
    accuracy_table(f"the tuned network, ours vs the study (study lambda {FINAL['lambda']})",
                   {"final": FINAL, "final-3cycles": None}, out)  # fmt: skip


def bonus(out: Path, jobs: int) -> None:
    accuracy_table("bonus models trained with the LR-range picks, ours vs the study", BONUS, out)


def table4(out: Path, jobs: int) -> None:
    accuracy_table("Table 4: improvements combined, ours vs the study", TABLE4, out)


# The study's best network (Table 4, 140 hidden units), and the published one-hidden-layer
# networks trained from scratch on CIFAR-10 as issue 7 summarises them (test accuracy).
STUDY_BEST_TEST = 0.5567
PUBLISHED_FROM_SCRATCH = "about 0.55-0.58 (about 0.59 for an ensemble selected on the test set)"


def best(out: Path, jobs: int) -> None:
    """`make best`: train configs/best.yaml; the single network and its snapshot ensemble."""
    s = cifar2l("train", str(CONFIGS / "best.yaml"), "--out", str(out))
    ens = s["ensemble"]
    rows = [[split, s["accuracy"][split], ens["accuracy"][split]] for split in s["accuracy"]]
    console.table(f"Beyond the study: configs/best.yaml ({s['run_dir']}, {s['seconds'] / 60:.1f} "
                  f"min)", ["split", "single network", f"snapshot ensemble of "
                  f"{len(ens['members'])}"], rows)  # fmt: skip
    console.log(f"test accuracy: the study's best {STUDY_BEST_TEST}; published one-hidden-layer "
                f"networks trained from scratch: {PUBLISHED_FROM_SCRATCH}")  # fmt: skip


def lrrange(out: Path, jobs: int) -> None:
    rows = []
    for stem, (lo, hi) in LRRANGE.items():
        summary = cifar2l("lrrange", str(CONFIGS / f"{stem}.yaml"), "--out", str(out))
        ours = summary["suggestion"]
        rows.append([stem, ours["eta_min"], lo, ours["eta_max"], hi, summary["run_dir"]])
    console.table("LR range test: suggested eta_min / eta_max, ours vs the study's picks",
                  ["config", "eta_min (ours)", "eta_min (study)", "eta_max (ours)",
                   "eta_max (study)", "run dir (lrrange.png)"], rows)  # fmt: skip


# Every item of the report: (command, config stem). Order matters: the fine search refines the
# coarse one.
REPORT_ITEMS = [("gradcheck", "gradcheck"), ("train", "default"), ("train", "cycles3"),
                ("search", "search-coarse"), ("search", "search-fine"), ("train", "final"),
                ("train", "final-3cycles"), ("lrrange", "lrrange-80"), ("lrrange", "lrrange-40"),
                ("train", "model-80"), ("train", "model-40"), ("train", "table4-120"),
                ("train", "table4-140"), ("train", "best")]  # fmt: skip


def finished_run(out: Path, command: str, stem: str) -> Path | None:
    """The newest completed run of `cifar2l COMMAND configs/STEM.yaml` under `out`."""
    for run in sorted(out.glob(f"*-{command}-{stem}"), reverse=True):
        try:
            if json.loads((run / "summary.json").read_text()).get("status") == "completed":
                return run
        except (OSError, ValueError):
            continue
    return None


def report(out: Path, jobs: int) -> None:
    """`make report`: run every item without a finished run (reusing the others), then report."""
    dirs: dict[str, Path] = {}
    for command, stem in REPORT_ITEMS:
        run = finished_run(out, command, stem)
        if run is None:
            args = [command, str(CONFIGS / f"{stem}.yaml"), "--out", str(out)]
            if command == "search":
                args += ["--jobs", str(jobs)]
            if stem == "search-fine":
                args += ["--refine", str(dirs["search-coarse"])]
            run = Path(cifar2l(*args)["run_dir"])
        else:
            console.log(f"reusing {run} for {command} {stem}.yaml")
        dirs[stem] = run
    subprocess.run([sys.executable, "-m", "cifar2l", "report", *map(str, dirs.values()),
                    "--out", "report"], check=True)  # fmt: skip


def main(argv: list[str]) -> int:
    target = argv[0] if argv else "table2"
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs")
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else (os.cpu_count() or 1)
    targets = {"table2": table2, "table3": table3, "final": final, "lrrange": lrrange,
               "bonus": bonus, "table4": table4, "best": best, "report": report}  # fmt: skip
    targets[target](out, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
