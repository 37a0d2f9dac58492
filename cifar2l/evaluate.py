"""Reload trained weights and score a split: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import config as config_mod
from . import console, data, network, plots, runs, tta, whiten
from . import ensemble as ens
from .errors import ConfigError, RunError, brief, clip
from .rngs import make_rngs
from .weights import Weights, load_weights

SPLITS = ("train", "val", "test")
# The only keys `evaluate --set` may change: where the data lives. Anything else (the seed, the
# split sizes, the batches) would rebuild other splits than the ones the run was trained with.
SETTABLE = ("data.root",)


def split_rows(w: Weights, overrides: list[str], split: str):
    """The raw rows of a split, chosen exactly as at training time, standardised as then.

    The split is rebuilt from the run's own config (only `data.root` may be overridden) and
    its fingerprint must equal the one recorded at training time: other data, or other rows,
    would score images the network may have trained on.
    """
    check_overrides(overrides)
    raw = config_mod.apply_overrides(config_mod.parse_yaml(w.config_text, str(w.path)), overrides)
    cfg = config_mod.validate(raw, f"{w.path} (stored config)")
    ds = data.load_dataset(data.find_source(cfg.data.root))
    x, y = data.select_splits(ds, cfg.data, make_rngs(cfg.seed)["split"])[split] or (None, None)
    if x is None:
        raise ConfigError(f"--split {split}: the stored config has no {split} split")
    if x.shape[1] != w.mean.shape[0]:
        raise RunError(f"{w.path}: weights expect {w.mean.shape[0]} inputs, data has {x.shape[1]}")
    check_fingerprint(w, split, data.fingerprint(x, y), ds.source)
    x = data.standardize(x, w.mean, w.std, w.params["W1"].dtype)
    return cfg, x if w.zca is None else whiten.apply(x, w.zca_mean, w.zca), y


def check_overrides(overrides: list[str]) -> None:
    for text in overrides:
        key = ".".join(config_mod.parse_override(text)[0])
        if key not in SETTABLE:
            shown = clip(text, 80)
            raise ConfigError(f"--set {shown}: evaluate scores the splits the run was trained "
                              f"with, rebuilt from its saved config; only {', '.join(SETTABLE)} "
                              "(where the data lives) may be set")  # fmt: skip


def check_fingerprint(w: Weights, split: str, found: str, source: str) -> None:
    if w.fingerprints is None:
        console.warn(f"{w.path}: written before cifar2l recorded the splits' fingerprints; "
                     f"cannot check that {source} gives the {split} split it was trained with")
        return
    want = w.fingerprints.get(split)
    if want != found:
        raise RunError(f"{w.path}: the {split} split rebuilt from {source} is not the one this "
                       f"run was trained with (fingerprint {found}, recorded {want}): other "
                       "data or other rows; refusing to score it")  # fmt: skip


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def score(pred, y, classes: list[str]) -> dict:
    cm = confusion_matrix(y, pred, len(classes))
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    return {
        "accuracy": float((pred == y).mean()),
        "per_class_accuracy": {c: float(a) for c, a in zip(classes, per_class, strict=True)},
        "confusion": cm,
    }


def tta_views(option: str | None) -> list[str] | None:
    """The TTA views of `--tta` ("none": no TTA); None when not given (the run's own)."""
    if option is None:
        return None
    views = [] if option.strip() == "none" else [v.strip() for v in option.split(",")]
    bad = [v for v in views if v not in config_mod.TTA_VIEWS] or len(set(views)) < len(views)
    if bad:
        raise ConfigError(f"--tta {brief(option)}: allowed values: none, or views from "
                          f"{', '.join(config_mod.TTA_VIEWS)} separated by commas, each once")
    return views


def predictions(w: Weights, paths: list[Path], x, views, reflect: bool):
    """Predicted labels (N,) of the weights, or of the ensemble of `paths`, with TTA `views`."""
    if paths:
        return ens.average_probabilities(paths, x, views, reflect).argmax(axis=1)
    if views:
        return tta.probabilities(w.params, x, views, reflect).argmax(axis=2)[0]
    return network.predict(w.params, x)[0]


def run_evaluate(target: Path, split: str, overrides: list[str], out, name: str | None,
                 ensemble: bool = False, tta_option: str | None = None) -> dict:  # fmt: skip
    """Score a run's weights on a split; with `ensemble`, the average of its snapshots'
    softmax outputs instead of its final weights; with TTA views (`--tta`, by default the
    run's evaluate.tta), also the prediction averaged over them (summary `tta`)."""
    if split not in SPLITS:
        raise ConfigError(f"--split {brief(split)}: allowed values: {', '.join(SPLITS)}")
    started, views = time.perf_counter(), tta_views(tta_option)
    paths = ens.run_members(target) if ensemble else []
    w = load_weights(paths[-1] if paths else target)  # the stored config and standardisation
    cfg, x, y = split_rows(w, overrides, split)
    views = list(cfg.evaluate.tta) if views is None else views
    reflect = cfg.augment.pad == "reflect"
    result = score(predictions(w, paths, x, [], reflect), y, w.classes)
    if views:
        scored = score(predictions(w, paths, x, views, reflect), y, w.classes)
        result["tta"] = {"views": views, "accuracy": scored["accuracy"],
                         "per_class_accuracy": scored["per_class_accuracy"]}  # fmt: skip
    run_name = name or (Path(target) if paths else w.path.parent).name
    with runs.open_run(out, "evaluate", run_name, cfg, config_mod.dump_yaml(cfg), started) as run:
        cm = result.pop("confusion")
        write_confusion_csv(run.path / "confusion.csv", cm, w.classes)
        shown = name or plots.run_name(Path(target) if paths else w.path.parent)
        title = f"{shown} · {split} split · accuracy {result['accuracy']:.4f}"
        plots.confusion(cm, w.classes, run.path / "confusion.png", title)
        run.summary.update(weights=str(w.path), split=split, **by_split(result, split))
        if paths:
            run.summary.update(weights=str(target), ensemble=[ens.member_step(p) for p in paths])
    what = f"snapshot ensemble of {len(paths)} in {target}" if paths else str(w.path)
    show_result(result, split, what)  # the run dir follows (the CLI's last line)
    return run.summary


def by_split(result: dict, split: str) -> dict:
    """The summary's accuracies keyed by split, as train's are: `accuracy: {test: ...}`, and
    with TTA `tta: {views, accuracy: {test: ...}, per_class_accuracy}`."""
    out = {**result, "accuracy": {split: result["accuracy"]}}
    if "tta" in result:
        out["tta"] = {**result["tta"], "accuracy": {split: result["tta"]["accuracy"]}}
    return out


def show_result(result: dict, split: str, what: str) -> None:
    title = f"{split} accuracy {result['accuracy']:.4f}"
    cols, rows = ["class", "accuracy"], [[c, a] for c, a in result["per_class_accuracy"].items()]
    if "tta" in result:
        t = result["tta"]
        title += f", with TTA ({'+'.join(t['views'])}) {t['accuracy']:.4f}"
        cols.append("tta accuracy")
        rows = [[*r, t["per_class_accuracy"][r[0]]] for r in rows]
    console.table(f"{title} ({what})", cols, rows)


def write_confusion_csv(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    lines = ["true\\predicted," + ",".join(classes)]
    lines += [f"{c}," + ",".join(str(v) for v in row) for c, row in zip(classes, cm, strict=True)]
    runs.atomic_write(path, "\n".join(lines) + "\n")
