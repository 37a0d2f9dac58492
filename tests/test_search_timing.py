"""Search timings add up (trials, fused groups, the search's wall time) and no trial lock file
outlives a finished search, without giving up mutual exclusion of the claims.

Only consistency relations are asserted, never how long anything takes (machines differ).
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar2l import search
from cifar2l.search import trials as search_trials

from .conftest import ROOT, ok, write_official_dir
from .test_search import results, summary_of, trial_dirs, write_config

TRIALS = 4
ROUNDING = 0.002  # every field is rounded to 1 ms; a sum of three can be 1.5 ms off
# lambda only: fusable, so with search.fuse=auto the four trials train as one group. 200 updates
# (n_s=100) make each trial's share of the fused loop much longer than a millisecond.
SLOW = "schedule: {n_s: 100, eta_max: 0.01}\n"
TOOK = re.compile(r"^trial (\d{3}) .*\((\d+\.\d) s[,)]")


@pytest.fixture(scope="module")
def searches(tmp_path_factory) -> dict:
    """One finished 4-trial search per fuse mode, in one process each (read-only for tests)."""
    base = tmp_path_factory.mktemp("timing")
    out = {}
    with pytest.MonkeyPatch.context() as mp:  # what conftest's autouse fixture does per test
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        mp.delenv("CIFAR2L_DATA", raising=False)
        mp.setenv("CIFAR2L_URL", "file:///nonexistent/cifar-10-python.tar.gz")
        src = write_official_dir(base / "src")
        config = write_config(base / "search.yaml", src, trials=TRIALS, extra=SLOW,
                              space={"optim.lambda": "{log_uniform: [1.0e-4, 1.0e-1]}"})
        for mode in ("off", "auto"):
            d = base / mode
            result = ok("search", config, "--dir", d, "--set", f"search.fuse={mode}")
            out[mode] = {"dir": d, "stderr": result.stderr}
    out["config"] = config
    return out


def trial_summaries(path: Path) -> list[dict]:
    return [summary_of(t) for t in trial_dirs(path)]


def locks(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "trials").glob("*.lock"))


def lock_of(path: Path, index: int) -> Path:
    return path / "trials" / f"{index:03d}.lock"


def assert_trial_timing_adds_up(s: dict) -> None:
    t = s["timing"]
    assert set(t) == {"train", "eval", "io", "total"}, t
    assert t["total"] == s["seconds"], s
    assert t["total"] >= t["train"] + t["eval"] + t["io"] - ROUNDING, s
    assert min(t.values()) >= 0, t


def assert_search_timing_adds_up(s: dict) -> None:
    t = s["timing"]
    assert set(t) == {"data", "trials", "jobs", "best_repeat", "collect", "other"}, t
    assert abs(sum(t.values()) - s["seconds"]) <= ROUNDING, s
    assert min(t.values()) >= -ROUNDING, t  # `other` is the rest: never really negative


# ---------------------------------------------------------------- one process


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_trial_total_covers_its_train_eval_and_io(searches, mode):
    summaries = trial_summaries(searches[mode]["dir"])
    assert len(summaries) == TRIALS and all(s["status"] == "completed" for s in summaries)
    for s in summaries:
        assert_trial_timing_adds_up(s)
        assert ("fused_with" in s) == (mode == "auto"), s


def test_fused_trials_are_charged_their_share_of_the_group(searches):
    summaries = trial_summaries(searches["auto"]["dir"])
    assert {tuple(s["fused_with"]) for s in summaries} == {tuple(range(TRIALS))}  # one group
    group = summaries[0]["fused_group_seconds"]
    assert all(s["fused_group_seconds"] == group for s in summaries)
    for s in summaries:  # its equal share of the pass, plus its own finish
        assert s["seconds"] >= group / TRIALS - ROUNDING, s
    trains = [s["timing"]["train"] for s in summaries]
    assert max(trains) - min(trains) <= ROUNDING  # the loop's train time, split equally
    assert sum(s["seconds"] for s in summaries) >= group - ROUNDING


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_search_seconds_split_into_its_parts(searches, mode):
    d = searches[mode]["dir"]
    s = summary_of(d)
    assert_search_timing_adds_up(s)
    seconds = [x["seconds"] for x in trial_summaries(d)]
    assert s["trial_seconds"] == pytest.approx(sum(seconds), abs=1e-6)
    assert s["timing"]["trials"] == s["trial_seconds"]  # one process ran every trial
    assert s["trial_seconds"] <= s["seconds"]
    assert s["timing"]["jobs"] == 0 and s["timing"]["data"] >= 0
    assert (s["workers"], s["ran_here"]) == (1, TRIALS)
    assert sorted(float(r["seconds"]) for r in results(d)) == sorted(seconds)


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_trial_lines_show_the_seconds_of_their_summaries(searches, mode):
    d = searches[mode]["dir"]
    took = {int(m[1]): m[2] for line in searches[mode]["stderr"].splitlines()
            if (m := TOOK.match(line))}  # fmt: skip
    assert sorted(took) == list(range(TRIALS)), searches[mode]["stderr"]
    for i, text in took.items():
        assert text == f"{summary_of(search.trial_dir(d, i))['seconds']:.1f}"


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_no_lock_file_after_a_finished_search(searches, mode):
    assert locks(searches[mode]["dir"]) == []


# ---------------------------------------------------------------- other processes


def test_jobs_2_timings_add_up_and_leave_no_lock(searches, tmp_path):
    d = tmp_path / "jobs"
    ok("search", searches["config"], "--dir", d, "--jobs", 2, "-q")
    assert locks(d) == []
    s = summary_of(d)
    assert_search_timing_adds_up(s)
    assert (s["workers"], s["ran_here"]) == (2, TRIALS)
    assert s["timing"]["trials"] == 0 and s["timing"]["data"] == 0  # all in the workers
    assert s["timing"]["jobs"] > 0
    assert s["trial_seconds"] == pytest.approx(sum(x["seconds"] for x in trial_summaries(d)),
                                               abs=1e-6)  # fmt: skip
    for x in trial_summaries(d):
        assert_trial_timing_adds_up(x)


def test_shards_then_collect_add_up_and_leave_no_lock(searches, tmp_path):
    d = tmp_path / "shards"
    for i in range(2):
        s = json.loads(ok("search", searches["config"], "--dir", d, "--shard", f"{i}/2",
                          "--json").stdout)  # fmt: skip
        assert locks(d) == []  # a shard removes the locks of its own trials
        assert s["ran"] == TRIALS // 2 and s["seconds"] > 0
    ok("search", "collect", d, "-q")
    s = summary_of(d)
    assert_search_timing_adds_up(s)
    assert (s["workers"], s["ran_here"]) == (0, 0)  # collect ran no trial ...
    assert s["timing"]["trials"] == 0
    assert s["trial_seconds"] == pytest.approx(sum(x["seconds"] for x in trial_summaries(d)),
                                               abs=1e-6)  # ... but counts them all # fmt: skip


# ---------------------------------------------------------------- leftover locks


def test_resume_removes_the_locks_of_a_killed_search(searches, tmp_path):
    d = tmp_path / "killed"
    shutil.copytree(searches["off"]["dir"], d)
    for i in range(TRIALS):  # what a killed process leaves (the OS released its flocks)
        lock_of(d, i).touch()
    ok("search", "--resume", d, "-q")
    assert locks(d) == []


def test_collect_removes_stale_locks_but_not_a_held_one(searches, tmp_path):
    d = tmp_path / "held"
    shutil.copytree(searches["off"]["dir"], d)
    lock_of(d, 1).touch()  # stale: nobody holds it
    with search.claim(d, 0) as mine:
        assert mine
        ok("search", "collect", d, "-q")
        assert locks(d) == ["000.lock"]  # a held claim is left alone
    assert locks(d) == []  # and removed when released


# ---------------------------------------------------------------- mutual exclusion


def test_a_claim_excludes_others_and_removes_its_file(tmp_path):
    (tmp_path / "trials").mkdir()
    with search.claim(tmp_path, 7) as first:
        assert first and lock_of(tmp_path, 7).exists()
        with search.claim(tmp_path, 7) as second:  # another open file: the flock conflicts
            assert not second
        assert lock_of(tmp_path, 7).exists()  # the loser does not remove it
    assert not lock_of(tmp_path, 7).exists()
    with search.claim(tmp_path, 7) as again:
        assert again


def test_a_claimant_that_opened_a_removed_lock_file_locks_the_new_one(tmp_path, monkeypatch):
    """The race the removal opens: B opens the lock file, its holder A removes it and unlocks,
    B locks that orphan. B must not count it, else B and a newcomer C would both hold trial 0."""
    (tmp_path / "trials").mkdir()
    lock = lock_of(tmp_path, 0)
    with search.claim(tmp_path, 0):  # A
        early = open(lock, "a")  # B's open, just before A lets go
    assert not lock.exists()
    opened = iter([early])
    monkeypatch.setattr(search_trials, "open",  # take_lock's open, where claim looks it up
                        lambda p, mode: next(opened, None) or open(p, mode),
                        raising=False)  # fmt: skip
    with search.claim(tmp_path, 0) as b:
        assert b
        with search.claim(tmp_path, 0) as c:  # a newcomer opens the file the path names
            assert not c, "two processes hold trial 0"
        assert early.closed  # B dropped the orphan and locked that file instead
        held = open(lock, "a")
        with pytest.raises(BlockingIOError):
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.close()
    assert not lock.exists()


HAMMER = """\
import os, sys, time
from pathlib import Path
from cifar2l import search
root = Path(sys.argv[1])
while not (root / "go").exists():
    time.sleep(0.001)
held = 0
for _ in range(int(sys.argv[2])):
    with search.claim(root, 0) as mine:
        if mine:  # O_EXCL: fails if another process is inside its claim at the same time
            os.close(os.open(root / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            held += 1
            os.unlink(root / "inside")
print(held)
"""


def test_processes_racing_for_one_claim_never_hold_it_together(tmp_path):
    (tmp_path / "trials").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, str(tmp_path), "400"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    time.sleep(0.5)  # let them all reach the start line
    (tmp_path / "go").touch()
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outcomes
    assert sum(int(out) for out, _ in outcomes) > 0
    assert locks(tmp_path) == []
