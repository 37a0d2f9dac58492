"""Collecting a search: results.csv, best.yaml, search.png and summary.json from its trials,
the search's time split, `--repeat-best` (the best trial retrained over K seeds) and the
console tables.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

from .. import config as config_mod
from .. import console, plots, runs
from ..train import run_repeat
from .plan import collect_rows, load_plan, trial_dir
from .trials import fmt_value, sweep_locks

# ---------------------------------------------------------------- collect


def result_columns(space_keys: list[str]) -> list[str]:
    return ["rank", "trial", *space_keys, "val_accuracy", "best_val_accuracy",
            "ensemble_val_accuracy", "train_accuracy", "status", "seconds", "init_seed",
            "error"]  # fmt: skip


def write_results(path: Path, rows: list[dict], keys: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result_columns(keys))
    for r in rows:
        flat = {**r, **r["params"]}
        writer.writerow(["" if flat.get(c) is None else flat[c] for c in result_columns(keys)])
    runs.atomic_write(path / "results.csv", buf.getvalue())


def collect(path: Path, started: float | None = None, work: dict | None = None) -> dict:
    """Merge the trials into results.csv, best.yaml, search.png and summary.json.

    `seconds` is the wall time of this command (from `started`, a perf_counter value) and
    `timing` splits it: `data` (preparing the splits in this process), `trials` (the trials this
    process ran, each its summary's `seconds`), `jobs` (waiting for --jobs worker processes),
    `collect` (this merge) and `other` (planning, claims, logging); they add up to `seconds`.
    `work` is what this command ran (from `run_shard` or `run_workers`; None: nothing).

    `trial_seconds` adds up the seconds of every trial of the search, wherever and whenever it
    ran. In one process that ran them all it is `timing.trials` <= `seconds`. With N worker
    processes (--jobs, shards, SLURM tasks) working side by side it can be up to N times
    `seconds`, and it includes trials finished by earlier commands (before a --resume, or all of
    them for `search collect`). `workers` says how many processes ran this command's trials (1:
    this one, N: --jobs N, 0: none) and `ran_here` how many trials they ran.
    """
    begun = time.perf_counter()
    started = begun if started is None else started
    plan = load_plan(path)
    sweep_locks(path)  # left by processes killed while holding a claim
    runs.remove_stale_temps(path)  # and their half-written files (those of live writers stay)
    search = plan["config"]["search"]
    keys = list(search["space"])
    rows = collect_rows(path)
    write_results(path, rows, keys)
    best = write_best(path, [r for r in rows if r["status"] == "completed"], search)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "diverged")}
    summary = runs.base_summary("search", path, plan["config"]["seed"])
    summary.update(
        status="completed" if len(rows) == sum(counts.values()) else "running",
        **search_times(rows, work, started, begun),
        trials=len(rows), completed=counts["completed"],
        failed=counts["failed"] + counts["diverged"], diverged=counts["diverged"],
        pending=len(rows) - sum(counts.values()), metric=search["metric"],
        best=best_entry(best, search["metric"]),
        refined_from=plan["refined_from"], best_repeat=best and best_repeat(path, best),
    )  # fmt: skip
    runs.write_json(path / "summary.json", summary)
    return {"summary": summary, "rows": rows, "keys": keys}


def write_best(path: Path, done: list[dict], search: dict) -> dict | None:
    """best.yaml (the config of the best of the ranked completed trials `done`, under a header)
    and search.png; return the best trial's row, None when no trial completed."""
    if not done:
        return None
    best = done[0]
    best_cfg = (trial_dir(path, best["trial"]) / "config.yaml").read_text()
    runs.atomic_write(path / "best.yaml", best_yaml_header(path, best, search) + best_cfg)
    plots.search_scatter(done, search, path / "search.png")
    return best


def best_entry(best: dict | None, metric: str) -> dict | None:
    """The summary's `best`: the best trial, its values and accuracies (None: none completed)."""
    return best and {"trial": best["trial"], "params": best["params"],
                     "val_accuracy": best["val_accuracy"], metric: best[metric]}  # fmt: skip


def search_times(rows: list[dict], work: dict | None, started: float, begun: float) -> dict:
    """`seconds`, `trial_seconds`, `timing`, `workers` and `ran_here` (see `collect`)."""
    now, work = time.perf_counter(), work or {"workers": 0, "ran": 0}
    parts = {"data": work.get("data", 0.0), "trials": work.get("trials", 0.0),
             "jobs": work.get("jobs", 0.0), "best_repeat": work.get("best_repeat", 0.0),
             "collect": now - begun}  # fmt: skip
    timing = {k: round(v, 3) for k, v in parts.items()}
    seconds = round(now - started, 3)
    timing["other"] = round(seconds - sum(timing.values()), 3)  # the rest: they add up exactly
    return {"seconds": seconds, "trial_seconds": round(sum(r["seconds"] or 0 for r in rows), 3),
            "timing": timing, "workers": work["workers"], "ran_here": work["ran"]}  # fmt: skip


# ---------------------------------------------------------------- the best trial


BEST_REPEAT = "best-repeat"


def retrain_best(path: Path, repeat: int) -> float:
    """`--repeat-best K`: train the best trial's config over K initialisation seeds into
    `best-repeat/` (an ordinary `train --repeat` directory); return the seconds it took.

    The best of many noisy trials overstates its own setting (it won partly by luck); the mean
    of K fresh seeds with its std does not, and the std is the seed noise of the search's
    accuracies. A finished best-repeat/ of the same trial and K is kept.
    """
    done = [r for r in collect_rows(path) if r["status"] == "completed"]
    if not done:
        return 0.0
    found = best_repeat(path, done[0])
    if found is not None and found["repeat"] == repeat:
        return 0.0
    start = time.perf_counter()
    shutil.rmtree(path / BEST_REPEAT, ignore_errors=True)  # another trial's, or unfinished
    source = trial_dir(path, done[0]["trial"]) / "config.yaml"
    cfg = config_mod.load_config(source)
    console.log(f"retraining the best trial ({done[0]['trial']:03d}) over {repeat} seeds")
    with console.quiet():  # its table prints with the search's results (collect_and_show)
        run_repeat(cfg, source.read_text(), str(source), path, "best", repeat,
                   into=path / BEST_REPEAT)  # fmt: skip
    return time.perf_counter() - start


def best_repeat(path: Path, best: dict) -> dict | None:
    """The finished retraining of `best` (retrain_best): its accuracies' mean, std, values."""
    target = path / BEST_REPEAT
    try:
        s = json.loads((target / "summary.json").read_text())
        same = (target / "config.yaml").read_text() == \
            (trial_dir(path, best["trial"]) / "config.yaml").read_text()  # fmt: skip
    except (OSError, ValueError):
        return None
    if s.get("status") != "completed" or not same:
        return None
    return {"run_dir": str(target), "trial": best["trial"], "repeat": s["repeat"],
            **{k: s[k] for k in ("accuracy", "accuracy_std", "accuracy_runs")}}  # fmt: skip


def best_yaml_header(path: Path, best: dict, search: dict) -> str:
    vals = ", ".join(f"{k}={fmt_value(v)}" for k, v in best["params"].items())
    return (f"# Best trial {best['trial']:03d} of the search {path}: {vals}\n"
            f"# {search['metric']} = {best[search['metric']]:.4f}. Train it again with:\n"
            f"#   cifar2l train {path / 'best.yaml'}\n")  # fmt: skip


# ---------------------------------------------------------------- console


def print_top(result: dict, k: int, title: str) -> None:
    keys = result["keys"]
    done = [r for r in result["rows"][:k] if r["status"] == "completed"]
    metrics = ["val_accuracy", "best_val_accuracy", "train_accuracy"]
    if any(r["ensemble_val_accuracy"] is not None for r in done):
        metrics.insert(2, "ensemble_val_accuracy")
    rows = [[r["rank"], r["trial"], *[r["params"][key] for key in keys], *[r[m] for m in metrics]]
            for r in done]  # fmt: skip
    console.table(title, ["rank", "trial", *keys, *metrics], rows)


def collect_and_show(path: Path, started: float | None = None, work: dict | None = None) -> dict:
    result = collect(path, started, work)
    k = load_plan(path)["config"]["search"]["top_k"]
    print_top(result, k, f"top {k} of {result['summary']['trials']} trials ({path})")
    s = result["summary"]
    console.log(f"completed {s['completed']}, failed {s['failed']}, pending {s['pending']}; "
                f"results: {path / 'results.csv'}")  # fmt: skip
    again = s.get("best_repeat")
    if again:
        console.table(f"best trial {again['trial']:03d} retrained over {again['repeat']} seeds "
                      f"({again['run_dir']})", ["split", "mean", "std"],
                      [[k, v, again["accuracy_std"][k]] for k, v in again["accuracy"].items()])
    return s
