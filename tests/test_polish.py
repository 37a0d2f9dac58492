"""Issue 17, polish: the help (flags, usage lines, shell completion), the resume command after a
signal, the run dir as the last line, the metric header on resume, CSV/JSON float precision,
evaluate's accuracies keyed by split, and the table targets reusing finished runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar2l import checkpoint, console, report, runs, tables
from cifar2l.config import load_config

from .conftest import ROOT, invoke, ok

SMOKE = ROOT / "configs" / "smoke.yaml"
COMMANDS = ["train", "gradcheck", "lrrange", "evaluate", "search", "report"]


def help_of(*args: str) -> str:
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------- the help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_without_a_value_and_plain_usage(command):
    text = help_of(command)
    assert "<bool>" not in text and "{" not in text.split("\n\n")[1] and "list[" not in text
    usage = next(ln for ln in text.splitlines() if "Usage:" in ln).strip()
    assert usage.endswith(f" {command} [OPTIONS] " + {
        "train": "[CONFIG]", "gradcheck": "CONFIG", "lrrange": "CONFIG", "evaluate": "TARGET",
        "search": "[CONFIG] [RUN_DIR]", "report": "RUN_DIRS..."}[command]), usage
    quiet = next(ln for ln in text.splitlines() if "--quiet" in ln)
    assert quiet.split("--quiet")[1].split("No progress")[0].strip(" │-q") == ""


def test_root_help_offers_shell_completion_and_no_bool():
    text = help_of()
    assert "--install-completion" in text and "--show-completion" in text
    assert "<bool>" not in text and "[OPTIONS] COMMAND [ARGS]..." in text


def test_show_completion_prints_a_bash_script():
    env = {**os.environ, "SHELL": "/bin/bash", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cifar2l", "--show-completion", "bash"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "complete " in proc.stdout and "COMP_WORDS" in proc.stdout


def test_a_flag_given_a_value_is_still_one_error(tmp_path):
    res = invoke("gradcheck", SMOKE, "--quiet", "true", "--out", tmp_path / "runs")
    assert res.exit_code == 2 and res.stderr.startswith("Error: true: unexpected extra argument")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- signals, run dir, header


@pytest.fixture
def args(official_dir):
    return [str(SMOKE), "--set", f"data.root={official_dir}", "--set", "train.log_every=3"]


def interrupted_run(tmp_path, args, monkeypatch, stop_at: int = 6):
    """A train run stopped by a (simulated) SIGINT before update `stop_at`; (run, result)."""
    calls = {"n": 0}

    def fake_pending():
        calls["n"] += 1
        return signal.SIGINT if calls["n"] == stop_at else None

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGINT)
        result = invoke("train", *args, "--out", tmp_path / "runs", "-q")
    (run,) = (tmp_path / "runs").iterdir()
    return run, result


def test_interrupt_names_the_step_and_the_exact_resume_command(tmp_path, args, monkeypatch):
    run, result = interrupted_run(tmp_path, args, monkeypatch)
    assert result.exit_code == 130, result.output
    line = result.stderr.strip()
    assert line == (f"Error: interrupted by SIGINT at step 6; what was done is saved; "
                    f"resume with: cifar2l train --resume {run}")  # fmt: skip


def test_resume_prints_the_header_again_and_ends_with_the_run_dir(tmp_path, args, monkeypatch):
    run, _ = interrupted_run(tmp_path, args, monkeypatch)
    res = ok("train", "--resume", run)
    lines = res.stderr.splitlines()
    header = [i for i, ln in enumerate(lines) if ln.split()[:2] == ["step", "epoch"]]
    rows = [i for i, ln in enumerate(lines) if ln.split() and ln.split()[0].isdigit()]
    assert len(header) == 1 and rows and header[0] < rows[0], res.stderr
    assert lines[-1] == f"Run dir: {run}"
    quiet = ok("train", *args, "--out", tmp_path / "q", "-q")
    assert "Run dir" not in quiet.output
    as_json = ok("train", *args, "--out", tmp_path / "j", "--json")
    assert "Run dir" not in as_json.output and json.loads(as_json.stdout)["run_dir"]


def test_every_run_dir_command_ends_with_its_run_dir(tmp_path, args):
    out = tmp_path / "runs"
    s = json.loads(ok("train", *args, "--out", out, "--json").stdout)
    search = tmp_path / "search.yaml"
    search.write_text(f"extends: {SMOKE}\nschedule: {{n_s: 5}}\nsearch:\n  trials: 2\n  space:\n"
                      "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n")
    expected = "{item: 'Table 2: smoke', accuracy: {test: 0.1}, tolerance: 1.0}"
    commands = [
        ["train", *args, "--out", out],
        ["train", *args, "--repeat", "2", "--out", out],
        ["gradcheck", ROOT / "configs" / "gradcheck.yaml", "--set", args[2], "--set",
         "gradcheck.hidden=3", "--set", "model.hidden=4", "--set", "gradcheck.full_size_samples=1",
         "--set", "gradcheck.full_size_coords=2", "--out", out],
        ["evaluate", s["run_dir"], "--out", out],
        ["lrrange", ROOT / "configs" / "lrrange-80.yaml", "--set", args[2], "--set",
         "data.val_size=20", "--set", "lrrange.steps=40", "--set", "lrrange.eval_every=4",
         "--set", "model.hidden=4", "--out", out],
        ["search", search, "--set", args[2], "--out", out],
    ]  # fmt: skip
    for command in commands:
        res = invoke(*command)
        assert res.exit_code == 0, (command, res.output)
        last = res.stderr.splitlines()[-1]
        assert last.startswith("Run dir: ") and Path(last[9:]).is_dir(), (command, res.stderr)
    trained = json.loads(ok("train", *args, "--set", f"expected={expected}", "--out", out,
                            "--json").stdout)  # fmt: skip
    res = ok("report", trained["run_dir"], "--out", tmp_path / "report")
    assert res.stderr.splitlines()[-1] == f"Report dir: {tmp_path / 'report'}"


# ---------------------------------------------------------------- numbers for scripts


def test_floats_are_written_at_ten_significant_digits(tmp_path):
    assert runs.rounded(0.04000600000000001) == 0.040006
    assert runs.rounded(0.48689999999999994) == 0.4869
    assert runs.rounded(1.234567890123e-9) == 1.23456789e-9  # relative: small values keep digits
    assert np.isnan(runs.rounded(float("nan"))) and runs.rounded(float("inf")) == float("inf")
    assert runs.csv_cell(np.float32(0.1)) == "0.1"  # float32 by its own digits
    assert runs.csv_cell(7) == "7" and runs.csv_cell(np.int64(3)) == "3"
    runs.write_json(tmp_path / "s.json", {"a": [0.1 + 0.2, np.float64(1 / 3)], "seed": 42})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": [0.3, 0.3333333333], "seed": 42}
    runs.write_csv(tmp_path / "m.csv", ["x", "n"], [{"x": 0.1 + 0.2, "n": 1}])
    assert (tmp_path / "m.csv").read_text() == "x,n\n0.3,1\n"


def test_run_files_hold_rounded_floats(tmp_path, args):
    s = json.loads(ok("train", *args, "--set", "optim.lambda=0.0030001", "--out", tmp_path,
                      "--json").stdout)  # fmt: skip
    run = Path(s["run_dir"])
    with open(run / "metrics.csv") as f:
        cells = [v for row in csv.DictReader(f) for v in row.values()]
    assert cells and all(len(v.replace("-", "").replace(".", "").lstrip("0").split("e")[0]) <= 10
                         for v in cells), cells  # fmt: skip
    text = (run / "summary.json").read_text()
    assert "9999999" not in text and "0000000001" not in text


def test_evaluate_json_keys_accuracies_by_split_as_train_does(tmp_path, args):
    s = json.loads(ok("train", *args, "--out", tmp_path / "t", "--json").stdout)
    ev = json.loads(ok("evaluate", s["run_dir"], "--split", "val", "--out", tmp_path / "e",
                       "--json").stdout)  # fmt: skip
    assert ev["accuracy"] == {"val": s["accuracy"]["val"]} and ev["split"] == "val"
    assert set(s["accuracy"]) == {"train", "val", "test"}


# ---------------------------------------------------------------- table targets reuse runs


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """Under tmp/runs: a finished unmodified default run; cycles3 has none. Returns (out, ran)."""
    out = tmp_path / "runs"
    done = out / "20260101-000000-train-default"
    done.mkdir(parents=True)
    summary = {"run_dir": "elsewhere", "accuracy": {"train": 0.5, "val": 0.4, "test": 0.41},
               "seconds": 1.0, "repeat": 5}  # fmt: skip

    def fake_load_item(run):
        if run != done:
            raise report.Skipped("not a run")
        seeds = load_config(ROOT / "configs" / "default.yaml").expected.seeds
        return report.Item(run, summary, load_config(SMOKE).expected, seeds, [])

    ran = []

    def fake_cifar2l(*a):
        ran.append(Path(a[1]).stem)
        return {**summary, "run_dir": str(out / f"new-{Path(a[1]).stem}")}

    monkeypatch.setattr(report, "load_item", fake_load_item)
    monkeypatch.setattr(tables, "cifar2l", fake_cifar2l)
    console.set_quiet(False)  # as `python -m cifar2l.tables` starts (an earlier -q lingers)
    return out, ran, done


def test_table2_reuses_a_finished_run_and_says_which(fake_runs, capsys):
    out, ran, done = fake_runs
    tables.main(["table2", "--out", str(out), "--jobs", "1"])
    err = capsys.readouterr().err
    assert ran == ["cycles3"], ran
    assert f"reusing {done} for train default.yaml" in err
    assert f"default: {done} (5 seeds" in err  # the reused run's own dir, not the stored one


def test_force_runs_every_item_again(fake_runs, capsys):
    out, ran, _ = fake_runs
    tables.main(["table2", "--out", str(out), "--jobs", "1", "--force"])
    assert ran == ["default", "cycles3"] and "reusing" not in capsys.readouterr().err


def test_makefile_passes_force_to_every_table_target():
    make = (ROOT / "Makefile").read_text()
    assert "FORCE_OPT := $(if $(FORCE),--force)" in make
    for target in tables.TARGETS:
        assert f"-m cifar2l.tables {target} --out $(RUNS) $(FORCE_OPT)" in make, target
