"""Real processes started at the same instant: run directories, search shards and workers that
race for the same names, plans and trials.

Each process is `python -m cifar2l ...` held at a start line: a small launcher imports the
package, waits for a shared file to appear and then runs the module exactly as `-m` does, so all
of them reach the contested code together instead of one interpreter start-up apart.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, ok, write_official_dir

SMOKE = ROOT / "configs" / "smoke.yaml"
RUN_NAME = re.compile(r"(\d{8}-\d{6})-train-smoke(?:-(\d+))?")
TRIALS = 8

LAUNCHER = """\
import os, runpy, sys, time
go = sys.argv.pop(1)
import cifar2l.cli, cifar2l.search, cifar2l.train  # the slow imports, before the start line
while not os.path.exists(go):
    time.sleep(0.002)
runpy.run_module("cifar2l", run_name="__main__", alter_sys=True)  # what `python -m` does
"""


def start_together(tmp: Path, *commands: list) -> list[tuple[int, str, str]]:
    """Run `python -m cifar2l <command>` for each command, all released at one instant."""
    go = tmp / f"go-{time.monotonic_ns()}"
    # os.environ holds the test's own XDG_CACHE_HOME (conftest's autouse fixture)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", LAUNCHER, str(go), *map(str, cmd)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env)  # fmt: skip
             for cmd in commands]
    time.sleep(1.0)  # let every interpreter reach the start line (it polls every 2 ms)
    go.touch()
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
        return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def all_ok(outcomes) -> None:
    assert [rc for rc, _, _ in outcomes] == [0] * len(outcomes), outcomes


def summary_of(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def comparable(search_dir: Path) -> list[dict]:
    """results.csv without `seconds`, the one column equal searches may differ in."""
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in read_rows(search_dir / "results.csv")]  # fmt: skip


def hidden_files(folder: Path) -> list[str]:
    """Leftover temp files of atomic writes (they start with a dot)."""
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.fixture
def src(tmp_path) -> Path:
    return write_official_dir(tmp_path / "src")


# ---------------------------------------------------------------- (a) eight train processes


def test_eight_trains_at_once_get_eight_complete_identical_runs(tmp_path, src):
    # Decode once first, so the eight read the cache instead of all decoding at once.
    ok("train", SMOKE, "--set", f"data.root={src}", "--out", tmp_path / "warm", "-q")
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "cifar2l" / "decoded"
    assert len(list(cache.iterdir())) == 1

    out = tmp_path / "runs"
    cmd = ["train", SMOKE, "--set", f"data.root={src}", "--out", out, "--name", "smoke", "-q"]
    outcomes = start_together(tmp_path, *[cmd] * 8)

    all_ok(outcomes)
    assert all(err == "" and stdout == "" for _, stdout, err in outcomes), outcomes
    runs = sorted(out.iterdir())
    assert len(runs) == 8 and all(p.is_dir() for p in runs), runs
    # `...-smoke`, `...-smoke-2`, ...: per timestamp (they may straddle a second) 1, 2, ..., k
    by_stamp: dict[str, list[int]] = {}
    for run in runs:
        m = RUN_NAME.fullmatch(run.name)
        assert m, run.name
        by_stamp.setdefault(m[1], []).append(int(m[2] or 1))
    for stamp, ks in by_stamp.items():
        assert sorted(ks) == list(range(1, len(ks) + 1)), (stamp, ks)
    assert max(len(ks) for ks in by_stamp.values()) >= 2, by_stamp  # they did race for a name

    for run in runs:
        assert {"config.yaml", "command.txt", "metrics.csv", "summary.json",
                "weights.npz"} <= {p.name for p in run.iterdir()}, run  # fmt: skip
        s = summary_of(run)
        assert s["status"] == "completed" and s["run_dir"] == str(run), s
        assert len((run / "command.txt").read_text().splitlines()) == 1
        assert hidden_files(run) == []
    # same config and seed: the same run eight times
    first = runs[0]
    for run in runs[1:]:
        assert (run / "config.yaml").read_text() == (first / "config.yaml").read_text()
        assert (run / "metrics.csv").read_bytes() == (first / "metrics.csv").read_bytes()
        with np.load(run / "weights.npz") as a, np.load(first / "weights.npz") as b:
            for key in ("W1", "b1", "W2", "b2"):
                np.testing.assert_array_equal(a[key], b[key])
    # the cache was read, not rebuilt: one entry, no half-written copies
    assert [p.name for p in cache.iterdir()] == [p.name for p in cache.iterdir()
                                                 if not p.name.startswith(".")]  # fmt: skip
    assert len(list(cache.iterdir())) == 1


# ---------------------------------------------------------------- searches


@pytest.fixture
def search_config(tmp_path, src) -> Path:
    """8 trials over lambda (fusable) and hidden (not: trials fuse in groups by hidden)."""
    path = tmp_path / "search.yaml"
    path.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {src}, train: all, val: null, val_size: 40}}\n"
        f"search:\n  trials: {TRIALS}\n  seed: 3\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
        "    model.hidden: {choice: [4, 8]}\n"
    )
    return path


@pytest.fixture
def single(search_config, tmp_path) -> Path:
    """The same search in one process (warms the data cache too)."""
    ok("search", search_config, "--out", tmp_path / "single", "-q")
    (path,) = (tmp_path / "single").iterdir()
    return path


def trial_lines(stderr: str) -> list[int]:
    """The trials a search process ran (it logs one `trial NNN ...` line for each)."""
    return [int(line.split()[1]) for line in stderr.splitlines() if line.startswith("trial ")]


def assert_each_trial_ran_once(search_dir: Path, outcomes) -> list[list[int]]:
    ran = [trial_lines(err) for _, _, err in outcomes]
    flat = sorted(i for r in ran for i in r)
    assert flat == list(range(TRIALS)), ran  # every trial, none twice
    tdirs = sorted((search_dir / "trials").glob("[0-9][0-9][0-9]"))
    assert [int(t.name) for t in tdirs] == list(range(TRIALS))
    for tdir in tdirs:
        s = summary_of(tdir)
        assert s["status"] == "completed", (tdir, s)
        assert "resumed_from_step" not in s
        assert len((tdir / "command.txt").read_text().splitlines()) == 1, tdir
        assert hidden_files(tdir) == []
    return ran


def test_four_shards_at_once_then_collect_equal_one_process(search_config, single, tmp_path):
    shared = tmp_path / "shared"  # does not exist: the shards race to create it
    outcomes = start_together(tmp_path, *[["search", search_config, "--dir", shared,
                                           "--shard", f"{i}/4"] for i in range(4)])  # fmt: skip
    all_ok(outcomes)
    assert [p.name for p in shared.iterdir() if "search.json" in p.name] == ["search.json"]
    assert hidden_files(shared) == []
    assert not (shared / "results.csv").exists()  # a shard does not collect
    ran = assert_each_trial_ran_once(shared, outcomes)
    assert ran == [[i for i in range(TRIALS) if i % 4 == k] for k in range(4)], ran
    for tdir in sorted((shared / "trials").glob("[0-9][0-9][0-9]")):
        assert f"--shard {int(tdir.name) % 4}/4" in (tdir / "command.txt").read_text()

    ok("search", "collect", shared, "-q")
    assert comparable(shared) == comparable(single)
    s = summary_of(shared)
    assert s["status"] == "completed" and s["completed"] == TRIALS and s["pending"] == 0
    assert s["best"] == summary_of(single)["best"]
    assert (shared / "best.yaml").read_text().split("\n", 3)[3] == \
        (single / "best.yaml").read_text().split("\n", 3)[3]  # fmt: skip (below the header)


def test_two_unsharded_processes_share_the_trials(search_config, single, tmp_path):
    shared = tmp_path / "shared"
    cmd = ["search", search_config, "--dir", shared]
    outcomes = start_together(tmp_path, cmd, cmd)
    all_ok(outcomes)
    assert [p.name for p in shared.iterdir() if "search.json" in p.name] == ["search.json"]
    assert_each_trial_ran_once(shared, outcomes)

    ok("search", "collect", shared, "-q")  # each process collected what it saw when it ended
    assert comparable(shared) == comparable(single)
    assert summary_of(shared)["completed"] == TRIALS
