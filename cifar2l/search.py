"""Random search over any config keys: trials, shards, parallel workers, resume, collect, refine.

A search directory holds `search.json` (the plan: base config, every trial's values and
initialisation seed), `trials/<NNN>/` (one ordinary train run directory per trial) and, after
`collect`, `results.csv`, `best.yaml`, `search.png` and `summary.json`.

The plan is fixed when the directory is created, so every process that works on the search
(shards, workers, resubmitted jobs) runs the same trials with the same values. A trial is claimed
with an exclusive file lock, which the operating system releases when its process dies: no trial
runs twice at once, and an interrupted one continues from its checkpoint (or runs again).
Trials that differ only in per-trial settings train together as one wide network (fused.py).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import checkpoint, console, data, fused, plots, runs
from . import config as config_mod
from .errors import ConfigError, DivergedError, RunError
from .rngs import make_rngs
from .train import METRIC_COLUMNS, check_batch_size, finish_run, train_run

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


def init_seeds(seed: int, n: int) -> list[int]:
    """One initialisation seed per trial, spawned from the search seed."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


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
    runs.check_writable(path.parent)
    path.mkdir(parents=True, exist_ok=True)
    (path / "trials").mkdir(exist_ok=True)
    text = json.dumps(plan, indent=1)  # unsorted: results.csv keeps the order of the space
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


# ---------------------------------------------------------------- running trials


def trial_dir(path: Path, index: int) -> Path:
    return path / "trials" / f"{index:03d}"


def trial_status(tdir: Path) -> str | None:
    try:
        return json.loads((tdir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def claim(path: Path, index: int):
    """Yield True when this process holds trial `index` (lock released on exit or death)."""
    lock = path / "trials" / f"{index:03d}.lock"
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class DataCache:
    """Prepared splits per (data section, dtype): trials normally share one."""

    def __init__(self):
        self._prepared = {}

    def get(self, cfg):
        key = (json.dumps(cfg.data.model_dump(), sort_keys=True), cfg.dtype, cfg.seed)
        if key not in self._prepared:
            self._prepared[key] = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
        return self._prepared[key]


def fresh_trial(path: Path, trial: dict, base: dict):
    """An empty trial dir (leftovers of an interrupted attempt removed), its config and text."""
    tdir = trial_dir(path, trial["index"])
    shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True)
    cfg = config_mod.validate(trial_raw(base, trial["params"], trial["init_seed"]), str(tdir))
    return tdir, cfg, config_mod.dump_yaml(cfg)


def resumable(path: Path, trial: dict) -> bool:
    """An interrupted trial with a checkpoint continues from it instead of starting over."""
    tdir = trial_dir(path, trial["index"])
    return trial_status(tdir) == "interrupted" and (tdir / checkpoint.NAME).is_file()


def run_claimed(path: Path, trial: dict, base: dict, cache: DataCache) -> str | None:
    state = None
    if resumable(path, trial):
        tdir = trial_dir(path, trial["index"])
        cfg = config_mod.validate(trial_raw(base, trial["params"], trial["init_seed"]), str(tdir))
        text, state = config_mod.dump_yaml(cfg), checkpoint.load(tdir / checkpoint.NAME)
    else:
        tdir, cfg, text = fresh_trial(path, trial, base)
    with contextlib.suppress(Exception), runs.start_run(tdir, "train", cfg, text,
                                                        fresh=state is None) as run:  # fmt: skip
        if state is not None:
            run.summary["resumed_from_step"] = state.step
        prep = cache.get(cfg)
        check_batch_size(cfg, prep, f"trial {trial['index']}")
        with console.quiet():
            train_run(run, cfg, prep, text, resume=state)
    return trial_status(tdir)


def fuse_key(base: dict, trial: dict) -> str:
    """Trials with equal keys differ only in per-trial vectors and can train fused."""
    raw = trial_raw(base, trial["params"], trial["init_seed"])
    for key in fused.FUSABLE:
        raw = config_mod.set_dotted(raw, key.split("."), None, key)
    return json.dumps(raw, sort_keys=True, default=str)


def fuse_groups(trials: list[dict], base: dict) -> list[list[dict]]:
    """Trials grouped by fuse key, at most search.fuse_max each, in trial order."""
    search = base["search"]
    if search["fuse"] == "off":
        return [[t] for t in trials]
    by_key: dict[str, list[dict]] = {}
    for t in trials:
        cfg = config_mod.validate(trial_raw(base, t["params"], t["init_seed"]), "search")
        alone = f"alone-{t['index']}" if fused.unsupported(cfg) else None
        by_key.setdefault(alone or fuse_key(base, t), []).append(t)
    size = search["fuse_max"]
    groups = [g[i : i + size] for g in by_key.values() for i in range(0, len(g), size)]
    return sorted(groups, key=lambda g: g[0]["index"])


def run_group(path: Path, group: list[dict], base: dict, cache: DataCache) -> list[tuple]:
    """Claim what is left of a group and train it, fused when more than one trial remains."""
    with contextlib.ExitStack() as held:
        todo = [t for t in group if held.enter_context(claim(path, t["index"]))
                and trial_status(trial_dir(path, t["index"])) not in FINISHED]  # fmt: skip
        alone = [t for t in todo if resumable(path, t)]  # continue from their checkpoints
        todo = [t for t in todo if t not in alone]
        if len(todo) == 1:
            alone, todo = alone + todo, []
        done = [(t, run_claimed(path, t, base, cache)) for t in alone]
        return done + (run_fused(path, todo, base, cache) if todo else [])


def run_fused(path: Path, todo: list[dict], base: dict, cache: DataCache) -> list[tuple]:
    """Train claimed trials as one wide network, then write each one's own run directory."""
    made = [fresh_trial(path, t, base) for t in todo]
    cfgs = [cfg for _, cfg, _ in made]
    clock, error, prep = runs.Clock(), None, None
    try:
        prep = cache.get(cfgs[0])
        check_batch_size(cfgs[0], prep, f"trial {todo[0]['index']}")
        with clock("loop"):
            plist, rows, diverged = fused.train_group(cfgs, prep, clock=clock)
        clock.seconds["train"] = clock.seconds.pop("loop") - clock.seconds.get("eval", 0.0)
    except fused.GroupInterrupted as stop:
        interrupt_group(todo, made, stop)
    except Exception as e:  # recorded in every trial of the group below
        error = e
    out = []
    for i, (trial, (tdir, cfg, text)) in enumerate(zip(todo, made, strict=True)):
        share = runs.Clock()  # each trial is charged its share of the fused pass
        share.seconds = {k: v / len(todo) for k, v in clock.seconds.items()}
        with contextlib.suppress(Exception), runs.start_run(tdir, "train", cfg, text) as run:
            run.summary["fused_with"] = [t["index"] for t in todo]
            if error is not None:
                raise error
            if i in diverged:
                runs.write_csv(tdir / "metrics.csv", METRIC_COLUMNS, rows[i])
                raise DivergedError(f"training diverged at step {diverged[i][0]} "
                                    f"(lr={diverged[i][1]:.6g})")  # fmt: skip
            with console.quiet():
                finish_run(run, cfg, prep, plist[i], rows[i], text, share)
        out.append((trial, trial_status(tdir)))
    return out


def interrupt_group(todo: list[dict], made: list, stop) -> None:
    """Leave each trial of an interrupted fused pass resumable on its own, then stop."""
    signum = stop.signum
    for i, (tdir, cfg, text) in enumerate(made):
        with contextlib.suppress(checkpoint.Interrupted, DivergedError), \
                runs.start_run(tdir, "train", cfg, text) as run:  # fmt: skip
            run.summary["fused_with"] = [t["index"] for t in todo]
            if i in stop.diverged:
                t, lr = stop.diverged[i]
                raise DivergedError(f"training diverged at step {t} (lr={lr:.6g})")
            checkpoint.save(tdir / checkpoint.NAME, stop.states[i])
            runs.write_csv(tdir / "metrics.csv", METRIC_COLUMNS, stop.states[i].rows)
            raise checkpoint.Interrupted(signum)
    raise checkpoint.Interrupted(signum)


def shard_trials(trials: list[dict], shard: tuple[int, int]) -> list[dict]:
    i, n = shard
    return [t for t in trials if t["index"] % n == i]


def run_shard(path: Path, shard: tuple[int, int]) -> int:
    """Run this shard's unfinished trials; return how many ran here."""
    plan = load_plan(path)
    mine = shard_trials(plan["trials"], shard)
    cache, ran = DataCache(), 0
    with console.progress_bar("trials", total=len(mine)) as advance:
        for group in fuse_groups(mine, plan["config"]):
            for trial, status in run_group(path, group, plan["config"], cache):
                if status is not None:
                    ran += 1
                    console.log(trial_line(path, trial, status))
            advance(len(group))
    return ran


def trial_line(path: Path, trial: dict, status: str) -> str:
    s = json.loads((trial_dir(path, trial["index"]) / "summary.json").read_text())
    vals = " ".join(f"{k}={fmt_value(v)}" for k, v in trial["params"].items())
    if status != "completed":
        return f"trial {trial['index']:03d} {vals}: {status}: {s.get('error', '')}"
    ens = s.get("ensemble", {}).get("accuracy", {}).get("val")
    ens = "" if ens is None else f" ensemble_val_accuracy={ens:.4f}"
    return (f"trial {trial['index']:03d} {vals}: val_accuracy={s['accuracy']['val']:.4f}{ens} "
            f"({s['seconds']:.1f} s)")  # fmt: skip


def fmt_value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def run_jobs(path: Path, jobs: int) -> None:
    """`jobs` worker processes, each a shard of this search; BLAS threads split between them."""
    import subprocess
    import sys

    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-m", "cifar2l", "search", "--resume", str(path),
                          "--shard", f"{i}/{jobs}", "--no-collect", "--quiet"], env=env)
        for i in range(jobs)
    ]  # fmt: skip
    total = len(load_plan(path)["trials"])
    with console.progress_bar("trials", total=total) as advance:
        done = 0
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            now = count_finished(path, total)
            advance(now - done)
            done = now
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        raise RunError(f"{path}: {len(failed)} of {jobs} worker processes failed "
                       f"(exit {failed[0]}); rerun with --resume {path}")  # fmt: skip


def count_finished(path: Path, total: int) -> int:
    return sum(trial_status(trial_dir(path, i)) in FINISHED for i in range(total))


# ---------------------------------------------------------------- collect


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


def result_columns(space_keys: list[str]) -> list[str]:
    return ["rank", "trial", *space_keys, "val_accuracy", "best_val_accuracy",
            "ensemble_val_accuracy", "train_accuracy", "status", "seconds", "init_seed",
            "error"]  # fmt: skip


def write_results(path: Path, rows: list[dict], keys: list[str]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result_columns(keys))
    for r in rows:
        flat = {**r, **r["params"]}
        writer.writerow(["" if flat.get(c) is None else flat[c] for c in result_columns(keys)])
    runs.atomic_write(path / "results.csv", buf.getvalue())


def collect(path: Path, started: float | None = None) -> dict:
    """Merge the trials into results.csv, best.yaml, search.png and summary.json.

    `seconds` is the wall time of this command (from `started`, a perf_counter value);
    `trial_seconds` adds up the trials' own times, wherever they ran.
    """
    started = time.perf_counter() if started is None else started
    plan = load_plan(path)
    search = plan["config"]["search"]
    keys = list(search["space"])
    rows = collect_rows(path)
    write_results(path, rows, keys)
    done = [r for r in rows if r["status"] == "completed"]
    best = done[0] if done else None
    if best:
        best_cfg = (trial_dir(path, best["trial"]) / "config.yaml").read_text()
        runs.atomic_write(path / "best.yaml", best_yaml_header(path, best, search) + best_cfg)
        plots.search_scatter(done, search, path / "search.png")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "diverged")}
    summary = runs.base_summary("search", path, plan["config"]["seed"])
    summary.update(
        status="completed" if len(rows) == sum(counts.values()) else "running",
        seconds=round(time.perf_counter() - started, 3),
        trial_seconds=round(sum(r["seconds"] or 0 for r in rows), 3),
        trials=len(rows), completed=counts["completed"],
        failed=counts["failed"] + counts["diverged"], diverged=counts["diverged"],
        pending=len(rows) - sum(counts.values()), metric=search["metric"],
        best=best and {"trial": best["trial"], "params": best["params"],
                       "val_accuracy": best["val_accuracy"],
                       search["metric"]: best[search["metric"]]},
        refined_from=plan["refined_from"],
    )  # fmt: skip
    runs.write_json(path / "summary.json", summary)
    return {"summary": summary, "rows": rows, "keys": keys}


def best_yaml_header(path: Path, best: dict, search: dict) -> str:
    vals = ", ".join(f"{k}={fmt_value(v)}" for k, v in best["params"].items())
    return (f"# Best trial {best['trial']:03d} of the search {path}: {vals}\n"
            f"# {search['metric']} = {best[search['metric']]:.4f}. Train it again with:\n"
            f"#   cifar2l train {path / 'best.yaml'}\n")  # fmt: skip


def print_top(result: dict, k: int, title: str) -> None:
    keys = result["keys"]
    done = [r for r in result["rows"][:k] if r["status"] == "completed"]
    metrics = ["val_accuracy", "best_val_accuracy", "train_accuracy"]
    if any(r["ensemble_val_accuracy"] is not None for r in done):
        metrics.insert(2, "ensemble_val_accuracy")
    rows = [[r["rank"], r["trial"], *[r["params"][key] for key in keys], *[r[m] for m in metrics]]
            for r in done]  # fmt: skip
    console.table(title, ["rank", "trial", *keys, *metrics], rows)


# ---------------------------------------------------------------- the `search` command


def parse_shard(text: str | None) -> tuple[int, int]:
    """--shard I/N, else SLURM's array variables, else the whole search (0/1)."""
    if text is None:
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if not count:
            return (0, 1)
        try:
            first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
            i, n = int(os.environ["SLURM_ARRAY_TASK_ID"]) - first, int(count)
        except (KeyError, ValueError):
            raise ConfigError("SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID/MIN are "
                              "missing or not integers; pass --shard I/N") from None
        if not 0 <= i < n:  # e.g. a stepped array (--array=0-15:4): shards would be skipped
            task = f"SLURM_ARRAY_TASK_ID={i + first} (MIN {first}, COUNT {n})"
            raise ConfigError(f"{task}: no shard 0..{n - 1}; use a contiguous array or --shard")
        return (i, n)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return (i, n)


def run_search(cfg, config_text: str, source: str, out, name: str, *, jobs: int = 1,
               shard: str | None = None, directory: Path | None = None,
               refine: Path | None = None, collect_after: bool = True) -> dict:  # fmt: skip
    """The `search` command: plan (or reuse) a search directory, run trials, collect."""
    check_workers(jobs, shard)
    if refine is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(
            update={"refine_from": str(refine)})})  # fmt: skip
        config_text = config_mod.dump_yaml(cfg)
    started = time.perf_counter()
    plan = make_plan(cfg, source)
    path = directory or runs.create_run_dir(Path(out), "search", name)
    create_search_dir(path, plan, config_text)
    return execute(path, jobs, parse_shard(shard), collect_after, started)


def check_workers(jobs: int, shard: str | None) -> None:
    part = parse_shard(shard)  # always: a bad --shard must fail before the directory exists
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if jobs > 1 and part != (0, 1):
        raise ConfigError("--jobs and --shard (or a SLURM array) do not combine; use one")


def resume_search(path: Path, *, jobs: int = 1, shard: str | None = None,
                  collect_after: bool = True) -> dict:  # fmt: skip
    """`search --resume RUN_DIR`: the stored plan, finished trials skipped."""
    started = time.perf_counter()
    load_plan(path)
    check_workers(jobs, shard)
    return execute(path, jobs, parse_shard(shard), collect_after, started)


def execute(path: Path, jobs: int, part: tuple[int, int], collect_after: bool,
            started: float) -> dict:  # fmt: skip
    workers = f", {jobs} worker processes" if jobs > 1 else ""
    console.log(f"search dir: {path}  shard {part[0]}/{part[1]}{workers}")
    if jobs > 1:
        run_jobs(path, jobs)
        ran = None
    else:
        ran = run_shard(path, part)
    if not collect_after or part != (0, 1):
        return {"command": "search", "status": "completed", "run_dir": str(path),
                "shard": f"{part[0]}/{part[1]}", "ran": ran}  # fmt: skip
    return collect_and_show(path, started)


def collect_and_show(path: Path, started: float | None = None) -> dict:
    result = collect(path, started)
    k = load_plan(path)["config"]["search"]["top_k"]
    print_top(result, k, f"top {k} of {result['summary']['trials']} trials ({path})")
    s = result["summary"]
    console.log(f"completed {s['completed']}, failed {s['failed']}, pending {s['pending']}; "
                f"results: {path / 'results.csv'}")  # fmt: skip
    return s
