"""Issue 15, items 2, 4 and 6: a resume checks that it continues the same run on the same data
with the same config, a damaged checkpoint is a clean error (or, in a search, a trial started
again), and no command writes into a directory that is not its own."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifar2l import checkpoint

from .conftest import ROOT, invoke, ok, one_error_line, write_official_dir

SMOKE = ROOT / "configs" / "smoke.yaml"


# ---------------------------------------------------------------- helpers


def train_args(src: Path, *extra: str) -> list[str]:
    # 2 cycles of 2 x 10 updates on 40 rows per batch; momentum makes the buffers matter.
    return [str(SMOKE), "--set", f"data.root={src}", "--set", "schedule.cycles=2",
            "--set", "optim.momentum=0.9", "--set", "schedule.eta_max=0.01", *extra,
            "-q"]  # fmt: skip


def only_dir(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


@contextlib.contextmanager
def signal_at(monkeypatch, at: int):
    """SIGTERM "arrives" just before update `at` (counted over the whole process)."""
    calls = {"n": 0}

    def fake_pending():
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == at else None

    # monkeypatch.context: undoing the whole monkeypatch would also undo the autouse fixture's
    with monkeypatch.context() as m:  # environment
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGTERM)
        yield


def interrupted(monkeypatch, out: Path, args: list, at: int = 13) -> Path:
    """A train run stopped by SIGTERM at update `at`, with its checkpoint."""
    with signal_at(monkeypatch, at):
        result = invoke("train", *args, "--out", out)
    assert result.exit_code == 143, result.output
    run = only_dir(out)
    assert (run / checkpoint.NAME).is_file()
    return run


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def same_outputs(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    with np.load(a / "weights.npz") as wa, np.load(b / "weights.npz") as wb:
        for k in ("W1", "b1", "W2", "b2"):
            np.testing.assert_array_equal(wa[k], wb[k])


def relabelled(src: Path, dest: Path) -> Path:
    """A copy of an official source whose labels are shifted by one class (the class folders
    of an image source renamed): the same images, other labels."""
    folder = Path(shutil.copytree(src, dest / src.name))
    for f in folder.glob("*_batch*"):
        blob = pickle.loads(f.read_bytes())
        blob[b"labels"] = [(v + 1) % 10 for v in blob[b"labels"]]
        f.write_bytes(pickle.dumps(blob))
    return folder


def refused(result, code: int, before: dict, run: Path, *fragments: str) -> str:
    line = one_error_line(result, code, *fragments)
    assert files_of(run) == before, "a refused command changed the run"
    return line


@pytest.fixture
def run(tmp_path, official_dir, monkeypatch) -> Path:
    return interrupted(monkeypatch, tmp_path / "runs", train_args(official_dir))


# ---------------------------------------------------------------- 2. same data, same config


def test_resume_on_relabelled_data_is_refused_and_changes_nothing(tmp_path, official_dir, run,
                                                                 monkeypatch):  # fmt: skip
    before = files_of(run)
    monkeypatch.setenv("CIFAR2L_DATA", str(relabelled(official_dir, tmp_path / "other")))
    r = invoke("train", "--resume", run)
    line = refused(r, 1, before, run, str(run), "train split", "fingerprint")
    assert "not the data this run started on" in line
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_resume_on_a_smaller_dataset_is_refused(tmp_path, run, monkeypatch):
    before = files_of(run)
    small = write_official_dir(tmp_path / "small", per_batch=20)
    monkeypatch.setenv("CIFAR2L_DATA", str(small))
    refused(invoke("train", "--resume", run), 1, before, run, str(run), "fingerprint")


def test_resume_on_the_same_data_moved_elsewhere_goes_on(tmp_path, official_dir, run,
                                                         monkeypatch):  # fmt: skip
    ok("train", *train_args(official_dir), "--out", tmp_path / "ref")
    moved = shutil.copytree(official_dir, tmp_path / "moved" / official_dir.name)
    monkeypatch.setenv("CIFAR2L_DATA", str(moved))  # the fingerprints decide, not the path
    ok("train", "--resume", run, "-q")
    same_outputs(run, only_dir(tmp_path / "ref"))


def test_resume_after_editing_the_config_is_refused_naming_the_key(run):
    text = (run / "config.yaml").read_text()
    assert "hidden: 8\n" in text
    (run / "config.yaml").write_text(text.replace("hidden: 8\n", "hidden: 16\n"))
    before = files_of(run)
    line = refused(invoke("train", "--resume", run), 1, before, run, str(run), "model.hidden")
    assert "16 (checkpoint: 8)" in line


def test_repeat_resume_on_other_data_is_refused(tmp_path, official_dir, monkeypatch):
    run = interrupted(monkeypatch, tmp_path / "runs", train_args(official_dir, "--repeat", "2"))
    before = files_of(run)
    monkeypatch.setenv("CIFAR2L_DATA", str(relabelled(official_dir, tmp_path / "other")))
    refused(invoke("train", "--resume", run), 1, before, run, str(run), "train split")
    monkeypatch.delenv("CIFAR2L_DATA")
    s = json.loads(ok("train", "--resume", run, "--json").stdout)  # the right data: it goes on
    assert s["status"] == "completed" and s["repeat"] == 2


def search_config(tmp_path: Path, src: Path) -> Path:
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {src}, train: all, val: null, val_size: 40}}\n"
        "schedule: {cycles: 2}\n"
        "search:\n  trials: 3\n  fuse: 'off'\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
    )
    return cfg


def cut(tmp_path: Path, src: Path, monkeypatch, trial: int) -> Path:
    """A search stopped by SIGTERM at update 25 of trial `trial` (40 updates a trial)."""
    with signal_at(monkeypatch, 39 * trial + 25):
        r = invoke("search", search_config(tmp_path, src), "--dir", tmp_path / "cut", "-q")
    assert r.exit_code == 143, r.output
    assert (tmp_path / "cut" / "trials" / f"{trial:03d}" / checkpoint.NAME).is_file()
    return tmp_path / "cut"


@pytest.fixture
def cut_search(tmp_path, official_dir, monkeypatch) -> Path:
    """A search stopped in its second trial: trial 000 completed, 001 with a checkpoint."""
    return cut(tmp_path, official_dir, monkeypatch, 1)


def test_search_trial_resume_on_other_data_is_refused(tmp_path, official_dir, monkeypatch):
    search = cut(tmp_path, official_dir, monkeypatch, 0)  # no trial finished: the checkpoint
    before = files_of(search)  # is all that knows the data
    monkeypatch.setenv("CIFAR2L_DATA", str(relabelled(official_dir, tmp_path / "other")))
    r = invoke("search", "--resume", search, "-q")
    refused(r, 1, before, search, str(search / "trials" / "000"), "train split", "fingerprint")


def test_search_resume_on_other_data_than_its_finished_trials_is_refused(tmp_path, official_dir,
                                                                          cut_search,
                                                                          monkeypatch):  # fmt: skip
    (cut_search / "trials" / "001" / checkpoint.NAME).unlink()  # as if killed before it: the
    before = files_of(cut_search)  # trials still to run would train on the other data
    monkeypatch.setenv("CIFAR2L_DATA", str(relabelled(official_dir, tmp_path / "other")))
    r = invoke("search", "--resume", cut_search, "-q")
    refused(r, 1, before, cut_search, str(cut_search), "trial 000", "mix two datasets")


def test_search_trial_resume_with_another_trial_config_is_refused(cut_search):
    plan = json.loads((cut_search / "search.json").read_text())
    plan["config"]["model"]["hidden"] = 16  # the plan edited by hand after the trial started
    (cut_search / "search.json").write_text(json.dumps(plan))
    before = files_of(cut_search)
    r = invoke("search", "--resume", cut_search, "-q")
    refused(r, 1, before, cut_search, str(cut_search / "trials" / "001"), "model.hidden")


def old_format(path: Path) -> None:
    """Rewrite a checkpoint as cifar2l wrote it before checksums and guards (format 1)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "sha256"}
    meta = json.loads(str(arrays["meta"]))
    for key in ("format", "guard"):
        del meta[key]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_an_older_checkpoint_resumes_with_a_warning(tmp_path, official_dir, run):
    ok("train", *train_args(official_dir), "--out", tmp_path / "ref")
    old_format(run / checkpoint.NAME)
    r = ok("train", "--resume", run)
    warnings = [x for x in r.stderr.splitlines() if x.startswith("Warning:")]
    assert len(warnings) == 1 and "older cifar2l" in warnings[0], r.stderr
    same_outputs(run, only_dir(tmp_path / "ref"))


def test_an_older_checkpoint_on_a_smaller_dataset_is_refused(tmp_path, run, monkeypatch):
    old_format(run / checkpoint.NAME)
    before = files_of(run)
    monkeypatch.setenv("CIFAR2L_DATA", str(write_official_dir(tmp_path / "small", per_batch=20)))
    r = invoke("train", "--resume", run, "-q")
    refused(r, 1, before, run, str(run / checkpoint.NAME), "does not fit", "data order")


# ---------------------------------------------------------------- 2. what may be resumed


def test_resume_of_a_completed_run_says_so(tmp_path, official_dir):
    ok("train", *train_args(official_dir), "--out", tmp_path / "runs")
    done = only_dir(tmp_path / "runs")
    before = files_of(done)
    refused(invoke("train", "--resume", done), 1, before, done, str(done), "already completed")


@pytest.mark.parametrize("summary", [None, "{not json", "[1, 2]", '{"command": "evaluate"}'])
def test_resume_without_a_readable_train_summary_is_refused(run, summary):
    if summary is None:
        (run / "summary.json").unlink()
    else:
        (run / "summary.json").write_text(summary)
    before = files_of(run)
    refused(invoke("train", "--resume", run), 1, before, run, str(run))


def test_train_resume_of_a_search_or_its_trial_is_refused(cut_search):
    before = files_of(cut_search)
    r = invoke("train", "--resume", cut_search)
    refused(r, 1, before, cut_search, "a search directory", "search --resume")
    r = invoke("train", "--resume", cut_search / "trials" / "001")
    refused(r, 1, before, cut_search, "a trial of the search", "search --resume")


def test_resume_while_another_process_holds_the_run_is_refused(run):
    before = files_of(run)
    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = invoke("train", "--resume", run)
    finally:
        os.close(fd)
    refused(r, 1, before, run, str(run), "another cifar2l process")
    ok("train", "--resume", run, "-q")  # released: it resumes


def test_resume_of_a_run_still_training_in_another_process_is_refused(tmp_path):
    src = write_official_dir(tmp_path / "src", per_batch=200)
    out = tmp_path / "runs"
    args = [str(SMOKE), "--set", f"data.root={src}", "--set", "schedule.n_s=100000", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "cifar2l", "train", *args, "--out", str(out)],
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("*/timing.csv")) and not list(out.glob("*/metrics.csv")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training never started"
            if list(out.glob("*/summary.json")):
                break  # the run dir is recorded: training is under way
            time.sleep(0.05)
        r = invoke("train", "--resume", only_dir(out))
        assert proc.poll() is None, "the run finished before the resume was tried"
        one_error_line(r, 1, "another cifar2l process")
        assert json.loads((only_dir(out) / "summary.json").read_text())["status"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()


# ---------------------------------------------------------------- 4. corrupt checkpoints


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def flipped(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(5000))


def missing_key(path: Path) -> None:
    with np.load(path) as f:
        np.savez(path, **{k: f[k] for k in f.files if k != "p_W1"})


def meta_not_json(path: Path) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "sha256"}
    np.savez(path, **{**arrays, "meta": np.array("{not json")})


def rewritten(change) -> callable:
    """Change a checkpoint's state and save it again, guard and checksum valid: only the
    checks against the run's config and data can catch it."""

    def damage(path: Path) -> None:
        saved = checkpoint.read(path)
        change(saved)
        checkpoint.save(path, saved.state, saved.guard)

    return damage


def newer_format(path: Path) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "sha256"}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "format": 99}))
    np.savez(path, sha256=np.array(checkpoint.payload_digest(arrays)), **arrays)


def wrong_shape(saved) -> None:
    saved.state.params["W1"] = saved.state.params["W1"][:, :, :4].copy()


def wrong_step(saved) -> None:
    saved.state.step = 10**6


CORRUPTIONS = {
    "truncated": (truncated, "unreadable checkpoint"),
    "empty": (emptied, "unreadable checkpoint"),
    "flipped-byte": (flipped, "checkpoint"),
    "garbage": (garbage, "unreadable checkpoint"),
    "missing-key": (missing_key, "checkpoint"),
    "meta-not-json": (meta_not_json, "unreadable checkpoint"),
    "newer-format": (newer_format, "format 99"),
    "wrong-shape": (rewritten(wrong_shape), "W1"),
    "wrong-step": (rewritten(wrong_step), "step 1000000"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_one_error_line_and_changes_nothing(run, name):
    damage, fragment = CORRUPTIONS[name]
    damage(run / checkpoint.NAME)
    before = files_of(run)
    r = invoke("train", "--resume", run)
    refused(r, 1, before, run, str(run / checkpoint.NAME), fragment)


def test_a_checkpoint_of_another_config_is_refused(tmp_path, official_dir, run, monkeypatch):
    other = interrupted(monkeypatch, tmp_path / "other",
                        train_args(official_dir, "--set", "model.hidden=16"))  # fmt: skip
    shutil.copy(other / checkpoint.NAME, run / checkpoint.NAME)
    before = files_of(run)
    refused(invoke("train", "--resume", run), 1, before, run, str(run), "model.hidden")


def test_every_flipped_byte_is_refused_or_changes_nothing(run, tmp_path):
    good = checkpoint.read(run / checkpoint.NAME)
    data = (run / checkpoint.NAME).read_bytes()
    copy = tmp_path / "copy.npz"
    for pos in range(0, len(data), max(1, len(data) // 97)):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        copy.write_bytes(bytes(bad))
        try:
            saved = checkpoint.read(copy)
        except checkpoint.CorruptCheckpoint:
            continue
        # accepted: then it must be the very same checkpoint (a flip in an unused zip field)
        assert saved.state.step == good.state.step and saved.guard == good.guard, pos
        assert saved.state.rows == good.state.rows, pos
        for k, v in good.state.params.items():
            np.testing.assert_array_equal(saved.state.params[k], v)
        np.testing.assert_array_equal(saved.state.order, good.state.order)


def test_a_corrupt_trial_checkpoint_is_set_aside_and_the_trial_restarts(tmp_path, official_dir,
                                                                        cut_search):  # fmt: skip
    ok("search", search_config(tmp_path, official_dir), "--dir", tmp_path / "ref", "-q")
    trial = cut_search / "trials" / "001"
    truncated(trial / checkpoint.NAME)
    r = ok("search", "--resume", cut_search)
    warnings = [x for x in r.stderr.splitlines() if x.startswith("Warning:")]
    assert len(warnings) == 1, r.stderr
    assert "trial 001" in warnings[0] and str(trial / checkpoint.NAME) in warnings[0]
    aside = cut_search / "trials" / f"001.{checkpoint.NAME}.corrupt"
    assert aside.is_file() and str(aside) in warnings[0]
    s = json.loads((trial / "summary.json").read_text())
    assert s["status"] == "completed" and "resumed_from_step" not in s  # from scratch
    assert "starts again from scratch" in s["restarted"]
    for i in range(3):
        same_outputs(cut_search / f"trials/{i:03d}", tmp_path / f"ref/trials/{i:03d}")
    ok("search", "--resume", cut_search, "-q")  # and nothing blocks a later resume


def test_a_flipped_byte_in_a_trial_checkpoint_restarts_the_trial(tmp_path, official_dir,
                                                                 cut_search):  # fmt: skip
    flipped(cut_search / "trials" / "001" / checkpoint.NAME)
    r = ok("search", "--resume", cut_search, "--json")
    assert "Warning: trial 001" in r.stderr
    assert json.loads(r.stdout)["completed"] == 3


# ---------------------------------------------------------------- 6. a search's own directory


def test_search_dir_of_a_train_run_is_refused_and_changes_nothing(tmp_path, official_dir):
    ok("train", *train_args(official_dir), "--out", tmp_path / "runs")
    done = only_dir(tmp_path / "runs")
    before = files_of(done)
    r = invoke("search", search_config(tmp_path, official_dir), "--dir", done, "-q")
    refused(r, 2, before, done, f"--dir {done}", "holds a `train` run")


def test_search_dir_of_some_other_folder_is_refused(tmp_path, official_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    before = files_of(mine)
    r = invoke("search", search_config(tmp_path, official_dir), "--dir", mine, "-q")
    refused(r, 2, before, mine, f"--dir {mine}", "notes.txt")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_search_dir_of_another_search_is_refused(tmp_path, official_dir, cut_search):
    before = files_of(cut_search)
    cfg = search_config(tmp_path, official_dir)
    r = invoke("search", cfg, "--set", "search.seed=7", "--dir", cut_search, "-q")
    refused(r, 2, before, cut_search, "holds a different search")
    r = invoke("search", cfg, "--set", "model.hidden=16", "--resume", cut_search, "-q")
    refused(r, 2, before, cut_search, "holds a different search")


def test_search_dir_being_laid_out_by_another_shard_is_joined(tmp_path, official_dir):
    shared = tmp_path / "shared"
    (shared / "trials").mkdir(parents=True)  # what a shard starting this moment has made
    (shared / ".search.json.abc123").write_text("{")
    ok("search", search_config(tmp_path, official_dir), "--dir", shared, "-q")
    assert (shared / "summary.json").is_file()


def test_search_resume_of_a_missing_dir_is_refused(tmp_path, official_dir):
    nowhere = tmp_path / "nowhere"
    r = invoke("search", search_config(tmp_path, official_dir), "--resume", nowhere, "-q")
    one_error_line(r, 1, str(nowhere), "not a search directory")
    r = invoke("search", "--resume", nowhere, "-q")
    one_error_line(r, 1, str(nowhere), "not a search directory")
    assert not nowhere.exists()


def test_search_resume_and_dir_together_are_refused(tmp_path, official_dir, cut_search):
    before = files_of(cut_search)
    r = invoke("search", search_config(tmp_path, official_dir), "--resume", cut_search,
               "--dir", tmp_path / "elsewhere", "-q")  # fmt: skip
    refused(r, 2, before, cut_search, "--resume", "--dir")
    assert not (tmp_path / "elsewhere").exists()


def test_a_corrupt_trial_checkpoint_does_not_block_jobs_workers(cut_search):
    emptied(cut_search / "trials" / "001" / checkpoint.NAME)
    s = json.loads(ok("search", "--resume", cut_search, "--jobs", "2", "--json").stdout)
    assert s["status"] == "completed" and s["completed"] == 3
    trial = json.loads((cut_search / "trials" / "001" / "summary.json").read_text())
    assert "unreadable checkpoint" in trial["restarted"]  # the quiet workers' warning, kept


def test_repeat_run_killed_before_its_summary_said_repeat_resumes(tmp_path, official_dir,
                                                                  monkeypatch):  # fmt: skip
    args = train_args(official_dir, "--repeat", "2")
    run = interrupted(monkeypatch, tmp_path / "runs", args)
    summary = json.loads((run / "summary.json").read_text())
    del summary["repeat"], summary["init_seeds"]  # as a SIGKILL leaves it: no repeat yet
    (run / "summary.json").write_text(json.dumps(summary))
    ok("train", *args, "--out", tmp_path / "ref")
    s = json.loads(ok("train", "--resume", run, "--json").stdout)
    assert s["status"] == "completed" and s["repeat"] == 2
    for k in ("00", "01"):
        same_outputs(run / "repeats" / k, only_dir(tmp_path / "ref") / "repeats" / k)


def test_search_dir_naming_a_file_is_refused(tmp_path, official_dir):
    f = tmp_path / "a-file"
    f.write_text("mine\n")
    r = invoke("search", search_config(tmp_path, official_dir), "--dir", f, "-q")
    one_error_line(r, 1, f"--dir {f}", "not a directory")
    assert f.read_text() == "mine\n"
