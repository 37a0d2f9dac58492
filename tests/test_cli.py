"""The command line, driven in-process with typer's CliRunner on synthetic data."""

from __future__ import annotations

import csv
import json
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar2l import __version__, runs
from cifar2l.cli import app
from cifar2l.config import load_config
from cifar2l.data import CIFAR10_CLASSES

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.yaml"
GRADCHECK = ROOT / "configs" / "gradcheck.yaml"
RUN_FILES = {"config.yaml", "command.txt", "metrics.csv", "timing.csv", "summary.json",
             "weights.npz", "cost.png", "loss.png", "accuracy.png", "lr.png"}  # fmt: skip
METRICS_HEADER = ("step,epoch,lr,train_loss,train_cost,train_accuracy,"
                  "val_loss,val_cost,val_accuracy")  # fmt: skip
SMOKE_STEPS = 2 * 10 * 1  # 2 * n_s * cycles of smoke.yaml


def invoke(*args) -> SimpleNamespace:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def data_set(official_dir) -> str:
    return f"data.root={official_dir}"


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []


def only_run_dir(out: Path) -> Path:
    dirs = run_dirs(out)
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def train_json(out, data_set, *extra) -> dict:
    result = ok("train", SMOKE, "--set", data_set, "--out", out, "--json", *extra)
    return json.loads(result.stdout)


def assert_usage_error(result, out: Path, *fragments: str, code: int = 2) -> str:
    """One `Error: ...` line on stderr, no traceback, no run directory."""
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    assert run_dirs(out) == []
    return lines[0]


# ---------------------------------------------------------------- train


def test_train_creates_one_complete_run_dir(smoke_args, tmp_path):
    result = ok("train", *smoke_args)
    assert result.stdout == ""  # --quiet
    run_dir = only_run_dir(tmp_path / "runs")
    assert re.fullmatch(r"\d{8}-\d{6}-train-smoke", run_dir.name), run_dir.name
    names = {p.name for p in run_dir.iterdir()}
    assert RUN_FILES <= names, RUN_FILES - names
    assert not [n for n in names if n.startswith(".")], names  # no temp files left behind
    for png in ("cost.png", "loss.png", "accuracy.png", "lr.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "command.txt").read_text().startswith("cifar2l")


def test_train_summary(smoke_args, tmp_path):
    ok("train", *smoke_args)
    run_dir = only_run_dir(tmp_path / "runs")
    s = summary_of(run_dir)
    assert s["command"] == "train"
    assert s["status"] == "completed"
    assert Path(s["run_dir"]) == run_dir
    assert s["seed"] == 42
    assert isinstance(s["seconds"], float) and s["seconds"] >= 0
    assert s["versions"]["cifar2l"] == __version__
    assert {"python", "numpy"} <= set(s["versions"])
    for metric in ("accuracy", "loss", "cost"):
        assert set(s[metric]) == {"train", "val", "test"}, s[metric]
    for split in ("train", "val", "test"):
        assert 0.0 <= s["accuracy"][split] <= 1.0
        assert s["cost"][split] > s["loss"][split] > 0  # lambda = 0.01 > 0
    assert s["steps"] == SMOKE_STEPS
    assert s["data"]["sizes"] == {"train": 40, "val": 40, "test": 40}


def test_train_metrics_and_timing_csv(smoke_args, tmp_path):
    ok("train", *smoke_args)
    run_dir = only_run_dir(tmp_path / "runs")
    text = (run_dir / "metrics.csv").read_text()
    assert text.splitlines()[0] == METRICS_HEADER
    rows = read_csv(run_dir / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == [0, 5, 10, 15, SMOKE_STEPS]  # log_every 5 in smoke.yaml
    assert float(rows[0]["lr"]) == pytest.approx(1e-5)
    assert float(rows[2]["lr"]) == pytest.approx(0.1)
    assert float(rows[-1]["lr"]) == pytest.approx(1e-5)
    assert float(rows[-1]["epoch"]) == pytest.approx(SMOKE_STEPS * 10 / 40)
    # the final metrics are those of the last row (same weights, same splits)
    s = summary_of(run_dir)
    assert float(rows[-1]["train_accuracy"]) == s["accuracy"]["train"]
    assert float(rows[-1]["val_loss"]) == s["loss"]["val"]
    timing = read_csv(run_dir / "timing.csv")
    assert [int(r["step"]) for r in timing] == steps
    seconds = [float(r["seconds"]) for r in timing]
    assert seconds == sorted(seconds)


def test_train_weights_file(smoke_args, tmp_path):
    ok("train", *smoke_args)
    with np.load(only_run_dir(tmp_path / "runs") / "weights.npz") as f:
        assert f["W1"].shape == (3072, 8) and f["b1"].shape == (8,)
        assert f["W2"].shape == (8, 10) and f["b2"].shape == (10,)
        assert f["W1"].dtype == np.float32
        assert f["mean"].shape == (3072,) and f["std"].shape == (3072,)
        assert list(f["classes"]) == CIFAR10_CLASSES
        assert "hidden: 8" in str(f["config"])


def test_same_seed_same_metrics_different_seed_differs(out, data_set):
    a = train_json(out, data_set)
    b = train_json(out, data_set)
    c = train_json(out, data_set, "--seed", "7")
    assert len({a["run_dir"], b["run_dir"], c["run_dir"]}) == 3
    metrics = [(Path(s["run_dir"]) / "metrics.csv").read_bytes() for s in (a, b, c)]
    assert metrics[0] == metrics[1]
    assert metrics[0] != metrics[2]
    assert c["seed"] == 7
    with np.load(Path(a["run_dir"]) / "weights.npz") as fa, \
            np.load(Path(b["run_dir"]) / "weights.npz") as fb:  # fmt: skip
        for key in ("W1", "b1", "W2", "b2"):
            np.testing.assert_array_equal(fa[key], fb[key])


def test_json_prints_exactly_one_object(out, data_set):
    # no --quiet: --json alone must keep stdout clean
    result = ok("train", SMOKE, "--set", data_set, "--out", out, "--json")
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1
    summary = json.loads(result.stdout)
    assert isinstance(summary, dict)
    assert Path(summary["run_dir"]).is_dir()
    assert Path(summary["run_dir"]) == only_run_dir(out)
    assert summary == summary_of(Path(summary["run_dir"]))


def test_non_quiet_train_prints_tables_and_log(out, data_set):
    result = ok("train", SMOKE, "--set", data_set, "--out", out)
    assert "final metrics" in result.stdout
    assert "run dir:" in result.stderr
    assert "val_accuracy" in result.stderr  # the row header uses the metrics.csv column names


def test_config_yaml_reflects_overrides(out, data_set, official_dir):
    s = train_json(out, data_set, "--set", "optim.lambda=0.02", "--set", "train.shuffle=false",
                   "-s", "model.hidden=6", "--seed", "9")  # fmt: skip
    run_dir = Path(s["run_dir"])
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.optim.lambda_ == 0.02
    assert cfg.train.shuffle is False
    assert cfg.model.hidden == 6
    assert cfg.seed == 9 and s["seed"] == 9
    assert Path(cfg.data.root) == official_dir
    assert cfg.schedule.n_s == 10  # from smoke.yaml
    assert "lambda: 0.02" in (run_dir / "config.yaml").read_text()
    with np.load(run_dir / "weights.npz") as f:
        assert f["W1"].shape == (3072, 6)


def test_train_with_val_size_hold_out(out, data_set):
    s = train_json(out, data_set, "--set", "data.val=null", "--set", "data.val_size=10")
    assert s["data"]["sizes"] == {"train": 30, "val": 10, "test": 40}
    # evaluate rebuilds the same seeded hold-out from the stored config
    result = ok("evaluate", s["run_dir"], "--split", "val", "--out", out, "--json")
    assert json.loads(result.stdout)["accuracy"] == {"val": s["accuracy"]["val"]}


def test_runs_started_in_the_same_second_get_distinct_dirs(out, data_set, monkeypatch):
    fake_time = SimpleNamespace(strftime=lambda fmt: "20250101-000000",
                                perf_counter=time.perf_counter, time=time.time)  # fmt: skip
    monkeypatch.setattr(runs, "time", fake_time)
    a = train_json(out, data_set)
    b = train_json(out, data_set)
    assert Path(a["run_dir"]).name == "20250101-000000-train-smoke"
    assert Path(b["run_dir"]).name == "20250101-000000-train-smoke-2"
    assert summary_of(Path(a["run_dir"]))["status"] == "completed"
    assert summary_of(Path(b["run_dir"]))["status"] == "completed"


def test_create_run_dir_is_unique(tmp_path):
    made = [runs.create_run_dir(tmp_path / "r", "train", "x y/z") for _ in range(5)]
    assert len(set(made)) == 5
    assert all(p.is_dir() and p.parent == tmp_path / "r" for p in made)
    assert re.fullmatch(r"\d{8}-\d{6}-train-x-y-z", made[0].name), made[0].name


def test_name_option(out, data_set):
    s = train_json(out, data_set, "--name", "my run")
    assert Path(s["run_dir"]).name.endswith("-train-my-run")


# ---------------------------------------------------------------- config and data errors


def test_unknown_key_in_file(out, tmp_path, data_set):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"extends: {SMOKE}\noptim:\n  lambd: 0.1\n")
    result = invoke("train", cfg, "--set", data_set, "--out", out)
    line = assert_usage_error(result, out, str(cfg), "optim.lambd", "'lambda'")
    assert line.startswith(f"Error: {cfg}: optim.lambd: unknown key")


def test_unknown_key_via_set(out, data_set):
    result = invoke("train", SMOKE, "--set", data_set, "--set", "optim.lambd=1", "--out", out)
    assert_usage_error(result, out, str(SMOKE), "optim.lambd", "did you mean 'lambda'")


def test_broken_yaml(out, tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("seed: 1\nmodel:\n  hidden: [8\n")
    result = invoke("train", cfg, "--out", out)
    assert_usage_error(result, out, str(cfg), "invalid YAML", "line ")


@pytest.mark.parametrize("bad", ["foo", "=3", "a..b=1"])
def test_bad_set_syntax(out, data_set, bad):
    result = invoke("train", SMOKE, "--set", data_set, "--set", bad, "--out", out)
    assert_usage_error(result, out, "--set", repr(bad))


def test_set_through_non_section(out, data_set):
    result = invoke("train", SMOKE, "--set", data_set, "--set", "seed.x=1", "--out", out)
    assert_usage_error(result, out, "seed", "not a section")


def test_eta_min_above_eta_max(out, data_set):
    result = invoke("train", SMOKE, "--set", data_set, "--set", "schedule.eta_min=0.5",
                    "--out", out)  # fmt: skip
    assert_usage_error(result, out, str(SMOKE), "schedule", "eta_min", "eta_max")


def test_wrong_type(out, data_set):
    result = invoke("train", SMOKE, "--set", data_set, "--set", "model.hidden=fifty", "--out", out)
    assert_usage_error(result, out, str(SMOKE), "model.hidden", "'fifty'")


def test_batch_size_larger_than_training_split(out, data_set):
    result = invoke("train", SMOKE, "--set", data_set, "--set", "train.batch_size=41",
                    "--out", out)  # fmt: skip
    assert_usage_error(result, out, str(SMOKE), "train.batch_size", "41", "40")


def test_missing_config_file(out, tmp_path):
    result = invoke("train", tmp_path / "nope.yaml", "--out", out)
    assert_usage_error(result, out, str(tmp_path / "nope.yaml"), "not found")


def test_missing_dataset(out, tmp_path):
    nowhere = tmp_path / "nowhere"
    result = invoke("train", SMOKE, "--set", f"data.root={nowhere}", "--out", out)
    assert_usage_error(result, out, "data.root", str(nowhere), code=1)


def test_gradcheck_config_error(out, data_set):
    result = invoke("gradcheck", GRADCHECK, "--set", data_set, "--set", "gradcheck.h=0",
                    "--out", out)  # fmt: skip
    assert_usage_error(result, out, str(GRADCHECK), "gradcheck.h")


# ---------------------------------------------------------------- gradcheck


def test_gradcheck_passes(out, data_set):
    result = ok("gradcheck", GRADCHECK, "--set", data_set, "--out", out, "--json")
    s = json.loads(result.stdout)
    run_dir = Path(s["run_dir"])
    assert run_dir == only_run_dir(out)
    assert re.fullmatch(r"\d{8}-\d{6}-gradcheck-gradcheck", run_dir.name)
    assert s["command"] == "gradcheck" and s["status"] == "completed" and s["seed"] == 123
    assert s["passed"] is True
    assert s["tolerance"] == 1e-6 and s["resolution"] == 1e-8
    full = s["full_size"]
    assert full["passed"] is True and full["tolerance"] == 1e-6
    assert full["coords_per_param"] == 40 and full["samples"] == 10
    keys = {"W1", "b1", "W2", "b2"}
    for part in (s, s["dropout"], full):
        # the study's measure is reported; the verdict's floored error sits >= 10x under the
        # tolerance (measured ~1e-9: the raw relative error is on the rounding floor instead)
        assert set(part["max_rel_error"]) == set(part["floored_rel_error"]) == keys
        assert all(v >= 0 for v in part["max_rel_error"].values())
        assert all(v * 10 <= s["tolerance"] for v in part["floored_rel_error"].values()), part
        assert set(part["skipped"]) == keys
        assert part["skipped"]["W2"] == part["skipped"]["b2"] == 0  # no kink moves with them
    rows = read_csv(run_dir / "gradcheck.csv")
    assert list(rows[0]) == ["problem", "lambda", "param", "coords", "skipped", "mean_abs_diff",
                             "max_abs_diff", "max_rel_error", "noise",
                             "floored_rel_error"]  # fmt: skip
    assert len(rows) == 3 * 2 * 4  # problems x lambdas x params
    assert {r["problem"] for r in rows} == {"reduced", "reduced_dropout", "full_size"}
    assert {float(r["lambda"]) for r in rows} == {0.0, 0.01}
    reduced_w1 = [r for r in rows if r["problem"] == "reduced" and r["param"] == "W1"]
    assert all(int(r["coords"]) == 20 * 50 for r in reduced_w1)
    assert summary_of(run_dir) == s


def test_gradcheck_fails_with_impossible_tolerance(out, data_set):
    small = ["--set", "gradcheck.dims=5", "--set", "gradcheck.hidden=4",
             "--set", "gradcheck.full_size_coords=3", "--set", "model.hidden=4"]  # fmt: skip
    result = invoke("gradcheck", GRADCHECK, "--set", data_set, "--set",
                    "gradcheck.tolerance=1e-30", *small, "--out", out, "--json")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    s = json.loads(result.stdout)
    assert s["passed"] is False
    assert s["tolerance"] == 1e-30  # the floored error of correct code is ~1e-9: far above it
    assert s["full_size"]["passed"] is True  # full_size_tolerance (1e-6) is not changed
    assert summary_of(only_run_dir(out))["passed"] is False


# ---------------------------------------------------------------- evaluate


@pytest.fixture
def trained(out, data_set) -> dict:
    return train_json(out, data_set)


def read_confusion(path: Path) -> tuple[list[str], np.ndarray]:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "true\\predicted"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == header[1:]
    return header[1:], np.array([[int(v) for v in r[1:]] for r in rows])


def batch_labels(official_dir: Path, name: str) -> np.ndarray:
    return np.array(pickle.loads((official_dir / name).read_bytes())[b"labels"])


def test_evaluate_test_split(trained, out, official_dir):
    result = ok("evaluate", trained["run_dir"], "--out", out, "--json")
    s = json.loads(result.stdout)
    assert s["command"] == "evaluate" and s["status"] == "completed" and s["split"] == "test"
    run_dir = Path(s["run_dir"])
    assert run_dir.is_dir() and run_dir != Path(trained["run_dir"])
    assert s["accuracy"] == {"test": trained["accuracy"]["test"]}  # keyed by split, as train
    classes, cm = read_confusion(run_dir / "confusion.csv")
    assert classes == CIFAR10_CLASSES
    assert cm.shape == (10, 10)
    assert cm.sum() == trained["data"]["sizes"]["test"] == 40
    # rows are the true classes
    labels = batch_labels(official_dir, "test_batch")
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(labels, minlength=10))
    assert np.trace(cm) / cm.sum() == pytest.approx(s["accuracy"]["test"])
    assert list(s["per_class_accuracy"]) == CIFAR10_CLASSES
    for i, c in enumerate(CIFAR10_CLASSES):
        expected = cm[i, i] / cm[i].sum() if cm[i].sum() else 0.0
        assert s["per_class_accuracy"][c] == pytest.approx(expected)
    assert (run_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert summary_of(run_dir)["accuracy"] == s["accuracy"]
    assert load_config(run_dir / "config.yaml").seed == 42


@pytest.mark.parametrize(("split", "batch"), [("val", "data_batch_2"), ("train", "data_batch_1")])
def test_evaluate_other_splits(trained, out, official_dir, split, batch):
    result = ok("evaluate", trained["run_dir"], "--split", split, "--out", out, "--json")
    s = json.loads(result.stdout)
    assert s["split"] == split
    assert s["accuracy"] == {split: trained["accuracy"][split]}
    _, cm = read_confusion(Path(s["run_dir"]) / "confusion.csv")
    assert cm.sum() == trained["data"]["sizes"][split]
    labels = batch_labels(official_dir, batch)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(labels, minlength=10))


def test_evaluate_accepts_weights_file(trained, out):
    weights = Path(trained["run_dir"]) / "weights.npz"
    s = json.loads(ok("evaluate", weights, "--out", out, "--json").stdout)
    assert s["accuracy"] == {"test": trained["accuracy"]["test"]}


def test_evaluate_missing_path(out, tmp_path):
    result = invoke("evaluate", tmp_path / "no-such-run", "--out", out)
    assert_usage_error(result, out, str(tmp_path / "no-such-run"), code=1)


def test_evaluate_wrong_weight_shapes(trained, out):
    weights = Path(trained["run_dir"]) / "weights.npz"
    with np.load(weights) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["W2"] = np.zeros((8, 9), dtype=np.float32)
    np.savez(weights, **arrays)
    before = set(run_dirs(out))
    result = invoke("evaluate", trained["run_dir"], "--out", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "shapes" in lines[0] and "(8, 9)" in lines[0]
    assert set(run_dirs(out)) == before


def test_evaluate_not_a_weights_file(trained, out):
    weights = Path(trained["run_dir"]) / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    result = invoke("evaluate", weights, "--out", out)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output
    assert "internal error" not in result.stderr


def test_evaluate_bogus_split(trained, out):
    before = set(run_dirs(out))
    result = invoke("evaluate", trained["run_dir"], "--split", "bogus", "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and "bogus" in result.stderr
    assert "Traceback" not in result.output
    assert set(run_dirs(out)) == before


# ---------------------------------------------------------------- help and entry points


@pytest.mark.parametrize("command", ["train", "gradcheck", "evaluate"])
def test_help_has_example(command):
    result = ok(command, "--help")
    assert "Example:" in result.stdout
    assert f"cifar2l {command} " in result.stdout
    assert "--set" in result.stdout


def test_root_help_lists_commands():
    result = ok("--help")
    for command in ("train", "gradcheck", "evaluate"):
        assert command in result.stdout


def test_version_option():
    assert ok("--version").stdout.strip() == f"cifar2l {__version__}"


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "cifar2l", "--help"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    for command in ("train", "gradcheck", "evaluate"):
        assert command in proc.stdout


def test_train_summary_reports_where_the_time_went(smoke_args):
    result = CliRunner().invoke(app, ["train", *smoke_args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    timing = summary["timing"]
    assert set(timing) == {"train", "eval", "io", "total"}
    assert all(v >= 0 for v in timing.values())
    assert timing["total"] == summary["seconds"]
    assert timing["train"] + timing["eval"] + timing["io"] <= timing["total"] + 0.01
