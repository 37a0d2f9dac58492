"""Interrupted training resumes exactly: checkpoints, signals, `train --resume`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifar2l import checkpoint

from .conftest import ROOT, invoke, ok, write_official_dir

SMOKE = ROOT / "configs" / "smoke.yaml"


def only_run(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


def same_outputs(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    with np.load(a / "weights.npz") as wa, np.load(b / "weights.npz") as wb:
        for k in ("W1", "b1", "W2", "b2"):
            np.testing.assert_array_equal(wa[k], wb[k])


@pytest.fixture
def args(tmp_path, official_dir):
    # 2 cycles of 2 x 10 updates, 4 updates per epoch (40 rows / batch 10): cycle ends at 20,
    # epochs start at multiples of 4; momentum, dropout and noise make every stream matter.
    return [str(SMOKE), "--set", f"data.root={official_dir}", "--set", "schedule.cycles=2",
            "--set", "optim.momentum=0.9", "--set", "model.dropout=0.2",
            "--set", "augment.noise.fraction=0.5", "--set", "train.log_every=3", "-q"]  # fmt: skip


@pytest.fixture
def reference(tmp_path, args) -> Path:
    ok("train", *args, "--out", tmp_path / "ref")
    return only_run(tmp_path / "ref")


@pytest.mark.parametrize("stop_at", [1, 6, 13, 20, 39])  # early, mid-epoch, cycle end, last
def test_signal_at_a_step_then_resume_is_bitwise_identical(tmp_path, args, reference,
                                                           monkeypatch, stop_at):  # fmt: skip
    calls = {"n": 0}

    def fake_pending():  # SIGTERM "arrives" just before update `stop_at`
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == stop_at else None

    # monkeypatch.context: undoing the whole monkeypatch would also undo the autouse fixture's
    # environment (and let a CIFAR2L_DATA from the shell win over data.root).
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGTERM)
        result = invoke("train", *args, "--out", tmp_path / "runs")
    assert result.exit_code == 143, result.output
    assert "Error: interrupted by SIGTERM" in result.stderr
    run = only_run(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (run / checkpoint.NAME).is_file() and not (run / "weights.npz").exists()

    resumed = json.loads(ok("train", "--resume", run, "--json").stdout)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == stop_at
    same_outputs(run, reference)
    assert not (run / checkpoint.NAME).exists()
    assert len((run / "command.txt").read_text().splitlines()) == 2  # the run, then the resume


def test_checkpoints_are_written_at_cycle_ends_and_every_n(tmp_path, args, monkeypatch):
    saved = []
    real_save = checkpoint.save
    monkeypatch.setattr(
        checkpoint, "save", lambda p, s, *g: (saved.append(s.step), real_save(p, s, *g))
    )
    ok("train", *args, "--set", "train.checkpoint_every=7", "--out", tmp_path / "runs")
    assert saved == [7, 14, 20, 21, 28, 35]  # every 7, plus the cycle end at 20 (40 = the end)


def test_resume_errors_are_one_line(tmp_path, args, reference):
    r = invoke("train", "--resume", tmp_path / "nowhere")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "Traceback" not in r.output
    r = invoke("train", "--resume", reference)  # completed: its checkpoint is gone
    assert r.exit_code == 1 and "no checkpoint" in r.stderr
    r = invoke("train", str(SMOKE), "--resume", reference)
    assert r.exit_code == 2 and "--resume" in r.stderr


def test_real_sigterm_then_resume(tmp_path):
    """A real process killed with SIGTERM mid-training resumes to the uninterrupted result."""
    src = write_official_dir(tmp_path / "src", per_batch=400)
    args = [str(SMOKE), "--set", f"data.root={src}", "--set", "schedule.n_s=1500",
            "--set", "model.hidden=64", "--set", "optim.momentum=0.5",
            "--set", "schedule.eta_max=0.01", "-q"]  # fmt: skip
    cmd = [sys.executable, "-m", "cifar2l", "train"]
    ref = subprocess.run([*cmd, *args, "--out", str(tmp_path / "ref")], capture_output=True)
    assert ref.returncode == 0, ref.stderr
    resumed_steps = set()
    for delay in (0.8, 1.6):
        out = tmp_path / f"killed-{delay}"
        proc = subprocess.Popen([*cmd, *args, "--out", str(out)], stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not list(out.glob("*/timing.csv")) and time.time() < deadline:
            if list(out.glob("*/summary.json")):
                time.sleep(delay)  # training has started: let it run a while, then kill
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        run = only_run(out)
        status = json.loads((run / "summary.json").read_text())["status"]
        if status == "completed":  # it finished before the signal (or was exiting): no resume
            continue
        assert proc.returncode == 143, err
        assert b"Traceback" not in err
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
        again = subprocess.run([*cmd, "--resume", str(run), "--json"], capture_output=True)
        assert again.returncode == 0, again.stderr
        resumed_steps.add(json.loads(again.stdout)["resumed_from_step"])
        assert "--resume" in (run / "command.txt").read_text().splitlines()[-1]
        same_outputs(run, only_run(tmp_path / "ref"))
    assert resumed_steps, "the process always finished before the signal: make it slower"


def test_interrupted_search_trial_resumes_from_its_checkpoint(tmp_path, official_dir,
                                                             monkeypatch):  # fmt: skip
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {official_dir}, train: all, val: null, val_size: 40}}\n"
        "schedule: {cycles: 2}\n"
        "search:\n  trials: 3\n  fuse: 'off'\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
    )
    ok("search", cfg, "--dir", tmp_path / "ref", "-q")
    calls = {"n": 0}

    def fake_pending():  # SIGTERM just before update 25 of the second trial (40 per trial)
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == 39 + 25 else None

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGTERM)
        r = invoke("search", cfg, "--dir", tmp_path / "cut", "-q")
    assert r.exit_code == 143, r.output
    trial = tmp_path / "cut" / "trials" / "001"
    assert json.loads((trial / "summary.json").read_text())["status"] == "interrupted"
    assert (trial / checkpoint.NAME).is_file()
    first = (tmp_path / "cut" / "trials" / "000" / "summary.json").read_bytes()

    ok("search", "--resume", tmp_path / "cut", "-q")
    s = json.loads((trial / "summary.json").read_text())
    assert s["status"] == "completed" and s["resumed_from_step"] == 25
    assert (tmp_path / "cut" / "trials" / "000" / "summary.json").read_bytes() == first
    for i in range(3):
        name = f"trials/{i:03d}"
        same_outputs(tmp_path / "cut" / name, tmp_path / "ref" / name)


def test_interrupted_fused_group_resumes_each_trial_from_its_checkpoint(tmp_path, official_dir,
                                                                        monkeypatch):  # fmt: skip
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {official_dir}, train: all, val: null, val_size: 40}}\n"
        "schedule: {cycles: 2}\n"
        "search:\n  trials: 3\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
        "    optim.momentum: {choice: [0.0, 0.5]}\n"
    )
    ok("search", cfg, "--dir", tmp_path / "ref", "-q")
    calls = {"n": 0}

    def fake_pending():  # SIGTERM just before update 17 of the fused pass
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == 17 else None

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGTERM)
        r = invoke("search", cfg, "--dir", tmp_path / "cut", "-q")
    assert r.exit_code == 143, r.output
    for i in range(3):
        trial = tmp_path / "cut" / "trials" / f"{i:03d}"
        s = json.loads((trial / "summary.json").read_text())
        assert s["status"] == "interrupted" and len(s["fused_with"]) == 3
        assert (trial / checkpoint.NAME).is_file()

    ok("search", "--resume", tmp_path / "cut", "-q")
    for i in range(3):
        name = f"trials/{i:03d}"
        s = json.loads((tmp_path / "cut" / name / "summary.json").read_text())
        ref = json.loads((tmp_path / "ref" / name / "summary.json").read_text())
        assert s["status"] == "completed" and s["resumed_from_step"] == 17
        for split in ("train", "val", "test"):  # resumed alone: equal up to rounding
            assert abs(s["accuracy"][split] - ref["accuracy"][split]) <= 0.002


@pytest.mark.parametrize("stop_at", [5, 30])
def test_resume_keeps_snapshots_and_the_new_options_exact(tmp_path, official_dir, monkeypatch,
                                                          stop_at):  # fmt: skip
    beyond = [str(SMOKE), "--set", f"data.root={official_dir}", "--set", "schedule.kind=one_cycle",
              "--set", "schedule.steps=40", "--set", "schedule.cycles=2", "--set",
              "train.snapshots=cycles", "--set", "augment.flip=true", "--set",
              "augment.translate=2", "--set", "augment.contrast=0.2", "--set",
              "optim.label_smoothing=0.1", "--set", "optim.weight_decay=0.01", "--set",
              "optim.momentum=0.9", "--set", "optim.nesterov=true", "--set",
              "schedule.eta_max=0.01", "-q"]  # fmt: skip
    ref = json.loads(ok("train", *beyond, "--out", tmp_path / "ref", "--json").stdout)
    calls = {"n": 0}

    def fake_pending():
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == stop_at else None

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGTERM)
        assert invoke("train", *beyond, "--out", tmp_path / "runs").exit_code == 143
    run = only_run(tmp_path / "runs")
    resumed = json.loads(ok("train", "--resume", run, "--json").stdout)
    same_outputs(run, Path(ref["run_dir"]))
    assert resumed["ensemble"] == ref["ensemble"] and resumed["ensemble"]["members"] == [20, 40]
    for step in (20, 40):
        name = f"snapshots/step-{step:06d}.npz"
        with np.load(run / name) as a, np.load(Path(ref["run_dir"]) / name) as b:
            np.testing.assert_array_equal(a["W1"], b["W1"])
