"""The figures of issue 16's recipe search.

docs/recipe-search.png: proxy validation accuracy against the peak rate, from the results.csv of
the whitening searches and the summary of the plain proxy run:

    python scripts/plot_recipe_search.py search runs/20261201-222228-train-proxy-baseline \
        runs/search-zca runs/search-zca2 runs/search-zca3

docs/recipe-round4.png: round 4, each one-knob variant of configs/proxy-zca.yaml against the
baseline of its seed (scripts/proxy_round4.sh writes them all under one folder):

    python scripts/plot_recipe_search.py round4 runs/proxy-r4

docs/best-accuracy.png: training and validation accuracy of full-size runs against the update
step, one colour per run (their metrics.csv), labelled by the given names:

    python scripts/plot_recipe_search.py curves "before (issue 7)" runs/20261201-180754-train-best \
        "whitened (issue 16)" runs/20261201-225440-train-best
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
ROUND4 = Path("docs/recipe-round4.png")
CURVES = Path("docs/best-accuracy.png")


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


def curves(argv: list[str]) -> int:
    """Train (dashed) and validation (solid) accuracy of each (name, run dir) pair."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    pairs = list(zip(argv[::2], argv[1::2], strict=True))
    for (name, run), colour in zip(pairs, ["tab:gray", "tab:blue", "tab:green"], strict=False):
        rows = list(csv.DictReader((Path(run) / "metrics.csv").open()))
        steps = [int(r["step"]) for r in rows]
        ax.plot(steps, [float(r["val_accuracy"]) for r in rows], "o-", color=colour,
                label=f"{name}: validation")  # fmt: skip
        ax.plot(steps, [float(r["train_accuracy"]) for r in rows], "--", color=colour,
                label=f"{name}: training")  # fmt: skip
    ax.set_xlabel("update step (351 a epoch, 60 epochs)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.4, 0.8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("configs/best.yaml, seed 42: 4096 ReLU units, one hidden layer")
    fig.tight_layout()
    fig.savefig(CURVES, dpi=110)
    print(CURVES)
    return 0


def search(argv: list[str]) -> int:
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


def round4_runs(folder: Path) -> dict[str, dict]:
    """name (the part after -train-) -> summary.json, of every run in the folder."""
    out = {}
    for d in sorted(folder.iterdir()):
        if (d / "summary.json").is_file() and "-train-" in d.name:
            out[d.name.split("-train-", 1)[1]] = json.loads((d / "summary.json").read_text())
    return out


def round4(argv: list[str]) -> int:
    """Validation accuracy minus that of the same seed's baseline, plain and with TTA; the
    grey band: +-1 std of the baseline over 3 initialisation seeds (baseline-3seeds)."""
    runs = round4_runs(Path(argv[0]))
    spread = runs.pop("baseline-3seeds")
    names = [n for n in runs if not n.startswith("baseline")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.38 * len(names) + 1.6), sharey=True)
    for ax, key, title in [(axes[0], "accuracy", "plain"), (axes[1], "tta", "with TTA")]:
        def val(s, key=key):
            return (s if key == "accuracy" else s["tta"])["accuracy"]["val"]

        base = {n: runs["baseline-seed7" if n.endswith("-seed7") else "baseline"] for n in names}
        diffs = [100 * (val(runs[n]) - val(base[n])) for n in names]
        std = 100 * (spread if key == "accuracy" else spread["tta"])["accuracy_std"]["val"]
        ax.axvspan(-std, std, color="0.85", label="baseline's seed std (3 seeds)")
        ax.barh(names, diffs, color=["tab:green" if d > 0 else "tab:red" for d in diffs])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("validation accuracy - the same seed's baseline (points)")
        ax.set_title(f"{title}: baseline {val(runs['baseline']):.4f} (seed 42)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Round 4: one knob of configs/proxy-zca.yaml at a time (1024 units, 12 epochs)")
    fig.tight_layout()
    fig.savefig(ROUND4, dpi=110)
    print(ROUND4)
    return 0


if __name__ == "__main__":
    commands = {"search": search, "curves": curves, "round4": round4}
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
