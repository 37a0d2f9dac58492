"""`cifar2l report` and `make report`: the study's numbers as config data, ours beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifar2l import report, tables
from cifar2l.config import load_config

from .conftest import ROOT, invoke, ok, one_error_line

SMOKE = ROOT / "configs" / "smoke.yaml"


def train_run(tmp_path: Path, root: Path, expected: str | None, *extra: str) -> Path:
    sets = ["--set", f"expected={expected}"] if expected else []
    res = ok("train", SMOKE, "--set", f"data.root={root}", *sets, *extra, "--out",
             tmp_path / "runs", "--json")  # fmt: skip
    return Path(json.loads(res.stdout)["run_dir"])


def test_report_compares_marks_and_links(tmp_path, official_dir):
    run = train_run(tmp_path, official_dir, "{item: 'Table 2: smoke', accuracy: {train: 0.0, "
                    "val: 0.0}, tolerance: 2.0, minimum: {test: 2.0}, note: a reason}")
    out = tmp_path / "report"
    s = json.loads(ok("report", run, "--out", out, "--json").stdout)
    assert s["items"] == [{"item": "Table 2: smoke", "status": "explained", "run_dir": str(run),
                           "misses": 1, "seeds": 1, "modified": []}]  # the impossible minimum
    # misses; the note explains
    md = (out / "REPORT.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    rel = Path("..") / "runs" / run.name
    assert f"[{summary['accuracy']['train']:.4f}]({rel})" in md  # each number links its run
    assert "| test accuracy (target >= 2.0) |" in md and "**MISS**" in md
    assert "Note: a reason" in md and "## Runs" in md and "## Performance benchmarks" in md
    assert summary["data"]["source"] in md  # the data source is recorded
    # one figure per train item: loss, cost and accuracy side by side, drawn from metrics.csv
    assert (out / "figures" / f"{run.name}-curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"(figures/{run.name}-curves.png)" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<img alt='Table 2: smoke" in page
    assert "src='figures" not in page  # self-contained


def test_rows_within_tolerance_are_ok(tmp_path, official_dir):
    run = train_run(tmp_path, official_dir, "{item: 'Table 2: smoke'}")
    acc = json.loads((run / "summary.json").read_text())["accuracy"]
    cfg_expected = f"{{item: x, accuracy: {{test: {acc['test'] + 0.01}}}}}"
    run2 = train_run(tmp_path, official_dir, cfg_expected)
    item = report.load_item(run2)
    assert [r.ok for r in item.rows] == [True] and item.status == "ok"
    assert item.rows[0].difference == pytest.approx(-0.01)
    far = acc["test"] + 0.02
    miss = train_run(tmp_path, official_dir, f"{{item: y, accuracy: {{test: {far}}}}}")
    assert report.load_item(miss).status == "MISS"  # no note: an unexplained miss


def test_items_are_ordered_like_the_study(tmp_path, official_dir):
    later = train_run(tmp_path, official_dir, "{item: 'Table 4: x'}")
    first = train_run(tmp_path, official_dir, "{item: 'Table 2: y'}")
    s = json.loads(ok("report", later, first, "--out", tmp_path / "r", "--json").stdout)
    assert [i["item"] for i in s["items"]] == ["Table 2: y", "Table 4: x"]


def test_gradcheck_rows(tmp_path, official_dir):
    res = ok("gradcheck", ROOT / "configs" / "gradcheck.yaml", "--set",
             f"data.root={official_dir}", "--out", tmp_path / "runs", "--json")  # fmt: skip
    s = json.loads(res.stdout)
    item = report.load_item(Path(s["run_dir"]))
    assert item.expected.item.startswith("Table 1") and len(item.rows) == 8
    assert all(r.ok for r in item.rows)  # the check's floored error, not the raw one
    reduced = [r for r in item.rows if "(reduced" in r.label]
    assert [r.ours for r in reduced] == list(s["max_rel_error"].values())  # the study's measure
    assert all(r.study == 1e-6 and r.kind == "err" for r in item.rows)  # beside the study's


def test_search_rows_pair_our_ranks_with_the_study(tmp_path, official_dir):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata: {{root: {official_dir}, train: all, val: null, "
                   "val_size: 40}\nsearch:\n  trials: 3\n  space:\n    optim.lambda: "
                   "{log_uniform: [1.0e-4, 1.0e-1]}\nexpected:\n  item: 'Table 3: smoke'\n"
                   "  top: [[0.01, 0.5], [0.02, 0.4]]\n")  # fmt: skip
    run = Path(json.loads(ok("search", cfg, "--out", tmp_path / "runs", "--json").stdout)[
        "run_dir"])  # fmt: skip
    item = report.load_item(run)
    assert [r.label for r in item.rows] == ["rank 1: lambda", "rank 1: val accuracy",
                                            "rank 2: lambda", "rank 2: val accuracy"]
    assert item.rows[0].ok is None and item.rows[1].study == 0.5


def test_report_errors_are_one_line_and_write_nothing(tmp_path, official_dir):
    bare = train_run(tmp_path, official_dir, None)  # smoke.yaml has expected: null
    out = tmp_path / "report"
    one_error_line(invoke("report", bare, "--out", out), 1, str(bare), "nothing to report",
                   "expected")  # fmt: skip
    one_error_line(invoke("report", tmp_path / "nope", "--out", out), 1, "not a run directory")
    summary = json.loads((bare / "summary.json").read_text())
    (bare / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    one_error_line(invoke("report", bare, "--out", out), 1, "not completed")
    assert not out.exists()


def test_runs_that_cannot_be_compared_are_skipped_with_a_note(tmp_path, official_dir):
    good = train_run(tmp_path, official_dir, "{item: 'Table 2: smoke'}")
    bare = train_run(tmp_path, official_dir, None)
    out = tmp_path / "report"
    s = json.loads(ok("report", good, bare, "--out", out, "--json").stdout)
    assert [i["item"] for i in s["items"]] == ["Table 2: smoke"]
    assert len(s["skipped"]) == 1 and str(bare) in s["skipped"][0]
    assert "## Skipped" in (out / "REPORT.md").read_text()


def test_old_runs_take_expected_from_the_config_their_command_names(tmp_path, official_dir):
    run = train_run(tmp_path, official_dir, None)
    summary = json.loads((run / "summary.json").read_text())
    summary["argv"] = ["cifar2l", "train", "configs/default.yaml"]
    (run / "summary.json").write_text(json.dumps(summary))
    assert report.load_item(run).expected.item == "Table 2: n_s=500, 1 cycle"


def test_expected_is_never_merged_with_a_parent(tmp_path):
    child = tmp_path / "c.yaml"
    child.write_text(f"extends: {ROOT / 'configs' / 'default.yaml'}\nexpected: {{item: mine}}\n")
    e = load_config(child).expected
    assert e.item == "mine" and e.note == "" and e.accuracy == {}
    assert load_config(ROOT / "configs" / "cycles3.yaml").expected.accuracy["train"] == 0.7784


@pytest.mark.parametrize("value, fragments", [
    ("{item: x, top: [[0.1, 0.2, 0.3]]}", ["expected.top", "[lambda, val_accuracy]"]),
    ("{item: x, colour: red}", ["expected.colour", "unknown key"]),
    ("{accuracy: {test: 0.5}}", ["expected.item", "required"]),
    ("{item: x, accuracy: {best: 0.5}}", ["expected.accuracy"]),
])  # fmt: skip
def test_bad_expected_blocks_fail_at_load_time(tmp_path, value, fragments):
    res = invoke("train", SMOKE, "--set", f"expected={value}", "--out", tmp_path / "runs")
    one_error_line(res, 2, *fragments)


def test_every_shipped_table_config_states_its_item():
    for _command, stem in tables.REPORT_ITEMS:
        assert load_config(ROOT / "configs" / f"{stem}.yaml").expected is not None, stem


def test_make_report_reuses_counted_runs_and_runs_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    # (name, what load_item finds): only an unmodified run over enough seeds is reused
    found = {"20260101-000000-train-default": ([], 5),
             "20260102-000000-train-default": (["seed=1"], 5),  # newer but modified
             "20260103-000000-train-default": None,  # newest, but not a finished run
             "20260101-000000-train-cycles3": ([], 1),  # too few seeds
             "20260101-000000-search-search-coarse": ([], 5)}  # fmt: skip
    for name in found:
        (out / name).mkdir(parents=True)

    def fake_load_item(run):
        if found[run.name] is None:
            raise report.Skipped("not completed")
        modified, seeds = found[run.name]
        return report.Item(run, {}, load_config(SMOKE).expected, seeds, modified)

    ran, reported = [], []

    def fake_cifar2l(*args):
        ran.append(args)
        return {"run_dir": str(out / f"new-{Path(args[1]).stem}")}

    monkeypatch.setattr(report, "load_item", fake_load_item)
    monkeypatch.setattr(tables, "cifar2l", fake_cifar2l)
    monkeypatch.setattr(tables.subprocess, "run", lambda cmd, **kw: reported.append(cmd))
    tables.report_target(out, jobs=2)
    stems = [Path(a[1]).stem for a in ran]
    assert "default" not in stems and "search-coarse" not in stems  # reused
    assert "cycles3" in stems and len(ran) == len(tables.REPORT_ITEMS) - 2
    assert str(out / "20260101-000000-train-default") in reported[0]
    fine = next(a for a in ran if Path(a[1]).stem == "search-fine")
    assert fine[-2:] == ("--refine", str(out / "20260101-000000-search-search-coarse"))
    default = load_config(ROOT / "configs" / "cycles3.yaml").expected.seeds
    assert next(a for a in ran if Path(a[1]).stem == "cycles3")[-2:] == ("--repeat", str(default))
