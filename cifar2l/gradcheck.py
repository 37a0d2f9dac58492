"""Analytic gradients against centred differences (the study's Table 1), with a verdict that
does not depend on the machine's rounding.

The study's numbers are reported as they are: mean and max absolute difference and the max
relative error |ga - gn| / max(1e-8, |ga| + |gn|). They are not the verdict. In float64 the
centred difference gn = D(h) = (J(w + h) - J(w - h)) / 2h carries an error of its own,
estimated per entry (`noise_estimate`, gradient units) as

    noise = 4 eps |J| / h            round-off: each cost is within a few eps |J|
          + |D(h) - D(2h)|           truncation: 3x its h^2 J'''/6, measured on the entry

about 2e-10 .. 8e-10 here (eps = 2.2e-16, |J| ~ 2.3, h = 1e-5). On an entry with a small
gradient (|g| ~ 1e-4) that alone is a relative error near 1e-6, and which side of 1e-6 it lands
on depends on the CPU's BLAS (on the test fixture: 3.5e-7 with Intel's AVX-512 kernels, 1.13e-6
with the AVX2 kernels an AMD EPYC runs). The verdict therefore uses the floored relative error

    |ga - gn| / max(|ga| + |gn|, noise / resolution)

per entry: the plain relative error wherever gn resolves the gradient to `resolution` (1e-8
relative), the error in units of noise / resolution where it does not. Correct code gives
|ga - gn| <= noise, so its floored error is at most `resolution` (measured: <= 2.5e-9 over
many seeds and sizes, 1.7e-9 on CIFAR-10), >= 100x under the 1e-6 tolerance on any machine.
An entry fails when its relative error exceeds the tolerance although gn resolves it, or when
|ga - gn| exceeds tolerance / resolution = 100x its noise (~3e-8) where gn does not. A wrong
gradient is off by a fair part of its own size (1e-4 .. 1e-1 here) on many entries: each bug
the tests plant gives >= 0.02 on every parameter it reaches, 2e4x the tolerance. The noise
comes from the cost alone, never from the analytic gradient, so a bug in the backward pass
cannot widen its own floor.

ReLU kinks: the cost is not differentiable where a pre-activation s1[n, j] is 0, and a centred
difference whose step crosses 0 averages two slopes. Such entries are detected from s1 and left
out of every number (counted as `skipped`); see `kink_entries`.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from . import console, data, network, runs
from .errors import ConfigError
from .network import PARAM_KEYS
from .rngs import make_rngs

COLUMNS = ["problem", "lambda", "param", "coords", "skipped", "mean_abs_diff", "max_abs_diff",
           "max_rel_error", "noise", "floored_rel_error"]  # fmt: skip
EPS = float(np.finfo(np.float64).eps)
# A float64 cost evaluation is within ROUNDOFF_ULPS * eps * |J| of the exact cost (measured
# spread: about 1 eps |J| on every problem size the tests use; 4 leaves room for other BLAS).
ROUNDOFF_ULPS = 4.0
# Entries whose largest probe (2h) comes within KINK_MARGIN x of a kink are skipped; 2x covers
# the rounding of s1 itself (ReLU is piecewise linear: an entry whose probes cross no kink is
# exactly as smooth as any other, so a wider margin would only skip entries for nothing).
KINK_MARGIN = 2.0
RESOLUTION = 1e-8  # default of gradcheck.resolution (see floored_rel_error)


def rel_error(ga, gn):
    """|ga - gn| / max(1e-8, |ga| + |gn|), elementwise (the study's Table 1 measure)."""
    return np.abs(ga - gn) / np.maximum(1e-8, np.abs(ga) + np.abs(gn))


def floored_rel_error(ga, gn, noise, resolution: float = RESOLUTION):
    """|ga - gn| / max(|ga| + |gn|, noise / resolution), elementwise (the verdict's measure).

    ga, gn, noise: (K,) analytic gradient, centred difference, and the centred difference's own
    error estimate (`noise_estimate`, gradient units). Equal to the relative error wherever
    |ga| + |gn| >= noise / resolution, i.e. where gn is accurate to `resolution` relative.
    """
    scale = np.maximum(np.abs(ga) + np.abs(gn), np.asarray(noise) / resolution)
    return np.abs(ga - gn) / np.maximum(scale, np.finfo(np.float64).tiny)  # 0/0 only if J == 0


def numerical_grad(cost_fn, array: np.ndarray, idx: tuple, h: float) -> float:
    """Centred difference of cost_fn() in the entry array[idx], restored afterwards."""
    old = array[idx]
    array[idx] = old + h
    plus = cost_fn()
    array[idx] = old - h
    minus = cost_fn()
    array[idx] = old
    return (plus - minus) / (2 * h)


def probe(cost_fn, array: np.ndarray, idx: tuple, h: float) -> tuple[float, float, float]:
    """Centred differences D(h), D(2h) of cost_fn() in array[idx] and the largest |J| seen.

    Divides by the steps actually stored (fl(w + h) - fl(w - h)), not by 2h: that removes the
    step's own rounding (eps |w| / h relative) from gn at no cost. The entry is restored.
    """
    old = array[idx]
    costs, points = [], []
    for step in (h, -h, 2 * h, -2 * h):
        array[idx] = old + step
        points.append(float(array[idx]))
        costs.append(cost_fn())
    array[idx] = old
    d1 = (costs[0] - costs[1]) / (points[0] - points[1])
    d2 = (costs[2] - costs[3]) / (points[2] - points[3])
    return d1, d2, max(abs(c) for c in costs)


def noise_estimate(d1, d2, jmax, h: float):
    """(K,) error estimate of the centred difference D(h), in gradient units.

    Round-off: each cost is within ROUNDOFF_ULPS eps |J|, so (J+ - J-) / 2h is within
    ROUNDOFF_ULPS eps |J| / h. Truncation: D(h) = g + h^2 J'''/6 + O(h^4) and D(2h) =
    g + 4 h^2 J'''/6, so |D(h) - D(2h)| is 3x the truncation error of D(h) (plus the round-off
    of both): measured on this very entry, it also grows where J''' is large.
    """
    return ROUNDOFF_ULPS * EPS * np.asarray(jmax) / h + np.abs(np.asarray(d1) - d2)


def kink_entries(key: str, entries: list[tuple], params, x, drop, h: float) -> np.ndarray:
    """(K,) bool: entries whose probes (steps up to 2h) can move a live s1[n, j] across 0.

    params: a stack of T = 1 (entries of W1 are (i, 0, j), of b1 (0, j)). W1[i, 0, j] moves
    s1[n, j] = x[n] @ W1[:, 0, j] + b1[0, j] by step * x[n, i]; b1 moves it by the step; W2 and
    b2 move no pre-activation (the softmax and L2 are smooth). A fixed dropout mask (drop: the
    draws u (N, H) and p) is constant, so it adds no kink; a unit it drops gives 0 on both
    sides of its kink, so that kink cannot bend the cost and is not counted.
    """
    if key not in ("W1", "b1") or not entries:
        return np.zeros(len(entries), dtype=bool)
    idx = np.array(entries).reshape(len(entries), -1)  # (K, 3) for W1, (K, 2) for b1
    j = idx[:, -1]
    s1 = network.first_layer(x, params["W1"])[:, 0] + params["b1"][0]  # (N, H)
    moves = np.abs(x[:, idx[:, 0]]) if key == "W1" else np.ones((x.shape[0], len(j)))  # (N, K)
    live = np.ones(s1.shape, dtype=bool) if drop is None else drop[0] >= np.float32(drop[1])
    near = np.abs(s1[:, j]) < KINK_MARGIN * 2 * h * moves  # strict: x[n, i] = 0 moves nothing
    return (near & live[:, j]).any(axis=0)


def entry_errors(ga, d1, d2, jmax, kinks, h: float, resolution: float) -> dict:
    """Table 1 numbers and the verdict's floored error over the (K,) entries not at a kink."""
    noise = noise_estimate(d1, d2, jmax, h)
    keep = ~kinks
    ga, gn, noise = ga[keep], d1[keep], noise[keep]
    diff = np.abs(ga - gn)

    def worst(values) -> float:  # every entry skipped: nothing measured, nothing wrong
        return float(values.max()) if values.size else 0.0

    return {
        "coords": len(kinks),
        "skipped": int(kinks.sum()),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "max_abs_diff": worst(diff),
        "max_rel_error": worst(rel_error(ga, gn)),
        "noise": worst(noise),
        "floored_rel_error": worst(floored_rel_error(ga, gn, noise, resolution)),
    }


def compare(params, x, y, lam: float, h: float, coords=None, drop=None,
            smoothing: float = 0.0, resolution: float = RESOLUTION) -> dict[str, dict]:  # fmt: skip
    """Per parameter: coords, skipped (at a ReLU kink), mean/max abs difference, max relative
    error, noise (largest error estimate of gn) and floored_rel_error (the verdict's measure).

    params: a stack of T = 1; x (N, D), y (N,). coords: None for every entry, else {key: list
    of index tuples}. drop: (u, p), uniform draws u (N, H) and a drop probability p that fix
    one dropout mask for both gradients. smoothing: the loss's label smoothing
    (optim.label_smoothing). Every number leaves the skipped out.
    """
    u, p = drop if drop is not None else (None, 0.0)
    _, _, grads = network.loss_and_grads(params, x, y, lam, p, u, smoothing)

    def cost():
        return float(network.cost(params, x, y, lam, p, u, smoothing)[0])

    out = {}
    for key in PARAM_KEYS:
        entries = coords[key] if coords else list(np.ndindex(params[key].shape))
        kinks = kink_entries(key, entries, params, x, drop, h)
        ga = np.array([grads[key][i] for i in entries], dtype=np.float64)
        d1, d2, jmax = np.array([probe(cost, params[key], i, h) for i in entries]).T
        out[key] = entry_errors(ga, d1, d2, jmax, kinks, h, resolution)
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
    # one fixed inverted-dropout mask for the dropout path: draws as the training step's
    drop = (rngs["dropout"].random((gc.samples, gc.hidden), dtype=np.float32), gc.dropout)
    run = partial(compare, h=gc.h, smoothing=cfg.optim.label_smoothing, resolution=gc.resolution)
    rows = []
    for lam in gc.lambdas:
        for problem, result in (("reduced", run(reduced, xr, yr, lam)),
                                ("reduced_dropout", run(reduced, xr, yr, lam, drop=drop)),
                                ("full_size", run(full, xf, yf, lam, coords=coords))):  # fmt: skip
            rows += [{"problem": problem, "lambda": lam, "param": k, **v}
                     for k, v in result.items()]  # fmt: skip
    return rows, summarize(rows, gc)


def _worst(rows, problem: str, field: str) -> dict[str, float]:
    return {k: max(r[field] for r in rows if r["problem"] == problem and r["param"] == k)
            for k in PARAM_KEYS}  # fmt: skip


def _section(rows, problem: str, tolerance: float) -> dict:
    """One problem's worst numbers over the lambdas; passed: its floored error <= tolerance."""
    floored = _worst(rows, problem, "floored_rel_error")
    return {"max_rel_error": _worst(rows, problem, "max_rel_error"),
            "floored_rel_error": floored, "skipped": _worst(rows, problem, "skipped"),
            "passed": max(floored.values()) <= tolerance}  # fmt: skip


def summarize(rows: list[dict], gc) -> dict:
    """summary.json's numbers. max_rel_error is the study's measure (reported); the verdicts
    compare floored_rel_error with the tolerances (see the module docstring)."""
    red = _section(rows, "reduced", gc.tolerance)
    drop = _section(rows, "reduced_dropout", gc.tolerance)
    full = _section(rows, "full_size", gc.full_size_tolerance)
    return {
        "max_rel_error": red["max_rel_error"],
        "mean_abs_diff": _worst(rows, "reduced", "mean_abs_diff"),
        "floored_rel_error": red["floored_rel_error"],
        "skipped": red["skipped"],
        "tolerance": gc.tolerance,
        "resolution": gc.resolution,
        "h": gc.h,
        "lambdas": list(gc.lambdas),
        "passed": red["passed"] and drop["passed"] and full["passed"],
        "dropout": {"p": gc.dropout, **drop},
        "full_size": {**full, "coords_per_param": gc.full_size_coords,
                      "samples": gc.full_size_samples, "tolerance": gc.full_size_tolerance},
    }  # fmt: skip


def print_tables(rows: list[dict], lambdas) -> None:
    shown = COLUMNS[3:]
    for problem in ("reduced", "reduced_dropout", "full_size"):
        for lam in lambdas:
            sel = [r for r in rows if r["problem"] == problem and r["lambda"] == lam]
            console.table(f"gradient check, {problem} problem, lambda = {lam}", ["param", *shown],
                          [[r["param"], *(r[c] for c in shown)] for r in sel])  # fmt: skip


def verdict_line(result: dict) -> str:
    """The worst floored error of each problem beside its tolerance, and the kinks skipped."""
    sections = (("reduced", result, result["tolerance"]),
                ("dropout", result["dropout"], result["tolerance"]),
                ("full size", result["full_size"], result["full_size"]["tolerance"]))  # fmt: skip
    parts = [f"{name} {max(s['floored_rel_error'].values()):.2g} "
             f"({'<=' if s['passed'] else '>'} {tol:g})" for name, s, tol in sections]  # fmt: skip
    skipped = sum(sum(s["skipped"].values()) for _, s, _ in sections)
    verdict = "passed" if result["passed"] else "FAILED"
    return (f"gradient check {verdict}: floored relative error {', '.join(parts)}; "
            f"{skipped} entries skipped at ReLU kinks")  # fmt: skip


def run_gradcheck(cfg, config_text: str, out, name: str) -> dict:
    started = time.perf_counter()
    rows, result = check(cfg)  # before the run dir: a data error leaves nothing behind
    with runs.open_run(out, "gradcheck", name, cfg, config_text, started) as run:
        runs.write_csv(run.path / "gradcheck.csv", COLUMNS, rows)
        run.summary.update(result)
    print_tables(rows, cfg.gradcheck.lambdas)
    console.log(f"{verdict_line(result)}; run dir: {run.path}")
    return run.summary
