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
from ..errors import RunError
from ..train import run_repeat
from .plan import FINISHED, collect_rows, load_plan, rankable, trial_config, trial_dir
from .trials import fmt_value, lock_path, shard_trials, sweep_locks

# ---------------------------------------------------------------- collect


def result_columns(space_keys: list[str]) -> list[str]:
    return ["rank", "trial", *space_keys, "val_accuracy", "best_val_accuracy",
            "ensemble_val_accuracy", "tta_val_accuracy", "average_val_accuracy",
            "train_accuracy", "status", "seconds", "init_seed", "error"]  # fmt: skip


def write_results(path: Path, rows: list[dict], keys: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result_columns(keys))
    for r in rows:
        flat = {**r, **r["params"]}
        writer.writerow(["" if flat.get(c) is None else runs.csv_cell(flat[c])
                         for c in result_columns(keys)])  # fmt: skip
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
    metric = search["metric"]
    best = write_best(path, [r for r in rows if rankable(r, metric)], search)
    summary = runs.base_summary("search", path, plan["config"].get("seed"))
    summary.update(
        **outcome(rows, metric, path), **search_times(rows, work, started, begun), metric=metric,
        best=best_entry(best, metric), refined_from=plan.get("refined_from"),
        best_repeat=best and best_repeat(path, best),
    )  # fmt: skip
    runs.write_json(path / "summary.json", summary)
    return {"summary": summary, "rows": rows, "keys": keys}


def outcome(rows: list[dict], metric: str, path: Path) -> dict:
    """The summary's status and counts. While trials are pending: `running` when a process
    works on one of them, else `interrupted` (stopped or killed; --resume continues it). Else
    `failed` when any trial failed (the command exits 1 and --resume retries them), else
    `completed`. Diverged trials are a result (that setting diverges), not a failure: never
    retried."""
    counts = {s: sum(r["status"] == s for r in rows) for s in FINISHED}
    pending = [r["trial"] for r in rows if r["status"] not in FINISHED]
    status = ("running" if worked_on(path, pending) else "interrupted") if pending else \
        "failed" if counts["failed"] else "completed"  # fmt: skip
    unranked = sum(r["status"] == "completed" and r[metric] is None for r in rows)
    return {"status": status, "trials": len(rows), **counts, "pending": len(pending),
            "without_metric": unranked,
            "failures": failure_groups([r for r in rows if r["status"] == "failed"])}  # fmt: skip


def worked_on(path: Path, pending: list[int]) -> bool:
    """Whether a live process holds one of the `pending` trials (its claim, or the trial's run
    directory). Where the system cannot tell (runs.locked is None), assume so: a search is
    called interrupted only when that is known."""
    held = [runs.locked(p) for i in pending
            for p in (lock_path(path, i), trial_dir(path, i)) if p.exists()]  # fmt: skip
    return any(h is not False for h in held)


def failure_groups(failed: list[dict]) -> list[dict]:
    """The distinct errors of the failed rows, in trial order, each with its trials."""
    groups: dict[str, list[int]] = {}
    for r in failed:
        groups.setdefault(shorten(r["error"] or "unknown error", 200), []).append(r["trial"])
    return [{"error": error, "trials": trials} for error, trials in groups.items()]


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- the command's outcome


def check_outcome(path: Path, part: tuple[int, int], summary: dict | None = None,
                  repeat_best: int = 1) -> None:  # fmt: skip
    """Raise a RunError (exit 1) when trials of shard `part` failed, or when --repeat-best
    found no best trial to retrain; `summary` is the collected search's (None: a shard)."""
    rows = collect_rows(path)
    mine = {t["index"] for t in shard_trials(load_plan(path)["trials"], part)}
    failed = [r for r in sorted(rows, key=lambda r: r["trial"])
              if r["trial"] in mine and r["status"] == "failed"]  # fmt: skip
    if failed:
        raise RunError(failed_message(path, part, failed, len(mine)))
    if summary is not None and repeat_best > 1 and summary["best"] is None:
        raise RunError(f"{path}: --repeat-best {repeat_best}: no trial completed with "
                       f"{summary['metric']} ({summary['diverged']} diverged, "
                       f"{summary['pending']} pending); nothing to retrain")  # fmt: skip


def failed_message(path: Path, part: tuple[int, int], failed: list[dict], total: int) -> str:
    """How many trials failed, the first two distinct reasons (bounded) and the command that
    retries them."""
    groups = failure_groups(failed)
    reasons = "; ".join(f"{shorten(g['error'], 120)} ({trial_list(g['trials'])})"
                        for g in groups[:2])  # fmt: skip
    if len(groups) > 2:
        reasons += f"; and {len(groups) - 2} other reasons"
    whole = part == (0, 1)
    shard = "" if whole else f" of shard {part[0]}/{part[1]}"
    again = f"cifar2l search --resume {path}" + ("" if whole else f" --shard {part[0]}/{part[1]}")
    return (f"{path}: {len(failed)} of {total} trials{shard} failed: {reasons}; once the cause "
            f"is fixed, retry them with: {again}")  # fmt: skip


def trial_list(trials: list[int]) -> str:
    shown = ", ".join(f"{t:03d}" for t in trials[:4])
    more = f" and {len(trials) - 4} more" if len(trials) > 4 else ""
    return f"trial{'s' * (len(trials) > 1)} {shown}{more}"


def write_best(path: Path, done: list[dict], search: dict) -> dict | None:
    """best.yaml (the config of the best of the ranked completed trials `done`, under a header)
    and search.png; return the best trial's row, None when no trial completed (then an
    earlier collect's best.yaml and search.png, now of no ranked trial, are removed)."""
    if not done:
        for stale in (path / "best.yaml", path / "search.png"):
            stale.unlink(missing_ok=True)
        return None
    best = done[0]
    best_cfg = trial_config(path, best["trial"])
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
    metric = load_plan(path)["config"]["search"]["metric"]
    done = [r for r in collect_rows(path) if rankable(r, metric)]
    if not done:  # nothing to retrain: check_outcome says so after collecting
        return 0.0
    found = best_repeat(path, done[0])
    if found is not None and found["repeat"] == repeat:
        return 0.0
    start = time.perf_counter()
    shutil.rmtree(path / BEST_REPEAT, ignore_errors=True)  # another trial's, or unfinished
    source = trial_dir(path, done[0]["trial"]) / "config.yaml"
    text = trial_config(path, done[0]["trial"])
    cfg = config_mod.validate(config_mod.parse_yaml(text, str(source)), str(source))
    console.log(f"retraining the best trial ({done[0]['trial']:03d}) over {repeat} seeds")
    with console.quiet():  # its table prints with the search's results (collect_and_show)
        run_repeat(cfg, text, str(source), path, "best", repeat,
                   into=path / BEST_REPEAT)  # fmt: skip
    return time.perf_counter() - start


def best_repeat(path: Path, best: dict) -> dict | None:
    """The finished retraining of `best` (retrain_best): its accuracies' mean, std, values."""
    target = path / BEST_REPEAT
    try:
        s = json.loads((target / "summary.json").read_text())
        same = (target / "config.yaml").read_text() == trial_config(path, best["trial"])
        if s.get("status") != "completed" or not same:
            return None
        return {"run_dir": str(target), "trial": best["trial"], "repeat": s["repeat"],
                **{k: s[k] for k in ("accuracy", "accuracy_std", "accuracy_runs")}}  # fmt: skip
    except (OSError, ValueError, KeyError, AttributeError):  # damaged: retrained when asked
        return None


def best_yaml_header(path: Path, best: dict, search: dict) -> str:
    vals = ", ".join(f"{k}={fmt_value(v)}" for k, v in best["params"].items())
    return (f"# Best trial {best['trial']:03d} of the search {path}: {vals}\n"
            f"# {search['metric']} = {best[search['metric']]:.4f}. Train it again with:\n"
            f"#   cifar2l train {Path(path).absolute() / 'best.yaml'}\n")  # fmt: skip


# ---------------------------------------------------------------- console


def print_top(result: dict, k: int, title: str) -> None:
    """The top k completed trials (none completed: no table); a missing metric shows as such."""
    keys = result["keys"]
    done = [r for r in result["rows"][:k] if r["status"] == "completed"]
    if not done:
        return
    metrics = ["val_accuracy", "best_val_accuracy", "train_accuracy"]
    for m in ("ensemble_val_accuracy", "tta_val_accuracy", "average_val_accuracy"):
        if any(r.get(m) is not None for r in done):
            metrics.insert(-1, m)
    rows = [[r["rank"], r["trial"], *[r["params"][key] for key in keys],
             *["missing" if r[m] is None else r[m] for m in metrics]] for r in done]  # fmt: skip
    console.table(title, ["rank", "trial", *keys, *metrics], rows)


def collect_and_show(path: Path, started: float | None = None, work: dict | None = None) -> dict:
    result = collect(path, started, work)
    k = load_plan(path)["config"]["search"].get("top_k", 4)
    print_top(result, k, f"top {k} of {result['summary']['trials']} trials ({path})")
    for r in result["rows"]:  # a damaged summary: the trial counts as pending and runs again
        if r["status"] == "pending" and r["error"]:
            console.warn(f"trial {r['trial']:03d}: {r['error']}; it runs again on --resume")
    s = result["summary"]
    console.log(f"completed {s['completed']}, failed {s['failed']}, pending {s['pending']}, "
                f"diverged {s['diverged']}; results: {path / 'results.csv'}")  # fmt: skip
    again = s.get("best_repeat")
    if again:
        console.table(f"best trial {again['trial']:03d} retrained over {again['repeat']} seeds "
                      f"({again['run_dir']})", ["split", "mean", "std"],
                      [[k, v, again["accuracy_std"][k]] for k, v in again["accuracy"].items()])
    return s
