"""Plots people look at (titles naming the run and its settings, the LR range test's loss axis
clipped, the best search trial starred, a `--repeat` run's mean +- std curves) and a report
page people share (summary first, linked items, self-contained)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cifar2l import plots, report, runs
from cifar2l.config import load_config

from .conftest import ROOT, ok

SMOKE = ROOT / "configs" / "smoke.yaml"


def rows(n: int = 5, shift: float = 0.0) -> list[dict]:
    out = []
    for t in range(n):
        row = {"step": 10 * t}
        for split in ("train", "val"):
            row |= {f"{split}_loss": 2.3 - 0.1 * t + shift, f"{split}_cost": 2.5 - 0.1 * t,
                    f"{split}_accuracy": 0.1 + 0.05 * t + shift}  # fmt: skip
        out.append(row)
    return out


def test_titles_name_the_run_and_its_settings():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert plots.run_name(Path("runs/20261201-225440-train-default")) == "default"
    assert plots.run_name(Path("runs/20261201-231747-train-best/repeats/01")) == "best · seed 01"
    assert plots.settings(cfg) == "hidden 50 · lambda 0.01 · cyclic eta 1e-05..0.1 (n_s 500, " \
        "1 cycle)"  # fmt: skip
    best = load_config(ROOT / "configs" / "best.yaml")
    assert "ZCA" in plots.settings(best) and "flip" in plots.settings(best)
    title = plots.title_lines("a run · accuracy", plots.settings(best), 40)
    assert all(len(line) <= 40 for line in title.splitlines()[1:])  # wrapped, nothing lost
    assert title.replace("\n", " · ").split(" · ")[2:] == plots.settings(best).split(" · ")


def test_a_train_run_titles_its_plots(tmp_path, official_dir, monkeypatch):
    monkeypatch.setenv("CIFAR2L_PLOT_PROCESS", "0")  # the spy sees this process's calls only
    titles, draw = {}, plots.curve

    def spy(rows_, metric, path, title):
        titles[metric] = title
        return draw(rows_, metric, path, title)

    monkeypatch.setattr(plots, "curve", spy)
    res = ok("train", SMOKE, "--set", f"data.root={official_dir}", "--set", "optim.lambda=0.005",
             "--out", tmp_path, "--json")  # fmt: skip
    assert (Path(json.loads(res.stdout)["run_dir"]) / "accuracy.png").is_file()
    assert sorted(titles) == ["accuracy", "cost", "loss"]
    for metric, title in titles.items():
        assert title.startswith(f"smoke · {metric}\n"), title  # the run's name (its config's)
        assert "hidden 8" in title and "lambda 0.005" in title and "n_s 10" in title
        assert "plot" not in title


def test_a_repeat_run_draws_mean_and_std_curves(tmp_path, official_dir):
    res = ok("train", SMOKE, "--set", f"data.root={official_dir}", "--repeat", "2", "--out",
             tmp_path, "--json")  # fmt: skip
    run = Path(json.loads(res.stdout)["run_dir"])
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plots.panels([rows(), rows(shift=0.02)], "smoke · mean ± std over 2 seeds")
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "cost", "accuracy"]
    acc = fig.axes[2]
    assert len(acc.collections) == 2  # a +-1 std band per split
    assert "mean ± 1 std of 2" in acc.get_legend_handles_labels()[1][0]
    mean = acc.lines[0].get_ydata()
    assert mean[0] == pytest.approx(0.11)  # the mean of 0.10 and 0.12
    assert fig.get_suptitle().startswith("smoke · mean ± std over 2 seeds")


def test_the_search_plot_stars_the_best_trial(tmp_path):
    done = [{"trial": 3, "params": {"optim.lambda": 0.004, "model.hidden": 40},
             "val_accuracy": 0.47},
            {"trial": 0, "params": {"optim.lambda": 0.05, "model.hidden": 80},
             "val_accuracy": 0.41}]  # fmt: skip
    search = {"metric": "val_accuracy", "space": {"optim.lambda": {"log_uniform": [1e-3, 0.1]},
                                                 "model.hidden": {"choice": [40, 80]}}}
    (tmp_path / "20261201-000000-search-s").mkdir()
    path = tmp_path / "20261201-000000-search-s" / "search.png"
    fig = plots.search_scatter(done, search, path)
    assert path.is_file()
    assert fig.get_suptitle().startswith("s · 2 completed trials")
    assert "best: trial 3, val_accuracy 0.4700" in fig.get_suptitle()
    for ax in fig.axes:
        labels = ax.get_legend_handles_labels()[1]
        assert "best (trial 3)" in labels
        star = ax.collections[1]  # the best trial's marker, on top of the trials
        assert star.get_offsets()[0][1] == pytest.approx(0.47)


def lr_rows(n: int = 40) -> list[dict]:
    lrs = np.logspace(-5, 0, n)
    loss = np.r_[np.linspace(2.3, 1.5, n - 5), [1.8, 3.0, 20.0, 400.0, np.inf]]
    return [{"lr": float(lr), "train_loss": float(v), "val_loss": float(v),
             "train_accuracy": 0.3, "val_accuracy": 0.3} for lr, v in zip(lrs, loss, strict=True)]


def test_the_lrrange_loss_axis_stops_below_the_blow_up(tmp_path):
    data = lr_rows()
    s = {"eta_min": 1e-4, "eta_max": 0.1, "smoothed_val_accuracy": [0.3] * len(data)}
    fig = plots.lrrange(data, s, True, tmp_path / "lr.png", "x · LR range test")
    low, top = fig.axes[1].get_ylim()
    assert np.isfinite(low) and np.isfinite(top)
    assert top < 2 * 2.3 < 20.0  # the blow-up does not stretch the axis
    assert low < 1.5 < 2.3 < top  # the useful part is all shown
    assert any("diverged" in t for t in fig.axes[1].get_legend_handles_labels()[1])
    assert plots.loss_limits([2.3, 2.0]) [1] == pytest.approx(2.3 + 0.05 * 0.3)


@pytest.mark.parametrize("argv, typed", [
    ([".venv/bin/cifar2l", "train", "configs/default.yaml"], "cifar2l train configs/default.yaml"),
    (["/x/cifar2l/__main__.py", "train", "a b.yaml"], "cifar2l train 'a b.yaml'"),
    (["/usr/bin/python3", "-m", "cifar2l", "report", "r"], "cifar2l report r"),
    (["/x/.venv/bin/python", "/x/cifar2l/__main__.py", "search", "s.yaml"],
     "cifar2l search s.yaml"),
])  # fmt: skip
def test_commands_read_as_typed(argv, typed):
    assert runs.as_typed(argv) == typed


def test_the_page_is_one_shareable_file(tmp_path, official_dir):
    made = []
    for item in ("Table 4: b", "Table 2: a"):
        res = ok("train", SMOKE, "--set", f"data.root={official_dir}", "--set",
                 f"expected={{item: '{item}', accuracy: {{test: 0.1}}, tolerance: 1.0}}",
                 "--out", tmp_path / "runs", "--json")  # fmt: skip
        made.append(Path(json.loads(res.stdout)["run_dir"]))
    old = made[0] / "command.txt"  # an old record: the interpreter's path to __main__.py
    old.write_text("/opt/venv/bin/python /opt/cifar2l/__main__.py train configs/b.yaml\n")
    ok("report", *made, "--out", tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)=['"]([^'"]*)""", page)
    assert refs and not [r for r in refs if r.startswith(("http:", "https:", "//"))]
    assert "<link" not in page and "<script" not in page and "<style>" in page
    assert page.count("data:image/png;base64,") == 2  # one 3-panel figure per item
    summary = page.index("<h2 id='summary'>")
    for label in ("Table 2: a", "Table 4: b"):  # every item: linked from the summary
        ids = re.findall(rf"<section class='item' id='([^']+)'><h2>{label} ", page)
        assert len(ids) == 1 and f"href='#{ids[0]}'" in page
        assert summary < page.index(f"id='{ids[0]}'")  # the summary comes first
    assert "<code>cifar2l train configs/b.yaml</code>" in page
    assert "__main__.py" not in page and "/opt/venv" not in page


def test_the_report_redraws_a_search_with_its_best_trial(tmp_path, official_dir):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata: {{root: {official_dir}, train: all, val: null, "
                   "val_size: 40}\nsearch:\n  trials: 3\n  space:\n    optim.lambda: "
                   "{log_uniform: [1.0e-4, 1.0e-1]}\nexpected:\n  item: 'Table 3: smoke'\n"
                   "  top: [[0.01, 0.5]]\n")  # fmt: skip
    run = Path(json.loads(ok("search", cfg, "--out", tmp_path / "runs", "--json").stdout)[
        "run_dir"])  # fmt: skip
    item = report.load_item(run)
    done = report.search_results(item)
    best = json.loads((run / "summary.json").read_text())["best"]
    assert len(done) == 3 and done[0]["trial"] == best["trial"]  # ranked, best first
    assert done[0]["params"]["optim.lambda"] == pytest.approx(best["params"]["optim.lambda"])
    ((name, png),) = report.render_figures(item)
    assert name == "search.png" and png[:4] == b"\x89PNG"


def test_benchmark_markdown_becomes_tables():
    page = report.md_blocks("Made by `make bench`.\n\n| loop | s |\n|---|---|\n| a | **2.1x** |")
    assert page == ("<p>Made by <code>make bench</code>.</p><div class='wide'><table><thead><tr>"
                    "<th>loop</th><th>s</th></tr></thead><tbody><tr><td>a</td><td><b>2.1x</b>"
                    "</td></tr></tbody></table></div>")  # fmt: skip
