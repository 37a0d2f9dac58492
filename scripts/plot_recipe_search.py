"""The figure of issue 16's whitening search: proxy validation accuracy against the peak rate.

Reads the results.csv of the proxy searches and the summary of the plain proxy run, writes
docs/recipe-search.png:

    python scripts/plot_recipe_search.py runs/20261201-222228-train-proxy-baseline \
        runs/search-zca runs/search-zca2 runs/search-zca3
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path("docs/recipe-search.png")


def trials(dirs: list[Path]) -> list[dict]:
    """Completed trials of the searches: eps, rate, val and TTA val accuracy."""
    rows = []
    for d in dirs:
        for r in csv.DictReader((d / "results.csv").open()):
            if r["status"] == "completed":
                rows.append({"eps": float(r["data.zca_eps"]), "eta": float(r["schedule.eta_max"]),
                             "val": float(r["val_accuracy"]),
                             "tta": float(r["tta_val_accuracy"])})  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    base = json.loads((Path(argv[0]) / "summary.json").read_text())
    rows = trials([Path(a) for a in argv[1:]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in [(axes[0], "val", "plain"), (axes[1], "tta", "with TTA (10 views)")]:
        for eps, colour in [(0.1, "tab:orange"), (1.0, "tab:blue"), (3.0, "tab:green")]:
            pts = sorted((r["eta"], r[key]) for r in rows if r["eps"] == eps)
            ax.plot(*zip(*pts, strict=True), "o-", color=colour, label=f"ZCA, eps {eps:g}")
        plain = base["accuracy"]["val"] if key == "val" else base["tta"]["accuracy"]["val"]
        ax.plot([0.02], [plain], "ks", label="no whitening (issue 7's recipe)")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate (schedule.eta_max)")
        ax.set_title(f"validation accuracy, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (1024 units, 12 epochs)")
    axes[1].legend(loc="lower right")
    fig.suptitle("Proxy search for the whitening (configs/search-zca*.yaml): a point per network")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
