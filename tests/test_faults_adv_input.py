"""An adversarial pass over hostile input (issue 15): the cases it found that the corpus of
tests/test_bad_inputs.py missed, driven through the CLI the same way.

Every corpus case ends with its exit code, exactly one `Error: ...` line naming the offending
file, key or option, nothing on stdout, no traceback and nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import (
    ROOT,
    invoke,
    module_env,
    ok,
    one_error_line,
    write_image_dir,
    write_official_dir,
)
from .test_bad_inputs import (
    SEARCH_SPACE,
    SMOKE,
    Ctx,
    case,
    on_smoke,
    refused_cleanly,
    rewrite_weights,
    search_args,
    weights_case,
    with_source,
)
from .test_bad_inputs import (
    trained as trained,  # the corpus's finished run: a fixture, used by name
)


def config_symlink_loop(ctx: Ctx):
    a, b = ctx.tmp / "a.yaml", ctx.tmp / "b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    return ["train", a, "--out", ctx.out], [str(a), "symlink loop"]


def extends_symlink_loop(ctx: Ctx):
    loop = ctx.tmp / "loop.yaml"
    loop.symlink_to(loop)
    child = ctx.write("child.yaml", "extends: loop.yaml\n")
    return ["train", child, "--out", ctx.out], [str(child), "loop.yaml", "not found"]


def shard_without_dir(ctx: Ctx):
    return search_args(ctx, "--shard", "0/2"), ["--shard 0/2", "--dir"]


def slurm_array_without_dir(ctx: Ctx):
    ctx.mp.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    ctx.mp.setenv("SLURM_ARRAY_TASK_ID", "1")
    return search_args(ctx), ["SLURM array task", "shard 1/2", "--dir"]


def official_with_a_backup(ctx: Ctx) -> Path:
    shutil.copytree(ctx.src, ctx.src.with_name("cifar-10-batches-py.bak"))
    return ctx.src.parent  # sorted, the .bak's batches came last and were the ones trained on


def two_image_trees(ctx: Ctx) -> Path:
    for name in ("cifar10", "cifar10-old"):
        write_image_dir(ctx.tmp / "img" / name, train_per_class=5, test_per_class=1)
    return ctx.tmp / "img"  # both trees' images were merged into one dataset


def scaled(run: Path, key: str, factor: float, dtype=None) -> Path:
    with np.load(run / "weights.npz") as f:
        value = f[key] * factor
    return rewrite_weights(run, **{key: value if dtype is None else value.astype(dtype)})


def report_of_a_list_summary(ctx: Ctx):
    run = ctx.run_copy()
    (run / "summary.json").write_text("[1, 2]\n")
    return ["report", run, "--out", ctx.tmp / "report"], [str(run), "no readable summary.json"]


DEEP_JSON = "[" * 100_000 + "]" * 100_000  # valid JSON; json.loads recurses past the limit


def collect_deep_plan(ctx: Ctx):
    folder = ctx.tmp / "search"
    folder.mkdir()
    (folder / "search.json").write_text(DEEP_JSON)
    return ["search", "collect", folder], [str(folder / "search.json"), "unreadable"]


def resume_deep_summary(ctx: Ctx):
    run = ctx.run_copy()
    (run / "summary.json").write_text(DEEP_JSON)
    return ["train", "--resume", run], [str(run / "summary.json"), "unreadable"]


def report_deep_summary(ctx: Ctx):
    run = ctx.run_copy()
    (run / "summary.json").write_text(DEEP_JSON)
    return ["report", run, "--out", ctx.tmp / "report"], [str(run), "no readable summary.json"]


CASES = [
    # a config path that never resolves (RuntimeError before Python 3.13): was "internal error"
    case("config-symlink-loop", config_symlink_loop),
    case("extends-symlink-loop", extends_symlink_loop),
    # a negative L2 penalty is refused for training (optim.lambda) and now for the check too
    case("gradcheck-negative-lambda", on_smoke("gradcheck: {lambdas: [0.0, -0.01]}\n",
                                               "gradcheck.lambdas", "greater than or equal to 0",
                                               command="gradcheck")),  # fmt: skip
    # each shard used to start a part-search of its own in a fresh timestamped directory (exit 0)
    case("shard-without-dir", shard_without_dir),
    case("slurm-array-without-dir", slurm_array_without_dir),
    # a source holding two copies: one won silently (exit 0)
    case("official-beside-a-backup", with_source(official_with_a_backup, "two copies",
                                                 "cifar-10-batches-py.bak/"), 1),  # fmt: skip
    case("two-image-trees", with_source(two_image_trees, "two copies", "cifar10-old/"), 1),
    # weights that score as a meaningless number (NaN: class 0 everywhere, exit 0) or that
    # failed inside a kernel ("internal error": TypeError, UFuncTypeError, SystemError)
    case("evaluate-nan-weights", weights_case(lambda run: scaled(run, "W1", np.nan),
                                              "non-finite", "W1"), 1),  # fmt: skip
    case("evaluate-inf-bias", weights_case(lambda run: scaled(run, "b2", np.inf),
                                           "non-finite", "b2"), 1),  # fmt: skip
    case("evaluate-float16-weights", weights_case(
        lambda run: scaled(run, "W1", 1, np.float16), "float32 or float64", "W1 float16"), 1),
    case("evaluate-integer-weights", weights_case(
        lambda run: scaled(run, "W2", 1, np.int64), "float32 or float64", "W2 int64"), 1),
    case("evaluate-zero-std", weights_case(lambda run: scaled(run, "std", 0), "std",
                                           "positive"), 1),  # fmt: skip
    # a choice value no trial happened to draw was never checked (exit 0; another seed fails)
    case("search-choice-never-drawn", on_smoke(
        "search: {trials: 1, seed: 0, space: {model.hidden: {choice: [8, 8, 8, 8, 8, 8, 0]}}}\n",
        "search.space", "model.hidden", "greater than or equal to 1", command="search")),
    # an extra zero or two in n_s: millions of metric rows planned, the run OOM-killed at its
    # start with its status left `running`
    case("metric-rows-past-memory", on_smoke("schedule: {n_s: 1000000000000}\n", "schedule",
                                             "metric rows", in_file=False)),  # fmt: skip
    # a summary.json that is JSON but no mapping: was "internal error: AttributeError"
    case("report-summary-is-a-list", report_of_a_list_summary, 1),
    # JSON nested 100000 deep in a run's own files: was "internal error: RecursionError"
    case("collect-deeply-nested-plan", collect_deep_plan, 1),
    case("resume-deeply-nested-summary", resume_deep_summary, 1),
    case("report-deeply-nested-summary", report_deep_summary, 1),
]


@pytest.mark.parametrize(("build", "code"), CASES)
def test_bad_input(build, code, tmp_path, monkeypatch, trained):
    refused_cleanly(Ctx(tmp_path, monkeypatch, trained), build, code)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("adv-src")
    with module_env(base):
        return write_official_dir(base / "src")


def test_out_of_memory_is_one_line_and_the_run_failed(src, tmp_path):
    """A model too big for the machine: one runtime line (was "internal error: MemoryError"),
    and the run it started is marked failed with the reason."""
    out = tmp_path / "runs"
    result = invoke("train", SMOKE, "--set", f"data.root={src}", "--set",
                    "model.hidden=1000000000000", "--out", out, "--quiet")  # fmt: skip
    one_error_line(result, 1, "out of memory", "model.hidden")
    (run,) = out.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "allocate" in summary["error"], summary


def test_jobs_above_the_trials_start_one_worker_per_trial(src, tmp_path):
    """--jobs 64 for 2 trials used to start 64 processes (62 of them idle; at --jobs 100000:
    "Too many open files" and a half-started search); now one worker per trial."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata:\n  root: {src}\n{SEARCH_SPACE}")
    result = ok("search", cfg, "--jobs", 64, "--dir", tmp_path / "s", "--json", "--quiet")
    summary = json.loads(result.stdout)
    assert summary["workers"] == 2 and summary["status"] == "completed", summary
    assert os.path.exists(tmp_path / "s" / "results.csv")


@pytest.mark.parametrize(("var", "value"), [("NUMBA_NUM_THREADS", "0"),
                                            ("NUMBA_THREADING_LAYER", "bogus")])  # fmt: skip
def test_a_bad_numba_setting_is_a_config_error(src, tmp_path, var, value):
    """numba's own variables: was "internal error: ImportError/ValueError" (and the decoded-data
    cache was thrown away as if damaged). A real process: numba reads them once, on import."""
    out = tmp_path / "runs"
    env = {**os.environ, var: value, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cifar2l", "train", str(SMOKE), "--set",
                           f"data.root={src}", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"Error: {var}: numba cannot start: "), line
    assert not out.exists() or not any(out.iterdir())


def test_a_download_longer_than_the_archive_stops(tmp_path, monkeypatch):
    """CIFAR2L_URL serving endless data (file:///dev/zero) filled the disk and never ended; now
    the download stops past the official archive's size, removes its part file, exit 1."""
    from cifar2l import data

    monkeypatch.setattr(data, "ARCHIVE_BYTES", 4 << 20)  # the real 170 MB would take a while
    monkeypatch.setenv("CIFAR2L_URL", "file:///dev/zero")
    out = tmp_path / "runs"
    one_error_line(invoke("train", SMOKE, "--out", out, "--quiet"), 1, "file:///dev/zero",
                   f"more than the archive's {4 << 20} bytes")  # fmt: skip
    assert list(data.cache_dir().rglob("*.part")) == []
    assert not out.exists() or not any(out.iterdir())
