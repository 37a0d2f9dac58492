"""`make table2`: train both Table 2 configs and print our accuracies beside the study's.

Each run is an ordinary `cifar2l train` process, so its run directory (command.txt included)
is exactly what the user would get by typing the command.

Usage: python -m cifar2l.tables [--out RUNS_ROOT]
"""

from __future__ import annotations

import json
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


def train(config: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cifar2l", "train", str(config), "--out", str(out), "--json"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)  # the child already printed its Error: line
    return json.loads(proc.stdout)


def table2(out: Path) -> tuple[list[list], list[str]]:
    rows, run_dirs = [], []
    for stem, study in TABLE2.items():
        console.log(f"training configs/{stem}.yaml ({study['label']}) ...")
        summary = train(CONFIGS / f"{stem}.yaml", out)
        for split in ("train", "val", "test"):
            ours = summary["accuracy"][split]
            rows.append([study["label"], split, ours, study[split], ours - study[split]])
        run_dirs.append(f"{study['label']}: {summary['run_dir']} ({summary['seconds']:.1f} s)")
    return rows, run_dirs


def main(argv: list[str]) -> int:
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs")
    rows, run_dirs = table2(out)
    columns = ["config", "split", "ours", "study", "difference"]
    console.table("Table 2: accuracy, ours vs the study", columns, rows)
    for line in run_dirs:
        console.log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
