"""Analytic gradients against centred differences (the study's Table 1)."""

from __future__ import annotations

import time

import numpy as np

from . import console, data, network, runs
from .errors import ConfigError
from .network import PARAM_KEYS
from .rngs import make_rngs

COLUMNS = ["problem", "lambda", "param", "coords", "mean_abs_diff", "max_abs_diff", "max_rel_error"]


def rel_error(ga, gn):
    """|ga - gn| / max(1e-8, |ga| + |gn|), elementwise."""
    return np.abs(ga - gn) / np.maximum(1e-8, np.abs(ga) + np.abs(gn))


def numerical_grad(cost_fn, array: np.ndarray, idx: tuple, h: float) -> float:
    """Centred difference of cost_fn() in the entry array[idx], restored afterwards."""
    old = array[idx]
    array[idx] = old + h
    plus = cost_fn()
    array[idx] = old - h
    minus = cost_fn()
    array[idx] = old
    return (plus - minus) / (2 * h)


def compare(params, x, y, lam: float, h: float, coords=None, mask=None,
            smoothing: float = 0.0) -> dict[str, dict]:  # fmt: skip
    """Per parameter: mean/max abs difference and max relative error over the checked entries.

    coords: None for every entry, else {key: list of index tuples}. mask: a fixed, scaled
    dropout mask (N, H) for the hidden layer, used by both gradients. smoothing: the loss's
    label smoothing (optim.label_smoothing).
    """
    _, _, grads = network.loss_and_grads(params, x, y, lam, mask=mask, smoothing=smoothing)

    def cost():
        return network.cost(params, x, y, lam, mask, smoothing)

    out = {}
    for key in PARAM_KEYS:
        entries = coords[key] if coords else list(np.ndindex(params[key].shape))
        ga = np.array([grads[key][i] for i in entries])
        gn = np.array([numerical_grad(cost, params[key], i, h) for i in entries])
        diff = np.abs(ga - gn)
        out[key] = {
            "coords": len(entries),
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff": float(diff.max()),
            "max_rel_error": float(rel_error(ga, gn).max()),
        }
    return out


def sample_coords(params, k: int, rng: np.random.Generator) -> dict[str, list[tuple]]:
    """Up to k distinct random entries of every parameter."""
    picked = {}
    for key in PARAM_KEYS:
        shape = params[key].shape
        flat = rng.choice(int(np.prod(shape)), size=min(k, int(np.prod(shape))), replace=False)
        picked[key] = [tuple(int(v) for v in np.unravel_index(f, shape)) for f in flat]
    return picked


def training_rows(cfg, rng) -> tuple[np.ndarray, np.ndarray, int]:
    """The training split standardised in float64 (the check never needs the other splits)."""
    ds = data.load_dataset(data.find_source(cfg.data.root))
    x, y = data.select_splits(ds, cfg.data, rng)["train"]
    mean, std = data.fit_standardizer(x)
    return data.standardize(x, mean, std, np.float64), y, len(ds.classes)


def check(cfg) -> tuple[list[dict], dict]:
    """Run the reduced and full-size checks for every lambda; return CSV rows and a summary."""
    gc = cfg.gradcheck
    rngs = make_rngs(cfg.seed)
    x, y, n_classes = training_rows(cfg, rngs["split"])
    for key, value, limit, what in (("dims", gc.dims, x.shape[1], "input features"),
                                    ("samples", gc.samples, len(y), "training rows")):  # fmt: skip
        if value > limit:  # the reduced problem is cut from the training split
            raise ConfigError(f"gradcheck.{key}: {value} exceeds the {limit} {what}")
    reduced = network.init_params(gc.dims, gc.hidden, n_classes, rngs["init"], "float64")
    full = network.init_params(x.shape[1], cfg.model.hidden, n_classes, rngs["init"], "float64")
    coords = sample_coords(full, gc.full_size_coords, rngs["shuffle"])
    xr, yr = x[: gc.samples, : gc.dims], y[: gc.samples]
    xf, yf = x[: gc.full_size_samples], y[: gc.full_size_samples]
    keep = rngs["dropout"].random((gc.samples, gc.hidden)) >= gc.dropout
    mask = keep / (1 - gc.dropout)  # one fixed inverted-dropout mask for the dropout path
    rows, ls = [], cfg.optim.label_smoothing
    for lam in gc.lambdas:
        for problem, result in (
            ("reduced", compare(reduced, xr, yr, lam, gc.h, smoothing=ls)),
            ("reduced_dropout", compare(reduced, xr, yr, lam, gc.h, mask=mask, smoothing=ls)),
            ("full_size", compare(full, xf, yf, lam, gc.h, coords, smoothing=ls)),
        ):
            rows += [{"problem": problem, "lambda": lam, "param": k, **v}
                     for k, v in result.items()]  # fmt: skip
    return rows, summarize(rows, gc)


def _worst(rows, problem: str, field: str) -> dict[str, float]:
    return {k: max(r[field] for r in rows if r["problem"] == problem and r["param"] == k)
            for k in PARAM_KEYS}  # fmt: skip


def summarize(rows: list[dict], gc) -> dict:
    max_rel = _worst(rows, "reduced", "max_rel_error")
    full_rel = _worst(rows, "full_size", "max_rel_error")
    drop_rel = _worst(rows, "reduced_dropout", "max_rel_error")
    full_passed = max(full_rel.values()) <= gc.full_size_tolerance
    drop_passed = max(drop_rel.values()) <= gc.tolerance
    reduced_passed = max(max_rel.values()) <= gc.tolerance
    return {
        "max_rel_error": max_rel,
        "mean_abs_diff": _worst(rows, "reduced", "mean_abs_diff"),
        "tolerance": gc.tolerance,
        "h": gc.h,
        "lambdas": list(gc.lambdas),
        "passed": reduced_passed and full_passed and drop_passed,
        "dropout": {"p": gc.dropout, "max_rel_error": drop_rel, "passed": drop_passed},
        "full_size": {
            "max_rel_error": full_rel,
            "coords_per_param": gc.full_size_coords,
            "samples": gc.full_size_samples,
            "tolerance": gc.full_size_tolerance,
            "passed": full_passed,
        },
    }


def run_gradcheck(cfg, config_text: str, out, name: str) -> dict:
    started = time.perf_counter()
    rows, result = check(cfg)  # before the run dir: a data error leaves nothing behind
    with runs.open_run(out, "gradcheck", name, cfg, config_text, started) as run:
        runs.write_csv(run.path / "gradcheck.csv", COLUMNS, rows)
        run.summary.update(result)
    for problem in ("reduced", "reduced_dropout", "full_size"):
        for lam in cfg.gradcheck.lambdas:
            sel = [r for r in rows if r["problem"] == problem and r["lambda"] == lam]
            console.table(
                f"gradient check, {problem} problem, lambda = {lam}",
                ["param", "coords", "mean_abs_diff", "max_abs_diff", "max_rel_error"],
                [[r["param"], r["coords"], r["mean_abs_diff"], r["max_abs_diff"],
                  r["max_rel_error"]] for r in sel],  # fmt: skip
            )
    verdict = "passed" if result["passed"] else "FAILED"
    gc = cfg.gradcheck
    console.log(f"gradient check {verdict} (tolerance {gc.tolerance:g} reduced, "
                f"{gc.full_size_tolerance:g} full size); run dir: {run.path}")  # fmt: skip
    return run.summary
