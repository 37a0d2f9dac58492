"""Faults in a search (issue 15, items 3 and 7 and their kin): failed trials exit 1 and are
retried by --resume, diverged ones are a result, missing data stops the search up front, a
ranking metric some trials cannot have is refused or ranked last, and collect, --refine and
--repeat-best on damaged or empty search directories end in one line."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from cifar2l import search
from cifar2l.config import Distribution, load_config
from cifar2l.errors import RunError
from cifar2l.search import trials as trials_mod

from .conftest import invoke, module_env, ok, one_error_line, write_official_dir
from .test_search import (
    comparable,
    fake_search,
    only_dir,
    results,
    summary_of,
    trial_lines,
    write_config,
)

LAMBDA = {"optim.lambda": "{log_uniform: [1.0e-4, 1.0e-1]}"}
SNAPSHOTS = "train: {snapshots: [10, 20]}\n"
BY_ENSEMBLE = "  metric: ensemble_val_accuracy\n"


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def break_training(monkeypatch, fail=full_disk) -> None:
    """Every trial's training fails (alone or fused) as if the disk were full."""
    monkeypatch.setattr(trials_mod, "train_run", fail)
    monkeypatch.setattr(trials_mod, "train_stack", fail)


def statuses(path: Path) -> list[str]:
    return [r["status"] for r in sorted(results(path), key=lambda r: int(r["trial"]))]


# ---------------------------------------------------------------- item 3: failed trials


def test_search_whose_trials_all_fail_exits_1_and_names_resume(tmp_path, official_dir,
                                                               monkeypatch):  # fmt: skip
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=3, space=LAMBDA)
    break_training(monkeypatch)
    line = one_error_line(invoke("search", cfg, "--out", tmp_path / "runs", "-q"), 1,
                          "3 of 3 trials failed", "No space left on device")  # fmt: skip
    run = only_dir(tmp_path / "runs")
    assert f"cifar2l search --resume {run}" in line
    assert statuses(run) == ["failed"] * 3
    s = summary_of(run)
    assert s["status"] == "failed" and s["failed"] == 3 and s["completed"] == 0
    assert s["best"] is None and not (run / "best.yaml").exists()
    assert s["failures"] == [{"error": "[Errno 28] No space left on device",
                              "trials": [0, 1, 2]}]  # fmt: skip


def test_resume_retries_failed_trials_once_the_cause_is_gone(tmp_path, official_dir,
                                                             monkeypatch):  # fmt: skip
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=3,
                       space={**LAMBDA, "model.hidden": "{choice: [4, 8]}"})  # fmt: skip
    with monkeypatch.context() as mp:
        break_training(mp)
        assert invoke("search", cfg, "--dir", tmp_path / "d", "-q").exit_code == 1
    result = ok("search", "--resume", tmp_path / "d")
    assert sorted(trial_lines(result.stderr)) == [0, 1, 2]
    assert statuses(tmp_path / "d") == ["completed"] * 3
    assert summary_of(tmp_path / "d")["status"] == "completed"
    ok("search", cfg, "--out", tmp_path / "runs", "-q")  # the same search, never failed
    assert comparable(tmp_path / "d") == comparable(only_dir(tmp_path / "runs"))
    again = ok("search", "--resume", tmp_path / "d")  # finished: nothing runs again
    assert trial_lines(again.stderr) == []


def test_failure_reasons_are_distinct_and_bounded(tmp_path, official_dir, monkeypatch):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, space=LAMBDA,
                       search_extra="  fuse: off\n")  # fmt: skip
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise RuntimeError(f"reason {len(calls) % 2} " + "x" * 5000)

    break_training(monkeypatch, fail)
    line = one_error_line(invoke("search", cfg, "--out", tmp_path / "runs", "-q"), 1,
                          "4 of 4 trials failed", "reason 1 xxx", "reason 0 xxx")  # fmt: skip
    assert len(line) < 700, len(line)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow while diverging
def test_diverged_trials_are_a_result_not_a_failure(tmp_path, official_dir):
    space = {"schedule.eta_max": "{choice: [0.05, 1.0e+6]}"}
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, space=space)
    params = search.sample_trials(load_config(cfg).search.space, 4, 0)
    expected = ["diverged" if p["schedule.eta_max"] > 1 else "completed" for p in params]
    assert set(expected) == {"diverged", "completed"}, expected
    ok("search", cfg, "--dir", tmp_path / "d", "-q")
    s = summary_of(tmp_path / "d")
    assert s["status"] == "completed" and s["failed"] == 0
    assert s["diverged"] == expected.count("diverged")
    assert statuses(tmp_path / "d") == expected
    kept = {p: p.read_bytes() for p in (tmp_path / "d" / "trials").rglob("*") if p.is_file()}
    result = ok("search", "--resume", tmp_path / "d")
    assert trial_lines(result.stderr) == []  # a diverged trial is not retried
    assert {p: p.read_bytes() for p in kept} == kept


def test_failed_batch_size_trials_under_jobs_exit_1_with_the_reason(tmp_path, official_dir):
    space = {"train.batch_size": "{choice: [10, 1000]}"}
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, space=space)
    params = search.sample_trials(load_config(cfg).search.space, 4, 0)
    n_bad = sum(p["train.batch_size"] == 1000 for p in params)
    assert 0 < n_bad < 4
    result = invoke("search", cfg, "--dir", tmp_path / "d", "--jobs", "2", "-q")
    line = one_error_line(result, 1, f"{n_bad} of 4 trials failed", "train.batch_size",
                          f"--resume {tmp_path / 'd'}")  # fmt: skip
    assert "worker processes failed" not in line
    assert summary_of(tmp_path / "d")["status"] == "failed"


def test_shard_with_failed_trials_exits_1_and_names_its_shard(tmp_path, official_dir,
                                                              monkeypatch):  # fmt: skip
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, space=LAMBDA)
    break_training(monkeypatch)
    d = tmp_path / "d"
    one_error_line(invoke("search", cfg, "--dir", d, "--shard", "1/2", "-q"), 1,
                   "2 of 2 trials of shard 1/2 failed", f"--resume {d} --shard 1/2")  # fmt: skip
    monkeypatch.undo()
    ok("search", "--resume", d, "--shard", "1/2", "-q")
    assert [search.trial_status(search.trial_dir(d, i)) for i in range(4)] == \
        [None, "completed", None, "completed"]  # fmt: skip


def test_missing_data_fails_the_search_up_front(tmp_path, official_dir, monkeypatch):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=3, space=LAMBDA)
    monkeypatch.setenv("CIFAR2L_DATA", str(tmp_path / "nonexistent"))
    one_error_line(invoke("search", cfg, "--out", tmp_path / "runs", "-q"), 1, "CIFAR2L_DATA",
                   "no such file or directory")  # fmt: skip
    assert not (tmp_path / "runs").exists()  # no search dir, no trial


def test_resume_without_data_stops_and_leaves_the_trials(tmp_path, official_dir, monkeypatch):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2, space=LAMBDA)
    d = tmp_path / "d"
    search.create_search_dir(d, search.make_plan(load_config(cfg), "t"), cfg.read_text())
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    monkeypatch.setenv("CIFAR2L_DATA", str(tmp_path / "nonexistent"))
    one_error_line(invoke("search", "--resume", d, "-q"), 1, "CIFAR2L_DATA")
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before
    monkeypatch.delenv("CIFAR2L_DATA")
    ok("search", "--resume", d, "-q")
    assert statuses(d) == ["completed"] * 2


def test_corrupt_data_stops_a_new_search_before_its_directory(tmp_path, official_dir):
    (official_dir / "data_batch_3").write_bytes(b"not a pickle")
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=3, space=LAMBDA,
                       search_extra="  fuse: off\n")  # fmt: skip
    one_error_line(invoke("search", cfg, "--dir", tmp_path / "d", "-q"), 1, "data_batch_3")
    assert not (tmp_path / "d").exists()  # decoded before the directory is laid out


# ---------------------------------------------------------------- --repeat-best, collect


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_repeat_best_without_a_completed_trial_exits_1(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2,
                       space={"schedule.eta_max": "{uniform: [1.0e+6, 2.0e+6]}"})  # fmt: skip
    one_error_line(invoke("search", cfg, "--dir", tmp_path / "d", "--repeat-best", "2", "-q"),
                   1, "--repeat-best 2", "no trial completed")  # fmt: skip
    assert not (tmp_path / "d" / "best-repeat").exists()
    assert summary_of(tmp_path / "d")["diverged"] == 2


def test_repeat_best_when_every_trial_failed_names_the_failures(tmp_path, official_dir,
                                                                monkeypatch):  # fmt: skip
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2, space=LAMBDA)
    break_training(monkeypatch)
    one_error_line(invoke("search", cfg, "--dir", tmp_path / "d", "--repeat-best", "2", "-q"),
                   1, "2 of 2 trials failed", "--resume")  # fmt: skip


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """One finished 3-trial search for the module (read-only: `finished` copies it)."""
    base = tmp_path_factory.mktemp("searched")
    with module_env(base):
        src = write_official_dir(base / "src")
        ok("search", write_config(base / "s.yaml", src, trials=3, space=LAMBDA), "--dir",
           base / "d", "-q")  # fmt: skip
    return base / "d"


@pytest.fixture
def finished(searched, tmp_path) -> Path:
    return Path(shutil.copytree(searched, tmp_path / "d"))


@pytest.mark.parametrize("damage", [b"", b"{\"status\": \"compl", b"\xff\xfe garbage", b"[1, 2]",
                                    b"\"completed\"", b"{\"status\": \"completed\", "
                                    b"\"accuracy\": {\"val\": \"high\"}}", None])  # fmt: skip
def test_collect_reports_a_damaged_trial_summary_and_goes_on(finished, damage):
    target = search.trial_dir(finished, 1) / "summary.json"
    if damage is None:
        target.unlink()
    else:
        target.write_bytes(damage)
    result = invoke("search", "collect", finished)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Error:" not in result.output
    assert "trial 001" in result.stderr  # reported
    rows = {int(r["trial"]): r for r in results(finished)}
    assert rows[1]["rank"] == "3" and rows[1]["val_accuracy"] == ""
    assert rows[0]["status"] == rows[2]["status"] == "completed"
    s = summary_of(finished)
    assert s["completed"] == 2 and s["best"]["trial"] in (0, 2)
    ok("search", "--resume", finished, "-q")  # the damaged trial runs again
    assert statuses(finished) == ["completed"] * 3


def test_collect_of_a_search_with_no_finished_trial(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2, space=LAMBDA)
    d = tmp_path / "d"
    search.create_search_dir(d, search.make_plan(load_config(cfg), "t"), cfg.read_text())
    s = json.loads(ok("search", "collect", d, "--json").stdout)
    assert s["status"] == "interrupted" and s["pending"] == 2 and s["best"] is None
    assert statuses(d) == ["pending", "pending"]


@pytest.mark.parametrize("plan", [b"[]", b"{}", b"{\"config\": {}, \"trials\": []}",
                                  b"{\"config\": {\"search\": {\"metric\": \"val_accuracy\"}}, "
                                  b"\"trials\": [7]}", b"\x00\x01"])  # fmt: skip
@pytest.mark.parametrize("command", ["collect", "resume", "refine"])
def test_a_damaged_search_json_is_one_line(finished, plan, command, tmp_path):
    (finished / "search.json").write_bytes(plan)
    args = {"collect": ["search", "collect", finished],
            "resume": ["search", "--resume", finished],
            "refine": ["search", finished / "config.yaml", "--refine", finished, "--out",
                       tmp_path / "runs"]}[command]  # fmt: skip
    one_error_line(invoke(*args, "-q"), 1, str(finished / "search.json"))
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- item 7: a missing metric


def test_ensemble_metric_with_trials_without_snapshots_is_refused(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=4, extra=SNAPSHOTS,
                       space={"train.snapshots": "{choice: [null, [10, 20]]}"},
                       search_extra=BY_ENSEMBLE)  # fmt: skip
    one_error_line(invoke("search", cfg, "--out", tmp_path / "runs", "-q"), 2, str(cfg),
                   "search.metric", "ensemble_val_accuracy", "train.snapshots")  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_trials_without_the_metric_rank_last_and_collect_works(tmp_path, official_dir):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=3, space=LAMBDA,
                       extra=SNAPSHOTS, search_extra=BY_ENSEMBLE)  # fmt: skip
    d = tmp_path / "d"
    ok("search", cfg, "--dir", d, "-q")
    best = summary_of(d)["best"]["trial"]
    target = search.trial_dir(d, best) / "summary.json"  # as a search made before the check
    s = json.loads(target.read_text())
    del s["ensemble"]
    target.write_text(json.dumps(s))
    ok("search", "collect", d)
    rows = results(d)
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert int(rows[-1]["trial"]) == best and rows[-1]["ensemble_val_accuracy"] == ""
    assert "ensemble_val_accuracy" in rows[-1]["error"]
    assert all(r["ensemble_val_accuracy"] != "" for r in rows[:2])
    summary = summary_of(d)
    assert summary["best"]["trial"] == int(rows[0]["trial"]) != best
    assert summary["status"] == "completed" and summary["without_metric"] == 1


def test_refine_by_a_metric_the_earlier_search_lacks_is_one_line(tmp_path, official_dir):
    coarse = write_config(tmp_path / "c.yaml", official_dir, trials=2, space=LAMBDA)
    ok("search", coarse, "--dir", tmp_path / "coarse", "-q")
    fine = write_config(tmp_path / "f.yaml", official_dir, trials=2, space=LAMBDA,
                        extra=SNAPSHOTS, search_extra=BY_ENSEMBLE)  # fmt: skip
    one_error_line(invoke("search", fine, "--refine", tmp_path / "coarse", "--out",
                          tmp_path / "runs", "-q"), 1, str(tmp_path / "coarse"),
                   "ensemble_val_accuracy")  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_refine_space_uses_only_trials_that_have_the_metric(tmp_path):
    space = {"optim.lambda": Distribution(log_uniform=[1e-5, 1e-1])}
    path = fake_search(tmp_path / "c", space, [
        ("completed", 0.5, {"optim.lambda": 1e-3}),
        ("completed", 0.4, {"optim.lambda": 1e-2}),
        ("completed", 0.3, {"optim.lambda": 1e-4}),
    ])  # fmt: skip
    for i, ens in ((1, 0.6), (2, 0.7)):
        target = search.trial_dir(path, i) / "summary.json"
        s = json.loads(target.read_text())
        target.write_text(json.dumps({**s, "ensemble": {"accuracy": {"val": ens}}}))
    _, info = search.refine_space(space, path, 3, "ensemble_val_accuracy")
    assert info["top_trials"] == [2, 1]
    plain = fake_search(tmp_path / "e", space, [("completed", 0.5, {"optim.lambda": 1e-3})])
    with pytest.raises(RunError, match="no completed trial has ensemble_val_accuracy"):
        search.refine_space(space, plain, 2, "ensemble_val_accuracy")


def test_refine_from_a_train_run_dir_is_one_line(tmp_path, smoke_args, official_dir):
    ok("train", *smoke_args)
    run = only_dir(Path(smoke_args[smoke_args.index("--out") + 1]))
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2, space=LAMBDA)
    one_error_line(invoke("search", cfg, "--refine", run, "--out", tmp_path / "new", "-q"), 1,
                   "not a search directory")  # fmt: skip
    assert not (tmp_path / "new").exists()


def test_collect_of_a_search_with_failed_trials_exits_1(tmp_path, official_dir, monkeypatch):
    cfg = write_config(tmp_path / "s.yaml", official_dir, trials=2, space=LAMBDA)
    with monkeypatch.context() as mp:
        break_training(mp)
        invoke("search", cfg, "--dir", tmp_path / "d", "-q")
    one_error_line(invoke("search", "collect", tmp_path / "d", "-q"), 1, "2 of 2 trials failed",
                   f"cifar2l search --resume {tmp_path / 'd'}")  # fmt: skip
    assert statuses(tmp_path / "d") == ["failed", "failed"]  # collect retries nothing


def test_best_yaml_of_no_ranked_trial_is_removed(finished):
    assert (finished / "best.yaml").is_file()
    for i in range(3):  # every trial's summary lost: nothing is ranked any more
        (search.trial_dir(finished, i) / "summary.json").write_text("{")
    s = json.loads(ok("search", "collect", finished, "--json").stdout)
    assert s["best"] is None and s["pending"] == 3
    assert not (finished / "best.yaml").exists() and not (finished / "search.png").exists()


def test_resume_of_a_finished_search_needs_no_data(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR2L_DATA", str(tmp_path / "nonexistent"))
    s = json.loads(ok("search", "--resume", finished, "--json").stdout)
    assert s["status"] == "completed" and s["completed"] == 3


def test_resume_of_a_search_whose_trials_folder_is_gone_reruns_them(finished):
    shutil.rmtree(finished / "trials")
    s = json.loads(ok("search", "collect", finished, "--json").stdout)
    assert s["pending"] == 3
    ok("search", "--resume", finished, "-q")
    assert statuses(finished) == ["completed"] * 3


def test_best_yaml_and_repeat_best_when_the_best_trial_lost_its_config(finished):
    best = summary_of(finished)["best"]["trial"]
    before = (search.trial_dir(finished, best) / "config.yaml").read_text()
    (search.trial_dir(finished, best) / "config.yaml").unlink()
    (finished / "best.yaml").unlink()
    ok("search", "collect", finished, "-q")
    assert (finished / "best.yaml").read_text().endswith("\n" + before)  # rebuilt from the plan
    s = json.loads(ok("search", "--resume", finished, "--repeat-best", "2", "--json").stdout)
    assert s["best_repeat"]["trial"] == best and s["best_repeat"]["repeat"] == 2
