"""The plan of a search and its directory: sampling the trials' values, narrowing a space to
an earlier search's best trials (refine), laying out and reading `search.json`, and the state
and results row of each trial on disk.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import get_args

import numpy as np

from .. import config as config_mod
from .. import console, runs
from ..errors import ConfigError, RunError, clip
from ..rngs import init_seeds
from .grid import check_size, grid_axes, grid_points

PLAN = "search.json"
FINISHED = ("completed", "failed", "diverged")
RESULTS = ("completed", "diverged")  # finished for good: a failed trial is retried (trials.py)
METRICS = get_args(config_mod.SearchConfig.model_fields["metric"].annotation)


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


def plan_values(space: dict, n: int, seed: int, source: str) -> list[dict]:
    """The values of every trial, keys in the order of the space. Without grid axes: n random
    draws (sample_trials). With them: every grid point (the last axis fastest) with n draws
    of the random axes each, drawn in trial order from one stream; grid axes only: one trial
    a point (n unused)."""
    axes = grid_axes(space)
    if not axes:
        return sample_trials(space, n, seed)
    randoms = {k: d for k, d in space.items() if k not in axes}
    per = n if randoms else 1
    check_size(axes, per, f"{source}: search.space")
    points = grid_points(axes)
    draws = sample_trials(randoms, len(points) * per, seed)
    return [{k: {**points[i // per], **d}[k] for k in space} for i, d in enumerate(draws)]


def unused_trials(search, n_trials: int) -> str:
    """The warning for a search.trials set in the config but not used (grid axes only). Not
    for the default 16: every dumped config (a search's config.yaml, best.yaml) states it."""
    grid_only = all(d.kind == "grid" for d in search.space.values())
    default = config_mod.SearchConfig.model_fields["trials"].default
    if not grid_only or search.trials in (default, n_trials):
        return ""
    return (f"search.trials {search.trials} is not used: search.space has grid axes only, "
            f"so the search runs each of its {n_trials} grid points once")  # fmt: skip


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
        if grid_axes(space):
            console.log(f"refine: grid axes are run as given, not refined: "
                        f"{', '.join(grid_axes(space))}")  # fmt: skip
    base = cfg.to_dict()
    values = plan_values(search.space, search.trials, search.seed, source)  # sized first
    check_choices(base, search.space, source)
    seeds = init_seeds(search.seed, len(values))
    if unused_trials(search, len(values)):
        console.warn(unused_trials(search, len(values)))
    for i, (params, seed) in enumerate(zip(values, seeds, strict=True)):  # before any work
        trial = config_mod.validate(trial_raw(base, params, seed), f"{source} (search.space)")
        check_metric(trial, search.metric, source, i)
    trials = [{"index": i, "params": p, "init_seed": s}
              for i, (p, s) in enumerate(zip(values, seeds, strict=True))]  # fmt: skip
    return {"version": 1, "config": base, "refined_from": refined, "trials": trials}


def check_choices(base: dict, space: dict, source: str) -> None:
    """Every value of a `choice`, not only those the seed happens to draw: `choice: [0, 8]`
    for model.hidden passed whenever no trial drew the 0 (and failed with another seed).
    Every value of a grid too, on its own: a clearer error than that of its first trial."""
    for key, dist in space.items():
        if dist.kind in ("choice", "grid"):
            for value in dist.args:
                config_mod.validate(trial_raw(base, {key: value}, 0), f"{source} (search.space)")


def check_metric(trial, metric: str, source: str, index: int) -> None:
    """Every trial must be able to have the ranking metric: a trial without snapshots has no
    ensemble accuracy, and ranking it anyway would compare it with nothing (config.py checks
    the base config; the searched values may take the snapshots away)."""
    if metric == "ensemble_val_accuracy" and not trial.train.snapshots:
        raise ConfigError(f"{source}: search.metric: ensemble_val_accuracy needs "
                          f"train.snapshots in every trial; trial {index:03d} of "
                          "search.space has none")  # fmt: skip


def refine_space(space: dict, run_dir: Path, top: int, metric: str) -> tuple[dict, dict]:
    """Narrow each (log-)uniform range to the span of the best `top` trials of an earlier run
    (by `metric`: trials without it, e.g. without snapshots, cannot be among the best)."""
    rows = collect_rows(run_dir, metric)
    best = [r for r in rows if rankable(r, metric)][:top]
    if not best:
        if any(r["status"] == "completed" for r in rows):
            raise RunError(f"{run_dir}: no completed trial has {metric} (search.metric) to "
                           "refine from")  # fmt: skip
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
    A directory that holds anything else (another run, another command's files) is refused
    before anything is written into it (`check_search_dir`).
    """
    runs.check_path_length(path, "--dir")
    check_search_dir(path)
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
            raise ConfigError(f"{path}: holds a different search "
                              f"({plan_difference(load_plan(path), json.loads(text))}); "
                              "use a new --dir") from None  # fmt: skip
        return False
    finally:
        os.unlink(tmp)
    runs.atomic_write(path / "config.yaml", config_text)
    runs.write_command(path)
    return True


def plan_difference(old: dict, new: dict) -> str:
    """What makes two plans differ, in words: the searched keys first (another grid)."""
    spaces = old["config"]["search"]["space"], new["config"]["search"]["space"]
    keys = [k for k in {**spaces[0], **spaces[1]} if spaces[0].get(k) != spaces[1].get(k)]
    if keys:
        return f"other search.space values for {', '.join(clip(k, 40) for k in keys[:4])}"
    if list(spaces[0]) != list(spaces[1]):  # a grid's order is the order of its trials
        return "the search.space keys in another order"
    return "other config or values"


def check_search_dir(path: Path) -> None:
    """ConfigError unless `path` is free for a search: missing, empty, a search directory
    (its plan is compared later), or one that a shard starting at the same moment is laying
    out (an empty trials/ and the plan's temp file, before it is linked)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise RunError(f"--dir {path}: not a directory")  # exit 1, as `--out` naming a file
    if (path / PLAN).is_file():
        return
    try:
        names = sorted(p.name for p in path.iterdir())
        trials = path / "trials"
        if trials.is_dir() and any(trials.iterdir()):
            names.append("trials/...")
    except OSError as e:
        raise ConfigError(f"--dir {path}: cannot be read ({e.strerror})") from None
    if all(n == "trials" or n.startswith(f".{PLAN}.") for n in names):
        return
    raise ConfigError(f"--dir {path}: {what_holds(path, names)}, not a search directory; "
                      "a search never writes into another run's directory: use a new "
                      "--dir")  # fmt: skip


def what_holds(path: Path, names: list[str]) -> str:
    """`holds a `train` run` (from its summary.json), else `holds N files (a, b, ...)`."""
    try:
        command = json.loads((path / "summary.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    if isinstance(command, str):
        return f"holds a `{command[:40]}` run"
    shown = ", ".join(n[:40] for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return f"holds {len(names)} other entries ({shown})"


def load_plan(path: Path) -> dict:
    try:
        plan = json.loads((path / PLAN).read_bytes())
    except FileNotFoundError:
        raise RunError(f"{path}: not a search directory (no {PLAN})") from None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested 100000 deep
        raise RunError(f"{path / PLAN}: unreadable ({e})") from None
    problem = plan_problem(plan)
    if problem:
        raise RunError(f"{path / PLAN}: not a search plan ({problem})")
    return plan


def plan_problem(plan) -> str:
    """What is wrong with the shape of a loaded plan, "" when nothing: a damaged or foreign
    search.json must be one clear error, not a KeyError deep in collect."""
    config = plan.get("config") if isinstance(plan, dict) else None
    search = config.get("search") if isinstance(config, dict) else None
    if not isinstance(search, dict):
        return "no config.search section"
    if search.get("metric") not in METRICS or not isinstance(search.get("space"), dict):
        return "config.search needs a known metric and a space"
    trials = plan.get("trials")
    if not isinstance(trials, list) or not trials:
        return "no trials"
    for i, t in enumerate(trials):
        ok = isinstance(t, dict) and t.get("index") == i and isinstance(t.get("params"), dict)
        if not (ok and isinstance(t.get("init_seed"), int)):
            return f"trial {i} is not {{index: {i}, params, init_seed}}"
    return ""


# ---------------------------------------------------------------- trials on disk


def trial_config(path: Path, index: int) -> str:
    """A trial's config.yaml; rebuilt from the plan when it is lost (the same text: the trial
    wrote dump_yaml of this config)."""
    try:
        return (trial_dir(path, index) / "config.yaml").read_text()
    except (OSError, ValueError):
        plan = load_plan(path)
        t = plan["trials"][index]
        raw = trial_raw(plan["config"], t["params"], t["init_seed"])
        return config_mod.dump_yaml(config_mod.validate(raw, str(path / PLAN)))


def trial_dir(path: Path, index: int) -> Path:
    return path / "trials" / f"{index:03d}"


def read_summary(tdir: Path) -> tuple[dict | None, str]:
    """(a trial's summary, "") or (None, why it is unusable; "" when it has none yet).

    A damaged summary (corrupt, not an object, completed without its accuracies) counts as no
    summary: the trial is pending and runs again, and collect reports why.
    """
    try:
        s = json.loads((tdir / "summary.json").read_bytes())
    except FileNotFoundError:  # not started yet, or a run dir that lost its summary
        return None, "summary.json missing" if (tdir / "config.yaml").exists() else ""
    except (OSError, ValueError, RecursionError) as e:  # also UnicodeDecodeError
        return None, f"summary.json unreadable ({str(e)[:80]})"
    if not isinstance(s, dict) or not isinstance(s.get("status"), str):
        return None, "summary.json unreadable (not a run summary)"
    accuracies = (dig(s, "accuracy", "val"), dig(s, "accuracy", "train"),
                  dig(s, "best_val_accuracy"))  # fmt: skip
    if s["status"] == "completed" and None in accuracies:
        return None, "summary.json damaged (completed without its accuracies)"
    return s, ""


def dig(obj, *keys):
    """The finite number at obj[k1][k2]..., None when a level or the number is missing."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    number = isinstance(obj, (int, float)) and not isinstance(obj, bool)
    return obj if number and math.isfinite(obj) else None


def trial_status(tdir: Path) -> str | None:
    s, _ = read_summary(tdir)
    return None if s is None else s["status"]


def rankable(row: dict, metric: str) -> bool:
    return row["status"] == "completed" and row[metric] is not None


def collect_rows(path: Path, metric: str | None = None) -> list[dict]:
    """One row per trial of the plan, ranked: completed by the metric (the search's unless
    given), then completed ones without it, then the rest, each by index."""
    plan = load_plan(path)
    metric = metric or plan["config"]["search"]["metric"]
    rows = [trial_row(path, t, metric) for t in plan["trials"]]
    done = sorted((r for r in rows if rankable(r, metric)),
                  key=lambda r: (-r[metric], r["trial"]))  # fmt: skip
    rest = sorted((r for r in rows if not rankable(r, metric)),
                  key=lambda r: (r["status"] != "completed", r["trial"]))  # fmt: skip
    for rank, r in enumerate(done + rest, start=1):
        r["rank"] = rank
    return done + rest


def trial_row(path: Path, trial: dict, metric: str) -> dict:
    s, problem = read_summary(trial_dir(path, trial["index"]))
    s = s or {"status": "pending", "error": problem}
    row = {
        "trial": trial["index"], "params": trial["params"], "init_seed": trial["init_seed"],
        "val_accuracy": dig(s, "accuracy", "val"),
        "best_val_accuracy": dig(s, "best_val_accuracy"),
        "ensemble_val_accuracy": dig(s, "ensemble", "accuracy", "val"),
        "tta_val_accuracy": dig(s, "tta", "accuracy", "val"),
        "average_val_accuracy": dig(s, "average", "accuracy", "val"),
        "train_accuracy": dig(s, "accuracy", "train"), "status": s["status"],
        "seconds": dig(s, "seconds"), "error": str(s.get("error", "")),
    }  # fmt: skip
    if row["status"] == "completed" and row[metric] is None:  # e.g. a trial without snapshots
        row["error"] = f"no {metric}: ranked after the trials that have it"
    return row
