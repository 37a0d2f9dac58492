"""Test-time augmentation (evaluate.tta) and weight averaging (train.average): each against a
plain NumPy reference, through train, --repeat, resume, search and evaluate. Synthetic data."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from cifar2l import average, checkpoint, network, tta
from cifar2l.config import AverageConfig, load_config
from cifar2l.errors import ConfigError

from .conftest import ROOT, invoke, ok, one_error_line

SMOKE = ROOT / "configs" / "smoke.yaml"
# 20 updates; averaging starts after update 10, a sample every 5: the weights at 15 and 20.
AVG = ["--set", "train.average={kind: swa, start: 0.5, every: 5}"]
TTA = ["--set", "evaluate.tta=[flip, shift]"]


def images(x):
    return x.reshape(-1, 3, 32, 32)


def ref_view(x, flip: bool, dy: int, dx: int):
    """A view by padding the images by reflection and slicing: the plain reference."""
    img = np.pad(images(x), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    img = img[:, :, 1 + dy : 33 + dy, 1 + dx : 33 + dx]
    return (img[..., ::-1] if flip else img).reshape(len(x), -1)


def test_views_are_the_image_first_then_its_augmentations():
    assert tta.views([]) == [(False, 0, 0)]
    assert tta.views(["flip"]) == [(False, 0, 0), (True, 0, 0)]
    vs = tta.views(["flip", "shift"])
    assert len(vs) == 10 and len(set(vs)) == 10 and vs[0] == (False, 0, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("views", [["flip"], ["shift"], ["flip", "shift"]])
def test_tta_probabilities_equal_the_mean_over_reference_views(dtype, views):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3072)).astype(dtype)
    params = network.init_params(3072, 5, 10, [np.random.default_rng(s) for s in (1, 2)], dtype)
    got = tta.probabilities(params, x, views, reflect=True, chunk=3)  # chunks of 3, 3, 1 rows
    want = np.mean([network.probabilities(params, ref_view(x, *v)) for v in tta.views(views)],
                   axis=0)  # fmt: skip
    assert got.shape == (2, 7, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "float32" else 1e-12)


def test_the_mirror_view_is_the_mirrored_image():
    x = np.arange(2 * 3072, dtype=np.float32).reshape(2, 3072)
    out = tta.view_rows(x, (True, 0, 0), True, np.empty_like(x))
    np.testing.assert_array_equal(images(out), images(x)[..., ::-1])


def test_sample_schedule_and_running_means():
    cfg = AverageConfig(kind="swa", start=0.5, every=5)
    assert [t for t in range(21) if average.due(cfg, t, 20)] == [15, 20]
    rng = np.random.default_rng(0)
    samples = [network.init_params(4, 3, 2, rng, "float64") for _ in range(4)]
    for kind, want in [("swa", lambda k: np.mean([s[k] for s in samples], axis=0)),
                       ("ema", lambda k: ema([s[k] for s in samples], 0.9))]:  # fmt: skip
        cfg = AverageConfig(kind=kind, decay=0.9)
        avg = None
        for n, s in enumerate(samples, 1):
            avg = average.fold(avg, s, average.sample_weight(cfg, n))
        for k in network.PARAM_KEYS:
            np.testing.assert_allclose(avg[k], want(k), rtol=1e-12)
    assert avg["W1"] is not samples[0]["W1"]  # the first sample is copied, not aliased


def ema(values, decay):
    out = values[0]
    for v in values[1:]:
        out = decay * out + (1 - decay) * v
    return out


def train(tmp_path, official_dir, name, *extra, config=SMOKE) -> dict:
    out = tmp_path / name
    args = [config, "--set", f"data.root={official_dir}", "--out", out, "--json", *extra]
    return json.loads(ok("train", *args).stdout)


def test_swa_weights_are_the_mean_of_the_sampled_weights(tmp_path, official_dir):
    s = train(tmp_path, official_dir, "r", *AVG, "--set", "train.snapshots=[15, 20]")
    run = Path(s["run_dir"])
    with np.load(run / "weights-avg.npz") as f:
        got = {k: f[k] for k in network.PARAM_KEYS}
    snaps = [np.load(run / "snapshots" / f"step-{t:06d}.npz") for t in (15, 20)]
    for k in network.PARAM_KEYS:
        np.testing.assert_allclose(got[k], (snaps[0][k] + snaps[1][k]) / 2, rtol=1e-6, atol=1e-7)
    avg = s["average"]
    assert avg["kind"] == "swa" and avg["samples"] == 2 and set(avg["accuracy"]) == {
        "train", "val", "test"}  # fmt: skip
    assert "tta_accuracy" not in avg and "tta" not in s
    # the averaged weights are an ordinary weights file: evaluate scores them as recorded
    ev = json.loads(ok("evaluate", run / "weights-avg.npz", "--split", "val", "--out",
                       tmp_path / "ev", "--json").stdout)  # fmt: skip
    assert ev["accuracy"] == {"val": avg["accuracy"]["val"]}


def test_tta_accuracies_sit_beside_the_plain_ones(tmp_path, official_dir):
    s = train(tmp_path, official_dir, "r", *TTA, *AVG, "--set", "train.snapshots=[10, 20]")
    assert s["tta"]["views"] == ["flip", "shift"] and set(s["tta"]["accuracy"]) == {"val", "test"}
    assert set(s["accuracy"]) == {"train", "val", "test"}  # the plain ones are still there
    assert set(s["average"]["tta_accuracy"]) == {"val", "test"}
    assert set(s["ensemble"]["tta_accuracy"]) == {"val", "test"}
    run = Path(s["run_dir"])
    ev = json.loads(ok("evaluate", run, "--out", tmp_path / "ev", "--json").stdout)
    assert ev["tta"]["accuracy"] == {"test": s["tta"]["accuracy"]["test"]}  # evaluate.tta
    assert ev["accuracy"] == {"test": s["accuracy"]["test"]}
    ens = json.loads(ok("evaluate", run, "--ensemble", "--out", tmp_path / "ev", "--json").stdout)
    assert ens["tta"]["accuracy"]["test"] == s["ensemble"]["tta_accuracy"]["test"]
    plain = json.loads(ok("evaluate", run, "--tta", "none", "--out", tmp_path / "ev",
                          "--json").stdout)  # fmt: skip
    assert "tta" not in plain


def test_evaluate_tta_option_overrides_the_run(tmp_path, official_dir):
    s = train(tmp_path, official_dir, "r")
    run = Path(s["run_dir"])
    ev = json.loads(ok("evaluate", run, "--tta", "flip", "--out", tmp_path / "ev",
                       "--json").stdout)  # fmt: skip
    assert ev["tta"]["views"] == ["flip"] and 0 <= ev["tta"]["accuracy"]["test"] <= 1
    for bad in ("mirror", "flip,flip", ""):
        res = invoke("evaluate", run, "--tta", bad, "--out", tmp_path / "bad")
        one_error_line(res, 2, "--tta", "flip, shift")
    assert not (tmp_path / "bad").exists()


def test_a_trial_in_a_repeat_averages_as_it_does_alone(tmp_path, official_dir):
    # float64: in float32 the products' rounding (other for T = 2 than for T = 1) grows over
    # the smoke run's large steps to ~1e-6 absolute
    s = train(tmp_path, official_dir, "rep", *AVG, *TTA, "--set", "dtype=float64", "--repeat", 2)
    run = Path(s["run_dir"])
    assert set(s["average"]["accuracy_std"]) == {"train", "val", "test"}
    assert len(s["tta"]["accuracy_runs"]["test"]) == 2 and "tta" in s["average"]
    alone = train(tmp_path, official_dir, "alone",
                  config=run / "repeats" / "01" / "config.yaml")
    a, b = np.load(Path(alone["run_dir"]) / "weights-avg.npz"), np.load(
        run / "repeats" / "01" / "weights-avg.npz")  # fmt: skip
    for k in network.PARAM_KEYS:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("stop_at", [12, 17])  # before the first sample, between two
def test_resume_continues_the_average_exactly(tmp_path, official_dir, monkeypatch, stop_at):
    sets = [SMOKE, "--set", f"data.root={official_dir}", *AVG, "-q"]
    ok("train", *sets, "--out", tmp_path / "ref")
    calls = {"n": 0}

    def fake_pending():
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == stop_at else None

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "pending", fake_pending)
        m.setattr(checkpoint, "take_pending", lambda: signal.SIGTERM)
        assert invoke("train", *sets, "--out", tmp_path / "cut").exit_code == 143
    (run,) = (tmp_path / "cut").iterdir()
    ok("train", "--resume", run)
    (ref,) = (tmp_path / "ref").iterdir()
    with np.load(run / "weights-avg.npz") as a, np.load(ref / "weights-avg.npz") as b:
        for k in network.PARAM_KEYS:
            np.testing.assert_array_equal(a[k], b[k])


def test_a_checkpoint_from_before_a_new_config_key_still_resumes():
    then = load_config(SMOKE).to_dict()
    del then["evaluate"]  # written by a cifar2l that had no evaluate section
    assert checkpoint.config_changes(then, load_config(SMOKE).to_dict()) == []
    now = load_config(SMOKE, ["evaluate.tta=[flip]"]).to_dict()
    assert checkpoint.config_changes(then, now) == ["evaluate.tta"]


@pytest.mark.parametrize("sets, fragment", [
    (["train.average={start: 0.99, every: 5}"], "no sample of the weights"),
    (["train.average={kind: mean}"], "train.average.kind"),
    (["train.average={decay: 1.0}"], "train.average.decay"),
    (["evaluate.tta=[flip, flip]"], "listed twice"),
    (["evaluate.tta=[rotate]"], "evaluate.tta"),
    (["search.metric=tta_val_accuracy"], "needs evaluate.tta"),
    (["search.metric=average_val_accuracy"], "needs train.average"),
])  # fmt: skip
def test_bad_settings_fail_at_load_time(sets, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(SMOKE, sets)


def test_search_ranks_by_the_average_or_tta_accuracy(tmp_path, official_dir):
    args = ["search", SMOKE, "--set", f"data.root={official_dir}", "--set", "search.trials=2",
            "--set", "search.space={optim.lambda: {log_uniform: [0.001, 0.1]}}", *AVG, *TTA,
            "--set", "search.metric=average_val_accuracy", "--dir", tmp_path / "s", "-q"]
    ok(*args)
    header = (tmp_path / "s" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"tta_val_accuracy", "average_val_accuracy"} <= set(header)
    rows = (tmp_path / "s" / "results.csv").read_text().splitlines()[1:]
    col = header.index("average_val_accuracy")
    vals = [float(r.split(",")[col]) for r in rows]
    assert vals == sorted(vals, reverse=True) and all(0 <= v <= 1 for v in vals)


# ---------------------------------------------------------------- ZCA whitening (data.zca_eps)


def test_zca_whitening_gives_unit_covariance_and_keeps_the_image_nearest():
    from cifar2l import whiten

    rng = np.random.default_rng(5)
    mix = np.eye(12) + 0.3 * rng.standard_normal((12, 12))  # well conditioned: eps is negligible
    x = rng.standard_normal((3000, 12)) @ mix + 3.0
    mean, w = whiten.fit(x, 1e-9)
    np.testing.assert_array_equal(w, w.T)
    z = whiten.apply(x, mean, w)
    np.testing.assert_allclose(np.cov(z, rowvar=False, bias=True), np.eye(12), atol=1e-8)
    # float32 rows stay float32 (rounding of a conditioned mix: ~1e-5 relative)
    x32 = x.astype(np.float32)
    z32 = whiten.apply(x32, mean, w)
    assert z32.dtype == np.float32
    np.testing.assert_allclose(z32, (x32.astype(np.float64) - mean) @ w, rtol=1e-3, atol=1e-3)
    # a large eps leaves a direction of small variance nearly as it was (scaled by 1/sqrt(eps))
    _, w_big = whiten.fit(x, 1e6)
    np.testing.assert_allclose(w_big, np.eye(12) / 1e3, rtol=1e-3, atol=1e-6)


def test_a_whitened_run_stores_its_whitening_and_evaluate_applies_it(tmp_path, official_dir):
    s = train(tmp_path, official_dir, "r", "--set", "data.zca_eps=0.1")
    run = Path(s["run_dir"])
    with np.load(run / "weights.npz") as f:
        assert f["zca"].shape == (3072, 3072) and f["zca_mean"].shape == (3072,)
    ev = json.loads(ok("evaluate", run, "--split", "val", "--out", tmp_path / "ev",
                       "--json").stdout)  # fmt: skip
    assert ev["accuracy"] == {"val": s["accuracy"]["val"]}
    plain = train(tmp_path, official_dir, "p")
    assert plain["accuracy"] != s["accuracy"] or plain["loss"] != s["loss"]


def test_make_best_table_shows_every_accuracy_a_run_has(tmp_path, official_dir):
    from cifar2l import tables

    single = train(tmp_path, official_dir, "one", *AVG, *TTA)
    rep = train(tmp_path, official_dir, "rep", *AVG, *TTA, "--repeat", 2)
    for s in (single, rep):
        cols = tables.best_columns(s)
        assert list(cols) == ["single network", "TTA (flip+shift)", "weight average (swa)",
                              "weight average + TTA"]  # fmt: skip
        assert tables.pm(cols["weight average + TTA"], "test").startswith("0.")
    assert " ± " in tables.pm(tables.best_columns(rep)["TTA (flip+shift)"], "val")
    assert list(tables.best_columns(train(tmp_path, official_dir, "plain"))) == [
        "single network"]  # fmt: skip


def test_a_weights_file_with_a_broken_whitening_is_refused(tmp_path, official_dir):
    s = train(tmp_path, official_dir, "r", "--set", "data.zca_eps=1.0")
    path = Path(s["run_dir"]) / "weights.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for key, bad in [("zca", arrays["zca"][:5]), ("zca_mean", np.full(3072, np.nan))]:
        np.savez(tmp_path / "bad.npz", **{**arrays, key: bad})
        res = invoke("evaluate", tmp_path / "bad.npz", "--out", tmp_path / "ev")
        one_error_line(res, 1, "bad.npz")
    assert not (tmp_path / "ev").exists()


def test_the_report_checks_the_tta_target_of_an_item():
    from cifar2l import report
    from cifar2l.config import ExpectedConfig

    e = ExpectedConfig(item="x", minimum={"test": 0.6}, tta_minimum={"test": 0.65})
    summary = {"accuracy": {"test": 0.62}, "tta": {"views": ["flip"], "accuracy": {"test": 0.64}}}
    rows = report.accuracy_rows(report.Item(Path("r"), summary, e))
    assert [(r.ok, r.label) for r in rows] == [
        (True, "test accuracy (target >= 0.6)"),
        (False, "test-time augmentation, test accuracy (target >= 0.65)")]  # fmt: skip
