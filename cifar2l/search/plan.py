"""The plan of a search and its directory: sampling the trials' values, narrowing a space to
an earlier search's best trials (refine), laying out and reading `search.json`, and the state
and results row of each trial on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import config as config_mod
from .. import runs
from ..errors import ConfigError, RunError
from ..rngs import init_seeds

PLAN = "search.json"
FINISHED = ("completed", "failed", "diverged")


# ---------------------------------------------------------------- sampling


def sample_value(dist, rng: np.random.Generator):
    lo_hi = dist.args
    if dist.kind == "log_uniform":
        return float(10 ** rng.uniform(np.log10(lo_hi[0]), np.log10(lo_hi[1])))
    if dist.kind == "uniform":
        return float(rng.uniform(lo_hi[0], lo_hi[1]))
    if dist.kind == "int_uniform":
        return int(rng.integers(lo_hi[0], lo_hi[1], endpoint=True))
    return dist.args[int(rng.integers(len(dist.args)))]


def sample_trials(space: dict, n: int, seed: int) -> list[dict]:
    """n trials of values, drawn in trial order, keys in the order of the space."""
    rng = np.random.default_rng(seed)
    return [{key: sample_value(dist, rng) for key, dist in space.items()} for _ in range(n)]


# ---------------------------------------------------------------- plan


def trial_raw(base: dict, params: dict, init_seed: int) -> dict:
    """The base config (without its search section) with a trial's values and init seed."""
    raw = {k: v for k, v in base.items() if k != "search"}
    for key, value in params.items():
        raw = config_mod.set_dotted(raw, key.split("."), value, f"search.space.{key}")
    return {**raw, "init_seed": init_seed}


def make_plan(cfg, source: str) -> dict:
    """Fix the trials of a search (refining the space first when asked)."""
    search = cfg.search
    if not search.space:
        raise ConfigError(f"{source}: search.space: empty; name at least one key to search")
    refined = None
    if search.refine_from:
        space, refined = refine_space(search.space, Path(search.refine_from), search.refine_top,
                                      search.metric)  # fmt: skip
        search = search.model_copy(update={"space": space})
        cfg = cfg.model_copy(update={"search": search})
    base = cfg.to_dict()
    values = sample_trials(search.space, search.trials, search.seed)
    seeds = init_seeds(search.seed, search.trials)
    for params, seed in zip(values, seeds, strict=True):  # every trial valid, before any work
        config_mod.validate(trial_raw(base, params, seed), f"{source} (search.space)")
    trials = [{"index": i, "params": p, "init_seed": s}
              for i, (p, s) in enumerate(zip(values, seeds, strict=True))]  # fmt: skip
    return {"version": 1, "config": base, "refined_from": refined, "trials": trials}


def refine_space(space: dict, run_dir: Path, top: int, metric: str) -> tuple[dict, dict]:
    """Narrow each (log-)uniform range to the span of the best `top` trials of an earlier run."""
    rows = [r for r in collect_rows(run_dir) if r["status"] == "completed"]
    best = sorted(rows, key=lambda r: (-r[metric], r["trial"]))[:top]
    if not best:
        raise RunError(f"{run_dir}: no completed trials to refine from")
    new, ranges = dict(space), {}
    for key, dist in space.items():
        if dist.kind in ("log_uniform", "uniform") and all(key in r["params"] for r in best):
            vals = [r["params"][key] for r in best]
            ranges[key] = [min(vals), max(vals)]
            new[key] = config_mod.Distribution(**{dist.kind: ranges[key]})
    info = {"run_dir": str(run_dir), "top_trials": [r["trial"] for r in best], "ranges": ranges}
    return new, info


def create_search_dir(path: Path, plan: dict, config_text: str) -> bool:
    """Lay out a search directory once; True if this call created it.

    Safe when many shards start at the same moment: the plan is published with os.link, which
    fails for every process but the first. Later arrivals check that their plan is the same.
    """
    runs.check_path_length(path, "--dir")
    runs.check_writable(path.parent, "--dir")
    text = json.dumps(plan, indent=1)  # unsorted: results.csv keeps the order of the space
    with runs.writing(path / PLAN):  # --dir a file, read-only, or a full disk: one line
        if path.exists() and not path.is_dir():
            raise RunError(f"--dir {path}: not a directory")
        path.mkdir(parents=True, exist_ok=True)
        (path / "trials").mkdir(exist_ok=True)
        fd, tmp = runs.temp_file(path, PLAN)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    try:
        os.link(tmp, path / PLAN)
    except FileExistsError:
        if load_plan(path) != json.loads(text):
            raise ConfigError(f"{path}: holds a different search (other config or values); "
                              "use a new --dir") from None  # fmt: skip
        return False
    finally:
        os.unlink(tmp)
    runs.atomic_write(path / "config.yaml", config_text)
    runs.write_command(path)
    return True


def load_plan(path: Path) -> dict:
    try:
        return json.loads((path / PLAN).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not a search directory (no {PLAN})") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{path / PLAN}: unreadable ({e})") from None


# ---------------------------------------------------------------- trials on disk


def trial_dir(path: Path, index: int) -> Path:
    return path / "trials" / f"{index:03d}"


def trial_status(tdir: Path) -> str | None:
    try:
        return json.loads((tdir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def collect_rows(path: Path) -> list[dict]:
    """One row per trial of the plan, ranked: completed by the metric, then the rest by index."""
    plan = load_plan(path)
    metric = plan["config"]["search"]["metric"]
    rows = [trial_row(path, t) for t in plan["trials"]]
    done = sorted((r for r in rows if r["status"] == "completed"),
                  key=lambda r: (-r[metric], r["trial"]))  # fmt: skip
    rest = [r for r in rows if r["status"] != "completed"]
    for rank, r in enumerate(done + rest, start=1):
        r["rank"] = rank
    return done + rest


def trial_row(path: Path, trial: dict) -> dict:
    tdir = trial_dir(path, trial["index"])
    try:
        s = json.loads((tdir / "summary.json").read_text())
    except (OSError, ValueError):
        s = {"status": "pending"}
    acc = s.get("accuracy", {})
    return {
        "trial": trial["index"], "params": trial["params"], "init_seed": trial["init_seed"],
        "val_accuracy": acc.get("val"), "best_val_accuracy": s.get("best_val_accuracy"),
        "ensemble_val_accuracy": s.get("ensemble", {}).get("accuracy", {}).get("val"),
        "train_accuracy": acc.get("train"), "status": s.get("status", "pending"),
        "seconds": s.get("seconds"), "error": s.get("error", ""),
    }  # fmt: skip
