"""Fused trials: T networks trained as one wide network equal each trained alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifar2l import data, fused, network, optim
from cifar2l.config import load_config
from cifar2l.rngs import make_rngs
from cifar2l.train import train

from .conftest import ROOT, ok

SMOKE = ROOT / "configs" / "smoke.yaml"


def trial_params(t: int, d=7, h=5, c=10, dtype="float64"):
    return [network.init_params(d, h, c, np.random.default_rng(100 + i), dtype) for i in range(t)]


def batch(n=6, d=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, 10, n)


def test_stack_unstack_round_trip():
    plist = trial_params(3)
    fp = fused.stack(plist)
    assert fp["W1"].shape == (7, 15) and fp["W2"].shape == (3, 5, 10) and fp["b2"].shape == (3, 10)
    for i, p in enumerate(plist):
        for k in p:
            np.testing.assert_array_equal(fused.unstack(fp, i)[k], p[k])


@pytest.mark.parametrize("with_mask", [False, True])
def test_fused_losses_and_gradients_equal_each_trial_alone(with_mask):
    plist, (x, y) = trial_params(3), batch()
    lam = np.array([0.0, 0.1, 0.5])
    masks = [None] * 3
    if with_mask:
        rng = np.random.default_rng(5)
        masks = [(rng.random((6, 5)) >= 0.3) / 0.7 for _ in range(3)]
    fmask = np.concatenate(masks, axis=1) if with_mask else None
    losses, grads = fused.loss_and_grads(fused.stack(plist), x, y, lam, fmask)
    for i, p in enumerate(plist):
        loss, _, g = network.loss_and_grads(p, x, y, lam[i], mask=masks[i])
        assert losses[i] == pytest.approx(loss, rel=1e-12)
        mine = {
            "W1": grads["W1"][:, i * 5 : (i + 1) * 5], "b1": grads["b1"][i * 5 : (i + 1) * 5],
            "W2": grads["W2"][i], "b2": grads["b2"][i]}  # fmt: skip
        for k in g:
            np.testing.assert_allclose(mine[k], g[k], rtol=1e-10, atol=1e-12)


def test_fused_dropout_mask_is_each_trials_own_draw():
    p = np.array([0.0, 0.25, 0.5])
    mask = fused.dropout_mask((8, 3, 6), p, np.random.default_rng(3), np.float32)
    for i, pi in enumerate(p):
        block = mask[:, i * 6 : (i + 1) * 6]
        _, alone = network.dropout_forward(np.ones((8, 6), np.float32), pi,
                                           np.random.default_rng(3))  # fmt: skip
        expected = np.ones((8, 6), np.float32) if alone is None else alone
        np.testing.assert_allclose(block, expected, rtol=1e-6)
    assert fused.dropout_mask((8, 3, 6), np.zeros(3), np.random.default_rng(3), np.float32) is None


@pytest.mark.parametrize("gamma, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_fused_update_equals_optim_per_trial(gamma, nesterov):
    plist, (x, y) = trial_params(2), batch()
    fp = fused.stack(plist)
    lr, gam = np.array([0.1, 0.03]), np.array([gamma, gamma])
    vel = {k: a * 0 for k, a in fp.items()} if gamma else None
    alone_vel = [optim.init_velocity(p) for p in plist]
    for _ in range(3):
        _, grads = fused.loss_and_grads(fp, x, y, np.array([0.01, 0.02]))
        fused.update(fp, grads, lr, vel, gam, nesterov)
        for i, p in enumerate(plist):
            _, _, g = network.loss_and_grads(p, x, y, [0.01, 0.02][i])
            optim.update(p, g, lr[i], alone_vel[i] if gamma else None, gamma, nesterov)
    for i, p in enumerate(plist):
        for k in p:
            np.testing.assert_allclose(fused.unstack(fp, i)[k], p[k], rtol=1e-10, atol=1e-12)


def test_fused_evaluate_equals_network_evaluate():
    plist, (x, y) = trial_params(3), batch(n=50)
    lam = np.array([0.0, 0.01, 0.1])
    for i, m in enumerate(fused.evaluate(fused.stack(plist), x, y, lam, chunk=17)):
        alone = network.evaluate(plist[i], x, y, lam[i])
        assert m["accuracy"] == alone["accuracy"]
        assert m["loss"] == pytest.approx(alone["loss"], rel=1e-10)
        assert m["cost"] == pytest.approx(alone["cost"], rel=1e-10)


def configs(official_dir, *updates, extra=()):
    base = load_config(SMOKE, [f"data.root={official_dir}", "dtype=float64",
                               "augment.noise.fraction=0.3", *extra])  # fmt: skip
    out = []
    for lam, eta_max, dropout, seed in updates:
        out.append(base.model_copy(update={
            "optim": base.optim.model_copy(update={"lambda_": lam}),
            "schedule": base.schedule.model_copy(update={"eta_max": eta_max}),
            "model": base.model.model_copy(update={"dropout": dropout}),
            "init_seed": seed}))  # fmt: skip
    return out


BEYOND = ("augment.flip=true", "augment.translate=2", "augment.brightness=0.1",
          "schedule.kind=one_cycle", "schedule.steps=20", "data.standardize=per_channel")


@pytest.mark.parametrize("extra", [(), BEYOND], ids=["study", "beyond"])
def test_train_group_equals_each_trial_trained_alone(official_dir, extra):
    cfgs = configs(official_dir, (0.01, 0.1, 0.0, 1), (0.001, 0.05, 0.3, 2), (0.1, 0.08, 0.0, 3),
                   extra=extra)  # fmt: skip
    prep = data.prepare(cfgs[0].data, "float64", make_rngs(cfgs[0].seed)["split"])
    plist, rows, diverged = fused.train_group(cfgs, prep)
    assert diverged == {}
    for i, c in enumerate(cfgs):
        rngs = make_rngs(c.seed, c.init_seed)
        p = network.init_params(3072, c.model.hidden, 10, rngs["init"], "float64")
        alone = train(p, prep.train, prep.val, c, rngs)
        assert [r["step"] for r in rows[i]] == [r["step"] for r in alone]
        for got, want in zip(rows[i], alone, strict=True):
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (i, k)
        for k in p:
            np.testing.assert_allclose(plist[i][k], p[k], rtol=1e-8, atol=1e-10)


def test_a_diverging_trial_is_frozen_and_the_others_go_on(official_dir):
    cfgs = configs(official_dir, (0.01, 0.1, 0.0, 1), (0.01, 1.0e200, 0.0, 2))
    prep = data.prepare(cfgs[0].data, "float64", make_rngs(cfgs[0].seed)["split"])
    with np.errstate(all="ignore"):
        plist, rows, diverged = fused.train_group(cfgs, prep)
    assert list(diverged) == [1]
    assert all(np.isfinite(v).all() for v in plist[0].values())
    rngs = make_rngs(cfgs[0].seed, 1)
    p = network.init_params(3072, cfgs[0].model.hidden, 10, rngs["init"], "float64")
    alone = train(p, prep.train, prep.val, cfgs[0], rngs)
    assert rows[0][-1]["val_accuracy"] == alone[-1]["val_accuracy"]
    assert len(rows[1]) < len(rows[0])


def test_train_repeat_reports_mean_and_std(tmp_path, official_dir):
    out = tmp_path / "runs"
    summary = json.loads(ok("train", SMOKE, "--set", f"data.root={official_dir}", "--repeat", 3,
                            "--out", out, "--json", "-q").stdout)  # fmt: skip
    run = out / next(p.name for p in out.iterdir())
    subs = [json.loads((run / "repeats" / f"{k:02d}" / "summary.json").read_text())
            for k in range(3)]  # fmt: skip
    assert summary["repeat"] == 3 and len(set(summary["init_seeds"])) == 3
    for split in ("train", "val", "test"):
        vals = [s["accuracy"][split] for s in subs]
        assert summary["accuracy_runs"][split] == vals
        assert summary["accuracy"][split] == pytest.approx(np.mean(vals))
        assert summary["accuracy_std"][split] == pytest.approx(np.std(vals, ddof=1))
    # each repeat is an ordinary run: retraining its config alone gives the same numbers
    alone = json.loads(ok("train", run / "repeats" / "01" / "config.yaml", "--out", tmp_path / "a",
                          "--json", "-q").stdout)  # fmt: skip
    for split in ("train", "val", "test"):
        assert abs(alone["accuracy"][split] - subs[1]["accuracy"][split]) <= 0.002
