"""Random search (`cifar2l search`) on tiny synthetic data: sampling, config checks, common random
numbers, the search directory, shards, worker processes, concurrent shards, resume, failures,
refine and collect."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifar2l import runs, search
from cifar2l.config import Distribution, dump_yaml, load_config
from cifar2l.errors import ConfigError, RunError
from cifar2l.rngs import make_rngs

from .conftest import ROOT, invoke, module_env, ok, one_error_line, write_official_dir

SMOKE = ROOT / "configs" / "smoke.yaml"
KEYS = ["optim.lambda", "model.hidden"]  # the order of the space in the test configs
SPACE = {"optim.lambda": "{log_uniform: [1.0e-4, 1.0e-1]}",
         "model.hidden": "{int_uniform: [4, 16]}"}  # fmt: skip
HEADER = ("rank,trial,optim.lambda,model.hidden,val_accuracy,best_val_accuracy,"
          "ensemble_val_accuracy,tta_val_accuracy,average_val_accuracy,train_accuracy,status,"
          "seconds,init_seed,error")  # fmt: skip
TRIALS = 6


# ---------------------------------------------------------------- helpers


def write_config(path: Path, src: Path, *, trials: int = TRIALS, seed: int = 0,
                 space: dict[str, str] | None = None, extra: str = "",
                 search_extra: str = "") -> Path:  # fmt: skip
    """A search config over the smoke config and a synthetic source (val: 40 held-out rows)."""
    space_lines = "".join(f"    {k}: {v}\n" for k, v in (space or SPACE).items())
    path.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {src}, train: all, val: null, val_size: 40}}\n"
        f"{extra}"
        f"search:\n  trials: {trials}\n  seed: {seed}\n{search_extra}  space:\n{space_lines}"
    )
    return path


def cifar2l_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "cifar2l", *[str(a) for a in args]]


def popen(*args) -> subprocess.Popen:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cifar2l_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)  # fmt: skip


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append((p.returncode, stdout, stderr))
    return out


def results(path: Path) -> list[dict]:
    with open(path / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def comparable(path: Path) -> list[dict]:
    """results.csv without the only column that may differ between equal searches."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results(path)]


def summary_of(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def plan_of(path: Path) -> dict:
    return json.loads((path / "search.json").read_text())


def trial_dirs(path: Path) -> list[Path]:
    return sorted((path / "trials").glob("[0-9][0-9][0-9]"))


def trial_lines(stderr: str) -> list[int]:
    """Indices of the `trial NNN ...` lines a search process logs for the trials it ran."""
    return [int(line.split()[1]) for line in stderr.splitlines() if line.startswith("trial ")]


def only_dir(out: Path) -> Path:
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def coarse(tmp_path_factory) -> SimpleNamespace:
    """One finished 6-trial search, run once for the module (read-only for the tests)."""
    base = tmp_path_factory.mktemp("coarse")
    with module_env(base):
        src = write_official_dir(base / "src")
        config = write_config(base / "search.yaml", src)
        result = ok("search", config, "--out", base / "runs")  # not quiet: the top table
    return SimpleNamespace(config=config, src=src, dir=only_dir(base / "runs"),
                           stdout=result.stdout, stderr=result.stderr)  # fmt: skip


@pytest.fixture
def config(tmp_path, official_dir) -> Path:
    return write_config(tmp_path / "search.yaml", official_dir)


# ---------------------------------------------------------------- 1. sampling


def dists(**kinds) -> dict:
    """Distributions by keyword: optim_lambda= names the key optim.lambda."""
    return {key.replace("_", ".", 1): Distribution(**d) for key, d in kinds.items()}


def test_sample_trials_deterministic_per_seed():
    space = dists(optim_lambda={"log_uniform": [1e-4, 1e-1]}, model_hidden={"int_uniform": [4, 16]})
    a = search.sample_trials(space, 20, seed=0)
    assert a == search.sample_trials(space, 20, seed=0)
    assert a != search.sample_trials(space, 20, seed=1)
    assert len(a) == 20 and all(list(t) == ["optim.lambda", "model.hidden"] for t in a)
    assert len({t["optim.lambda"] for t in a}) == 20


def test_log_uniform_is_uniform_in_log10():
    lo, hi = 1e-4, 1e-1
    space = {"x": Distribution(log_uniform=[lo, hi])}
    vals = [t["x"] for t in search.sample_trials(space, 2000, seed=3)]
    assert all(isinstance(v, float) and lo <= v <= hi for v in vals)
    logs = np.log10(vals)
    assert abs(logs.mean() - (-2.5)) < 0.1  # midpoint of [-4, -1]; standard error ~0.02
    assert logs.min() < -3.97 and logs.max() > -1.03
    # a third of the draws per decade (a plain uniform on [lo, hi] puts ~90% in the last one)
    per_decade = np.histogram(logs, bins=[-4, -3, -2, -1])[0] / len(vals)
    assert np.all(np.abs(per_decade - 1 / 3) < 0.05), per_decade


def test_uniform_int_uniform_and_choice():
    space = dists(u={"uniform": [0.5, 2.0]}, i={"int_uniform": [4, 6]},
                  c={"choice": ["relu", 3, 0.5]})  # fmt: skip
    trials = search.sample_trials(space, 600, seed=7)
    u = [t["u"] for t in trials]
    assert all(isinstance(v, float) and 0.5 <= v <= 2.0 for v in u)
    assert abs(np.mean(u) - 1.25) < 0.05 and min(u) < 0.55 and max(u) > 1.95
    ints = [t["i"] for t in trials]
    assert all(type(v) is int for v in ints)  # a plain int, valid for a strict int key
    assert set(ints) == {4, 5, 6}  # both ends included
    choices = [t["c"] for t in trials]
    assert {repr(v) for v in choices} == {"'relu'", "3", "0.5"}  # only the listed values, all
    assert min(choices.count(v) for v in ("relu", 3, 0.5)) > 150


def test_init_seeds_distinct_and_deterministic():
    seeds = search.init_seeds(0, 16)
    assert seeds == search.init_seeds(0, 16)
    assert len(set(seeds)) == 16
    assert all(type(s) is int and s >= 0 for s in seeds)
    assert set(seeds).isdisjoint(search.init_seeds(1, 16))


# ---------------------------------------------------------------- 2. config validation


@pytest.mark.parametrize(("space", "fragments"), [
    ("optim.lamda: {log_uniform: [0.001, 0.1]}", ["search.space", "'optim.lamda'"]),
    ("optim: {log_uniform: [0.001, 0.1]}", ["search.space", "'optim'"]),
    ("model.hidden.x: {int_uniform: [4, 8]}", ["search.space", "'model.hidden.x'"]),
    ("search.trials: {int_uniform: [4, 8]}", ["search.space", "'search.trials'"]),
    ("search.seed: {int_uniform: [4, 8]}", ["search.space", "'search.seed'"]),
    ("init_seed: {int_uniform: [4, 8]}", ["search.space", "init_seed"]),
    ("optim.lambda: {log_uniform: [0.001, 0.1], uniform: [0.001, 0.1]}",
     ["search.space.optim.lambda", "exactly one"]),
    ("optim.lambda: {}", ["search.space.optim.lambda", "exactly one"]),
    ("optim.lambda: {normal: [0, 1]}", ["search.space.optim.lambda.normal", "unknown key"]),
    ("optim.lambda: {uniform: [0.2, 0.1]}", ["search.space.optim.lambda", "low <= high"]),
    ("model.hidden: {int_uniform: [9, 3]}", ["search.space.model.hidden", "low <= high"]),
    ("optim.lambda: {uniform: [0.1]}", ["search.space.optim.lambda", "[low, high]"]),
    ("optim.lambda: {log_uniform: [0, 0.1]}", ["search.space.optim.lambda", "> 0"]),
    ("optim.lambda: {log_uniform: [-1.0, 0.1]}", ["search.space.optim.lambda", "> 0"]),
    ("optim.lambda: {choice: []}", ["search.space.optim.lambda", "at least one"]),
])  # fmt: skip
def test_bad_search_space_is_a_config_error(tmp_path, space, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(f"search:\n  space:\n    {space}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


@pytest.mark.parametrize("trials", [0, -2])
def test_zero_trials_is_a_config_error(tmp_path, trials):
    path = tmp_path / "bad.yaml"
    path.write_text(f"search:\n  trials: {trials}\n  space:\n    {KEYS[0]}: {SPACE[KEYS[0]]}\n")
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml: search\.trials: .*greater than"):
        load_config(path)


def test_valid_search_section_loads(config):
    cfg = load_config(config)
    assert list(cfg.search.space) == KEYS
    assert cfg.search.space["optim.lambda"].kind == "log_uniform"
    assert cfg.search.space["model.hidden"].args == [4, 16]
    assert cfg.search.trials == TRIALS


def test_empty_space_exits_2(tmp_path, official_dir):
    out = tmp_path / "runs"
    result = invoke("search", SMOKE, "--set", f"data.root={official_dir}", "--out", out)
    one_error_line(result, 2, "search.space", "empty")
    assert not out.exists()


def test_sampled_value_of_wrong_type_exits_2_before_any_run_dir(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir,
                       space={"model.hidden": "{uniform: [4, 16]}"})  # fmt: skip
    out, shared = tmp_path / "runs", tmp_path / "shared"
    one_error_line(invoke("search", cfg, "--out", out), 2, "model.hidden")
    one_error_line(invoke("search", cfg, "--dir", shared), 2, "model.hidden")
    assert not out.exists() and not shared.exists()


# ---------------------------------------------------------------- 3. common random numbers


def test_make_rngs_init_seed_replaces_only_the_init_stream():
    def draws(rngs):
        return {k: rng.random(5).tolist() for k, rng in rngs.items()}

    plain, a, a2, b = (draws(make_rngs(42, s)) for s in (None, 123, 123, 124))
    assert set(plain) == {"init", "shuffle", "split", "dropout", "augment"}
    for name in ("shuffle", "split", "dropout", "augment"):
        assert plain[name] == a[name] == b[name]
    assert a["init"] != plain["init"] and a["init"] != b["init"]
    assert a == a2


def test_trials_share_seed_and_data_with_their_own_init_seed(coarse):
    base = load_config(coarse.config)
    plan = plan_of(coarse.dir)
    expected_seeds = search.init_seeds(base.search.seed, TRIALS)
    assert [t["init_seed"] for t in plan["trials"]] == expected_seeds
    assert [t["params"] for t in plan["trials"]] == search.sample_trials(
        base.search.space, TRIALS, base.search.seed)  # fmt: skip
    assert [p.name for p in trial_dirs(coarse.dir)] == [f"{i:03d}" for i in range(TRIALS)]
    for trial in plan["trials"]:
        cfg = load_config(search.trial_dir(coarse.dir, trial["index"]) / "config.yaml")
        assert cfg.seed == base.seed
        assert cfg.data == base.data
        assert cfg.init_seed == trial["init_seed"]
        assert cfg.optim.lambda_ == trial["params"]["optim.lambda"]
        assert cfg.model.hidden == trial["params"]["model.hidden"]
        assert cfg.search.space == {}  # the search section is not part of a trial
    assert len(set(expected_seeds)) == TRIALS


def test_trial_config_retrains_to_identical_metrics(coarse, tmp_path):
    tdir = search.trial_dir(coarse.dir, 3)
    ok("train", tdir / "config.yaml", "--out", tmp_path / "runs", "-q")
    again = only_dir(tmp_path / "runs")
    assert (again / "metrics.csv").read_bytes() == (tdir / "metrics.csv").read_bytes()


# ---------------------------------------------------------------- 4. the search directory


def test_results_csv_ranked_one_row_per_trial(coarse):
    assert (coarse.dir / "results.csv").read_text().splitlines()[0] == HEADER
    rows = results(coarse.dir)
    plan = {t["index"]: t for t in plan_of(coarse.dir)["trials"]}
    assert [int(r["rank"]) for r in rows] == list(range(1, TRIALS + 1))
    assert sorted(int(r["trial"]) for r in rows) == list(range(TRIALS))
    assert all(r["status"] == "completed" and r["error"] == "" for r in rows)
    keys = [(-float(r["val_accuracy"]), int(r["trial"])) for r in rows]
    assert keys == sorted(keys)  # by val_accuracy descending, ties by trial index
    for r in rows:
        t = plan[int(r["trial"])]
        # at results.csv's 10 significant digits; search.json keeps the exact value
        assert float(r["optim.lambda"]) == runs.rounded(t["params"]["optim.lambda"])
        assert float(r["optim.lambda"]) == pytest.approx(t["params"]["optim.lambda"], rel=1e-9)
        assert int(r["model.hidden"]) == t["params"]["model.hidden"]
        assert int(r["init_seed"]) == t["init_seed"]
        s = summary_of(search.trial_dir(coarse.dir, t["index"]))
        assert float(r["val_accuracy"]) == s["accuracy"]["val"]
        assert float(r["train_accuracy"]) == s["accuracy"]["train"]
        assert float(r["best_val_accuracy"]) == s["best_val_accuracy"] >= s["accuracy"]["val"]
        assert float(r["seconds"]) == s["seconds"]


def test_search_summary_and_files(coarse):
    s = summary_of(coarse.dir)
    rows = results(coarse.dir)
    assert s["command"] == "search" and s["status"] == "completed"
    assert (s["trials"], s["completed"], s["failed"]) == (TRIALS, TRIALS, 0)
    assert s["best"]["trial"] == int(rows[0]["trial"])
    assert s["best"]["val_accuracy"] == float(rows[0]["val_accuracy"])
    best = plan_of(coarse.dir)["trials"][s["best"]["trial"]]["params"]  # exact in search.json
    assert s["best"]["params"] == runs.rounded_floats(best)  # summary.json: 10 digits
    assert s["refined_from"] is None
    assert (coarse.dir / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = plan_of(coarse.dir)
    assert len(plan["trials"]) == TRIALS and plan["refined_from"] is None
    assert list(plan["config"]["search"]["space"]) == KEYS
    assert load_config(coarse.dir / "config.yaml") == load_config(coarse.config)
    assert not [p for p in coarse.dir.iterdir() if p.name.startswith(".")]  # no temp files


def test_best_yaml_is_the_best_trial_and_trains(coarse, tmp_path):
    best = summary_of(coarse.dir)["best"]
    cfg = load_config(coarse.dir / "best.yaml")
    exact = plan_of(coarse.dir)["trials"][best["trial"]]["params"]  # summary.json: 10 digits
    assert cfg.optim.lambda_ == exact["optim.lambda"]
    assert cfg.optim.lambda_ == pytest.approx(best["params"]["optim.lambda"], rel=1e-9)
    assert cfg.model.hidden == best["params"]["model.hidden"]
    assert cfg.init_seed == plan_of(coarse.dir)["trials"][best["trial"]]["init_seed"]
    ok("train", coarse.dir / "best.yaml", "--out", tmp_path / "runs", "-q")
    run = only_dir(tmp_path / "runs")
    assert summary_of(run)["accuracy"]["val"] == best["val_accuracy"]
    tdir = search.trial_dir(coarse.dir, best["trial"])
    assert (run / "metrics.csv").read_bytes() == (tdir / "metrics.csv").read_bytes()


def test_top_table_and_trial_lines_printed(coarse):
    assert "val_accuracy" in coarse.stdout and "top 4 of 6 trials" in coarse.stdout
    assert all(key in coarse.stdout for key in KEYS)
    assert sorted(trial_lines(coarse.stderr)) == list(range(TRIALS))
    assert "completed 6, failed 0, pending 0" in coarse.stderr


def test_search_json_prints_one_object(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2)
    result = ok("search", cfg, "--out", tmp_path / "runs", "--json")
    assert result.stdout.count("\n") == 1
    s = json.loads(result.stdout)
    assert s["command"] == "search" and s["status"] == "completed" and s["trials"] == 2
    assert s["run_dir"] == str(only_dir(tmp_path / "runs"))
    assert result.stderr == ""


# ---------------------------------------------------------------- 5. equal execution modes


def test_jobs_2_equals_one_process(coarse, tmp_path):
    ok("search", coarse.config, "--jobs", 2, "--out", tmp_path / "runs", "-q")
    run = only_dir(tmp_path / "runs")
    assert comparable(run) == comparable(coarse.dir)
    assert summary_of(run)["best"] == summary_of(coarse.dir)["best"]


def test_concurrent_shards_then_collect_equal_one_process(coarse, tmp_path):
    shared = tmp_path / "shared"  # does not exist yet: the three shards race to create it
    procs = [popen("search", coarse.config, "--dir", shared, "--shard", f"{i}/3") for i in range(3)]
    outcomes = finish(procs)
    assert [rc for rc, _, _ in outcomes] == [0, 0, 0], outcomes
    assert [p.name for p in shared.iterdir() if "search.json" in p.name] == ["search.json"]
    assert not (shared / "results.csv").exists()  # a shard does not collect
    # each trial ran exactly once, in its own shard
    ran = [trial_lines(err) for _, _, err in outcomes]
    assert ran == [[i for i in range(TRIALS) if i % 3 == k] for k in range(3)], ran
    for tdir in trial_dirs(shared):
        assert f"--shard {int(tdir.name) % 3}/3" in (tdir / "command.txt").read_text()
    ok("search", "collect", shared, "-q")
    assert comparable(shared) == comparable(coarse.dir)
    assert summary_of(shared)["status"] == "completed"


# ---------------------------------------------------------------- 6. shards from SLURM, errors


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"},
     (1, 3)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"},
     (2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"},
     (0, 4)),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
    ({}, (0, 1)),
])  # fmt: skip
def test_parse_shard_from_slurm_array(monkeypatch, env, expected):
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert search.parse_shard(None) == expected
    assert search.parse_shard("1/5") == (1, 5)  # --shard wins over the environment


@pytest.mark.parametrize(("task", "count", "first"), [("4", "3", "1"), ("8", "4", "0")])
def test_parse_shard_rejects_a_task_outside_the_array(monkeypatch, task, count, first):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", count)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", first)
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID"):
        search.parse_shard(None)


def test_slurm_array_task_runs_its_shard(config, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    shared = tmp_path / "shared"
    s = json.loads(ok("search", config, "--dir", shared, "--json").stdout)
    assert (s["shard"], s["ran"]) == ("1/3", 2)
    done = [i for i in range(TRIALS) if search.trial_status(search.trial_dir(shared, i))]
    assert done == [1, 4]
    assert all(search.trial_status(search.trial_dir(shared, i)) == "completed" for i in done)


@pytest.mark.parametrize("shard", ["3/3", "a/b", "1", "-1/2", "1/0", "0/2/4"])
def test_bad_shard_exits_2(config, tmp_path, shard):
    out, shared = tmp_path / "runs", tmp_path / "shared"
    one_error_line(invoke("search", config, "--shard", shard, "--out", out), 2, "--shard")
    one_error_line(invoke("search", config, "--shard", shard, "--dir", shared), 2, "--shard")
    assert not out.exists() and not shared.exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--jobs", "2", "--shard", "0/2"], "--jobs"),
    (["--jobs", "0"], "--jobs"),
])  # fmt: skip
def test_bad_jobs_exit_2(config, tmp_path, args, fragment):
    out = tmp_path / "runs"
    one_error_line(invoke("search", config, *args, "--out", out), 2, fragment)
    assert not out.exists()


# ---------------------------------------------------------------- 7. a shared --dir


def test_competing_processes_run_each_trial_once(coarse, tmp_path):
    shared = tmp_path / "shared"  # two whole-search processes on one fresh dir, same moment
    procs = [popen("search", coarse.config, "--dir", shared, "--no-collect") for _ in range(2)]
    outcomes = finish(procs)
    assert [rc for rc, _, _ in outcomes] == [0, 0], outcomes
    ran = [i for _, _, err in outcomes for i in trial_lines(err)]
    assert sorted(ran) == list(range(TRIALS)), ran  # every trial once, none twice
    assert [p.name for p in shared.iterdir() if "search.json" in p.name] == ["search.json"]
    assert not list((shared / "trials").glob(".*"))
    ok("search", "collect", shared, "-q")
    assert comparable(shared) == comparable(coarse.dir)


def test_same_config_reuses_dir_and_other_config_is_refused(coarse, tmp_path):
    shared = tmp_path / "shared"
    shutil.copytree(coarse.dir, shared)
    before = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    # the same config: the same plan, every trial already finished, nothing rerun
    result = ok("search", coarse.config, "--dir", shared)
    assert trial_lines(result.stderr) == []
    assert plan_of(shared) == plan_of(coarse.dir)
    # another config (another search seed): refused, nothing touched
    result = invoke("search", coarse.config, "--set", "search.seed=1", "--dir", shared)
    one_error_line(result, 2, "holds a different search")
    after = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    trial_files = [p for p in before if "trials" in p.parts]
    assert all(after[p] == before[p] for p in trial_files)
    assert set(after) == set(before)


# ---------------------------------------------------------------- 8. resume


def test_resume_after_kill_reruns_only_the_interrupted_trials(tmp_path, official_dir):
    cfg = write_config(tmp_path / "slow.yaml", official_dir, trials=4,
                       extra="schedule: {n_s: 500, eta_max: 0.01}\n")  # fmt: skip
    shared = tmp_path / "shared"
    proc = popen("search", cfg, "--dir", shared, "-q")
    third = search.trial_dir(shared, 2)
    deadline = time.monotonic() + 90
    try:
        while search.trial_status(third) != "running":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "trial 002 never started"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    statuses = [search.trial_status(search.trial_dir(shared, i)) for i in range(4)]
    assert statuses == ["completed", "completed", "running", None], statuses
    kept = {i: (search.trial_dir(shared, i) / "summary.json").read_bytes() for i in (0, 1)}

    result = ok("search", "--resume", shared)
    assert trial_lines(result.stderr) == [2, 3]  # finished trials skipped, interrupted rerun
    for i in (0, 1):
        assert (search.trial_dir(shared, i) / "summary.json").read_bytes() == kept[i]
    assert all(search.trial_status(search.trial_dir(shared, i)) == "completed" for i in range(4))
    assert summary_of(shared)["status"] == "completed"

    ok("search", cfg, "--out", tmp_path / "runs", "-q")
    assert comparable(shared) == comparable(only_dir(tmp_path / "runs"))


def test_resume_of_a_finished_search_runs_nothing_and_collects(coarse, tmp_path):
    shared = tmp_path / "shared"
    shutil.copytree(coarse.dir, shared)
    (shared / "results.csv").unlink()
    (shared / "best.yaml").unlink()
    trial_files = {p: p.read_bytes() for p in (shared / "trials").rglob("*") if p.is_file()}
    result = ok("search", "--resume", shared, "--json")
    s = json.loads(result.stdout)
    assert s["status"] == "completed" and s["completed"] == TRIALS
    assert s["best"] == summary_of(coarse.dir)["best"]
    assert all(p.read_bytes() == b for p, b in trial_files.items())  # no trial rerun
    assert (shared / "results.csv").read_bytes() == (coarse.dir / "results.csv").read_bytes()
    assert (shared / "best.yaml").is_file()


# ---------------------------------------------------------------- 9. failures


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow while diverging
def test_failed_and_diverged_trials_are_recorded(tmp_path, official_dir):
    space = {"schedule.eta_max": "{choice: [0.05, 1.0e+6]}",
             "train.batch_size": "{choice: [10, 1000]}"}  # fmt: skip
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, space=space)
    params = search.sample_trials(load_config(cfg).search.space, 4, 0)
    expected = ["failed" if p["train.batch_size"] == 1000 else
                "diverged" if p["schedule.eta_max"] > 1 else "completed" for p in params]
    assert {"failed", "diverged", "completed"} <= set(expected), expected  # the seed covers all

    result = invoke("search", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 1  # failed trials (not diverged ones): exit 1, --resume retries
    run = only_dir(tmp_path / "runs")
    rows = {int(r["trial"]): r for r in results(run)}
    assert [rows[i]["status"] for i in range(4)] == expected
    for i, status in enumerate(expected):
        if status == "failed":
            assert "batch_size" in rows[i]["error"] and rows[i]["val_accuracy"] == ""
        elif status == "diverged":
            assert "diverged" in rows[i]["error"] and rows[i]["val_accuracy"] == ""
        else:
            assert rows[i]["error"] == "" and rows[i]["val_accuracy"] != ""
    ranked = [r["status"] for r in results(run)]
    n_done = expected.count("completed")
    assert ranked[:n_done] == ["completed"] * n_done  # finished trials rank first
    s = summary_of(run)
    assert s["status"] == "failed"
    assert s["completed"] == n_done and s["failed"] == expected.count("failed")
    assert s["diverged"] == expected.count("diverged")
    assert expected[s["best"]["trial"]] == "completed"
    assert len(trial_lines(result.stderr)) == 4


# ---------------------------------------------------------------- 10. refine


def fake_search(path: Path, space: dict, trials: list[tuple[str, float | None, dict]]) -> Path:
    """A search dir with given trial outcomes: (status, val_accuracy, params)."""
    dumped = {k: d.model_dump() for k, d in space.items()}
    plan = {"version": 1, "refined_from": None,
            "config": {"seed": 0, "search": {"metric": "val_accuracy", "space": dumped}},
            "trials": [{"index": i, "params": p, "init_seed": i} for i, (_, _, p) in
                       enumerate(trials)]}  # fmt: skip
    (path / "trials").mkdir(parents=True)
    (path / "search.json").write_text(json.dumps(plan))
    for i, (status, acc, _) in enumerate(trials):
        s = {"status": status}
        if acc is not None:
            s.update(accuracy={"train": 0.9, "val": acc}, best_val_accuracy=1 - acc)
        (path / "trials" / f"{i:03d}").mkdir()
        (path / "trials" / f"{i:03d}" / "summary.json").write_text(json.dumps(s))
    return path


def test_refine_space_narrows_continuous_ranges(tmp_path):
    space = dists(optim_lambda={"log_uniform": [1e-5, 1e-1]},
                  schedule_eta_max={"uniform": [0.01, 0.2]},
                  model_hidden={"int_uniform": [4, 64]},
                  train_batch_size={"choice": [10, 20]})  # fmt: skip

    def p(lam, eta, hidden, batch):
        return {"optim.lambda": lam, "schedule.eta_max": eta, "model.hidden": hidden,
                "train.batch_size": batch}  # fmt: skip

    path = fake_search(tmp_path / "coarse", space, [
        ("completed", 0.30, p(1e-2, 0.15, 8, 10)),
        ("completed", 0.50, p(3e-4, 0.05, 16, 20)),
        ("failed", None, p(1e-5, 0.01, 4, 10)),
        ("completed", 0.50, p(2e-3, 0.10, 32, 10)),
        ("completed", 0.40, p(5e-5, 0.02, 64, 20)),
        ("running", None, p(9e-2, 0.19, 5, 10)),
    ])  # fmt: skip
    new, info = search.refine_space(space, path, 2, "val_accuracy")
    assert info == {"run_dir": str(path), "top_trials": [1, 3],
                    "ranges": {"optim.lambda": [3e-4, 2e-3], "schedule.eta_max": [0.05, 0.10]}}
    assert new["optim.lambda"] == Distribution(log_uniform=[3e-4, 2e-3])
    assert new["schedule.eta_max"] == Distribution(uniform=[0.05, 0.10])
    assert new["model.hidden"] == space["model.hidden"]  # int_uniform and choice unchanged
    assert new["train.batch_size"] == space["train.batch_size"]
    assert space["optim.lambda"].args == [1e-5, 1e-1]  # the input space is not modified

    _, info = search.refine_space(space, path, 3, "val_accuracy")
    assert info["top_trials"] == [1, 3, 4]
    assert info["ranges"]["optim.lambda"] == [5e-5, 2e-3]
    _, info = search.refine_space(space, path, 1, "best_val_accuracy")  # 1 - val accuracy
    assert info["top_trials"] == [0]
    assert info["ranges"]["optim.lambda"] == [1e-2, 1e-2]


def test_refine_space_needs_a_completed_trial(tmp_path):
    space = dists(optim_lambda={"log_uniform": [1e-5, 1e-1]})
    path = fake_search(tmp_path / "coarse", space, [("failed", None, {"optim.lambda": 1e-3})])
    with pytest.raises(RunError, match="no completed trials"):
        search.refine_space(space, path, 2, "val_accuracy")


def test_refine_command_narrows_to_the_best_coarse_trials(coarse, tmp_path):
    fine = write_config(tmp_path / "fine.yaml", coarse.src, trials=4, seed=1,
                        search_extra="  refine_top: 3\n")  # fmt: skip
    ok("search", fine, "--refine", coarse.dir, "--out", tmp_path / "runs", "-q")
    run = only_dir(tmp_path / "runs")
    top = results(coarse.dir)[:3]
    trials = plan_of(coarse.dir)["trials"]
    lams = [trials[int(r["trial"])]["params"]["optim.lambda"] for r in top]  # exact values
    expected = {"run_dir": str(coarse.dir), "top_trials": [int(r["trial"]) for r in top],
                "ranges": {"optim.lambda": [min(lams), max(lams)]}}  # fmt: skip
    assert summary_of(run)["refined_from"] == runs.rounded_floats(expected)  # 10 digits
    plan = plan_of(run)
    assert plan["refined_from"] == expected
    space = plan["config"]["search"]["space"]
    assert space == {"optim.lambda": {"log_uniform": [min(lams), max(lams)]},
                     "model.hidden": {"int_uniform": [4, 16]}}  # fmt: skip
    rows = results(run)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    assert all(min(lams) <= float(r["optim.lambda"]) <= max(lams) for r in rows)
    assert all(4 <= int(r["model.hidden"]) <= 16 for r in rows)
    assert max(lams) / min(lams) < 1e3  # narrower than the coarse range


def test_refine_from_a_search_without_completed_trials_fails(coarse, tmp_path):
    cfg = load_config(coarse.config)
    empty = tmp_path / "empty"  # a planned search whose trials never ran
    search.create_search_dir(empty, search.make_plan(cfg, "test"), dump_yaml(cfg))
    out = tmp_path / "runs"
    one_error_line(invoke("search", coarse.config, "--refine", empty, "--out", out), 1,
                   "no completed trials")
    plain = tmp_path / "plain"
    plain.mkdir()
    one_error_line(invoke("search", coarse.config, "--refine", plain, "--out", out), 1,
                   "not a search directory")
    assert not out.exists()


# ---------------------------------------------------------------- 11. collect and help


def test_collect_without_a_dir_exits_2():
    one_error_line(invoke("search", "collect"), 2, "collect")


def test_collect_of_a_non_search_dir_exits_1(tmp_path):
    one_error_line(invoke("search", "collect", tmp_path), 1, str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing written into it


def test_search_help_has_examples():
    result = ok("search", "--help")
    assert "Example:" in result.stdout
    assert "cifar2l search collect" in result.stdout and "--shard" in result.stdout



# ---------------------------------------------------------------- fused trials

FUSABLE_SPACE = {"optim.lambda": "{log_uniform: [1.0e-4, 1.0e-1]}",
                 "schedule.eta_max": "{uniform: [0.05, 0.1]}",
                 "model.dropout": "{choice: [0.0, 0.2]}"}  # fmt: skip


def test_fused_search_equals_one_trial_at_a_time(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=5, space=FUSABLE_SPACE)
    fused_dir, alone_dir = tmp_path / "fused", tmp_path / "alone"
    ok("search", cfg, "--dir", fused_dir, "-q")
    ok("search", cfg, "--dir", alone_dir, "-q", "--set", "search.fuse=off")
    fused_rows, alone_rows = results(fused_dir), results(alone_dir)
    by_trial = {r["trial"]: r for r in alone_rows}
    for r in fused_rows:
        a = by_trial[r["trial"]]
        for col in ("val_accuracy", "best_val_accuracy", "train_accuracy"):
            assert abs(float(r[col]) - float(a[col])) <= 0.002
    groups = {tuple(json.loads((fused_dir / "trials" / f"{i:03d}" / "summary.json").read_text())
                    .get("fused_with", [])) for i in range(5)}  # fmt: skip
    assert len(groups) < 5  # trials were in fact trained together
    assert all("fused_with" not in json.loads(p.read_text())
               for p in (alone_dir / "trials").glob("*/summary.json"))  # fmt: skip


def test_fuse_max_bounds_the_group_size(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=5, space=FUSABLE_SPACE)
    ok("search", cfg, "--dir", tmp_path / "d", "-q", "--set", "search.fuse_max=2")
    for i in range(5):
        s = json.loads((tmp_path / "d" / "trials" / f"{i:03d}" / "summary.json").read_text())
        assert len(s.get("fused_with", [i])) <= 2


def test_fused_trial_matches_the_same_trial_trained_alone(tmp_path, official_dir):
    """The fused network's numbers equal each trial trained by itself (cifar2l train)."""
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, space=FUSABLE_SPACE)
    ok("search", cfg, "--dir", tmp_path / "d", "-q")
    for i in range(4):
        tdir = tmp_path / "d" / "trials" / f"{i:03d}"
        fused_summary = json.loads((tdir / "summary.json").read_text())
        assert fused_summary.get("fused_with")
        alone = json.loads(ok("train", tdir / "config.yaml", "--out", tmp_path / "alone",
                              "--json", "-q").stdout)  # fmt: skip
        for split in ("train", "val", "test"):
            assert abs(alone["accuracy"][split] - fused_summary["accuracy"][split]) <= 0.002
