"""Weights files: a trained network, the standardisation of its training split, its class
names, the splits' fingerprints and its resolved config, in one .npz file.

A file holds one network in the single-network layout W1 (D, H), b1 (H,), W2 (H, C), b2 (C,)
(what users load with numpy); in memory it is a stack of T = 1 (network.py).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runs
from .errors import RunError
from .network import PARAM_KEYS

FLOATS = {np.dtype(np.float32), np.dtype(np.float64)}


@dataclass
class Weights:
    params: dict
    mean: np.ndarray
    std: np.ndarray
    classes: list[str]
    config_text: str
    path: Path
    fingerprints: dict[str, str] | None = None  # split -> data.fingerprint (None: older file)
    zca_mean: np.ndarray | None = None  # data.zca_eps: the whitening after standardisation
    zca: np.ndarray | None = None


def save_weights(path: Path, params: dict, prep, config_text: str):
    """One network (a stack of T = 1), the training split's statistics, class names, the
    splits' fingerprints and the resolved config, in one file."""
    zca = {} if prep.zca is None else {"zca_mean": prep.zca_mean, "zca": prep.zca}
    runs.save_npz(path, **single(params), mean=prep.mean, std=prep.std,
                  classes=np.array(prep.classes), config=np.array(config_text),
                  fingerprints=np.array(json.dumps(prep.fingerprints)), **zca)  # fmt: skip


def weights_path(target: Path) -> Path:
    path = target / "weights.npz" if target.is_dir() else target
    if not path.is_file() and target.is_dir() and (why := unfinished(target)):
        raise RunError(f"{path}: no weights file: the run is {why}")
    if not path.is_file():
        raise RunError(f"{path}: no weights file (give a run directory or a weights.npz)")
    return path


def unfinished(run: Path) -> str | None:
    """The status of a run directory that has no weights because it has not finished
    (interrupted, failed, killed), as runs.status_of says it; None for anything else."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") in (None, "completed"):
        return None
    return runs.status_of(run, summary)


def load_weights(target: Path) -> Weights:
    path = weights_path(Path(target))
    try:
        with np.load(path, allow_pickle=False) as f:
            params = {k: f[k] for k in PARAM_KEYS}
            check_layout(params, path)
            prints = json.loads(str(f["fingerprints"])) if "fingerprints" in f else None
            w = Weights(params, f["mean"], f["std"], [str(c) for c in f["classes"]],
                        str(f["config"]), path, prints,
                        *((f["zca_mean"], f["zca"]) if "zca" in f else ()))  # fmt: skip
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RunError(f"{path}: not a cifar2l weights file ({e})") from None
    check_shapes(w)
    check_values(w)
    w.params = stacked(w.params)
    return w


def check_values(w: Weights) -> None:
    """Refuse what would score as a number that means nothing (NaN weights predict class 0
    everywhere, exit 0) or fail deep in a kernel: one float dtype for the parameters, finite
    values everywhere, a positive std."""
    extra = [] if w.zca is None else [("zca_mean", w.zca_mean), ("zca", w.zca)]
    dtypes = {w.params[k].dtype for k in PARAM_KEYS} | {w.mean.dtype, w.std.dtype} | {
        a.dtype for _, a in extra}  # fmt: skip
    if len({w.params[k].dtype for k in PARAM_KEYS}) != 1 or not dtypes <= FLOATS:
        kinds = ", ".join(f"{k} {w.params[k].dtype}" for k in PARAM_KEYS)
        raise RunError(f"{w.path}: weights must be float32 or float64 arrays of one dtype, "
                       f"got {kinds}, mean {w.mean.dtype}, std {w.std.dtype}")  # fmt: skip
    bad = [k for k, a in (*w.params.items(), ("mean", w.mean), ("std", w.std), *extra)
           if not np.isfinite(a).all()]  # fmt: skip
    if bad:
        raise RunError(f"{w.path}: non-finite values (NaN or inf) in {', '.join(bad)}")
    if not (w.std > 0).all():
        raise RunError(f"{w.path}: std must be positive (it divides the pixels)")


def check_shapes(w: Weights) -> None:
    p = w.params
    d, h = p["W1"].shape if p["W1"].ndim == 2 else (None, None)
    expected = {"b1": (h,), "W2": (h, len(w.classes)), "b2": (len(w.classes),)}
    bad = [k for k, s in expected.items() if p[k].shape != s]
    zca_bad = w.zca is not None and (w.zca.shape != (d, d) or w.zca_mean.shape != (d,))
    if d is None or bad or zca_bad or w.mean.shape != (d,) or w.std.shape != (d,):
        shapes = ", ".join(f"{k} {p[k].shape}" for k in PARAM_KEYS)
        raise RunError(f"{w.path}: inconsistent weight shapes ({shapes})")




def single(params: dict) -> dict:
    """A stack of T = 1 in the file layout (views)."""
    if params["W2"].ndim == 2:
        return params
    if params["W2"].shape[0] != 1:
        raise ValueError("a weights file holds one network: select one trial of the stack")
    return {"W1": params["W1"][:, 0], **{k: params[k][0] for k in ("b1", "W2", "b2")}}


def stacked(params: dict) -> dict:
    """File layout -> a stack of T = 1 (views); params already stacked come back as they are."""
    if params["W1"].ndim == 3:
        return params
    return {"W1": params["W1"][:, None, :], **{k: params[k][None] for k in ("b1", "W2", "b2")}}


def check_layout(params: dict, path: Path) -> None:
    if any(params[k].ndim != n for k, n in zip(PARAM_KEYS, (2, 1, 2, 1), strict=True)):
        shapes = ", ".join(f"{k} {params[k].shape}" for k in PARAM_KEYS)
        raise RunError(f"{path}: inconsistent weight shapes ({shapes})")
