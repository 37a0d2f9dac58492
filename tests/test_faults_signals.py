"""Issue 15, signals and leftovers: real processes and real signals (SIGTERM, SIGINT, a second
signal while the first is handled, kill -9), `train --repeat`, `search --jobs`, and the temp
files a killed process leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar2l import checkpoint, runs, search

from .conftest import ROOT, ok, write_official_dir
from .test_resume import same_outputs

SMOKE = ROOT / "configs" / "smoke.yaml"
PY = [sys.executable, "-m", "cifar2l"]
TIMEOUT = 120

# The package imported exactly as `python -m cifar2l` runs it, after a patch given as argv[1]
# (Python source run with the package's modules imported): a real process, in which the patch
# sends a real signal at a chosen point (the second signal, one during a cache write, a kill -9
# during a checkpoint write) that a test from outside could not time.
LAUNCHER = """\
import os, runpy, signal, sys
import numpy as np
from cifar2l import checkpoint, data, runs, train
exec(sys.argv.pop(1))
runpy.run_module("cifar2l", run_name="__main__", alter_sys=True)
"""


def patched(patch: str, *args) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, patch, *map(str, args)]


def wait_for(predicate, proc, what: str, timeout: float = TIMEOUT) -> None:
    """Poll until predicate() holds; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def only_run(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def one_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


@pytest.fixture
def src(tmp_path) -> Path:
    return write_official_dir(tmp_path / "src", per_batch=200)


def train_args(src: Path, n_s: int = 300) -> list[str]:
    """A run of 2 n_s updates with a checkpoint every 20: long enough to be signalled in the
    middle, short enough for a test."""
    return [str(SMOKE), "--set", f"data.root={src}", "--set", f"schedule.n_s={n_s}",
            "--set", "schedule.eta_max=0.01", "--set", "optim.momentum=0.5",
            "--set", "model.dropout=0.2", "--set", "train.log_every=100",
            "--set", "train.checkpoint_every=20", "-q"]  # fmt: skip


def started_run(out: Path, proc) -> Path:
    """The run dir of `proc` once its first checkpoint is written (training is under way)."""
    wait_for(lambda: list(out.glob(f"*/{checkpoint.NAME}")), proc, "the first checkpoint")
    return only_run(out)


# ---------------------------------------------------------------- 1. train --repeat


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_repeat_then_resume_equals_uninterrupted(tmp_path, src, sig):
    args = ["train", *train_args(src), "--repeat", "3"]
    ref = subprocess.run([*PY, *args, "--out", tmp_path / "ref"], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen([*PY, *args, "--out", out], stderr=subprocess.PIPE, text=True)
    run = started_run(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + sig, err
    one_error(err, f"interrupted by {signal.Signals(sig).name} at step ",
              f"; resume with: cifar2l train --resume {run}")
    s = summary(run)
    assert s["status"] == "interrupted" and s["repeat"] == 3, s
    assert (run / checkpoint.NAME).is_file()
    for k in range(3):  # the metrics so far, as a single run keeps them
        rows = (run / "repeats" / f"{k:02d}" / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("step,") and len(rows) >= 2

    again = subprocess.run([*PY, "train", "--resume", run, "--json", "-q"], capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] > 0
    reference = only_run(tmp_path / "ref")
    for k in range(3):
        same_outputs(run / "repeats" / f"{k:02d}", reference / "repeats" / f"{k:02d}")
    assert resumed["accuracy_runs"] == summary(reference)["accuracy_runs"]
    assert not (run / checkpoint.NAME).exists() and hidden(run) == []


def test_signal_while_the_repeats_are_written_completes_the_run(tmp_path, src):
    out = tmp_path / "runs"
    proc = subprocess.Popen([*PY, "train", *train_args(src, n_s=100), "--repeat", "3", "--out",
                             out], stderr=subprocess.PIPE, text=True)  # fmt: skip
    # the first repeat written: the stack is trained, the others are being written
    wait_for(lambda: list(out.glob("*/repeats/00/summary.json")), proc, "the first repeat")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    run = only_run(out)
    assert proc.returncode == 0 and "Traceback" not in err, err  # the work was done: kept
    assert summary(run)["status"] == "completed"
    assert all(summary(run / "repeats" / f"{k:02d}")["status"] == "completed" for k in range(3))
    assert not (run / checkpoint.NAME).exists()


# A second SIGTERM arrives while the first is being handled: as the interrupted run's summary
# is written (and, before it, its metrics).
SECOND_SIGNAL = """\
real_json, real_csv, sent = runs.write_json, runs.write_csv, []
def again(path):
    if not sent:
        sent.append(path)
        os.kill(os.getpid(), signal.SIGTERM)
def write_json(path, obj):
    if obj.get("status") == "interrupted":
        again(path)
    return real_json(path, obj)
def write_csv(path, columns, rows):
    if path.name == "metrics.csv" and "SECOND_IN_CSV" in os.environ:
        again(path)
    return real_csv(path, columns, rows)
runs.write_json, runs.write_csv = write_json, write_csv
"""


@pytest.mark.parametrize(("where", "repeat"), [("summary", 3), ("metrics", 1)])
def test_second_signal_while_the_first_is_handled(tmp_path, src, repeat, where):
    out = tmp_path / "runs"
    env = {**os.environ, **({"SECOND_IN_CSV": "1"} if where == "metrics" else {})}
    proc = subprocess.Popen(patched(SECOND_SIGNAL, "train", *train_args(src), "--repeat", repeat,
                                    "--out", out), stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    run = started_run(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, err
    one_error(err, "interrupted by SIGTERM")
    assert summary(run)["status"] == "interrupted"
    where_rows = run if repeat == 1 else run / "repeats" / "00"
    assert (where_rows / "metrics.csv").is_file() and (run / checkpoint.NAME).is_file()
    assert hidden(run) == []
    resumed = subprocess.run([*PY, "train", "--resume", run, "-q"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr


# ---------------------------------------------------------------- 8. search --jobs


def search_config(tmp_path: Path, src: Path, trials: int = 4, n_s: int = 150) -> Path:
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {src}}}\n"
        f"schedule: {{n_s: {n_s}, eta_max: 0.01}}\n"
        "train: {log_every: 100, checkpoint_every: 20}\n"
        f"search:\n  trials: {trials}\n  fuse: 'off'\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
    )
    return cfg


def processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line holds `text` (none: nothing left running)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = [ln for ln in (p / "status").read_text().splitlines()
                     if ln.startswith("State:")]  # fmt: skip
        except (OSError, ValueError):
            continue
        if text in cmd and not any("zombie" in s for s in state):
            found.append(int(p.name))
    return found


def results_without_seconds(path: Path) -> list[str]:
    import csv

    with open(path / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc for the workers")
def test_sigterm_to_search_jobs_stops_its_workers_then_resume_finishes(tmp_path, src):
    cfg = search_config(tmp_path, src, n_s=600)  # 1200 updates a trial: the signal lands in one
    ok("search", cfg, "--dir", tmp_path / "ref", "-q")
    shared = tmp_path / "cut"
    log = tmp_path / "stderr.txt"  # a file, not a pipe: orphaned workers would hold a pipe open
    with open(log, "w") as f:
        proc = subprocess.Popen([*PY, "search", cfg, "--dir", shared, "--jobs", "2", "-q"],
                                stderr=f)  # fmt: skip
    wait_for(lambda: list(shared.glob(f"trials/*/{checkpoint.NAME}")), proc, "a trial checkpoint")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=TIMEOUT)
    left = processes_naming(str(shared))
    err = log.read_text()
    for pid in left:  # do not leave them to the other tests
        os.kill(pid, signal.SIGKILL)
    assert left == [], "workers outlived the search"
    assert proc.returncode == 143, err
    one_error(err, "interrupted by SIGTERM; ", f"resume with: cifar2l search --resume {shared}")
    statuses = [search.trial_status(search.trial_dir(shared, i)) for i in range(4)]
    assert "interrupted" in statuses and "running" not in statuses, statuses
    for i, st in enumerate(statuses):
        if st == "interrupted":
            assert (search.trial_dir(shared, i) / checkpoint.NAME).is_file()

    again = subprocess.run([*PY, "search", "--resume", shared, "--json", "-q"],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    s = json.loads(again.stdout)
    assert s["status"] == "completed" and s["completed"] == 4 and s["pending"] == 0, s
    assert "Warning" not in again.stderr
    assert results_without_seconds(shared) == results_without_seconds(tmp_path / "ref")


def test_resume_that_leaves_trials_pending_says_which(tmp_path, src):
    cfg = search_config(tmp_path, src, trials=3, n_s=10)
    shared = tmp_path / "shared"
    ok("search", cfg, "--dir", shared, "--shard", "0/3", "-q")  # trial 000 only
    with search.claim(shared, 1) as held:  # another live process holds trial 001
        assert held
        r = subprocess.run([*PY, "search", "--resume", shared], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("Warning: ")]
    assert len(warning) == 1 and "1 trial(s) still pending (001)" in warning[0], r.stderr
    assert search.trial_status(search.trial_dir(shared, 2)) == "completed"


# ---------------------------------------------------------------- 11. leftovers


# A real SIGTERM while the decoded-data cache is being written (after its first array).
SIGNAL_IN_CACHE_WRITE = """\
real_save = np.save
def save(file, arr, *a, **k):
    real_save(file, arr, *a, **k)
    if ".tmp" in str(file):
        os.kill(os.getpid(), signal.SIGTERM)
np.save = save
"""


def cache_temps(cache_home: Path) -> list[str]:
    decoded = cache_home / "cifar2l" / "decoded"
    return sorted(p.name for p in decoded.glob(".*")) if decoded.is_dir() else []


def test_sigterm_during_the_cache_write_leaves_no_temp(tmp_path, src):
    cache_home = Path(os.environ["XDG_CACHE_HOME"])
    r = subprocess.run(patched(SIGNAL_IN_CACHE_WRITE, "train", *train_args(src, n_s=10), "--out",
                               tmp_path / "runs"), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 143, r.stderr
    one_error(r.stderr, "interrupted by SIGTERM")
    assert cache_temps(cache_home) == []
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def tag(pid: int) -> str:
    return f"{runs.writer_tag().split('-')[0]}-{pid}"


def plant(path: Path, age: float = 0.0, is_dir: bool = False) -> Path:
    if is_dir:
        path.mkdir(parents=True)
        (path / "train_x.npy").write_bytes(b"\0" * 1000)
    else:
        path.write_bytes(b"\0" * 1000)
    when = time.time() - age
    for p in [path, *(path.iterdir() if is_dir else [])]:
        os.utime(p, (when, when))
    return path


def test_stale_cache_temps_are_removed_and_live_ones_kept(tmp_path, src):
    decoded = Path(os.environ["XDG_CACHE_HOME"]) / "cifar2l" / "decoded"
    # stale: a killed writer's, an old one without a writer; live: this process's, a young one
    # without a writer, a young one of a dead pid on another host
    stale = [plant(decoded / f".tmp.{tag(dead_pid())}.abcd1234", is_dir=True),
             plant(decoded / ".tmp-abcd1234", age=2 * runs.STALE_SECONDS, is_dir=True)]  # fmt: skip
    live = [plant(decoded / f".tmp.{tag(os.getpid())}.efgh5678", is_dir=True),
            plant(decoded / ".tmp-efgh5678", is_dir=True),
            plant(decoded / f".tmp.00000000-{dead_pid()}.ijkl9012", is_dir=True)]  # fmt: skip
    ok("train", *train_args(src, n_s=10), "--out", tmp_path / "runs")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live)


# A real kill -9 in the middle of writing the second checkpoint (half of it on disk).
KILL_IN_CHECKPOINT = """\
real_savez, seen = np.savez, []
def savez(file, *a, **k):
    name = getattr(file, "name", str(file))
    if ".checkpoint.npz." in str(name):
        seen.append(name)
        if len(seen) == 2:
            with open(name, "wb") as f:
                f.write(b"PK" + b"\\0" * 100000)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_savez(file, *a, **k)
np.savez = savez
"""


def test_kill_9_during_a_checkpoint_write_leaves_no_temp_in_the_finished_run(tmp_path, src):
    args = train_args(src, n_s=60)
    ok("train", *args, "--out", tmp_path / "ref")
    r = subprocess.run(patched(KILL_IN_CHECKPOINT, "train", *args, "--out", tmp_path / "runs"),
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr
    run = only_run(tmp_path / "runs")
    assert len(hidden(run)) == 1 and ".checkpoint.npz." in hidden(run)[0]  # the partial file
    assert summary(run)["status"] == "running"  # kill -9: nothing could be recorded

    again = subprocess.run([*PY, "train", "--resume", run, "-q"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert hidden(run) == []
    same_outputs(run, only_run(tmp_path / "ref"))


def test_stale_temps_in_a_search_dir_go_at_collect_live_ones_stay(tmp_path, src):
    cfg = search_config(tmp_path, src, trials=2, n_s=10)
    shared = tmp_path / "shared"
    ok("search", cfg, "--dir", shared, "-q")
    trial = search.trial_dir(shared, 0)
    stale = [plant(shared / f".results.csv.{tag(dead_pid())}.abcd1234"),
             plant(trial / f".weights.npz.{tag(dead_pid())}.abcd1234.npz"),
             plant(trial / ".checkpoint.npz.abcd1234.npz", age=2 * runs.STALE_SECONDS)]  # fmt: skip
    # live: this process's, a young old-style name (being written), a file not a temp at all
    live = [plant(shared / f".summary.json.{tag(os.getpid())}.efgh5678"),
            plant(trial / ".checkpoint.npz.efgh5678.npz"),
            plant(shared / ".my-notes.txt", age=2 * runs.STALE_SECONDS)]  # fmt: skip
    ok("search", "collect", shared, "-q")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live)


def test_stale_temp_planted_in_an_interrupted_run_goes_on_resume(tmp_path, src):
    out = tmp_path / "runs"
    proc = subprocess.Popen([*PY, "train", *train_args(src), "--out", out],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    run = started_run(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, err
    planted = plant(run / f".metrics.csv.{tag(dead_pid())}.abcd1234")
    again = subprocess.run([*PY, "train", "--resume", run, "-q"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert not planted.exists() and hidden(run) == []


def test_signal_while_a_fused_group_is_written_writes_every_trial(tmp_path, src):
    cfg = search_config(tmp_path, src, trials=4, n_s=150)
    cfg.write_text(cfg.read_text().replace("fuse: 'off'", "fuse: auto"))
    shared = tmp_path / "shared"
    proc = subprocess.Popen([*PY, "search", cfg, "--dir", shared, "-q"], stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    # the first trial written: the fused pass is over, the other three are being written
    wait_for(lambda: (shared / "trials" / "000" / "summary.json").is_file(), proc, "trial 000")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, err  # stopped before collecting: --resume collects
    one_error(err, "interrupted by SIGTERM", f"resume with: cifar2l search --resume {shared}")
    statuses = [search.trial_status(search.trial_dir(shared, i)) for i in range(4)]
    assert statuses == ["completed"] * 4, statuses
    again = subprocess.run([*PY, "search", "--resume", shared, "--json", "-q"],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout)["ran_here"] == 0, again.stderr


# A real SIGTERM just after the run dir is opened, before the stack trains (no checkpoint yet).
SIGNAL_AT_OPEN = """\
from cifar2l import console
real_log = console.log
def log(message):
    real_log(message)
    if str(message).startswith("run dir:"):
        os.kill(os.getpid(), signal.SIGTERM)
console.log = log
"""


def test_signal_before_the_first_checkpoint_resumes_as_the_same_repeat(tmp_path, src):
    args = ["train", *train_args(src, n_s=20), "--repeat", "3"]
    ok(*args, "--out", tmp_path / "ref")
    r = subprocess.run(patched(SIGNAL_AT_OPEN, *args, "--out", tmp_path / "runs"),
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 143, r.stderr
    run = only_run(tmp_path / "runs")  # before any step: no step to name, still the command
    one_error(r.stderr, "interrupted by SIGTERM; ", f"resume with: cifar2l train --resume {run}")
    s = summary(run)
    assert s["status"] == "interrupted" and s["repeat"] == 3
    assert not (run / checkpoint.NAME).exists()
    again = subprocess.run([*PY, "train", "--resume", run, "--json", "-q"], capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["repeat"] == 3
    reference = only_run(tmp_path / "ref")
    for k in range(3):
        same_outputs(run / "repeats" / f"{k:02d}", reference / "repeats" / f"{k:02d}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_kill_9_of_search_jobs_stops_its_workers(tmp_path, src):
    cfg = search_config(tmp_path, src)
    shared = tmp_path / "cut"
    with open(tmp_path / "stderr.txt", "w") as f:
        proc = subprocess.Popen([*PY, "search", cfg, "--dir", shared, "--jobs", "2", "-q"],
                                stderr=f)  # fmt: skip
    wait_for(lambda: list(shared.glob(f"trials/*/{checkpoint.NAME}")), proc, "a trial checkpoint")
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while processes_naming(str(shared)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes_naming(str(shared))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "workers outlived the search"
    statuses = [search.trial_status(search.trial_dir(shared, i)) for i in range(4)]
    assert "interrupted" in statuses and "running" not in statuses, statuses
    again = subprocess.run([*PY, "search", "--resume", shared, "--json", "-q"],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["completed"] == 4


# ---------------------------------------------------------------- other commands


@pytest.mark.parametrize("repeat", [1, 2])
def test_sigint_during_lrrange_is_one_line_and_marks_it_interrupted(tmp_path, src, repeat):
    out = tmp_path / "runs"
    args = [ROOT / "configs" / "lrrange-80.yaml", "--set", f"data.root={src}",
            "--set", "data.val_size=200", "--set", "lrrange.steps=100000",
            "--set", "lrrange.lr_max=0.01", "--set", "lrrange.stop_factor=1.0e+9",
            "--repeat", repeat, "--out", out, "-q"]  # fmt: skip
    proc = subprocess.Popen([*PY, "lrrange", *map(str, args)], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: list(out.glob("*/summary.json")), proc, "the sweep")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    run = only_run(out)
    one_error(err, "interrupted by SIGINT", f"{run} is marked interrupted", "cannot be resumed")
    assert summary(run)["status"] == "interrupted" and hidden(run) == []
