"""Training options: dropout, momentum / Nesterov, input noise, their config keys, search over
them, and `extends:` with a list of parents. Synthetic data only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cifar2l import augment, data, gradcheck, kernels, loop, network, optim, search
from cifar2l.config import Config, load_config
from cifar2l.errors import ConfigError, DivergedError
from cifar2l.network import PARAM_KEYS
from cifar2l.rngs import make_rngs

from .conftest import ROOT, invoke, ok

SMOKE = ROOT / "configs" / "smoke.yaml"
GRADCHECK = ROOT / "configs" / "gradcheck.yaml"
# With momentum 0.9 the smoke config's eta_max (0.1) blows the loss up to ~1e8, where any
# rounding difference decides between huge and inf: keep the rate sane.
ALL_ON = ["--set", "model.dropout=0.3", "--set", "optim.momentum=0.9",
          "--set", "optim.nesterov=true", "--set", "augment.noise.fraction=0.5",
          "--set", "schedule.eta_max=0.01"]  # fmt: skip
OFF = ["--set", "model.dropout=0.0", "--set", "optim.momentum=0.0",
       "--set", "optim.nesterov=false", "--set", "augment.noise.fraction=0.0"]  # fmt: skip


# ---------------------------------------------------------------- helpers


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []


def train_json(out: Path, root: Path, *extra) -> dict:
    result = ok("train", SMOKE, "--set", f"data.root={root}", "--out", out, "--json", *extra)
    return json.loads(result.stdout)


def metrics_bytes(summary: dict) -> bytes:
    return (Path(summary["run_dir"]) / "metrics.csv").read_bytes()


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def tiny_problem(seed: int = 0, n: int = 4, d: int = 6, h: int = 7, c: int = 3):
    rng = np.random.default_rng(seed)
    params = network.init_params(d, h, c, rng, "float64")
    params["b1"] += rng.standard_normal((1, h)) * 0.1  # non-zero biases: every gradient is used
    params["b2"] += rng.standard_normal((1, c)) * 0.1
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, size=n)
    return params, x, y, rng


def smoke_setup(official_dir: Path, *overrides: str):
    """(config, data, stack, fresh state) of the smoke config with overrides."""
    cfg = load_config(SMOKE, [f"data.root={official_dir}", *overrides])
    prep = data.prepare(cfg.data, cfg.dtype, make_rngs(cfg.seed)["split"])
    stack = loop.make_stack([cfg])
    return cfg, prep, stack, loop.init_state(stack, prep.train.x.shape[1], len(prep.classes))


def trained(official_dir: Path, *overrides: str) -> loop.TrainState:
    cfg, prep, stack, state = smoke_setup(official_dir, *overrides)
    return loop.run(state, stack, loop.Data(prep.train, prep.val))


def dropped(x, p: float, rng):
    """Inverted dropout of x (N, H) > 0 as the training step does it: (out (N, H), u or None)."""
    u = rng.random(x.shape, dtype=np.float32) if p > 0 else None
    hd, _ = network.hidden_forward(x[:, None, :].copy(), np.zeros((1, x.shape[1]), x.dtype),
                                   u, np.array([p]))  # fmt: skip
    return hd[:, 0], u


# ---------------------------------------------------------------- dropout


def test_dropout_p0_draws_nothing_and_is_the_identity(official_dir):
    x = np.random.default_rng(1).uniform(0.5, 2.0, size=(20, 7)).astype(np.float32)
    out, u = dropped(x, 0.0, np.random.default_rng(1))
    assert u is None
    np.testing.assert_array_equal(out, x)
    cfg, prep, stack, state = smoke_setup(official_dir)
    before = state.rngs["dropout"].bit_generator.state
    loop.run(state, stack, loop.Data(prep.train, prep.val))
    assert state.rngs["dropout"].bit_generator.state == before  # no draw at p = 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_dropout_scales_kept_units_and_zeroes_the_others(p, dtype):
    x = np.random.default_rng(2).uniform(1.0, 2.0, size=(300, 40)).astype(dtype)  # no zeros
    out, u = dropped(x, p, np.random.default_rng(3))
    assert out.dtype == x.dtype and out.shape == x.shape
    kept = out != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(kept, u >= np.float32(p))
    scale = dtype(1) / dtype(1 - p)
    np.testing.assert_array_equal(out[kept], x[kept] * scale)  # exactly 1/(1-p)
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=4 * np.finfo(dtype).eps)
    mask = network.dropout_mask(u, np.array([p]), dtype)[:, 0]
    assert set(np.unique(mask).tolist()) == {0.0, float(scale)}
    np.testing.assert_array_equal(out, x * mask)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_fraction_dropped_is_close_to_p(p):
    x = np.ones((500, 400), dtype=np.float32)
    out, _ = dropped(x, p, np.random.default_rng(4))
    frac = float((out == 0).mean())
    assert abs(frac - p) < 0.006, frac  # 200,000 draws: std about 0.001


def test_dropout_keeps_the_expected_value():
    v = np.linspace(0.5, 3.0, 10)
    x = np.tile(v, (20000, 1))
    out, _ = dropped(x, 0.5, np.random.default_rng(5))
    np.testing.assert_allclose(out.mean(axis=0), v, rtol=0.03)  # inverted: E[out] = x
    # without the 1/(1-p) scaling the mean would be half of v
    assert np.all(np.abs(out.mean(axis=0) - v) < 0.2 * v)


def test_dropout_mask_is_reproducible_from_the_seed():
    x = np.ones((50, 30), dtype=np.float32)
    a, _ = dropped(x, 0.4, np.random.default_rng(6))
    b, _ = dropped(x, 0.4, np.random.default_rng(6))
    c, _ = dropped(x, 0.4, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_backward_uses_the_forward_mask():
    rng = np.random.default_rng(10)
    s1 = rng.standard_normal((30, 1, 12))
    u = rng.random((30, 12), dtype=np.float32)
    hd, cache = network.hidden_forward(s1.copy(), np.zeros((1, 12)), u, np.array([0.5]))
    dhd = rng.standard_normal((1, 30, 12))
    ds1 = network.hidden_backward(dhd, cache)[:, 0]
    mask = network.dropout_mask(u, np.array([0.5]), np.float64)[:, 0]
    np.testing.assert_array_equal(ds1, dhd[0] * mask * (s1[:, 0] > 0))
    np.testing.assert_array_equal(ds1 == 0, hd[:, 0] == 0)
    live = hd[:, 0] != 0
    np.testing.assert_array_equal(ds1[live], dhd[0][live] * 2.0)


def test_loss_and_grads_drops_hidden_units_only_when_asked():
    params, x, y, _ = tiny_problem()
    u = np.random.default_rng(0).random((x.shape[0], 7), dtype=np.float32)
    plain = network.loss_and_grads(params, x, y, 0.01)
    p0 = network.loss_and_grads(params, x, y, 0.01, 0.0, u)
    assert plain[0] == p0[0]
    for k in PARAM_KEYS:
        np.testing.assert_array_equal(plain[2][k], p0[2][k])
    drop_a = network.loss_and_grads(params, x, y, 0.01, 0.5, u)
    drop_b = network.loss_and_grads(params, x, y, 0.01, 0.5, u.copy())
    assert drop_a[0] == drop_b[0] and drop_a[0] != plain[0]


def test_evaluation_never_applies_dropout(official_dir, monkeypatch):
    cfg, prep, stack, state = smoke_setup(official_dir, "model.dropout=0.5")
    assert cfg.model.dropout == 0.5
    before = state.rngs["dropout"].bit_generator.state
    loop.run(state, stack, loop.Data(prep.train, prep.val))
    assert state.rngs["dropout"].bit_generator.state != before  # training did draw masks
    params, rows = state.params, state.rows[0]
    real = network.hidden_forward

    def no_dropout(s1, b1, u=None, p=None):
        assert u is None, "dropout applied at evaluation"
        return real(s1, b1, u, p)

    monkeypatch.setattr(network, "hidden_forward", no_dropout)
    lam = cfg.optim.lambda_
    for split, name in ((prep.train, "train"), (prep.val, "val")):
        m = network.evaluate(params, split.x, split.y, lam)[0]
        assert m == network.evaluate(params, split.x, split.y, lam)[0]  # deterministic
        scores = network.forward(params, split.x)[0].astype(np.float64)
        z = scores - scores.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -log_p[np.arange(len(split.y)), split.y].mean()
        assert m["accuracy"] == float((scores.argmax(axis=1) == split.y).mean())
        assert m["loss"] == pytest.approx(nll, rel=1e-5)
        assert rows[-1][f"{name}_accuracy"] == m["accuracy"]  # the logged row is eval mode
        assert rows[-1][f"{name}_loss"] == m["loss"]
    np.testing.assert_array_equal(network.predict(params, prep.val.x)[0],
                                  network.forward(params, prep.val.x)[0].argmax(axis=1))


# ---------------------------------------------------------------- gradient check with dropout


def fixed_mask(n: int, h: int, p: float, seed: int = 12) -> tuple:
    """A fixed dropout mask as the gradient check takes it: draws u (N, H) and p."""
    u = np.random.default_rng(seed).random((n, h), dtype=np.float32)
    assert 0 < (u >= p).sum() < u.size
    return u, p


real_hidden_backward = network.hidden_backward


def backward_without_mask(dhd, cache, out=None):
    """The dropout mask forgotten in the backward pass (its 1/(1-p) scale with it): without
    dropout it is the right gradient."""
    return real_hidden_backward(dhd, (cache[0], None), out)


@pytest.mark.parametrize("lam", [0.0, 0.01])
def test_gradcheck_through_a_fixed_dropout_mask_passes(lam):
    params, x, y, _ = tiny_problem()
    mask = fixed_mask(x.shape[0], params["W1"].shape[2], 0.5)
    result = gradcheck.compare(params, x, y, lam, 1e-5, drop=mask)
    assert set(result) == set(PARAM_KEYS)
    for key, r in result.items():
        assert r["coords"] == params[key].size
        assert r["floored_rel_error"] * 10 <= 1e-6, (key, r)  # the verdict, >= 10x inside


def test_gradcheck_catches_a_backward_that_ignores_the_mask(monkeypatch):
    params, x, y, _ = tiny_problem()
    mask = fixed_mask(x.shape[0], params["W1"].shape[2], 0.5)
    monkeypatch.setattr(network, "hidden_backward", backward_without_mask)
    result = gradcheck.compare(params, x, y, 0.0, 1e-5, drop=mask)
    assert result["W1"]["floored_rel_error"] > 1e-2, result  # O(1): 1e4 x the tolerance
    assert result["b1"]["floored_rel_error"] > 1e-2
    # the output layer does not go through hidden_backward: still right
    assert result["W2"]["floored_rel_error"] * 10 <= 1e-6


def test_gradcheck_command_reports_the_dropout_problem(official_dir, tmp_path):
    out = tmp_path / "runs"
    result = ok("gradcheck", GRADCHECK, "--set", f"data.root={official_dir}", "--out", out,
                "--json")  # fmt: skip
    s = json.loads(result.stdout)
    drop = s["dropout"]
    assert drop["passed"] is True and drop["p"] == 0.5
    assert set(drop["max_rel_error"]) == set(drop["floored_rel_error"]) == set(PARAM_KEYS)
    # the verdict's measure, >= 10x under the tolerance on any CPU (the raw max relative error
    # of W1 here is on the rounding floor: 3.5e-7 on one Xeon, 1.13e-6 on an EPYC)
    assert all(v * 10 <= s["tolerance"] for v in drop["floored_rel_error"].values()), drop
    assert drop["max_rel_error"] != s["max_rel_error"]  # a different problem: the mask is used
    assert s["passed"] is True
    rows = read_csv(Path(s["run_dir"]) / "gradcheck.csv")
    assert {r["problem"] for r in rows} == {"reduced", "reduced_dropout", "full_size"}
    dropped = [r for r in rows if r["problem"] == "reduced_dropout"]
    assert len(dropped) == 2 * 4  # lambdas x params
    assert {float(r["lambda"]) for r in dropped} == {0.0, 0.01}
    assert all(int(r["coords"]) == 20 * 50 for r in dropped if r["param"] == "W1")
    assert all(float(r["floored_rel_error"]) * 10 <= 1e-6 for r in dropped)
    assert all(int(r["skipped"]) == 0 for r in dropped if r["param"] in ("W2", "b2"))


def test_gradcheck_command_fails_with_a_wrong_dropout_backward(official_dir, tmp_path,
                                                              monkeypatch):  # fmt: skip
    monkeypatch.setattr(network, "hidden_backward", backward_without_mask)
    out = tmp_path / "runs"
    result = invoke("gradcheck", GRADCHECK, "--set", f"data.root={official_dir}", "--out", out,
                    "--json", "--set", "gradcheck.full_size_coords=2")  # fmt: skip
    assert result.exit_code == 1, result.output
    s = json.loads(result.stdout)
    assert s["dropout"]["passed"] is False
    assert s["passed"] is False
    assert s["full_size"]["passed"] is True  # only the dropout path is wrong
    assert max(s["floored_rel_error"].values()) * 10 <= s["tolerance"]
    assert max(s["dropout"]["floored_rel_error"].values()) > 1e4 * s["tolerance"]  # O(1)


# ---------------------------------------------------------------- momentum

P0 = np.array([1.0, -2.0])
GRADS = [np.array([1.0, 2.0]), np.array([-1.0, 0.5]), np.array([0.5, -1.0])]
# lr 0.1, gamma 0.9, by hand: v = 0.9 v + 0.1 g
VELOCITIES = [[0.1, 0.2], [-0.01, 0.23], [0.041, 0.107]]
HEAVY_BALL = [[0.9, -2.2], [0.91, -2.43], [0.869, -2.537]]  # p -= v
NESTEROV = [[0.81, -2.38], [0.919, -2.637], [0.8321, -2.6333]]  # p -= 0.9 v + 0.1 g


def by_hand_params():
    """A stack of T = 1 whose W2 holds P0 and b2 holds 3.0 (W1 and b1 get no gradient)."""
    return {"W1": np.zeros((1, 1, 2)), "b1": np.zeros((1, 2)),
            "W2": P0.reshape(1, 2, 1).copy(), "b2": np.array([[3.0]])}  # fmt: skip


def by_hand_grads(g):
    return {"W1": np.zeros((1, 1, 2)), "b1": np.zeros((1, 2)), "W2": g.reshape(1, 2, 1),
            "b2": np.array([[1.0]])}  # fmt: skip


def optimizer(gamma: float, nesterov: bool = False) -> optim.Optimizer:
    return optim.Optimizer(np.zeros(1), np.array([gamma]), np.zeros(1), nesterov)


@pytest.mark.parametrize("nesterov, expected", [(False, HEAVY_BALL), (True, NESTEROV)])
def test_momentum_update_by_hand(nesterov, expected):
    params, opt = by_hand_params(), optimizer(0.9, nesterov)
    velocity = optim.init_velocity(params, opt)
    assert velocity["W2"].ravel().tolist() == [0.0, 0.0] and velocity["b2"].tolist() == [[0.0]]
    for g, v_hand, p_hand in zip(GRADS, VELOCITIES, expected, strict=True):
        optim.update(params, by_hand_grads(g), np.array([0.1]), velocity, opt)
        np.testing.assert_allclose(velocity["W2"].ravel(), v_hand, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(params["W2"].ravel(), p_hand, rtol=1e-12, atol=1e-15)
    # b: constant gradient 1 -> v = 0.1, 0.19, 0.271
    np.testing.assert_allclose(velocity["b2"].ravel(), [0.271], rtol=1e-12)
    b_moved = 0.1 + 0.19 + 0.271 if not nesterov else (0.19 + 0.271 + 0.3439)
    np.testing.assert_allclose(params["b2"].ravel(), [3.0 - b_moved], rtol=1e-12)


def test_init_velocity_is_zero_and_separate():
    params = network.init_params(3, 2, 4, np.random.default_rng(0))
    v = optim.init_velocity(params, optimizer(0.5))
    for k in params:
        assert v[k].shape == params[k].shape and v[k].dtype == params[k].dtype
        assert not v[k].any()
        assert not np.shares_memory(v[k], params[k])
    assert optim.init_velocity(params, optimizer(0.0)) is None  # no trial uses momentum


def test_update_without_velocity_is_plain_sgd():
    params, expected = by_hand_params(), by_hand_params()
    for g in GRADS:
        optim.update(params, by_hand_grads(g), np.array([0.1]), None, optimizer(0.0))
        optim.sgd_update(expected, by_hand_grads(g), 0.1)
    np.testing.assert_array_equal(params["W2"], expected["W2"])
    np.testing.assert_allclose(params["W2"].ravel(), P0 - 0.1 * sum(GRADS), rtol=1e-12)


def test_momentum_zero_in_a_stack_steps_like_sgd():
    """A trial with momentum 0 beside one with momentum steps exactly like plain SGD."""
    params = network.stack([by_hand_params(), by_hand_params()])
    opt = optim.Optimizer(np.zeros(2), np.array([0.9, 0.0]), np.zeros(2), True)
    velocity, sgd = optim.init_velocity(params, opt), by_hand_params()
    for g in GRADS:
        grads = network.stack([by_hand_grads(g), by_hand_grads(g)])
        optim.update(params, grads, np.array([0.1, 0.1]), velocity, opt)
        optim.sgd_update(sgd, by_hand_grads(g), 0.1)
    np.testing.assert_array_equal(network.select(params, [1])["W2"], sgd["W2"])
    np.testing.assert_allclose(params["W2"][0].ravel(), NESTEROV[-1], rtol=1e-12)


def _batch(prep, n: int = 10):
    return prep.train.x[:n].copy(), prep.train.y[:n]


@pytest.mark.parametrize("sets", [(), ("optim.momentum=0.8", "optim.nesterov=true"),
                                  ("optim.weight_decay=0.1", "optim.label_smoothing=0.1")])
def test_train_step_is_loss_and_grads_then_the_update(official_dir, sets):
    """The loop's step: the data gradient, then the optimizer's pass (L2 term included)."""
    cfg, prep, stack, state = smoke_setup(official_dir, *sets)
    assert (state.velocity is None) == (cfg.optim.momentum == 0)
    expected = {k: v.copy() for k, v in state.params.items()}
    velocity = optim.init_velocity(expected, stack.opt)
    for t in range(3):
        state.step = t
        xb, yb = _batch(prep)
        _, _, grads = network.loss_and_grads(expected, xb, yb, 0.0,
                                             smoothing=cfg.optim.label_smoothing)  # fmt: skip
        optim.update(expected, grads, stack.lr(t), velocity, stack.opt)
        loop.train_step(state, stack, xb, yb, {})
        for k in PARAM_KEYS:
            np.testing.assert_array_equal(state.params[k], expected[k])


UPDATER_SETS = [(), ("optim.momentum=0.8",), ("optim.momentum=0.8", "optim.nesterov=true"),
                 ("optim.weight_decay=0.1", "optim.lambda=0.0"), ("dtype=float64",)]  # fmt: skip


@pytest.mark.parametrize("sets", UPDATER_SETS)
def test_the_loops_updater_is_optim_update_bit_for_bit(official_dir, sets):
    """optim.Updater (checked and laid out once for the loop) takes its compiled plan and
    leaves params and velocity exactly as optim.update does, step after step."""
    cfg, prep, stack, state = smoke_setup(official_dir, *sets)
    expected = {k: v.copy() for k, v in state.params.items()}
    velocity = optim.init_velocity(expected, stack.opt)
    updater = optim.Updater.make(state.params, state.velocity, stack.opt)
    assert updater.plan is not None
    for t in range(4):
        xb, yb = prep.train.x[10 * t : 10 * t + 10].copy(), prep.train.y[10 * t : 10 * t + 10]
        _, _, grads = network.loss_and_grads(expected, xb, yb, 0.0)
        optim.update(expected, grads, stack.lr(t), velocity, stack.opt)
        updater(state.params, grads, stack.lr(t), state.velocity)
        for k in PARAM_KEYS:
            np.testing.assert_array_equal(state.params[k], expected[k])
            if velocity is not None:
                np.testing.assert_array_equal(state.velocity[k], velocity[k])


def test_the_updater_takes_its_plan_in_the_loop(official_dir, monkeypatch):
    """A single network's loop runs the plan at every step (not optim.update's checks)."""
    results = []
    real = kernels.run_plan
    monkeypatch.setattr(kernels, "run_plan", lambda *a: results.append(real(*a)) or results[-1])
    cfg, prep, stack, state = smoke_setup(official_dir)
    loop.run(state, stack, loop.Data(prep.train, prep.val))
    assert len(results) == stack.total and all(results)


def test_the_updater_falls_back_to_update(official_dir):
    """Other params than its own, or gradients not of the planned kind: optim.update's result
    (and its errors); a stack of T > 1 has no plan."""
    cfg, prep, stack, state = smoke_setup(official_dir, "optim.momentum=0.5")
    updater = optim.Updater.make(state.params, state.velocity, stack.opt)
    other = {k: v.copy() for k, v in state.params.items()}
    expected = {k: v.copy() for k, v in other.items()}
    vel, exp_vel = optim.init_velocity(other, stack.opt), optim.init_velocity(other, stack.opt)
    grads = {k: np.ones_like(v) for k, v in other.items()}
    updater(other, grads, np.array([0.1]), vel)  # not the planned arrays
    optim.update(expected, grads, np.array([0.1]), exp_vel, stack.opt)
    for k in PARAM_KEYS:
        np.testing.assert_array_equal(other[k], expected[k])
    before = {k: v.copy() for k, v in state.params.items()}
    bad = dict(grads, W1=np.asfortranarray(grads["W1"]))  # not C-contiguous
    assert not kernels.run_plan(updater.plan, [bad[k] for k in PARAM_KEYS],
                                np.ones(1, cfg.dtype), np.zeros(1, cfg.dtype), False)
    for k in PARAM_KEYS:
        np.testing.assert_array_equal(state.params[k], before[k])  # nothing done
    with pytest.raises(TypeError, match="dtype"):
        updater(state.params, dict(grads, b1=grads["b1"].astype(np.float64)), np.array([0.1]),
                state.velocity)  # fmt: skip
    two = optim.Updater.make(network.stack([state.params, state.params]), None, stack.opt)
    assert two.plan is None


def test_train_step_raises_on_a_non_finite_loss(official_dir):
    cfg, prep, stack, state = smoke_setup(official_dir)
    state.step = 3
    xb, yb = _batch(prep)
    xb[0, 0] = np.nan
    with pytest.raises(DivergedError, match="step 3"):
        loop.train_step(state, stack, xb, yb, {})


def test_kernels_module_is_what_the_step_runs(official_dir, monkeypatch):
    """The step's element-wise passes are kernels.py's (a compiled kernel beside its reference)."""
    calls = []
    real = kernels.update
    monkeypatch.setattr(kernels, "update", lambda *a: calls.append(1) or real(*a))
    cfg, prep, stack, state = smoke_setup(official_dir)
    loop.train_step(state, stack, *_batch(prep), {})
    assert len(calls) == 4  # one pass per parameter


# ---------------------------------------------------------------- input noise


@pytest.mark.parametrize("n, fraction", [(100, 0.25), (1000, 0.333), (7, 0.5), (40, 1.0)])
def test_add_noise_changes_exactly_round_fraction_n_rows(n, fraction):
    x = np.random.default_rng(13).standard_normal((n, 32)).astype(np.float32)
    before = x.copy()
    rows = augment.add_noise(x, fraction, 0.5, np.random.default_rng(14))
    k = round(fraction * n)
    changed = np.flatnonzero((x != before).any(axis=1))
    assert len(rows) == k and len(changed) == k
    np.testing.assert_array_equal(np.sort(rows), changed)
    untouched = np.setdiff1d(np.arange(n), rows)
    assert x[untouched].tobytes() == before[untouched].tobytes()  # bit-identical
    assert x.dtype == np.float32


def test_add_noise_has_the_requested_std():
    x = np.zeros((2000, 256), dtype=np.float64)
    rows = augment.add_noise(x, 0.5, 0.3, np.random.default_rng(15))
    noise = x[rows]
    assert noise.shape == (1000, 256)
    assert noise.std() == pytest.approx(0.3, rel=0.01)
    assert abs(noise.mean()) < 0.01
    others = np.setdiff1d(np.arange(2000), rows)
    assert not x[others].any()


@pytest.mark.parametrize("fraction, std", [(0.0, 0.5), (0.5, 0.0), (0.004, 1.0)])
def test_add_noise_off_changes_nothing(fraction, std):
    x = np.random.default_rng(16).standard_normal((100, 8))
    before = x.copy()
    rng = np.random.default_rng(17)
    state = rng.bit_generator.state
    rows = augment.add_noise(x, fraction, std, rng)  # 0.004 * 100 rounds to 0 rows
    assert len(rows) == 0
    assert x.tobytes() == before.tobytes()
    assert rng.bit_generator.state == state


def test_add_noise_is_deterministic_per_seed():
    base = np.random.default_rng(18).standard_normal((60, 16)).astype(np.float32)
    a, b, c = base.copy(), base.copy(), base.copy()
    ra = augment.add_noise(a, 0.3, 0.2, np.random.default_rng(19))
    rb = augment.add_noise(b, 0.3, 0.2, np.random.default_rng(19))
    augment.add_noise(c, 0.3, 0.2, np.random.default_rng(20))
    np.testing.assert_array_equal(ra, rb)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


# ---------------------------------------------------------------- config keys


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("model.dropout=1.0", ["model.dropout"]),
        ("model.dropout=-0.1", ["model.dropout"]),
        ("optim.momentum=1.0", ["optim.momentum"]),
        ("optim.momentum=-0.5", ["optim.momentum"]),
        ("optim.nesterov=true", ["optim", "nesterov", "momentum"]),
        ("optim.nesterov=yes please", ["optim.nesterov"]),
        ("augment.noise.fraction=1.5", ["augment.noise.fraction"]),
        ("augment.noise.fraction=-0.1", ["augment.noise.fraction"]),
        ("augment.noise.std=-0.1", ["augment.noise.std"]),
        ("augment.noise.sigma=0.1", ["augment.noise.sigma", "unknown key"]),
        ("gradcheck.dropout=1.0", ["gradcheck.dropout"]),
    ],
)
def test_bad_option_values_exit_2_naming_the_key(override, fragments, official_dir, tmp_path):
    out = tmp_path / "runs"
    result = invoke("train", SMOKE, "--set", f"data.root={official_dir}", "--set", override,
                    "--out", out)  # fmt: skip
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(SMOKE) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    assert run_dirs(out) == []


@pytest.mark.parametrize(
    "override",
    [
        "model.dropout=0.99",
        "model.dropout=0",
        "optim.momentum=0",
        "augment.noise.fraction=1.0",
        "augment.noise.std=0",
    ],
)
def test_boundary_option_values_load(override):
    load_config(SMOKE, [override])


def test_nesterov_with_momentum_loads():
    cfg = load_config(SMOKE, ["optim.momentum=0.5", "optim.nesterov=true"])
    assert cfg.optim.nesterov is True and cfg.optim.momentum == 0.5


def test_option_defaults_are_off():
    for cfg in (Config(), load_config(SMOKE), load_config(ROOT / "configs" / "default.yaml")):
        assert cfg.model.dropout == 0.0
        assert cfg.optim.momentum == 0.0
        assert cfg.optim.nesterov is False
        assert cfg.augment.noise.fraction == 0.0


def test_defaults_train_byte_identical_to_explicit_off_values(official_dir, tmp_path):
    out = tmp_path / "runs"
    plain = train_json(out, official_dir)
    off = train_json(out, official_dir, *OFF)
    assert plain["run_dir"] != off["run_dir"]
    assert metrics_bytes(plain) == metrics_bytes(off)
    with np.load(Path(plain["run_dir"]) / "weights.npz") as a, \
            np.load(Path(off["run_dir"]) / "weights.npz") as b:  # fmt: skip
        for k in PARAM_KEYS:
            np.testing.assert_array_equal(a[k], b[k])
    stored = load_config(Path(off["run_dir"]) / "config.yaml")
    assert stored.optim.nesterov is False and stored.augment.noise.fraction == 0.0


def test_training_with_all_options_on(official_dir, tmp_path):
    out = tmp_path / "runs"
    a = train_json(out, official_dir, *ALL_ON)
    b = train_json(out, official_dir, *ALL_ON)
    plain = train_json(out, official_dir)
    assert a["status"] == b["status"] == "completed"
    assert metrics_bytes(a) == metrics_bytes(b)
    assert metrics_bytes(a) != metrics_bytes(plain)
    rows = read_csv(Path(a["run_dir"]) / "metrics.csv")
    assert len(rows) == len(read_csv(Path(plain["run_dir"]) / "metrics.csv"))
    assert all(np.isfinite(float(r[c])) for r in rows for c in ("train_loss", "val_loss"))
    cfg = load_config(Path(a["run_dir"]) / "config.yaml")
    assert (cfg.model.dropout, cfg.optim.momentum, cfg.optim.nesterov,
            cfg.augment.noise.fraction) == (0.3, 0.9, True, 0.5)  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.dropout=0.3"],
        ["optim.momentum=0.9"],
        ["augment.noise.fraction=0.5", "augment.noise.std=0.5"],
    ],
)
def test_each_option_changes_training(official_dir, overrides):
    def final(*sets):
        return trained(official_dir, *sets).params

    plain, changed = final(), final(*overrides)
    assert any(not np.array_equal(plain[k], changed[k]) for k in PARAM_KEYS)


def test_nesterov_differs_from_heavy_ball(official_dir):
    def final(*sets):
        return trained(official_dir, "optim.momentum=0.9", "schedule.eta_max=0.01", *sets).params

    heavy, nest = final(), final("optim.nesterov=true")
    assert not np.array_equal(heavy["W1"], nest["W1"])


def test_noise_does_not_touch_the_training_split(official_dir):
    cfg, prep, stack, state = smoke_setup(official_dir, "augment.noise.fraction=1.0",
                                          "augment.noise.std=1.0")  # fmt: skip
    before = prep.train.x.copy()
    loop.run(state, stack, loop.Data(prep.train, prep.val))
    assert prep.train.x.tobytes() == before.tobytes()  # noise goes on the gathered batch only


# ---------------------------------------------------------------- search over the options


def test_search_samples_dropout_and_momentum(official_dir, tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {official_dir}, train: all, val: null, val_size: 40}}\n"
        "search:\n  trials: 3\n  seed: 5\n  space:\n"
        "    model.dropout: {uniform: [0.0, 0.5]}\n"
        "    optim.momentum: {choice: [0.0, 0.9]}\n"
    )
    result = ok("search", config, "--out", tmp_path / "runs", "--json")
    s = json.loads(result.stdout)
    sdir = Path(s["run_dir"])
    plan = json.loads((sdir / "search.json").read_text())
    trials = plan["trials"]
    assert len(trials) == 3
    expected = search.sample_trials(load_config(config).search.space, 3, 5)
    assert [t["params"] for t in trials] == expected
    for t in trials:
        tdir = search.trial_dir(sdir, t["index"])
        assert json.loads((tdir / "summary.json").read_text())["status"] == "completed"
        cfg = load_config(tdir / "config.yaml")
        assert cfg.model.dropout == t["params"]["model.dropout"]
        assert cfg.optim.momentum == t["params"]["optim.momentum"]
        assert 0.0 <= cfg.model.dropout <= 0.5
        assert cfg.optim.momentum in (0.0, 0.9)
    assert len({t["params"]["model.dropout"] for t in trials}) == 3
    with (sdir / "results.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert "model.dropout" in header and "optim.momentum" in header


# ---------------------------------------------------------------- extends: a list of parents


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_list_merges_in_order(tmp_path):
    write(tmp_path, "a.yaml", "seed: 1\nmodel:\n  hidden: 5\n  dropout: 0.1\n"
                              "optim:\n  lambda: 0.1\n")  # fmt: skip
    write(tmp_path, "b.yaml", "model:\n  hidden: 7\noptim:\n  momentum: 0.5\n")
    ab = write(tmp_path, "ab.yaml", "extends: [a.yaml, b.yaml]\noptim:\n  lambda: 0.2\n")
    cfg = load_config(ab)
    assert cfg.seed == 1  # from a only
    assert cfg.model.hidden == 7  # b overrides a
    assert cfg.model.dropout == 0.1  # deep merge keeps a's other keys
    assert cfg.optim.momentum == 0.5  # from b
    assert cfg.optim.lambda_ == 0.2  # the file overrides both
    ba = write(tmp_path, "ba.yaml", "extends: [b.yaml, a.yaml]\n")
    assert load_config(ba).model.hidden == 5


def test_extends_list_parents_are_relative_and_chain(tmp_path):
    write(tmp_path, "base.yaml", "seed: 3\nmodel:\n  hidden: 4\n")
    write(tmp_path, "sub/mid.yaml", "extends: ../base.yaml\nmodel:\n  hidden: 6\n")
    write(tmp_path, "sub/extra.yaml", "optim:\n  momentum: 0.3\n")
    top = write(tmp_path, "top.yaml", "extends: [sub/mid.yaml, sub/extra.yaml]\n")
    cfg = load_config(top)
    assert (cfg.seed, cfg.model.hidden, cfg.optim.momentum) == (3, 6, 0.3)
    single = write(tmp_path, "single.yaml", "extends: [base.yaml]\n")
    assert load_config(single).model.hidden == 4


def test_extends_list_with_a_missing_parent(tmp_path):
    write(tmp_path, "a.yaml", "seed: 1\n")
    path = write(tmp_path, "exp.yaml", "extends: [a.yaml, nothere.yaml]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: extends: ") and "nothere.yaml" in msg


@pytest.mark.parametrize("value", ["[a.yaml, 3]", "[a.yaml, [b.yaml]]", "[]", "{a: b}", "7"])
def test_extends_list_with_a_bad_entry(tmp_path, value):
    write(tmp_path, "a.yaml", "seed: 1\n")
    write(tmp_path, "b.yaml", "seed: 2\n")
    path = write(tmp_path, "exp.yaml", f"extends: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: extends: "), str(e.value)


def test_extends_list_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: [b.yaml]\n")
    write(tmp_path, "b.yaml", "seed: 2\n")
    path = write(tmp_path, "c.yaml", "extends: [b.yaml, a.yaml, c.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(path)


def test_extends_list_through_the_cli(official_dir, tmp_path):
    extra = write(tmp_path, "extra.yaml", "optim:\n  momentum: 0.9\nmodel:\n  dropout: 0.2\n")
    exp = write(tmp_path, "exp.yaml", f"extends: [{SMOKE}, {extra.name}]\n"
                                      f"data:\n  root: {official_dir}\n")  # fmt: skip
    result = ok("train", exp, "--out", tmp_path / "runs", "--json")
    s = json.loads(result.stdout)
    cfg = load_config(Path(s["run_dir"]) / "config.yaml")
    assert (cfg.model.hidden, cfg.optim.momentum, cfg.model.dropout) == (8, 0.9, 0.2)
