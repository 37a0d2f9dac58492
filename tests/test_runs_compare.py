"""`cifar2l runs` (the table of run directories) and `cifar2l compare` (runs side by side), on
tiny runs made once for the module with the CLI on synthetic data."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifar2l import compare

from .conftest import ROOT, invoke, module_env, ok, one_error_line, summary_of, write_official_dir

SMOKE = ROOT / "configs" / "smoke.yaml"


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def edited_copy(run: Path, name: str, **changes) -> Path:
    """A copy of `run` named `name` beside it, its summary changed (a failed run, ...)."""
    copy = run.parent / name
    shutil.copytree(run, copy)
    (copy / "summary.json").write_text(json.dumps({**summary_of(run), **changes}))
    return copy


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> SimpleNamespace:
    """train (plain, with --set and --seed, --repeat 2, from a config removed since), a
    2-trial search, an evaluate run, a failed and an interrupted copy and two non-runs."""
    base = tmp_path_factory.mktemp("catalog")
    root = base / "runs"
    with module_env(base) as mp:
        ok = as_typed(mp)
        src = write_official_dir(base / "src")
        data = f"data.root={src}"
        common = ["--out", root, "--quiet"]
        ok("train", SMOKE, "--set", data, "--name", "one", *common)
        ok("train", SMOKE, "--set", data, "--set", "optim.lambda=0.005", "--seed", "7",
           "--name", "lam", *common)  # fmt: skip
        ok("train", SMOKE, "--set", data, "--repeat", "2", "--name", "rep", *common)
        gone = base / "gone.yaml"
        gone.write_text(f"extends: {SMOKE}\n")
        ok("train", gone, "--set", data, *common)
        gone.unlink()
        search = base / "tiny.yaml"
        search.write_text(f"extends: {SMOKE}\ndata: {{root: {src}, train: all, val: null, "
                          "val_size: 40}\nsearch:\n  trials: 2\n  seed: 0\n  space:\n"
                          "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n")  # fmt: skip
        ok("search", search, *common)
        one = only(root, "*-train-one")
        ok("evaluate", one, "--split", "val", *common)
    edited_copy(one, "20260101-000000-train-failed", status="failed", error="boom")
    edited_copy(one, "20260101-000001-train-stopped", status="interrupted", error="interrupted")
    (root / "garbage").mkdir()
    (root / "garbage" / "summary.json").write_text("{not json")
    (root / "empty").mkdir()
    return SimpleNamespace(root=root, src=src, one=one, lam=only(root, "*-train-lam"),
                           rep=only(root, "*-train-rep"), gone=only(root, "*-train-gone"),
                           search=only(root, "*-search-tiny"),
                           evaluate=only(root, "*-evaluate-*"))  # fmt: skip


def as_typed(mp):
    """`ok` with sys.argv set as the shell sets it, so command.txt records the command (under
    pytest it would record pytest's arguments)."""
    def run(*args):
        mp.setattr(sys, "argv", ["cifar2l", *map(str, args)])
        return ok(*args)

    return run


def rows_of(*args) -> dict[str, dict]:
    result = ok("runs", *args, "--json")
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return {r["name"]: r for r in rows}


def best_trial(search_dir: Path) -> dict:
    trial = summary_of(search_dir)["best"]["trial"]
    return summary_of(search_dir / "trials" / f"{trial:03d}")


# ---------------------------------------------------------------- cifar2l runs


def test_table_names_every_run_and_its_status(made):
    out = ok("runs", made.root).stdout
    for run in (made.one, made.lam, made.rep, made.gone, made.search, made.evaluate):
        assert run.name in out
    for word in ("failed", "interrupted (resumable)", "unreadable", "+-"):
        assert word in out
    assert "--resume RUN_DIR` continues it" in out  # the interrupted copy


def test_overrides_are_the_set_and_seed_keys(made):
    rows = rows_of(made.root)
    assert rows[made.one.name]["overrides"] == {"data.root": str(made.src)}
    assert rows[made.lam.name]["overrides"] == {"data.root": str(made.src),
                                                "optim.lambda": 0.005, "seed": 7}
    assert rows[made.search.name]["overrides"] == {}  # a search without --set
    assert rows[made.one.name]["source"] == str(SMOKE)


def test_a_source_config_gone_is_said_in_its_cell(made):
    row = rows_of(made.root)[made.gone.name]
    assert row["overrides"] == {} and "gone" in row["overrides_error"]
    assert row["status"] == "completed" and row["test"] is not None
    assert "gone" in ok("runs", made.root, "--name", made.gone.name).stdout


def test_accuracies_of_plain_repeat_search_and_evaluate_runs(made):
    rows = rows_of(made.root)
    one, rep = summary_of(made.one), summary_of(made.rep)
    assert rows[made.one.name]["test"] == pytest.approx(one["accuracy"]["test"])
    assert rows[made.one.name]["test_std"] is None
    assert rows[made.rep.name]["val"] == pytest.approx(rep["accuracy"]["val"])
    assert rows[made.rep.name]["val_std"] == pytest.approx(rep["accuracy_std"]["val"])
    best = best_trial(made.search)
    assert rows[made.search.name]["val"] == pytest.approx(best["accuracy"]["val"])
    evaluated = rows[made.evaluate.name]
    assert evaluated["val"] == pytest.approx(summary_of(made.evaluate)["accuracy"]["val"])
    assert evaluated["test"] is None and evaluated["command"] == "evaluate"


def test_failed_interrupted_and_unreadable_rows(made):
    rows = rows_of(made.root)
    assert rows["20260101-000000-train-failed"]["status"] == "failed"
    stopped = rows["20260101-000001-train-stopped"]
    assert stopped["status"] == "interrupted"
    resume = f"cifar2l train --resume {made.root / stopped['name']}"
    assert stopped["status_detail"].endswith(resume)
    assert rows["garbage"]["status"] == rows["empty"]["status"] == "unreadable"
    assert rows["garbage"].keys() == rows[made.one.name].keys()  # the same keys for scripts
    assert rows["20260101-000000-train-failed"]["when"] == "2026-01-01T00:00:00"


@pytest.mark.parametrize(("args", "want"), [
    (["--command", "search"], lambda m: {m.search.name}),
    (["--command", "evaluate"], lambda m: {m.evaluate.name}),
    (["--status", "failed"], lambda m: {"20260101-000000-train-failed"}),
    (["--status", "unreadable"], lambda m: {"garbage", "empty"}),
    (["--name", "*-train-rep"], lambda m: {m.rep.name}),
    (["--name", "*-train-*", "--status", "interrupted"],
     lambda m: {"20260101-000001-train-stopped"}),
    (["--command", "train", "--name", "*-train-[lr]*"],
     lambda m: {m.lam.name, m.rep.name}),
])  # fmt: skip
def test_filters(made, args, want):
    assert set(rows_of(made.root, *args)) == want(made)


def test_sort_by_accuracy_highest_first_without_one_last(made):
    rows = list(rows_of(made.root, "--sort", "test").values())
    tests = [r["test"] for r in rows]
    known = [t for t in tests if t is not None]
    assert known == sorted(known, reverse=True) and len(known) >= 5
    assert tests[: len(known)] == known  # the rows without a test accuracy come last
    names = list(rows_of(made.root, "--sort", "name"))
    assert names == sorted(names)


def test_a_folder_of_runs_inside_the_root_is_listed(made, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(made.one, root / "group" / made.one.name)
    assert list(rows_of(root)) == [f"group/{made.one.name}"]


def test_a_run_given_as_root_is_its_own_row(made):
    assert list(rows_of(made.rep)) == [made.rep.name]  # not its repeats
    assert "1 run in" in ok("runs", made.rep).stdout


@pytest.mark.parametrize(("args", "fragments"), [
    (["--sort", "bogus"], ["--sort bogus", "name, when, wall, val, test"]),
    (["--status", "done"], ["--status done", "completed", "interrupted"]),
    (["--command", "fly"], ["--command fly", "train", "search"]),
])  # fmt: skip
def test_bad_options(made, args, fragments):
    one_error_line(invoke("runs", made.root, *args), 2, *fragments)


def test_a_missing_root(tmp_path):
    one_error_line(invoke("runs", tmp_path / "nope"), 2, "nope", "no such runs directory")
    one_error_line(invoke("runs", tmp_path / "nope", "--json"), 2, "nope")


# ---------------------------------------------------------------- cifar2l compare


def test_compare_writes_the_figure_and_a_self_contained_page(made, tmp_path):
    out = tmp_path / "cmp"
    result = ok("compare", made.one, made.lam, made.rep, made.search, "--out", out)
    folder = only(out, "*-compare-4-runs")
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "compare.html").read_text()
    for run in (made.one, made.lam, made.rep, made.search):
        assert run.name in page and run.name in result.stdout
    assert "data:image/png;base64," in page
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page)
    assert "http://" not in page and "https://" not in page
    summary = summary_of(folder)
    assert summary["status"] == "completed" and summary["figures"] == ["curves.png"]
    assert summary["labels"] == [made.one.name, made.lam.name, made.rep.name, made.search.name]


def test_compare_shows_only_the_keys_that_differ(made, tmp_path):
    result = ok("compare", made.one, made.lam, "--out", tmp_path, "--json")
    summary = json.loads(result.stdout)
    assert {row[0]: row[1:] for row in summary["differences"]} == {
        "seed": ["42", "7"], "optim.lambda": ["0.01", "0.005"]}
    final = {row[0]: row[1:] for row in summary["final"]}
    assert final["test accuracy"][0] == f"{summary_of(made.one)['accuracy']['test']:.4f}"
    assert "TTA test" not in final  # no run has one


def test_compare_leaves_out_the_sections_of_other_commands(made, tmp_path):
    """A train run's `search:` / `lrrange:` sections are no setting of that training (and a
    search is compared as its best trial): two trainings that differ only there are equal."""
    import yaml

    copy = tmp_path / "20260101-000002-train-other-sections"
    shutil.copytree(made.one, copy)
    doc = yaml.safe_load((copy / "config.yaml").read_text())
    doc["search"] = {**doc.get("search", {}), "trials": 3}
    doc["lrrange"] = {**doc.get("lrrange", {}), "epochs": 2}
    (copy / "config.yaml").write_text(yaml.safe_dump(doc))
    result = ok("compare", made.one, copy, made.search, "--out", tmp_path / "out", "--json")
    keys = [row[0] for row in json.loads(result.stdout)["differences"]]
    assert "optim.lambda" in keys  # the search's best trial differs from `one` there
    assert not [k for k in keys if k.split(".")[0] in ("search", "lrrange", "gradcheck")]


def test_compare_runs_without_curves_and_a_chosen_metric(made, tmp_path):
    result = ok("compare", made.one, made.evaluate, "--metric", "val_loss", "--name", "ev",
                "--out", tmp_path, "--json")  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["metrics"] == ["val_loss"] and summary["figures"] == ["curves.png"]
    assert any(made.evaluate.name in note for note in summary["notes"])
    assert only(tmp_path, "*-compare-ev").is_dir()


def test_a_repeat_run_is_drawn_as_the_mean_and_std_of_its_repeats(made):
    curves = compare.load(made.rep, "rep").curves
    tables = [compare.read_metrics(p) for p in sorted(made.rep.glob("repeats/*/metrics.csv"))]
    assert len(tables) == 2 and curves.std is not None
    both = np.stack([t["val_accuracy"] for t in tables])
    np.testing.assert_allclose(curves.mean["val_accuracy"], both.mean(axis=0))
    np.testing.assert_allclose(curves.std["val_accuracy"], both.std(axis=0, ddof=1))
    assert compare.load(made.one, "one").curves.std is None


@pytest.mark.parametrize(("runs", "fragments"), [
    (lambda m, t: [m.one], ["at least 2", "got 1"]),
    (lambda m, t: [m.one, t / "nowhere"], ["nowhere", "not a run directory"]),
    (lambda m, t: [m.one, m.root / "garbage"], ["garbage", "no readable summary.json"]),
])  # fmt: skip
def test_compare_bad_runs(made, tmp_path, runs, fragments):
    out = tmp_path / "cmp"
    one_error_line(invoke("compare", *runs(made, tmp_path), "--out", out), 2, *fragments)
    assert not out.exists() or list(out.iterdir()) == []


def test_compare_bad_metric(made, tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", made.one, made.lam, "--metric", "accuracy", "--out", out)
    one_error_line(result, 2, "--metric accuracy", "val_accuracy", "train_cost")
    assert not out.exists()


def test_compare_lists_in_the_runs_table(made, tmp_path):
    ok("compare", made.one, made.lam, "--out", tmp_path / "cmp", "--quiet")
    row = next(iter(rows_of(tmp_path / "cmp").values()))
    assert row["command"] == "compare" and row["status"] == "completed"


@pytest.mark.parametrize("command", ["runs", "compare"])
def test_help_has_example(command):
    result = ok(command, "--help")
    assert "Example:" in result.stdout and f"cifar2l {command} " in result.stdout


def test_compare_without_runs_is_a_usage_error(tmp_path):
    result = invoke("compare", "--out", tmp_path / "cmp")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "cmp").exists()
