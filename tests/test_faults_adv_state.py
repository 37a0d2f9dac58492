"""Issue 15, an adversarial pass over process and state faults: what later commands say about
work whose process is gone (killed with SIGKILL, stopped by a signal) or still alive. Real
processes and real signals."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from cifar2l import checkpoint, runs

from .conftest import ROOT, write_official_dir
from .test_faults_signals import (
    PY,
    SMOKE,
    TIMEOUT,
    one_error,
    only_run,
    patched,
    train_args,
    wait_for,
)
from .test_resume import same_outputs


@pytest.fixture
def src(tmp_path) -> Path:
    return write_official_dir(tmp_path / "src", per_batch=200)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT)  # fmt: skip


def search_config(tmp_path: Path, src: Path) -> Path:
    """Three unfused trials long enough to be caught in the middle of the first."""
    path = tmp_path / "search.yaml"
    path.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {src}, train: all, val: null, val_size: 40}}\n"
        "schedule: {n_s: 3000, eta_max: 0.01}\n"
        "train: {checkpoint_every: 20, log_every: 1000}\n"
        "search:\n  trials: 3\n  seed: 3\n  fuse: 'off'\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
    )
    return path


def started_search(tmp_path: Path, src: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([*PY, "search", search_config(tmp_path, src), "--out", out, "-q"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: list(out.glob(f"*/trials/000/{checkpoint.NAME}")), proc, "a checkpoint")
    return proc, only_run(out)


def test_collect_of_a_killed_search_says_interrupted_not_running(tmp_path, src):
    proc, path = started_search(tmp_path, src, tmp_path / "runs")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    collected = run_cli("search", "collect", path, "--json", "-q")
    assert collected.returncode == 0, collected.stderr
    s = json.loads(collected.stdout)
    assert s["status"] == "interrupted" and s["pending"] == 3, s  # no process works on it
    rep = run_cli("report", path, "--out", tmp_path / "report")
    assert rep.returncode == 1
    one_error(rep.stderr, "status interrupted", f"cifar2l search --resume {path}")
    assert run_cli("search", "--resume", path, "-q").returncode == 0
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"


def test_collect_while_a_trial_trains_says_running(tmp_path, src):
    proc, path = started_search(tmp_path, src, tmp_path / "runs")
    try:
        collected = run_cli("search", "collect", path, "--json", "-q")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["status"] == "running"  # trial 000 is being trained
    assert proc.returncode == 143, err


def test_evaluate_and_report_of_a_killed_run_say_it_is_not_running(tmp_path, src):
    out = tmp_path / "runs"
    proc = subprocess.Popen([*PY, "train", *train_args(src, n_s=3000), "--out", out],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: list(out.glob(f"*/{checkpoint.NAME}")), proc, "the first checkpoint")
    run = only_run(out)
    alive = run_cli("evaluate", run)  # while it trains: plainly running
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert alive.returncode == 1
    one_error(alive.stderr, "no weights file: the run is running")
    assert "killed" not in alive.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    hint = f"continue it with cifar2l train --resume {run}"
    for args in (["evaluate", run], ["report", run, "--out", tmp_path / "report"]):
        result = run_cli(*args)
        assert result.returncode == 1
        one_error(result.stderr, "no process is working in it (killed?)", hint)


def test_evaluate_of_an_interrupted_run_names_the_resume(tmp_path, src):
    out = tmp_path / "runs"
    proc = subprocess.Popen([*PY, "train", *train_args(src, n_s=3000), "--out", out],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: list(out.glob(f"*/{checkpoint.NAME}")), proc, "the first checkpoint")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=TIMEOUT)
    run = only_run(out)
    result = run_cli("evaluate", run)
    assert result.returncode == 1
    one_error(result.stderr, "the run is interrupted: continue it with cifar2l train --resume "
              f"{run}")  # fmt: skip


def test_locked_reads_the_lock_table_without_taking_the_lock(tmp_path):
    assert runs.locked(tmp_path) is False
    with runs.dir_lock(tmp_path):
        assert runs.locked(tmp_path) is True
    assert runs.locked(tmp_path) is False
    assert runs.locked(tmp_path / "gone") is None


# ------------------------------------------- kill -9 before the first checkpoint, then resume


@pytest.mark.parametrize("repeat", [1, 3])
def test_kill_9_before_the_first_checkpoint_resumes_by_starting_over(tmp_path, src, repeat):
    # the first checkpoint would be at the cycle end, after 4000 updates
    args = ["train", *train_args(src, n_s=2000), "--set", "train.checkpoint_every=null",
            "--repeat", repeat]  # fmt: skip
    ref = run_cli(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen([*PY, *map(str, args), "--out", out], stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    started = "*/repeats/00" if repeat > 1 else "*/summary.json"  # training under way
    wait_for(lambda: list(out.glob(started)), proc, "the run's start")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    run = only_run(out)
    assert not (run / checkpoint.NAME).exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    again = run_cli("train", "--resume", run, "-q")
    assert again.returncode == 0, again.stderr  # its process is gone: start over in place
    reference = only_run(tmp_path / "ref")
    subs = [f"repeats/{k:02d}" for k in range(repeat)] if repeat > 1 else ["."]
    for sub in subs:
        same_outputs(run / sub, reference / sub)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s.get("repeat", 1) == repeat


# ------------------------------------------- snapshots removed from an interrupted run


def test_resume_after_its_snapshots_were_removed_is_refused_and_changes_nothing(tmp_path, src):
    out = tmp_path / "runs"
    proc = subprocess.Popen([*PY, "train", *train_args(src, n_s=3000), "--set",
                             "train.snapshots=[100,4000,6000]", "--out", out],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: list(out.glob("*/snapshots/step-000100.npz")), proc, "the first snapshot")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=TIMEOUT)
    run = only_run(out)
    assert proc.returncode == 130
    (run / "snapshots" / "step-000100.npz").unlink()  # tidied away by hand
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    again = run_cli("train", "--resume", run, "-q")
    assert again.returncode == 1  # not a completed run with an ensemble of 2 instead of 3
    one_error(again.stderr, "step-000100.npz: snapshot missing")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ------------------------------------------- a signal while numba compiles the kernels

# The first time a kernel runs with a cold cache, numba compiles it (seconds), and llvmlite calls
# back into Python from C; the patch sends SIGTERM from inside such a callback (the object-cache
# notification), as a Ctrl-C in the first seconds of a fresh install lands.
IN_COMPILER = """\
from llvmlite.binding import executionengine as ee
set_cache, sent = ee.ExecutionEngine.set_object_cache, []
def set_object_cache(self, notify=None, getbuffer=None):
    def notified(module, buf):
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
            sum(range(100000))  # the handler runs here, inside the callback
        return notify(module, buf)
    return set_cache(self, notified if notify else None, getbuffer)
ee.ExecutionEngine.set_object_cache = set_object_cache
"""


def test_sigterm_while_numba_compiles_is_not_lost(tmp_path, src, monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))  # cold: it compiles
    cmd = patched(IN_COMPILER, "train", SMOKE, "--set", f"data.root={src}", "--out",
                  tmp_path / "runs", "-q")  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 143, result.stderr  # not 0: the signal is not dropped
    one_error(result.stderr, "interrupted by SIGTERM")
    for s in (tmp_path / "runs").glob("*/summary.json"):
        assert json.loads(s.read_text())["status"] == "interrupted"


# ------------------------------------------- a signal just after a temp file is made

IN_TEMP_FILE = """\
import tempfile
mkstemp = tempfile.mkstemp
def signalled_mkstemp(*args, dir=None, **kwargs):
    made = mkstemp(*args, dir=dir, **kwargs)
    if Path(dir).name == "00" and Path(dir).parent.name == "repeats":  # a repeat's first file
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100000))  # the handler runs here: made, not yet in the writer's try
    return made
tempfile.mkstemp = signalled_mkstemp
from pathlib import Path
"""


def test_sigint_as_a_temp_file_is_made_leaves_no_temp(tmp_path, src):
    out = tmp_path / "runs"
    cmd = patched(IN_TEMP_FILE, "lrrange", ROOT / "configs" / "lrrange-80.yaml", "--set",
                  f"data.root={src}", "--set", "data.val_size=200", "--repeat", 2, "--out",
                  out, "-q")  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 130, result.stderr
    one_error(result.stderr, "interrupted by SIGINT")
    (run,) = out.iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert [p.name for p in out.rglob(".*")] == []


def test_on_a_network_file_system_a_running_run_is_not_called_killed(tmp_path, monkeypatch):
    # another node's process holds its lock on the server, not in this machine's /proc/locks
    monkeypatch.setattr(runs, "file_system", lambda path: "nfs4")
    assert runs.locked(tmp_path) is None
    assert runs.status_of(tmp_path, {"status": "running", "command": "train"}) == "running"
    assert runs.file_system(Path("/")) is not None
