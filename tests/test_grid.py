"""Grid searches (`search.space` value lists, `cifar2l search CONFIG --grid KEY=V1,V2,...`) on
tiny synthetic data: the product's trials and values, results.csv, fused trials, shards (and
a SLURM array task), resume, another grid refused, mixed grid and random axes, bad inputs."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from cifar2l import search
from cifar2l.config import load_config
from cifar2l.search.grid import MAX_TRIALS

from .conftest import ROOT, invoke, module_env, ok, one_error_line, write_official_dir
from .test_search import plan_of, results, summary_of, trial_lines

SMOKE = ROOT / "configs" / "smoke.yaml"
LAMBDAS, HIDDEN = [0.001, 0.01, 0.1], [4, 8]
GRID = ["--grid", "optim.lambda=0.001,0.01,0.1", "--grid", "model.hidden=4,8"]
PRODUCT = [{"optim.lambda": lam, "model.hidden": h}
           for lam, h in itertools.product(LAMBDAS, HIDDEN)]  # fmt: skip


def plain_config(path: Path, src: Path, extra: str = "") -> Path:
    """A config with no search: section (the smoke config on a synthetic source)."""
    data = f"data: {{root: {src}, train: all, val: null, val_size: 40}}\n"
    path.write_text(f"extends: {SMOKE}\n{data}{extra}")
    return path


def files_of(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> SimpleNamespace:
    """One finished 3 x 2 grid search, run as two shards (--shard 0/2, then the second as a
    SLURM array task) and collected; read-only for the tests."""
    base = tmp_path_factory.mktemp("grid")
    with module_env(base) as mp:
        config = plain_config(base / "plain.yaml", write_official_dir(base / "src"))
        shared = base / "shared"
        first = ok("search", config, *GRID, "--dir", shared, "--shard", "0/2")
        for name, value in {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "1",
                            "SLURM_ARRAY_TASK_MIN": "0"}.items():  # fmt: skip
            mp.setenv(name, value)
        second = ok("search", config, *GRID, "--dir", shared)
        for name in ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN"):
            mp.delenv(name)
        ok("search", "collect", shared, "-q")
    return SimpleNamespace(config=config, dir=shared, shards=[first.stderr, second.stderr])


# ---------------------------------------------------------------- the product


def test_grid_runs_the_product_in_order(grid):
    plan = plan_of(grid.dir)
    assert [t["params"] for t in plan["trials"]] == PRODUCT  # last --grid fastest
    assert plan["config"]["search"]["space"] == {"optim.lambda": {"grid": LAMBDAS},
                                                 "model.hidden": {"grid": HIDDEN}}  # fmt: skip
    assert len({t["init_seed"] for t in plan["trials"]}) == len(PRODUCT)
    for t in plan["trials"]:  # each trial's own config holds its grid point
        cfg = load_config(search.trial_dir(grid.dir, t["index"]) / "config.yaml")
        assert (cfg.optim.lambda_, cfg.model.hidden) == tuple(t["params"].values())


def test_results_csv_has_the_grid_keys_as_columns(grid):
    rows = results(grid.dir)
    assert list(rows[0])[:4] == ["rank", "trial", "optim.lambda", "model.hidden"]
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    by_trial = {int(r["trial"]): r for r in rows}
    for i, point in enumerate(PRODUCT):
        assert float(by_trial[i]["optim.lambda"]) == point["optim.lambda"]
        assert int(by_trial[i]["model.hidden"]) == point["model.hidden"]
    s = summary_of(grid.dir)
    assert s["status"] == "completed" and s["completed"] == 6
    assert set(s["best"]["params"]) == {"optim.lambda", "model.hidden"}
    assert (grid.dir / "search.png").stat().st_size > 0
    assert "optim.lambda=" in (grid.dir / "best.yaml").read_text().splitlines()[0]


def test_shards_partition_the_grid(grid):
    ran = [sorted(trial_lines(stderr)) for stderr in grid.shards]
    assert ran == [[0, 2, 4], [1, 3, 5]]  # index % 2: --shard 0/2, the SLURM task 1 of 2


def test_trials_differing_only_in_a_fusable_key_are_fused(grid):
    """optim.lambda is fused, model.hidden is not: each shard holds one hidden size, so its
    three lambdas trained together as one pass."""
    for shard in ([0, 2, 4], [1, 3, 5]):
        for i in shard:
            s = json.loads((search.trial_dir(grid.dir, i) / "summary.json").read_text())
            assert sorted(s["fused_with"]) == shard


# ---------------------------------------------------------------- resume


def test_resume_skips_the_finished_trials(grid, tmp_path):
    shared = tmp_path / "shared"
    shutil.copytree(grid.dir, shared)
    shutil.rmtree(search.trial_dir(shared, 5))
    kept = {i: (search.trial_dir(shared, i) / "summary.json").read_bytes() for i in range(5)}
    result = ok("search", grid.config, *GRID, "--resume", shared)
    assert trial_lines(result.stderr) == [5]
    assert all((search.trial_dir(shared, i) / "summary.json").read_bytes() == kept[i]
               for i in range(5))  # fmt: skip
    assert trial_lines(ok("search", "--resume", shared).stderr) == []  # the stored plan
    assert summary_of(shared)["completed"] == 6


@pytest.mark.parametrize("other", [
    ["--grid", "optim.lambda=0.001,0.01", "--grid", "model.hidden=4,8"],  # a value fewer
    ["--grid", "model.hidden=4,8", "--grid", "optim.lambda=0.001,0.01,0.1"],  # other order
    ["--grid", "optim.lambda=0.001,0.01,0.1"],  # an axis fewer
])  # fmt: skip
def test_resume_with_another_grid_is_refused(grid, tmp_path, other):
    shared = tmp_path / "shared"
    shutil.copytree(grid.dir, shared)
    before = files_of(shared)
    result = invoke("search", grid.config, *other, "--resume", shared)
    one_error_line(result, 2, "holds a different search", "search.space", "use a new --dir")
    assert files_of(shared) == before


def test_grid_without_a_config_is_refused(grid, tmp_path):
    for args in (["--resume", grid.dir, *GRID], ["collect", grid.dir, *GRID]):
        one_error_line(invoke("search", *args), 2, "--grid needs a CONFIG")


# ---------------------------------------------------------------- planning


def mixed_config(path: Path, space: str, trials: int = 2) -> Path:
    path.write_text(f"extends: {SMOKE}\nsearch:\n  trials: {trials}\n  space:\n{space}")
    return path


MIXED = ("    optim.lambda: [0.001, 0.01]\n"
         "    schedule.eta_max: {uniform: [0.05, 0.1]}\n"
         "    model.hidden: {grid: [4, 8, 16]}\n")  # fmt: skip


def test_grid_and_random_axes_draw_search_trials_per_point(tmp_path):
    cfg = load_config(mixed_config(tmp_path / "m.yaml", MIXED))
    trials = search.make_plan(cfg, "m.yaml")["trials"]
    points = [(t["params"]["optim.lambda"], t["params"]["model.hidden"]) for t in trials]
    assert points == [p for p in itertools.product([0.001, 0.01], [4, 8, 16]) for _ in range(2)]
    assert [list(t["params"]) for t in trials] == [["optim.lambda", "schedule.eta_max",
                                                    "model.hidden"]] * 12  # fmt: skip
    etas = [t["params"]["schedule.eta_max"] for t in trials]
    assert len(set(etas)) == 12 and all(0.05 <= e <= 0.1 for e in etas)
    assert search.make_plan(cfg, "m.yaml")["trials"] == trials  # deterministic


def test_plain_list_is_the_same_grid_as_grid_mapping(tmp_path):
    plain = mixed_config(tmp_path / "a.yaml", "    model.hidden: [4, 8]\n")
    mapping = mixed_config(tmp_path / "b.yaml", "    model.hidden: {grid: [4, 8]}\n")
    plans = [search.make_plan(load_config(p), "x") for p in (plain, mapping)]
    assert plans[0] == plans[1]
    assert [t["params"] for t in plans[0]["trials"]] == [{"model.hidden": 4}, {"model.hidden": 8}]


def test_grid_replaces_the_configs_entry_and_comes_last(tmp_path):
    from cifar2l.search.grid import load_search_config

    path = mixed_config(tmp_path / "m.yaml", MIXED)
    cfg = load_search_config(path, ["search.trials=1"], ["optim.lambda=0.5"])
    space = cfg.search.space
    assert list(space) == ["schedule.eta_max", "model.hidden", "optim.lambda"]
    assert space["optim.lambda"].args == [0.5] and space["schedule.eta_max"].kind == "uniform"
    assert len(search.make_plan(cfg, "m.yaml")["trials"]) == 3  # 3 points x 1 draw


def test_refine_keeps_a_grid_axis_as_given(grid, tmp_path):
    path = mixed_config(tmp_path / "m.yaml", "    optim.lambda: [0.3, 0.03]\n"
                                             "    schedule.eta_max: {uniform: [0.05, 0.1]}\n")
    cfg = load_config(path, [f"search.refine_from={grid.dir}"])
    plan = search.make_plan(cfg, "m.yaml")
    assert plan["config"]["search"]["space"]["optim.lambda"] == {"grid": [0.3, 0.03]}
    assert plan["refined_from"]["run_dir"] == str(grid.dir)


def test_a_single_point_grid_runs_once_and_unused_trials_warn(tmp_path, official_dir):
    config = plain_config(tmp_path / "plain.yaml", official_dir)
    result = ok("search", config, "--grid", "optim.lambda=0.01", "--set", "search.trials=5",
                "--dir", tmp_path / "d")  # fmt: skip
    assert "search.trials 5 is not used" in result.stderr
    assert trial_lines(result.stderr) == [0]
    assert [r["optim.lambda"] for r in results(tmp_path / "d")] == ["0.01"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("grid_args", "fragments"), [
    (["optim.lambda"], ["--grid 'optim.lambda'", "expected KEY=V1,V2"]),
    (["optim.lambda="], ["an empty value"]),
    (["optim.lambda=0.1,,0.2"], ["an empty value", "'0.1,,0.2'"]),
    (["optim.lambdaa=0.1"], ["'optim.lambdaa'", "not a config key"]),
    (["search.trials=1,2"], ["not a config key"]),
    (["init_seed=1,2"], ["init_seed", "cannot be searched"]),
    (["model.hidden=8,abc"], ["--grid model.hidden value 'abc'", "valid integer"]),
    (["optim.lambda=-1"], ["optim.lambda", "greater than or equal to 0"]),
    (["model.hidden=8,4,8"], ["the value '8' is given twice"]),
    (["optim.lambda=[0.1"], ["--grid optim.lambda", "invalid YAML"]),
    (["optim.lambda=0.1", "optim.lambda=0.2"], ["given twice"]),
    ([f"optim.lambda={','.join(str(i) for i in range(101))}",
      f"model.hidden={','.join(str(i) for i in range(1, 101))}"],
     ["101 x 100 = 10100 points", f"at most {MAX_TRIALS}"]),
])  # fmt: skip
def test_bad_grid_is_one_line_and_leaves_nothing(tmp_path, official_dir, grid_args, fragments):
    config = plain_config(tmp_path / "plain.yaml", official_dir)
    args = [a for g in grid_args for a in ("--grid", g)]
    result = invoke("search", config, *args, "--out", tmp_path / "runs", "--dir", tmp_path / "d")
    one_error_line(result, 2, *fragments)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "d").exists()


def test_too_many_trials_from_the_config_grid(tmp_path):
    space = ("    optim.lambda: {log_uniform: [0.001, 0.1]}\n"
             f"    model.hidden: {{grid: {list(range(1, 1002))}}}\n")  # fmt: skip
    config = mixed_config(tmp_path / "m.yaml", space, trials=10)
    result = invoke("search", config, "--out", tmp_path / "runs")
    one_error_line(result, 2, "1001 points x 10 search.trials", "10010 trials")
    assert not (tmp_path / "runs").exists()


def test_help_names_grid():
    out = ok("search", "--help").stdout
    assert "--grid" in out and "Replaces" in out
