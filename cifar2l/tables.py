"""`make table2`, `make table3`, `make final`: run the study's experiments through the CLI and
print our numbers beside the study's.

Each run is an ordinary `cifar2l` process, so its run directory (command.txt included) is exactly
what the user would get by typing the command.

Usage: python -m cifar2l.tables {table2|table3|final} [--out RUNS_ROOT] [--jobs N]
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


def final(out: Path, jobs: int) -> None:
    rows = []
    for stem in ("final", "final-3cycles"):
        summary = cifar2l("train", str(CONFIGS / f"{stem}.yaml"), "--out", str(out))
        for split in ("train", "val", "test"):
            ours = summary["accuracy"][split]
            study = FINAL[split] if stem == "final" else None
            rows.append([stem, split, ours, study if study is not None else "",
                         "" if study is None else ours - study])  # fmt: skip
        console.log(f"{stem}: {summary['run_dir']} ({summary['seconds']:.1f} s)")
    console.table(f"the tuned network, ours vs the study (study lambda {FINAL['lambda']})",
                  ["config", "split", "ours", "study", "difference"], rows)  # fmt: skip


def main(argv: list[str]) -> int:
    target = argv[0] if argv else "table2"
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs")
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else (os.cpu_count() or 1)
    {"table2": table2, "table3": table3, "final": final}[target](out, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
