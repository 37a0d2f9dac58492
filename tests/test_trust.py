"""No silent wrong answers, readable files, recorded machines and threads (issue 13)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from cifar2l import machine, runs, threads

from .conftest import ROOT, invoke, ok, one_error_line, write_official_dir

SMOKE = ROOT / "configs" / "smoke.yaml"


def train(tmp_path, official_dir, *sets: str) -> dict:
    args = ["train", SMOKE, "--set", f"data.root={official_dir}", "--out", tmp_path / "runs",
            "--json", "--quiet"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    return json.loads(ok(*args).stdout)


@pytest.fixture
def held_out(tmp_path, official_dir) -> dict:
    """A run whose validation split is a seeded hold-out of the training rows."""
    return train(tmp_path, official_dir, "data.train=all", "data.val=null", "data.val_size=40")


# ---------------------------------------------------------------- evaluate


def test_evaluate_rebuilds_the_runs_own_hold_out(held_out, tmp_path):
    s = json.loads(ok("evaluate", held_out["run_dir"], "--split", "val", "--out",
                      tmp_path / "ev", "--json").stdout)  # fmt: skip
    assert s["accuracy"] == {"val": held_out["accuracy"]["val"]}


def test_evaluate_has_no_seed_option(held_out, tmp_path):
    # On main `--seed 7` drew another hold-out, from images the network trained on.
    result = invoke("evaluate", held_out["run_dir"], "--split", "val", "--seed", "7",
                    "--out", tmp_path / "ev")  # fmt: skip
    assert result.exit_code == 2
    assert "--seed" in result.output
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("override", ["seed=7", "data.val_size=20", "data.train=[data_batch_1]",
                                      "optim.lambda=0.5"])  # fmt: skip
def test_evaluate_refuses_overrides_that_change_the_splits(held_out, tmp_path, override):
    result = invoke("evaluate", held_out["run_dir"], "--split", "val", "--set", override,
                    "--out", tmp_path / "ev")  # fmt: skip
    one_error_line(result, 2, override, "data.root")
    assert not (tmp_path / "ev").exists()


def test_evaluate_on_a_moved_copy_of_the_data(held_out, tmp_path, official_dir):
    moved = tmp_path / "moved"
    shutil.copytree(official_dir, moved / official_dir.name)
    s = json.loads(ok("evaluate", held_out["run_dir"], "--split", "val", "--set",
                      f"data.root={moved / official_dir.name}", "--out", tmp_path / "ev",
                      "--json").stdout)  # fmt: skip
    assert s["accuracy"] == {"val": held_out["accuracy"]["val"]}


def test_evaluate_refuses_other_data(held_out, tmp_path):
    other = write_official_dir(tmp_path / "other", seed=5)  # same shape, other images
    result = invoke("evaluate", held_out["run_dir"], "--split", "val", "--set",
                    f"data.root={other}", "--out", tmp_path / "ev")  # fmt: skip
    one_error_line(result, 1, "val split", "fingerprint", "refusing")
    assert not (tmp_path / "ev").exists()


def test_fingerprints_are_recorded_in_the_summary_and_the_weights(held_out):
    prints = held_out["data"]["fingerprints"]
    assert set(prints) == {"train", "val", "test"} and len(set(prints.values())) == 3
    with np.load(Path(held_out["run_dir"]) / "weights.npz") as f:
        assert json.loads(str(f["fingerprints"])) == prints


# ---------------------------------------------------------------- files


def test_run_files_honour_the_umask(tmp_path, official_dir):
    old = os.umask(0o022)
    try:
        s = train(tmp_path, official_dir)
    finally:
        os.umask(old)
    files = [p for p in Path(s["run_dir"]).rglob("*") if p.is_file()]
    assert {"summary.json", "metrics.csv", "weights.npz", "accuracy.png"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_atomic_write_follows_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        runs.atomic_write(tmp_path / "a.txt", "x")
        runs.save_npz(tmp_path / "b.npz", a=np.zeros(2))
    finally:
        os.umask(old)
    for name in ("a.txt", "b.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


# ---------------------------------------------------------------- machine and threads


def test_summary_records_what_the_numbers_depend_on(tmp_path, official_dir):
    m = train(tmp_path, official_dir)["machine"]
    assert m["cpu"] and m["numpy"] == np.__version__ and m["threads"] >= 1
    assert m["blas"] and {"library", "version", "threads"} <= set(m["blas"][0])
    assert machine.same_machine(m, machine.describe())


def test_threads_option_sets_blas_for_the_run_and_restores_it(tmp_path, official_dir):
    before = threads.blas_threads()
    s = json.loads(ok("train", SMOKE, "--set", f"data.root={official_dir}", "--out",
                      tmp_path / "runs", "--json", "--threads", "1").stdout)  # fmt: skip
    assert s["machine"]["threads"] == 1
    assert threads.blas_threads() == before


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_thread_counts_are_usage_errors(tmp_path, official_dir, value, monkeypatch):
    monkeypatch.setenv("CIFAR2L_THREADS", value)
    result = invoke("train", SMOKE, "--set", f"data.root={official_dir}", "--out",
                    tmp_path / "runs")  # fmt: skip
    one_error_line(result, 2, "CIFAR2L_THREADS")
    assert not (tmp_path / "runs").exists()


def test_thread_choice_precedence(tmp_path):
    env = {"CIFAR2L_THREADS": "3", "OPENBLAS_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "1"}
    assert threads.choose(5, env, tmp_path).threads == 5
    assert threads.choose(None, env, tmp_path).source == "CIFAR2L_THREADS"
    env.pop("CIFAR2L_THREADS")
    assert threads.choose(None, env, tmp_path).threads == 2
    env.pop("OPENBLAS_NUM_THREADS")
    choice = threads.choose(None, env, tmp_path)
    assert (choice.threads, choice.cpus_source) == (1, "SLURM_CPUS_PER_TASK")


@pytest.mark.parametrize("text, cpus", [("max 100000", None), ("150000 100000", 1.5),
                                        ("400000 100000", 4.0)])  # fmt: skip
def test_cgroup_quota(tmp_path, text, cpus):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert threads.cgroup_quota(tmp_path) == cpus


def test_a_fractional_quota_rounds_down(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    assert threads.available_cpus({}, tmp_path) == (1, "cgroup quota")


def test_workers_split_the_cpus():
    assert [threads.split(8, j) for j in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_load_warning_only_when_the_cpus_are_busy():
    choice = threads.ThreadChoice(2, "cpus", 2, "affinity")
    assert threads.load_warning(choice, load=1.0) is None
    assert "--threads 1" in threads.load_warning(choice, load=4.7)
    assert threads.load_warning(threads.ThreadChoice(1, "cpus", 2, "affinity"), 9.0) is None


# ---------------------------------------------------------------- report: only reproductions count

DEFAULT = ROOT / "configs" / "default.yaml"


@pytest.fixture
def bigger_dir(tmp_path) -> Path:
    return write_official_dir(tmp_path / "bigger", per_batch=200)  # batch 100 fits


def test_a_modified_run_is_shown_as_modified_and_not_counted(tmp_path, bigger_dir):
    s = json.loads(ok("train", DEFAULT, "--set", f"data.root={bigger_dir}", "--set",
                      "optim.lambda=0.005", "--seed", "1", "--out", tmp_path / "runs",
                      "--json", "-q").stdout)  # fmt: skip
    out = tmp_path / "report"
    rep = json.loads(ok("report", s["run_dir"], "--out", out, "--json").stdout)
    (item,) = rep["items"]
    assert item["item"] == "Table 2: n_s=500, 1 cycle" and item["status"] == "modified"
    assert "optim.lambda=0.005" in item["modified"] and "seed=1" in item["modified"]
    assert any(m.startswith("data: train 200 images") for m in item["modified"])
    md = (out / "REPORT.md").read_text()
    assert "modified, not counted: seed=1, optim.lambda=0.005, data: train 200" in md
    assert "| ok |" not in md


def test_only_keys_that_change_nothing_are_ignored():
    from cifar2l.config import load_config
    from cifar2l.items import config_differences

    item = load_config(DEFAULT)
    same = load_config(DEFAULT, ["data.root=/elsewhere", "train.log_every=7",
                                 "train.checkpoint_every=50", "expected=null"])  # fmt: skip
    assert config_differences(same, item, "train") == []
    other = load_config(DEFAULT, ["seed=1", "schedule.n_s=100"])
    assert config_differences(other, item, "train") == ["seed=1", "schedule.n_s=100"]
    # an LR range test never reads the schedule; a gradient check never reads train.*
    assert config_differences(load_config(DEFAULT, ["schedule.n_s=100"]), item, "lrrange") == []
    assert config_differences(load_config(DEFAULT, ["lrrange.steps=800"]), item,
                              "lrrange") == ["lrrange.steps=800"]  # fmt: skip


def test_data_other_than_cifar10_is_a_modification():
    from cifar2l.config import load_config
    from cifar2l.items import data_differences

    cfg = load_config(ROOT / "configs" / "search-coarse.yaml")
    assert data_differences({"train": 45000, "val": 5000, "test": 10000}, cfg) == []
    assert data_differences({"train": 9000, "val": 1000, "test": 10000}, cfg) == [
        "data: train 9000 images (CIFAR-10 gives 45000)",
        "data: val 1000 images (CIFAR-10 gives 5000)"]  # fmt: skip


def test_report_skips_evaluate_runs_the_readme_glob_matches(tmp_path, official_dir):
    s = json.loads(ok("train", SMOKE, "--set", f"data.root={official_dir}", "--set",
                      "expected={item: 'Table 2: smoke'}", "--out", tmp_path / "runs",
                      "--name", "default", "--json", "-q").stdout)  # fmt: skip
    ok("evaluate", s["run_dir"], "--out", tmp_path / "runs", "-q")
    matched = sorted((tmp_path / "runs").glob("*-train-default"))
    assert len(matched) == 2  # the evaluate run is named after the run it scored
    rep = json.loads(ok("report", *matched, "--out", tmp_path / "report", "--json").stdout)
    assert [i["item"] for i in rep["items"]] == ["Table 2: smoke"]
    assert len(rep["skipped"]) == 1 and "evaluate run" in rep["skipped"][0]


def test_benchmark_tables_name_their_machine(tmp_path):
    from cifar2l import report

    here = machine.describe()
    (tmp_path / "results.md").write_text("# Benchmarks\n\n| a | b |\n")
    (tmp_path / "results.json").write_text(json.dumps(
        {"machine": "Some CPU", "date": "2026-01-02 03:04", "machine_facts": here}))
    (cpu, gpu) = report.benchmarks(here, tmp_path)
    assert cpu["same_machine"] and "this machine" in cpu["label"] and "2026-01-02" in cpu["label"]
    assert gpu["text"] is None
    other = {**here, "cpu": "AMD EPYC 7B13"}
    (cpu, _) = report.benchmarks(other, tmp_path)
    assert not cpu["same_machine"] and "another machine" in cpu["label"]
    assert "Some CPU" in cpu["label"] and "for reference only" in cpu["label"]
    md = "\n".join(report.performance_md([cpu]))
    assert "another machine" in md and "| a | b |" in md


# ---------------------------------------------------------------- search --repeat-best


def smoke_search(tmp_path, official_dir, *extra: str) -> dict:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata: {{root: {official_dir}, train: all, val: null, "
                   "val_size: 40}\nsearch:\n  trials: 3\n  space:\n    optim.lambda: "
                   "{log_uniform: [1.0e-4, 1.0e-1]}\nexpected:\n  item: 'Table 3: smoke'\n"
                   "  top: [[0.01, 0.5], [0.02, 0.4]]\n")  # fmt: skip
    return json.loads(ok("search", cfg, "--dir", tmp_path / "s", "--json", "-q",
                         *extra).stdout)  # fmt: skip


def test_repeat_best_retrains_the_winner_over_seeds(tmp_path, official_dir):
    from cifar2l import report

    s = smoke_search(tmp_path, official_dir, "--repeat-best", "3")
    again = s["best_repeat"]
    assert again["trial"] == s["best"]["trial"] and again["repeat"] == 3
    assert len(again["accuracy_runs"]["val"]) == 3 and again["accuracy_std"]["val"] >= 0
    target = tmp_path / "s" / "best-repeat"
    trial = tmp_path / "s" / "trials" / f"{again['trial']:03d}"
    assert (target / "config.yaml").read_text() == (trial / "config.yaml").read_text()
    assert sorted(p.name for p in (target / "repeats").iterdir()) == ["00", "01", "02"]
    stamp = (target / "summary.json").stat().st_mtime_ns
    resumed = json.loads(ok("search", "--resume", tmp_path / "s", "--repeat-best", "3",
                            "--json", "-q").stdout)  # fmt: skip
    assert resumed["best_repeat"] == again  # kept, not trained again
    assert (target / "summary.json").stat().st_mtime_ns == stamp
    rows = report.load_item(tmp_path / "s").rows
    assert rows[-1].label == "best trial retrained over 3 seeds: val accuracy"
    assert rows[-1].std == pytest.approx(again["accuracy_std"]["val"])
    assert s["timing"]["best_repeat"] > 0
    assert sum(s["timing"].values()) == pytest.approx(s["seconds"], abs=0.01)


def test_search_workers_split_the_threads(tmp_path, official_dir):
    s = smoke_search(tmp_path, official_dir, "--jobs", "2")
    assert s["completed"] == 3
    want = threads.split(threads.choose().threads, 2)
    for trial in sorted((tmp_path / "s" / "trials").glob("*/summary.json")):
        assert json.loads(trial.read_text())["machine"]["threads"] == want
