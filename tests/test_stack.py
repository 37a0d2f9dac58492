"""Stacks: T networks trained together equal each trained alone (T = 1), for every option."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifar2l import checkpoint, data, loop, network, optim
from cifar2l.config import load_config
from cifar2l.rngs import make_rngs

from .conftest import ROOT, ok

SMOKE = ROOT / "configs" / "smoke.yaml"


def trial_params(t: int, d=7, h=5, c=10, dtype="float64"):
    return [network.init_params(d, h, c, np.random.default_rng(100 + i), dtype) for i in range(t)]


def batch(n=6, d=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, 10, n)


def test_stack_select_round_trip_and_layout():
    plist = trial_params(3)
    sp = network.stack(plist)
    assert sp["W1"].shape == (7, 3, 5) and sp["b1"].shape == (3, 5)
    assert sp["W2"].shape == (3, 5, 10) and sp["b2"].shape == (3, 10)
    assert sp["W1"].flags.c_contiguous  # X @ W1 is one (N, D) x (D, T*H) product
    for i, p in enumerate(plist):
        for k in p:
            np.testing.assert_array_equal(network.select(sp, [i])[k], p[k])


def test_init_of_a_trial_does_not_depend_on_its_stack():
    rngs = [np.random.default_rng(s) for s in (1, 2, 3)]
    sp = network.init_params(7, 5, 10, rngs, "float64")
    alone = network.init_params(7, 5, 10, np.random.default_rng(2), "float64")
    for k in alone:
        np.testing.assert_array_equal(network.select(sp, [1])[k], alone[k])


@pytest.mark.parametrize("dropout", [False, True])
def test_stacked_losses_and_gradients_equal_each_trial_alone(dropout):
    plist, (x, y) = trial_params(3), batch()
    lam, smooth = np.array([0.0, 0.1, 0.5]), np.array([0.0, 0.1, 0.2])
    p = np.array([0.0, 0.3, 0.5]) if dropout else np.zeros(3)
    u = np.random.default_rng(5).random((6, 5), dtype=np.float32)
    losses, costs, grads = network.loss_and_grads(network.stack(plist), x, y, lam, p, u, smooth)
    for i, pi in enumerate(plist):
        loss, cost, g = network.loss_and_grads(pi, x, y, lam[i], p[i], u, smooth[i])
        assert losses[i] == pytest.approx(loss[0], rel=1e-12)
        assert costs[i] == pytest.approx(cost[0], rel=1e-12)
        mine = {"W1": grads["W1"][:, i], **{k: grads[k][i] for k in ("b1", "W2", "b2")}}
        for k in g:
            np.testing.assert_allclose(mine[k], g[k][0] if k != "W1" else g[k][:, 0],
                                       rtol=1e-10, atol=1e-12)  # fmt: skip


def test_dropout_mask_is_each_trials_own_draw():
    p = np.array([0.0, 0.25, 0.5])
    u = np.random.default_rng(3).random((8, 6), dtype=np.float32)
    mask = network.dropout_mask(u, p, np.float32)
    for i, pi in enumerate(p):
        expected = (u >= np.float32(pi)).astype(np.float32) / np.float32(1 - pi)
        np.testing.assert_array_equal(mask[:, i], expected)


@pytest.mark.parametrize("gamma, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_stacked_update_equals_optim_per_trial(gamma, nesterov):
    plist, (x, y) = trial_params(2), batch()
    sp = network.stack(plist)
    lr, lam, wd = np.array([0.1, 0.03]), np.array([0.01, 0.02]), np.array([0.0, 0.05])
    opt = optim.Optimizer(lam, np.full(2, gamma), wd, nesterov)
    vel = optim.init_velocity(sp, opt)
    alone = [optim.Optimizer(lam[i : i + 1], np.full(1, gamma), wd[i : i + 1], nesterov)
             for i in range(2)]  # fmt: skip
    alone_vel = [optim.init_velocity(p, o) for p, o in zip(plist, alone, strict=True)]
    for _ in range(3):
        _, _, grads = network.loss_and_grads(sp, x, y)
        optim.update(sp, grads, lr, vel, opt)
        for i, p in enumerate(plist):
            _, _, g = network.loss_and_grads(p, x, y)
            optim.update(p, g, lr[i : i + 1], alone_vel[i], alone[i])
    for i, p in enumerate(plist):
        for k in p:
            np.testing.assert_allclose(network.select(sp, [i])[k], p[k], rtol=1e-10, atol=1e-12)


def test_update_adds_the_l2_gradient_of_loss_and_grads():
    """The update's L2 term is the gradient check's: update(data grad, lam) equals a plain SGD
    step with the gradient of the cost."""
    (p,), (x, y) = trial_params(1), batch()
    q = {k: v.copy() for k, v in p.items()}
    _, _, g_data = network.loss_and_grads(p, x, y, 0.0)
    _, _, g_cost = network.loss_and_grads(q, x, y, 0.3)
    optim.update(p, g_data, np.array([0.1]), None, optim.Optimizer(
        np.array([0.3]), np.zeros(1), np.zeros(1)))  # fmt: skip
    optim.sgd_update(q, g_cost, 0.1)
    for k in p:
        np.testing.assert_allclose(p[k], q[k], rtol=1e-12, atol=1e-15)


def test_stacked_evaluate_equals_each_trial_alone():
    plist, (x, y) = trial_params(3), batch(n=50)
    lam = np.array([0.0, 0.01, 0.1])
    for i, m in enumerate(network.evaluate(network.stack(plist), x, y, lam, chunk=17)):
        alone = network.evaluate(plist[i], x, y, lam[i])[0]
        assert m["accuracy"] == alone["accuracy"]
        assert m["loss"] == pytest.approx(alone["loss"], rel=1e-10)
        assert m["cost"] == pytest.approx(alone["cost"], rel=1e-10)


# ---------------------------------------------------------------- whole runs

# Every option, with values that differ between the trials of the stack where it is per-trial.
OPTIONS = {
    "study": ([], {}),
    "label_smoothing": ([], {"optim.label_smoothing": [0.0, 0.1, 0.2]}),
    "weight_decay": ([], {"optim.weight_decay": [0.0, 0.01, 0.05]}),
    "dropout": ([], {"model.dropout": [0.0, 0.3, 0.5]}),
    "momentum": ([], {"optim.momentum": [0.0, 0.9, 0.5]}),
    "nesterov": (["optim.nesterov=true"], {"optim.momentum": [0.6, 0.3, 0.5]}),
    "augment": (["augment.flip=true", "augment.translate=2", "augment.brightness=0.1",
                 "augment.contrast=0.2", "augment.noise.fraction=0.3",
                 "data.standardize=per_channel"], {}),  # fmt: skip
    "one_cycle": (["schedule.kind=one_cycle", "schedule.steps=24", "schedule.warmup=0.25"],
                  {"schedule.eta_max": [0.1, 0.05, 0.02]}),
    "everything": (["optim.nesterov=true", "augment.flip=true", "augment.translate=3",
                    "augment.pad=zero", "schedule.kind=one_cycle", "schedule.steps=24"],
                   {"optim.momentum": [0.6, 0.2, 0.5], "model.dropout": [0.2, 0.0, 0.4],
                    "optim.label_smoothing": [0.1, 0.0, 0.05],
                    "optim.weight_decay": [0.01, 0.0, 0.02]}),  # fmt: skip
}


def trial_cfgs(official_dir, sets: list[str], per_trial: dict) -> list:
    base = [f"data.root={official_dir}", "dtype=float64", *sets]
    out = []
    for i, lam in enumerate((0.01, 0.001, 0.1)):
        own = [f"{k}={v[i]}" for k, v in per_trial.items()]
        out.append(load_config(SMOKE, [*base, f"optim.lambda={lam}", f"init_seed={i + 1}", *own]))
    return out


def train(cfgs, prep, stop=True) -> loop.TrainState:
    stack = loop.make_stack(cfgs, stop_on_divergence=stop)
    return loop.run(loop.init_state(stack, 3072, 10), stack, loop.Data(prep.train, prep.val))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_a_trial_in_a_stack_ends_where_it_ends_alone(official_dir, option):
    cfgs = trial_cfgs(official_dir, *OPTIONS[option])
    prep = data.prepare(cfgs[0].data, "float64", make_rngs(cfgs[0].seed)["split"])
    state = train(cfgs, prep)
    assert state.diverged == {} and state.step == loop.make_stack(cfgs).total
    for i, c in enumerate(cfgs):
        alone = train([c], prep)
        assert [r["step"] for r in state.rows[i]] == [r["step"] for r in alone.rows[0]]
        for got, want in zip(state.rows[i], alone.rows[0], strict=True):
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-12), (i, k)
        mine = network.select(state.params, [i])
        for k in mine:
            np.testing.assert_allclose(mine[k], alone.params[k], rtol=1e-6, atol=1e-9)


def test_a_diverging_trial_is_frozen_and_the_others_go_on(official_dir):
    cfgs = trial_cfgs(official_dir, [], {"schedule.eta_max": [0.1, 1.0e200, 0.05]})
    prep = data.prepare(cfgs[0].data, "float64", make_rngs(cfgs[0].seed)["split"])
    state = train(cfgs, prep, stop=False)
    assert list(state.diverged) == [1]
    ok_params = network.select(state.params, [0])
    assert all(np.isfinite(v).all() for v in ok_params.values())
    alone = train([cfgs[0]], prep)
    assert state.rows[0][-1]["val_accuracy"] == alone.rows[0][-1]["val_accuracy"]
    assert len(state.rows[1]) < len(state.rows[0])


def test_fuse_key_ignores_per_trial_settings_only(official_dir):
    a, b, _ = trial_cfgs(official_dir, ["schedule.kind=one_cycle", "schedule.steps=24"],
                         {"schedule.eta_max": [0.1, 0.05, 0.02], "model.dropout": [0, .1, .2]})
    assert loop.fuse_key(a) == loop.fuse_key(b)
    other = a.model_copy(update={"model": a.model.model_copy(update={"hidden": 7})})
    assert loop.fuse_key(other) != loop.fuse_key(a)
    longer = a.model_copy(update={"schedule": a.schedule.model_copy(update={"steps": 30})})
    assert loop.fuse_key(longer) != loop.fuse_key(a)
    with pytest.raises(ValueError):
        loop.make_stack([a, other])


def test_state_select_is_resumable_alone(official_dir, tmp_path):
    """A trial's slice of a stack's state, saved and loaded, continues as the trial alone."""
    cfgs = trial_cfgs(official_dir, ["optim.momentum=0.9"], {"model.dropout": [0, 0.2, 0.4]})
    prep = data.prepare(cfgs[0].data, "float64", make_rngs(cfgs[0].seed)["split"])
    stack = loop.make_stack(cfgs)

    def stop_at(state):
        if state.step == 7:
            raise loop.StopTraining

    state = loop.init_state(stack, 3072, 10)
    loop.run(state, stack, loop.Data(prep.train, prep.val), loop.Hooks(boundary=stop_at))
    checkpoint.save(tmp_path / "c.npz", state.select([2]))
    resumed = checkpoint.load(tmp_path / "c.npz")
    one = loop.make_stack([cfgs[2]])
    loop.run(resumed, one, loop.Data(prep.train, prep.val))
    alone = train([cfgs[2]], prep)
    for k in alone.params:
        np.testing.assert_allclose(resumed.params[k], alone.params[k], rtol=1e-10, atol=1e-12)
    for got, want in zip(resumed.rows[0], alone.rows[0], strict=True):
        assert got == pytest.approx(want, rel=1e-10)


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


def test_repeat_with_snapshots_keeps_every_trials_snapshots(tmp_path, official_dir):
    """Snapshots fuse: each repeat's snapshot files are the weights it has alone."""
    sets = ["--set", f"data.root={official_dir}", "--set", "dtype=float64", "--set",
            "schedule.cycles=2", "--set", "train.snapshots=cycles", "--set",
            "optim.label_smoothing=0.1", "--set", "optim.weight_decay=0.01"]  # fmt: skip
    out = tmp_path / "runs"
    summary = json.loads(ok("train", SMOKE, *sets, "--repeat", 2, "--out", out, "--json",
                            "-q").stdout)  # fmt: skip
    assert summary["fused"] is True and "ensemble" in summary
    run = out / next(p.name for p in out.iterdir())
    cfg_path = run / "repeats" / "01" / "config.yaml"
    ok("train", cfg_path, "--out", tmp_path / "a", "-q")
    alone = next((tmp_path / "a").iterdir())
    mine = sorted((run / "repeats" / "01" / "snapshots").glob("*.npz"))
    theirs = sorted((alone / "snapshots").glob("*.npz"))
    assert [p.name for p in mine] == [p.name for p in theirs] and len(mine) == 2
    for a, b in zip(mine, theirs, strict=True):
        with np.load(a) as fa, np.load(b) as fb:
            for k in network.PARAM_KEYS:
                np.testing.assert_allclose(fa[k], fb[k], rtol=1e-6, atol=1e-9)


def test_an_interrupted_repeat_resumes_to_the_uninterrupted_result(tmp_path, official_dir,
                                                                   monkeypatch):  # fmt: skip
    """A repeat run is one stack: a signal saves its checkpoint, --resume finishes it, bitwise
    the run that was never stopped."""
    sets = ["--set", f"data.root={official_dir}", "--set", "model.dropout=0.2"]
    ok("train", SMOKE, *sets, "--repeat", 2, "--out", tmp_path / "ref", "-q")
    calls = []

    def pending():
        calls.append(1)
        return 15 if len(calls) == 7 else None

    from .conftest import invoke

    with monkeypatch.context() as m:  # (not monkeypatch.undo: it would undo the autouse env)
        m.setattr(checkpoint, "pending", pending)
        m.setattr(checkpoint, "take_pending", lambda: 15)
        res = invoke("train", SMOKE, *sets, "--repeat", 2, "--out", tmp_path / "cut", "-q")
    assert res.exit_code == 143, res.output
    run = next((tmp_path / "cut").iterdir())
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert (run / checkpoint.NAME).is_file()
    s = json.loads(ok("train", "--resume", run, "--json", "-q").stdout)
    assert s["status"] == "completed" and s["resumed_from_step"] == 7 and s["repeat"] == 2
    ref = next((tmp_path / "ref").iterdir())
    for k in ("00", "01"):
        mine, theirs = run / "repeats" / k, ref / "repeats" / k
        assert (mine / "metrics.csv").read_bytes() == (theirs / "metrics.csv").read_bytes()
        with np.load(mine / "weights.npz") as a, np.load(theirs / "weights.npz") as b:
            assert all(np.array_equal(a[p], b[p]) for p in network.PARAM_KEYS)


def test_a_diverged_run_keeps_its_metric_rows(tmp_path, official_dir):
    from .conftest import invoke

    res = invoke("train", SMOKE, "--set", f"data.root={official_dir}", "--set",
                 "schedule.eta_max=1e30", "--out", tmp_path / "runs", "-q")  # fmt: skip
    assert res.exit_code == 1 and "diverged" in res.stderr
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) >= 2  # the header and the row at step 0
