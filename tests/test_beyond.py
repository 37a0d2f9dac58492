"""Beyond the study: geometric/photometric augmentation, per-channel standardisation, label
smoothing, decoupled weight decay, the one-cycle schedule and snapshot ensembles. Synthetic data
only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cifar2l import augment, data, ensemble, gradcheck, network, optim, search, weights
from cifar2l.config import load_config
from cifar2l.schedule import cycle_length, make_schedule, one_cycle, total_steps

from .conftest import ROOT, invoke, ok, one_error_line

SMOKE = ROOT / "configs" / "smoke.yaml"
BEST = ROOT / "configs" / "best.yaml"


def images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3072)).astype(np.float32)


def naive_flip_translate(img: np.ndarray, flip: bool, dy: int, dx: int, k: int, pad: str):
    """One (3, 32, 32) image, the slow obvious way: shift, then mirror."""
    mode = "reflect" if pad == "reflect" else "constant"
    padded = np.pad(img, ((0, 0), (k, k), (k, k)), mode=mode)
    out = padded[:, k + dy : k + dy + 32, k + dx : k + dx + 32]
    return out[:, :, ::-1] if flip else out


# ---------------------------------------------------------------- augmentation


@pytest.mark.parametrize("pad", ["reflect", "zero"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_flip_translate_matches_a_per_image_reference(pad, k):
    x = images()
    xb = x.copy()
    augment.flip_translate(xb, True, k, pad, np.random.default_rng(5))
    # The same draws, in the same order, as flip_translate makes them.
    rng = np.random.default_rng(5)
    flips = rng.random(len(x)) < 0.5
    dy, dx = rng.integers(-k, k + 1, size=(2, len(x))) if k else np.zeros((2, len(x)), int)
    for i in range(len(x)):
        want = naive_flip_translate(x[i].reshape(3, 32, 32), flips[i], dy[i], dx[i], k, pad)
        np.testing.assert_array_equal(xb[i].reshape(3, 32, 32), want)


def test_flip_only_mirrors_about_half_the_rows_and_keeps_the_rest():
    x = images(200)
    xb = x.copy()
    augment.flip_translate(xb, True, 0, "reflect", np.random.default_rng(1))
    mirrored = x.reshape(-1, 3, 32, 32)[:, :, :, ::-1].reshape(len(x), -1)
    same = (xb == x).all(axis=1)
    flipped = (xb == mirrored).all(axis=1)
    assert (same | flipped).all() and 60 < flipped.sum() < 140


def test_translation_moves_pixels_and_zero_padding_fills_with_zeros():
    x = images(50)
    xb = x.copy()
    augment.flip_translate(xb, False, 4, "zero", np.random.default_rng(2))
    assert not np.array_equal(xb, x)
    assert (xb == 0).any()  # some border was filled
    assert np.isin(xb[xb != 0], x).all()  # nothing but moved input values


def test_augmentation_is_reproducible_from_the_seed_and_changes_with_it():
    cfg = load_config(BEST, ["augment.brightness=0.2", "augment.contrast=0.3",
                             "augment.noise.fraction=0.5"])  # fmt: skip
    outs = []
    for seed in (3, 3, 4):
        xb = images(8)
        augment.apply(xb, cfg.augment, np.random.default_rng(seed))
        outs.append(xb)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_jitter_scales_the_deviation_and_shifts_the_mean():
    x = images(4).astype(np.float64)
    xb = x.copy()
    augment.jitter(xb, 0.5, 0.4, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    scale, shift = rng.uniform(0.6, 1.4, size=4), rng.uniform(-0.5, 0.5, size=4)
    mean = x.mean(axis=1, keepdims=True)
    want = (x - mean) * scale[:, None] + mean + shift[:, None]
    np.testing.assert_allclose(xb, want, rtol=1e-12, atol=1e-12)


def test_defaults_leave_the_batch_untouched():
    cfg = load_config(SMOKE)
    xb = images()
    before = xb.copy()
    augment.apply(xb, cfg.augment, np.random.default_rng(0))
    np.testing.assert_array_equal(xb, before)


# ---------------------------------------------------------------- standardisation


def test_per_channel_standardizer_has_one_value_per_plane():
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (50, 3072)) * np.repeat([0.2, 0.5, 1.0], 1024)).astype(np.uint8)
    mean, std = data.fit_standardizer(x, "per_channel")
    planes = x.reshape(50, 3, 1024).astype(np.float64)
    np.testing.assert_allclose(mean.reshape(3, 1024), planes.mean(axis=(0, 2))[:, None].repeat(
        1024, axis=1), rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(std.reshape(3, 1024)[:, 0], planes.std(axis=(0, 2)), rtol=1e-9)
    z = data.standardize(x, mean, std, np.float64).reshape(50, 3, 1024)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1, atol=1e-9)


def test_prepare_uses_the_configured_standardisation(official_dir):
    for per in ("per_feature", "per_channel"):
        cfg = load_config(SMOKE, [f"data.root={official_dir}", f"data.standardize={per}"])
        prep = data.prepare(cfg.data, cfg.dtype, np.random.default_rng(0))
        distinct = len(np.unique(prep.mean))
        assert (distinct <= 3) == (per == "per_channel")


# ---------------------------------------------------------------- label smoothing


def test_label_smoothing_loss_by_hand():
    scores = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    y = np.array([0, 2])
    e = 0.2
    log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    q = np.full((2, 3), e / 3)
    q[[0, 1], y] += 1 - e
    loss, dscores = network.softmax_cross_entropy(scores[None].copy(), y, e)
    assert loss[0] == pytest.approx(-(q * log_p).sum(axis=1).mean(), rel=1e-12)
    np.testing.assert_allclose(dscores[0], (np.exp(log_p) - q) / 2, rtol=1e-12)


def test_zero_smoothing_is_plain_cross_entropy():
    scores = images(5)[:, :10].astype(np.float64)
    y = np.arange(5)
    a = network.softmax_cross_entropy(scores[None].copy(), y)
    b = network.softmax_cross_entropy(scores[None].copy(), y, 0.0)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_gradient_with_label_smoothing_checks(lam):
    rng = np.random.default_rng(0)
    params = network.init_params(6, 7, 3, rng, "float64")
    x, y = rng.standard_normal((4, 6)), rng.integers(0, 3, size=4)
    result = gradcheck.compare(params, x, y, lam, 1e-5, smoothing=0.1)
    assert max(r["floored_rel_error"] for r in result.values()) * 10 <= 1e-6  # the verdict


def test_gradcheck_command_uses_the_configured_smoothing(official_dir, tmp_path):
    out = tmp_path / "runs"
    res = ok("gradcheck", ROOT / "configs" / "gradcheck.yaml", "--set", f"data.root={official_dir}",
             "--set", "optim.label_smoothing=0.1", "--out", out, "--json")  # fmt: skip
    assert json.loads(res.stdout)["passed"] is True


# ---------------------------------------------------------------- decoupled weight decay


def test_decoupled_weight_decay_shrinks_weights_not_biases():
    params = network.init_params(6, 7, 3, np.random.default_rng(0), "float64")
    before = {k: v.copy() for k, v in params.items()}
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    opt = optim.Optimizer(np.zeros(1), np.zeros(1), np.array([0.5]))
    optim.update(params, zero, np.array([0.1]), None, opt)
    np.testing.assert_allclose(params["W1"], before["W1"] * (1 - 0.05), rtol=1e-15)
    np.testing.assert_allclose(params["W2"], before["W2"] * (1 - 0.05), rtol=1e-15)
    np.testing.assert_array_equal(params["b1"], before["b1"])
    np.testing.assert_array_equal(params["b2"], before["b2"])


def test_weight_decay_stays_out_of_the_momentum_buffer():
    params = network.init_params(6, 7, 3, np.random.default_rng(0), "float64")
    opt = optim.Optimizer(np.zeros(1), np.array([0.9]), np.array([0.5]), nesterov=True)
    velocity = optim.init_velocity(params, opt)
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    optim.update(params, zero, np.array([0.1]), velocity, opt)
    assert all(not v.any() for v in velocity.values())


# ---------------------------------------------------------------- one-cycle schedule


def test_one_cycle_shape():
    eta = [one_cycle(t, 0.001, 0.1, 100, 0.3) for t in range(101)]
    assert eta[0] == pytest.approx(0.001) and eta[30] == pytest.approx(0.1)
    assert eta[100] == pytest.approx(0.001)  # the next cycle starts where this one ended
    assert all(a < b for a, b in zip(eta[:30], eta[1:31], strict=True))
    assert all(a > b for a, b in zip(eta[30:99], eta[31:100], strict=True))
    assert eta[65] == pytest.approx(0.001 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.099)


def test_one_cycle_without_warmup_starts_at_the_peak_and_repeats():
    cfg = load_config(SMOKE, ["schedule.kind=one_cycle", "schedule.steps=90",
                              "schedule.cycles=3", "schedule.warmup=0.0"])  # fmt: skip
    eta = make_schedule(cfg.schedule)
    assert total_steps(cfg.schedule) == 90 and cycle_length(cfg.schedule) == 30
    assert eta(0) == pytest.approx(cfg.schedule.eta_max)
    assert [eta(t) for t in range(30)] == [eta(t + 30) for t in range(30)]
    assert eta(29) < eta(30)  # a warm restart


def test_one_cycle_steps_must_divide_into_cycles(tmp_path):
    res = invoke("train", SMOKE, "--set", "schedule.kind=one_cycle", "--set", "schedule.steps=10",
                 "--set", "schedule.cycles=3", "--out", tmp_path / "runs")  # fmt: skip
    one_error_line(res, 2, "schedule", "multiple of cycles")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("sets, fragments", [
    (["augment.pad=mirror"], ["augment.pad", "reflect", "zero"]),
    (["augment.translate=-1"], ["augment.translate"]),
    (["data.standardize=global"], ["data.standardize", "per_feature", "per_channel"]),
    (["optim.label_smoothing=1.0"], ["optim.label_smoothing"]),
    (["optim.weight_decay=-0.1"], ["optim.weight_decay"]),
    (["train.snapshots=[5, 500]"], ["train.snapshots", "500", "after the last update"]),
    (["train.snapshots=[]"], ["train.snapshots"]),
    (["train.snapshots=cycles", "schedule.kind=constant"], ["train.snapshots", "cycles"]),
    (["search.metric=ensemble_val_accuracy"], ["ensemble_val_accuracy", "train.snapshots"]),
])  # fmt: skip
def test_bad_new_options_fail_at_load_time(tmp_path, sets, fragments):
    args = [a for s in sets for a in ("--set", s)]
    res = invoke("train", SMOKE, *args, "--out", tmp_path / "runs")
    one_error_line(res, 2, *fragments)
    assert not (tmp_path / "runs").exists()


def test_repeat_fuses_smoothing_and_snapshots(official_dir, tmp_path):
    sets = ["--set", f"data.root={official_dir}", "--set", "optim.label_smoothing=0.1",
            "--set", "train.snapshots=[10, 20]"]  # fmt: skip
    res = ok("train", SMOKE, *sets, "--repeat", "2", "--out", tmp_path / "runs", "--json", "-q")
    s = json.loads(res.stdout)
    assert s["repeat"] == 2 and s["fused"] is True
    subs = [json.loads((Path(s["run_dir"]) / "repeats" / f"{k:02d}" / "summary.json").read_text())
            for k in range(2)]  # fmt: skip
    assert s["accuracy_runs"]["val"] == [sub["accuracy"]["val"] for sub in subs]
    assert s["ensemble"]["accuracy_runs"]["test"] == [sub["ensemble"]["accuracy"]["test"]
                                                      for sub in subs]  # fmt: skip
    # the numbers of each seed trained alone (up to rounding): nothing else is shared
    alone = json.loads(ok("train", Path(s["run_dir"]) / "repeats" / "01" / "config.yaml",
                          "--out", tmp_path / "a", "--json", "-q").stdout)  # fmt: skip
    for split, acc in alone["accuracy"].items():
        assert abs(acc - subs[1]["accuracy"][split]) <= 0.002


def test_search_fuses_trials_with_snapshots(official_dir):
    cfg = load_config(SMOKE, [f"data.root={official_dir}", "train.snapshots=cycles",
                              "search.space={optim.lambda: {log_uniform: [0.001, 0.01]}}",
                              "search.trials=3"])  # fmt: skip
    plan = search.make_plan(cfg, "smoke")
    groups = search.fuse_groups(plan["trials"], plan["config"])
    assert [len(g) for g in groups] == [3]


# ---------------------------------------------------------------- snapshot ensembles


def snapshot_run(official_dir, tmp_path, *sets) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    res = ok("train", SMOKE, "--set", f"data.root={official_dir}", "--set", "schedule.cycles=3",
             "--set", "train.snapshots=cycles", *args, "--out", tmp_path / "runs", "--json")
    return json.loads(res.stdout)


def test_snapshots_at_cycle_ends_and_the_ensemble_in_the_summary(official_dir, tmp_path):
    s = snapshot_run(official_dir, tmp_path, "augment.flip=true", "augment.translate=2")
    run = Path(s["run_dir"])
    assert s["ensemble"]["members"] == [20, 40, 60]
    assert [p.name for p in ensemble.members(run)] == [
        "step-000020.npz", "step-000040.npz", "step-000060.npz"]
    assert set(s["ensemble"]["accuracy"]) == {"train", "val", "test"}
    with np.load(run / "weights.npz") as final, np.load(run / "snapshots/step-000060.npz") as last:
        for k in network.PARAM_KEYS:
            np.testing.assert_array_equal(final[k], last[k])
    with np.load(run / "snapshots/step-000020.npz") as first:
        assert not np.array_equal(first["W1"], last_w1(run))


def last_w1(run: Path) -> np.ndarray:
    with np.load(run / "weights.npz") as f:
        return f["W1"]


def test_ensemble_accuracy_is_the_averaged_softmax(official_dir, tmp_path):
    s = snapshot_run(official_dir, tmp_path)
    run = Path(s["run_dir"])
    cfg = load_config(run / "config.yaml")
    prep = data.prepare(cfg.data, cfg.dtype, np.random.default_rng(0))  # split by batch names
    probs = []
    for path in ensemble.members(run):
        with np.load(path) as f:
            params = weights.stacked({k: f[k] for k in network.PARAM_KEYS})
            probs.append(network.softmax(network.forward(params, prep.test.x)[0]))
    acc = float((np.mean(probs, axis=0).argmax(axis=1) == prep.test.y).mean())
    assert s["ensemble"]["accuracy"]["test"] == pytest.approx(acc, abs=1e-12)


def test_evaluate_ensemble_reproduces_the_training_summary(official_dir, tmp_path):
    s = snapshot_run(official_dir, tmp_path, "optim.label_smoothing=0.1",
                     "optim.weight_decay=0.01", "data.standardize=per_channel")
    res = ok("evaluate", s["run_dir"], "--ensemble", "--split", "val", "--out",
             tmp_path / "eval", "--json")  # fmt: skip
    ev = json.loads(res.stdout)
    assert ev["accuracy"]["val"] == s["ensemble"]["accuracy"]["val"]
    assert ev["ensemble"] == [20, 40, 60]
    plain = json.loads(ok("evaluate", s["run_dir"], "--split", "val", "--out", tmp_path / "eval",
                          "--json").stdout)  # fmt: skip
    assert plain["accuracy"] == {"val": s["accuracy"]["val"]}


def test_evaluate_ensemble_without_snapshots_is_one_error(official_dir, tmp_path):
    s = json.loads(ok("train", SMOKE, "--set", f"data.root={official_dir}", "--out",
                      tmp_path / "runs", "--json").stdout)  # fmt: skip
    assert "ensemble" not in s
    res = invoke("evaluate", s["run_dir"], "--ensemble", "--out", tmp_path / "eval")
    one_error_line(res, 1, "no snapshots")
    assert not (tmp_path / "eval").exists()


def test_explicit_snapshot_steps(official_dir, tmp_path):
    s = snapshot_run(official_dir, tmp_path, "train.snapshots=[7, 33, 60]")
    assert s["ensemble"]["members"] == [7, 33, 60]


def test_snapshot_runs_are_reproducible(official_dir, tmp_path):
    a = snapshot_run(official_dir, tmp_path / "a", "augment.flip=true", "augment.translate=3")
    b = snapshot_run(official_dir, tmp_path / "b", "augment.flip=true", "augment.translate=3")
    assert a["ensemble"] == b["ensemble"] and a["accuracy"] == b["accuracy"]
    ma = (Path(a["run_dir"]) / "metrics.csv").read_bytes()
    assert ma == (Path(b["run_dir"]) / "metrics.csv").read_bytes()


def test_best_config_loads_and_is_what_the_readme_promises():
    cfg = load_config(BEST)
    assert cfg.model.hidden >= 1024 and cfg.data.zca_eps is not None
    assert cfg.evaluate.tta == ["flip", "shift"] and cfg.train.average is not None
    assert cfg.data.val_size and cfg.data.test == "test_batch"
    assert cfg.expected.seeds == 1  # make best: one seed (the README's 3 seeds: --repeat)
