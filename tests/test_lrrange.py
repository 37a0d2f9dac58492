"""The LR range test: the rate ramp, smoothing, the suggestion rule, the sweep, and the
`cifar2l lrrange` command on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifar2l import data, lrrange, network, runs
from cifar2l.config import load_config
from cifar2l.errors import RunError
from cifar2l.rngs import make_rngs

from .conftest import ROOT, invoke, ok, one_error_line, write_official_dir

LRRANGE_80 = ROOT / "configs" / "lrrange-80.yaml"
SMOKE = ROOT / "configs" / "smoke.yaml"
HEADER = "step,lr,train_loss,train_accuracy,val_loss,val_accuracy"
# 5 batches x 60 images, 40 held out: 260 training rows, batch 20 -> 13 updates per epoch
PER_EPOCH = 13
FULL_STEPS = 2 * PER_EPOCH  # lrrange.epochs: 2


# ---------------------------------------------------------------- helpers


def write_config(path: Path, src: Path, *, stop_factor: float | None = None) -> Path:
    """An LR range config over lrrange-80.yaml and a synthetic source, seconds long."""
    extra = f", stop_factor: {stop_factor!r}" if stop_factor is not None else ""
    path.write_text(
        f"extends: {LRRANGE_80}\n"
        f"data: {{root: {src}, val_size: 40}}\n"
        "model: {hidden: 8}\n"
        "train: {batch_size: 20}\n"
        f"lrrange: {{epochs: 2, eval_every: 1, train_eval_rows: 50{extra}}}\n"
    )
    return path


def read_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "lrrange.csv").open(newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]  # fmt: skip


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def only_dir(out: Path) -> Path:
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_official_dir(tmp_path_factory.mktemp("lrsrc"), per_batch=60)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, src) -> SimpleNamespace:
    """One full sweep (stop_factor too large to stop it), run once for the module."""
    base = tmp_path_factory.mktemp("lrrange")
    with pytest.MonkeyPatch.context() as mp:  # what conftest's autouse fixture does per test
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        mp.delenv("CIFAR2L_DATA", raising=False)
        mp.setenv("CIFAR2L_URL", "file:///nonexistent/cifar-10-python.tar.gz")
        config = write_config(base / "lr.yaml", src, stop_factor=1.0e9)
        result = ok("lrrange", config, "--out", base / "runs", "--json")
    run_dir = only_dir(base / "runs")
    return SimpleNamespace(config=config, dir=run_dir, stdout=result.stdout,
                           rows=read_rows(run_dir), summary=summary_of(run_dir))  # fmt: skip


# ---------------------------------------------------------------- lr_at


@pytest.mark.parametrize("mode", ["linear", "exponential"])
def test_lr_at_end_points(mode):
    assert lrrange.lr_at(0, 11, 1e-4, 1.0, mode) == pytest.approx(1e-4, rel=1e-12)
    assert lrrange.lr_at(10, 11, 1e-4, 1.0, mode) == pytest.approx(1.0, rel=1e-12)


def test_lr_at_midpoints():
    assert lrrange.lr_at(5, 11, 1e-4, 1.0, "linear") == pytest.approx((1e-4 + 1.0) / 2)
    assert lrrange.lr_at(5, 11, 1e-4, 1.0, "exponential") == pytest.approx(1e-2, rel=1e-12)
    assert lrrange.lr_at(2, 5, 2.0, 8.0, "exponential") == pytest.approx(4.0, rel=1e-12)
    assert lrrange.lr_at(2, 5, 2.0, 8.0, "linear") == pytest.approx(5.0, rel=1e-12)


@pytest.mark.parametrize("mode", ["linear", "exponential"])
def test_lr_at_is_increasing(mode):
    lrs = [lrrange.lr_at(t, 100, 1e-5, 1.0, mode) for t in range(100)]
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    if mode == "exponential":  # a constant ratio between neighbours
        ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
        np.testing.assert_allclose(ratios, 10 ** (5 / 99), rtol=1e-9)
    else:
        np.testing.assert_allclose(np.diff(lrs), (1.0 - 1e-5) / 99, rtol=1e-9)


# ---------------------------------------------------------------- smooth


def test_smooth_centred_with_shrinking_ends():
    v = [1.0, 2.0, 3.0, 4.0, 10.0]
    np.testing.assert_allclose(lrrange.smooth(v, 3), [1.5, 2.0, 3.0, 17 / 3, 7.0])
    np.testing.assert_allclose(lrrange.smooth(v, 5), [2.0, 2.5, 4.0, 4.75, 17 / 3])
    np.testing.assert_array_equal(lrrange.smooth(v, 1), v)
    assert lrrange.smooth(v, 5).shape == (5,)


def test_smooth_window_larger_than_the_series_is_the_mean_everywhere_in_the_middle():
    np.testing.assert_allclose(lrrange.smooth([1.0, 3.0, 5.0], 7), [3.0, 3.0, 3.0])


# ---------------------------------------------------------------- suggest


def rows_of(acc: list[float], lr0: float = 1e-5, ratio: float = 10**0.25) -> list[dict]:
    return [{"lr": lr0 * ratio**k, "val_accuracy": a} for k, a in enumerate(acc)]


def test_suggest_on_a_clean_sigmoid_rise_then_fall():
    # rise: 0.1 + 0.3 sigmoid(k - 8) for k = 0..15, then a fall
    rise = [0.1 + 0.3 / (1 + math.exp(-(k - 8))) for k in range(16)]
    rows = rows_of(rise + [0.35, 0.3, 0.2, 0.1])
    s = lrrange.suggest(rows, 1)
    # base 0.1001, rise 0.2996 -> threshold ~0.130: sigmoid(-3) gives 0.114, sigmoid(-2) 0.136
    assert s["eta_min"] == rows[6]["lr"]
    assert s["eta_max"] == rows[15]["lr"]  # the top of the rise, before the fall
    assert s["peak_val_accuracy"] == pytest.approx(rise[15])
    assert s["eta_min"] <= s["eta_max"]


def test_suggest_reads_the_smoothed_curve():
    acc = [0.10, 0.10, 0.11, 0.12, 0.20, 0.30, 0.38, 0.40, 0.41, 0.35, 0.20, 0.10]
    rows = rows_of(acc)
    raw = lrrange.suggest(rows, 1)
    # unsmoothed: base 0.10, peak 0.41 at 8, threshold 0.131 -> first at 4 (0.20)
    assert (raw["eta_min"], raw["eta_max"]) == (rows[4]["lr"], rows[8]["lr"])
    s = lrrange.suggest(rows, 3)
    # smoothed (window 3): 0.10, 0.1033, 0.11, 0.1433, 0.2067, 0.2933, 0.36, 0.3967, 0.3867, ...
    # base 0.10, peak 0.3967 at 7, threshold 0.1297 -> first at 3
    assert (s["eta_min"], s["eta_max"]) == (rows[3]["lr"], rows[7]["lr"])
    assert s["peak_val_accuracy"] == pytest.approx((0.38 + 0.40 + 0.41) / 3)
    np.testing.assert_allclose(s["smoothed_val_accuracy"], lrrange.smooth(acc, 3))


def test_suggest_peak_at_the_last_point():
    rows = rows_of([0.1, 0.1, 0.2, 0.3, 0.4])
    s = lrrange.suggest(rows, 1)
    assert (s["eta_min"], s["eta_max"]) == (rows[2]["lr"], rows[4]["lr"])


@pytest.mark.parametrize("acc", [[0.3, 0.25, 0.2, 0.1, 0.05], [0.2, 0.2, 0.2, 0.2],
                                 [0.5, 0.1, 0.1, 0.1, 0.49]])  # fmt: skip
def test_suggest_without_a_rise_is_a_run_error(acc):
    with pytest.raises(RunError, match="never rose"):
        lrrange.suggest(rows_of(acc), 1)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_suggest_needs_three_rows(n):
    with pytest.raises(RunError, match="too few"):
        lrrange.suggest(rows_of([0.1, 0.5][:n] + [0.9] * max(0, n - 2)), 1)


# ---------------------------------------------------------------- the sweep, in process


def sweep_setup(src: Path, *overrides: str):
    cfg = load_config(write_config(src.parent / "sweep.yaml", src),
                      [f"data.root={src}", *overrides])  # fmt: skip
    rngs = make_rngs(cfg.seed)
    prep = data.prepare(cfg.data, cfg.dtype, rngs["split"])
    params = network.init_params(prep.train.x.shape[1], cfg.model.hidden, len(prep.classes),
                                 rngs["init"], cfg.dtype)  # fmt: skip
    return cfg, prep, rngs, params


def test_sweep_rows_follow_eval_every_and_steps(src):
    cfg, prep, rngs, params = sweep_setup(src, "lrrange.steps=8", "lrrange.eval_every=3",
                                          "lrrange.stop_factor=1e9")  # fmt: skip
    seen, stepped = [], []
    rows, ended = lrrange.sweep(params, prep, cfg, rngs, seen.append, stepped.append)
    assert ended == "reached lr_max"
    assert [r["step"] for r in rows] == [3, 6, 8]  # and always the last step
    rc = cfg.lrrange
    assert [r["lr"] for r in rows] == [lrrange.lr_at(t, 8, rc.lr_min, rc.lr_max, rc.mode)
                                       for t in (2, 5, 7)]  # fmt: skip
    assert rows[-1]["lr"] == pytest.approx(rc.lr_max)
    assert seen == rows and sum(stepped) == 8
    assert list(rows[0]) == HEADER.split(",")


def test_sweep_length_defaults_to_epochs(src):
    cfg, prep, rngs, params = sweep_setup(src, "lrrange.eval_every=5", "lrrange.stop_factor=1e9")
    assert lrrange.sweep_steps(cfg.lrrange, PER_EPOCH) == FULL_STEPS
    rows, ended = lrrange.sweep(params, prep, cfg, rngs)
    assert ended == "reached lr_max"
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 26]


# ---------------------------------------------------------------- the command


def test_lrrange_run_dir_files(sweep_run):
    names = {p.name for p in sweep_run.dir.iterdir()}
    assert {"lrrange.csv", "lrrange.png", "suggestion.yaml", "summary.json", "config.yaml",
            "command.txt"} <= names  # fmt: skip
    assert not [n for n in names if n.startswith(".")], names
    assert (sweep_run.dir / "lrrange.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep_run.dir.name.endswith("-lrrange-lr")


def test_lrrange_csv(sweep_run):
    text = (sweep_run.dir / "lrrange.csv").read_text()
    assert text.splitlines()[0] == HEADER
    rows = sweep_run.rows
    assert len(rows) == FULL_STEPS  # eval_every 1, nothing stopped it
    assert [r["step"] for r in rows] == list(range(1, FULL_STEPS + 1))
    lrs = [r["lr"] for r in rows]
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[0] == 1e-5  # lrrange-80.yaml: 1e-5 -> 1
    assert lrs[-1] == pytest.approx(1.0)
    # the schedule's rates at the CSV's 10 significant digits
    assert lrs == [runs.rounded(lrrange.lr_at(t, FULL_STEPS, 1e-5, 1.0, "exponential"))
                   for t in range(FULL_STEPS)]  # fmt: skip
    for r in rows:
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1
        assert r["train_loss"] > 0 and r["val_loss"] > 0


def test_lrrange_summary_and_suggestion(sweep_run):
    s = sweep_run.summary
    assert s["command"] == "lrrange" and s["status"] == "completed"
    assert s["ended"] == "reached lr_max"
    assert s["steps"] == FULL_STEPS
    sug = s["suggestion"]
    assert set(sug) == {"eta_min", "eta_max"}
    assert 0 < sug["eta_min"] <= sug["eta_max"]
    lrs = [r["lr"] for r in sweep_run.rows]
    assert sug["eta_min"] in lrs and sug["eta_max"] in lrs
    # the command applies the documented rule to the rows it wrote
    again = lrrange.suggest(sweep_run.rows, 5)
    assert (again["eta_min"], again["eta_max"]) == (sug["eta_min"], sug["eta_max"])
    assert s["peak_val_accuracy"] == pytest.approx(again["peak_val_accuracy"])
    yaml_cfg = load_config(sweep_run.dir / "suggestion.yaml")
    # suggestion.yaml is a config: its rates are exact; summary.json has 10 digits
    assert runs.rounded(yaml_cfg.schedule.eta_min) == sug["eta_min"]
    assert runs.rounded(yaml_cfg.schedule.eta_max) == sug["eta_max"]
    text = (sweep_run.dir / "suggestion.yaml").read_text()
    assert str(sweep_run.dir) in text and "extends:" in text


def test_json_prints_one_object(sweep_run):
    out = sweep_run.stdout
    assert out.endswith("\n") and out.count("\n") == 1
    assert json.loads(out) == sweep_run.summary


def test_suggestion_yaml_extends_a_config(sweep_run, tmp_path, src):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"extends: [{SMOKE}, {sweep_run.dir / 'suggestion.yaml'}]\n"
                   f"data: {{root: {src}}}\n")  # fmt: skip
    cfg = load_config(exp)
    sug = sweep_run.summary["suggestion"]
    rates = (runs.rounded(cfg.schedule.eta_min), runs.rounded(cfg.schedule.eta_max))
    assert rates == (sug["eta_min"], sug["eta_max"])
    assert cfg.model.hidden == 8 and cfg.schedule.n_s == 10  # the rest from smoke.yaml
    result = ok("train", exp, "--out", tmp_path / "runs", "--json")
    rows = list(csv.DictReader((Path(json.loads(result.stdout)["run_dir"]) / "metrics.csv")
                               .open(newline="")))  # fmt: skip
    assert float(rows[0]["lr"]) == pytest.approx(sug["eta_min"])


def test_lrrange_is_deterministic_and_prints_its_table(sweep_run, tmp_path):
    result = ok("lrrange", sweep_run.config, "--out", tmp_path / "runs")
    run_dir = only_dir(tmp_path / "runs")
    assert (run_dir / "lrrange.csv").read_bytes() == (sweep_run.dir / "lrrange.csv").read_bytes()
    assert summary_of(run_dir)["suggestion"] == sweep_run.summary["suggestion"]
    assert "LR range test suggestion" in result.stdout
    assert "run dir:" in result.stderr and "suggestion:" in result.stderr


def test_huge_lr_max_stops_the_sweep_early(sweep_run, tmp_path, src):
    config = write_config(tmp_path / "lr.yaml", src)  # default stop_factor: 4
    result = ok("lrrange", config, "--set", "lrrange.lr_max=1e6", "--out", tmp_path / "runs",
                "--json")  # fmt: skip
    s = json.loads(result.stdout)
    assert s["status"] == "completed"
    assert "4 x its minimum" in s["ended"], s["ended"]
    rows = read_rows(Path(s["run_dir"]))
    assert len(rows) < len(sweep_run.rows) == FULL_STEPS
    assert s["steps"] == rows[-1]["step"] == len(rows)
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] > 4 * min(losses[:-1])  # the stop rule, on the last row only
    assert all(loss <= 4 * min(losses[: i + 1]) for i, loss in enumerate(losses[:-1]))
    assert 0 < s["suggestion"]["eta_min"] <= s["suggestion"]["eta_max"] <= rows[-1]["lr"]


def nan_after(monkeypatch, calls: int) -> list:
    """Make every training step after the first `calls` return a NaN loss."""
    real, count = network.loss_and_grads, []

    def fake(*args, **kwargs):
        count.append(1)
        loss, cost, grads = real(*args, **kwargs)
        nan = np.full_like(loss, math.nan)
        return (loss, cost, grads) if len(count) <= calls else (nan, nan, grads)

    monkeypatch.setattr(network, "loss_and_grads", fake)
    return count


def test_non_finite_training_loss_ends_the_sweep_not_the_command(sweep_run, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    count = nan_after(monkeypatch, 15)
    result = ok("lrrange", sweep_run.config, "--out", tmp_path / "runs", "--json")
    assert len(count) == 16  # the sweep stopped at the first bad step
    s = json.loads(result.stdout)
    assert s["status"] == "completed"
    lr = lrrange.lr_at(15, FULL_STEPS, 1e-5, 1.0, "exponential")
    assert s["ended"] == f"non-finite loss at step 15 (lr={lr:.4g})"
    rows = read_rows(Path(s["run_dir"]))
    assert rows == sweep_run.rows[:15]  # the rows before it are those of the full sweep
    assert s["steps"] == 15
    assert (Path(s["run_dir"]) / "suggestion.yaml").is_file()


def test_divergence_with_too_few_rows_is_one_error_line(sweep_run, tmp_path, monkeypatch):
    nan_after(monkeypatch, 2)
    out = tmp_path / "runs"
    result = invoke("lrrange", sweep_run.config, "--out", out)
    one_error_line_allowing_log(result, "too few")
    run_dir = only_dir(out)
    s = summary_of(run_dir)
    assert s["status"] == "failed" and "too few" in s["error"]
    assert len(read_rows(run_dir)) == 2  # what was measured is kept
    assert not (run_dir / "suggestion.yaml").exists()


def one_error_line_allowing_log(result, *fragments: str) -> None:
    """Exit 1, no traceback, and exactly one `Error:` line (progress logs may precede it)."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "internal error" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow while diverging
def test_real_overflow_ends_the_sweep_without_a_traceback(tmp_path, src):
    config = write_config(tmp_path / "lr.yaml", src)
    result = invoke("lrrange", config, "--set", "lrrange.lr_max=1e30",
                    "--set", "lrrange.stop_factor=1e300", "--set", "lrrange.smooth=1",
                    "--out", tmp_path / "runs", "--json")  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    s = json.loads(result.stdout)
    assert "nan" in s["ended"] or "non-finite" in s["ended"], s["ended"]
    rows = read_rows(Path(s["run_dir"]))
    assert len(rows) < FULL_STEPS
    assert all(math.isfinite(r["train_loss"]) for r in rows[:-1])  # stopped at the first bad one


# ---------------------------------------------------------------- config errors and help


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("lrrange.lr_min=1.0", ["lrrange", "lr_min"]),  # == lr_max
        ("lrrange.lr_min=2.0", ["lrrange", "lr_min"]),
        ("lrrange.lr_max=1e-6", ["lrrange", "lr_max"]),
        ("lrrange.mode=cosine", ["lrrange.mode"]),
        ("lrrange.stop_factor=1.0", ["lrrange.stop_factor"]),
        ("lrrange.steps=1", ["lrrange.steps"]),
        ("lrrange.eval_every=0", ["lrrange.eval_every"]),
        ("lrrange.smooth=0", ["lrrange.smooth"]),
        ("lrrange.lr_min=0", ["lrrange.lr_min"]),
        ("lrrange.window=3", ["lrrange.window", "unknown key"]),
    ],
)
def test_bad_lrrange_config_exits_2(override, fragments, tmp_path, src):
    config = write_config(tmp_path / "lr.yaml", src)
    out = tmp_path / "runs"
    result = invoke("lrrange", config, "--set", override, "--out", out)
    line = one_error_line(result, 2, *fragments)
    assert str(config) in line
    assert not out.exists() or not any(out.iterdir())


def test_lrrange_help_has_an_example():
    result = ok("lrrange", "--help")
    assert "Example:" in result.stdout
    assert "cifar2l lrrange" in result.stdout


def test_shipped_lrrange_config_loads():
    cfg = load_config(LRRANGE_80)
    rc = cfg.lrrange
    assert rc.lr_min < rc.lr_max and rc.mode in ("linear", "exponential")
    assert cfg.model.hidden == 80
