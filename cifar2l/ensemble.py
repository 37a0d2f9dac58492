"""Snapshot ensembles (Huang et al. 2017, "train 1, get M for free").

A run keeps its weights at chosen updates (`train.snapshots`: a list of steps, or `cycles` for
the end of every learning-rate cycle) under `snapshots/step-NNNNNN.npz`, each an ordinary
weights file. The ensemble's prediction is the average of the members' softmax outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import network, tta
from .errors import RunError
from .weights import load_weights, save_weights

DIR = "snapshots"


def snapshot_path(run_path: Path, step: int) -> Path:
    return Path(run_path) / DIR / f"step-{step:06d}.npz"


def save_snapshot(run_path: Path, step: int, params: dict, prep, config_text: str) -> None:
    path = snapshot_path(run_path, step)
    path.parent.mkdir(exist_ok=True)
    save_weights(path, params, prep, config_text)


def members(run_path: Path) -> list[Path]:
    """The snapshot files of a run, in step order."""
    return sorted((Path(run_path) / DIR).glob("step-*.npz"))


def member_step(path: Path) -> int:
    return int(path.stem.removeprefix("step-"))


def average_probabilities(paths: list[Path], x, views=(), reflect: bool = True) -> np.ndarray:
    """Mean of the members' softmax outputs (N, C), one member in memory at a time; with
    `views` (evaluate.tta), each member's outputs averaged over those views first."""
    total = None
    for path in paths:  # a wide member is tens of MB
        params = load_weights(path).params
        p = (tta.probabilities(params, x, views, reflect) if views else
             network.probabilities(params, x))[0]  # fmt: skip
        total = p if total is None else total + p
    return total / len(paths)


def ensemble_accuracy(paths: list[Path], splits: dict, views=(), reflect: bool = True) -> dict:
    """Accuracy of the averaged prediction on each split {name: Split} (views: with TTA)."""
    return {k: float((average_probabilities(paths, s.x, views, reflect).argmax(axis=1) == s.y)
                     .mean()) for k, s in splits.items()}  # fmt: skip


def run_members(target: Path) -> list[Path]:
    """The snapshots of a run directory; RunError when it kept none."""
    paths = members(target) if Path(target).is_dir() else []
    if not paths:
        raise RunError(f"{target}: no snapshots to ensemble (a run directory trained with "
                       "train.snapshots has snapshots/step-*.npz)")  # fmt: skip
    return paths
