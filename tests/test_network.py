"""The two-layer network (a stack of T = 1 here; test_stack.py stacks T > 1): layer shapes,
loss, analytic gradients vs centred differences."""

from __future__ import annotations

import numpy as np
import pytest

from cifar2l import gradcheck, network, optim
from cifar2l.network import PARAM_KEYS

D, H, C, N = 7, 5, 10, 4


def tiny_problem(seed: int = 0, biases: bool = True):
    """A float64 net (D=7, H=5, C=10) with non-zero biases and N=4 labelled rows."""
    rng = np.random.default_rng(seed)
    params = network.init_params(D, H, C, rng, "float64")
    if biases:
        params["b1"] = rng.standard_normal((1, H)) * 0.1
        params["b2"] = rng.standard_normal((1, C)) * 0.1
    x = rng.standard_normal((N, D))
    y = rng.integers(0, C, size=N)
    return params, x, y


def numerical_grads(params, x, y, lam, h=1e-5):
    """Centred differences of the cost, written independently of cifar2l.gradcheck."""
    out = {}
    for key in PARAM_KEYS:
        g = np.zeros_like(params[key])
        for idx in np.ndindex(params[key].shape):
            old = params[key][idx]
            params[key][idx] = old + h
            plus = network.loss_and_grads(params, x, y, lam)[1][0]
            params[key][idx] = old - h
            minus = network.loss_and_grads(params, x, y, lam)[1][0]
            params[key][idx] = old
            g[idx] = (plus - minus) / (2 * h)
        out[key] = g
    return out


def one_hot(y, c):
    out = np.zeros((len(y), c))
    out[np.arange(len(y)), y] = 1.0
    return out


def log_softmax(s):
    z = s - s.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_analytic_gradients_match_gradcheck_compare(lam):
    params, x, y = tiny_problem()
    result = gradcheck.compare(params, x, y, lam, h=1e-5)
    assert set(result) == set(PARAM_KEYS)
    for key in PARAM_KEYS:
        assert result[key]["coords"] == params[key].size
        # the verdict's measure, >= 10x under the 1e-6 tolerance whatever the CPU's rounding
        assert result[key]["floored_rel_error"] * 10 <= 1e-6, (key, result[key])


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_analytic_gradients_match_own_centred_differences(lam):
    params, x, y = tiny_problem(seed=3)
    _, _, grads = network.loss_and_grads(params, x, y, lam)
    num = numerical_grads(params, x, y, lam)
    for key in PARAM_KEYS:
        assert grads[key].shape == params[key].shape
        # Relative error with a floor of 1e-3 on |ga| + |gn|: an entry with a tiny gradient is
        # judged by its absolute error (the centred difference's own rounding, ~1e-10 here).
        # Over 30 seeds the worst is 1e-7 (raw relative error: 2.6e-7; at h = 1e-6, 5.6e-6):
        # 100x under the bound, while a wrong gradient is off by O(1).
        diff = np.abs(grads[key] - num[key])
        err = (diff / np.maximum(np.abs(grads[key]) + np.abs(num[key]), 1e-3)).max()
        assert err < 1e-5, (key, err)


def test_compare_does_not_modify_params():
    params, x, y = tiny_problem()
    before = {k: v.copy() for k, v in params.items()}
    gradcheck.compare(params, x, y, 0.1, h=1e-5)
    for key in PARAM_KEYS:
        np.testing.assert_array_equal(params[key], before[key])


def test_compare_detects_a_wrong_relu_gradient(monkeypatch):
    params, x, y = tiny_problem()
    # a ReLU backward that lets the gradient through everywhere, even at inactive units
    monkeypatch.setattr(network, "hidden_backward",
                        lambda dhd, cache, out=None: dhd.transpose(1, 0, 2).copy())
    result = gradcheck.compare(params, x, y, 0.0, h=1e-5)
    assert result["W1"]["max_rel_error"] > 1e-2
    assert result["b1"]["max_rel_error"] > 1e-2
    # the second layer does not go through relu_backward and stays correct
    assert result["W2"]["max_rel_error"] < 1e-6


def test_compare_detects_a_missing_regulariser_gradient(monkeypatch):
    params, x, y = tiny_problem()
    real = network.loss_and_grads

    def no_l2(params, x, y, lam, *args, **kw):
        # gradient of the loss only; the numerical cost (network.cost) keeps the penalty
        return real(params, x, y, 0.0, *args, **kw)

    monkeypatch.setattr(network, "loss_and_grads", no_l2)
    result = gradcheck.compare(params, x, y, 0.5, h=1e-5)
    assert result["W1"]["max_rel_error"] > 1e-2
    assert result["W2"]["max_rel_error"] > 1e-2


def test_compare_with_sampled_coords():
    params, x, y = tiny_problem()
    coords = gradcheck.sample_coords(params, 3, np.random.default_rng(1))
    assert all(len(coords[k]) == 3 for k in PARAM_KEYS)
    assert all(len(set(coords[k])) == 3 for k in PARAM_KEYS)
    result = gradcheck.compare(params, x, y, 0.1, 1e-5, coords)
    assert all(result[k]["coords"] == 3 for k in PARAM_KEYS)
    assert max(r["max_rel_error"] for r in result.values()) < 1e-6


def test_rel_error_formula():
    ga = np.array([1.0, 0.0, -2.0, 1e-12, 3.0])
    gn = np.array([1.1, 0.0, 2.0, 0.0, 3.0])
    expected = np.array([0.1 / 2.1, 0.0, 4.0 / 4.0, 1e-12 / 1e-8, 0.0])
    np.testing.assert_allclose(gradcheck.rel_error(ga, gn), expected, rtol=1e-12, atol=0)


def test_numerical_grad_restores_the_entry():
    arr = np.array([[1.0, 2.0], [3.0, 4.0]])

    def cost():
        return float((arr**2).sum())

    g = gradcheck.numerical_grad(cost, arr, (1, 0), 1e-4)
    assert g == pytest.approx(6.0, rel=1e-8)
    np.testing.assert_array_equal(arr, [[1.0, 2.0], [3.0, 4.0]])


# ---------------------------------------------------------------- layers


def test_first_layer_forward_backward_shapes_and_values():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((N, D)), rng.standard_normal((D, 2, H))
    s1 = network.first_layer(x, w)
    assert s1.shape == (N, 2, H)
    np.testing.assert_allclose(s1[:, 1], x @ w[:, 1])
    ds1 = rng.standard_normal((N, 2, H))
    dw, db = network.first_layer_backward(ds1, x)
    assert (dw.shape, db.shape) == ((D, 2, H), (2, H))
    np.testing.assert_allclose(dw[:, 1], x.T @ ds1[:, 1])
    np.testing.assert_allclose(db, ds1.sum(axis=0))
    buf = np.empty((D, 2, H))
    dw2, _ = network.first_layer_backward(ds1, x, dw=buf)
    assert np.shares_memory(dw2, buf)
    np.testing.assert_array_equal(dw2, dw)


def test_second_layer_forward_backward():
    rng = np.random.default_rng(1)
    hd, w2, b2 = rng.standard_normal((N, 2, H)), rng.standard_normal((2, H, C)), \
        rng.standard_normal((2, C))  # fmt: skip
    scores, cache = network.second_layer_forward(hd, w2, b2)
    assert scores.shape == (2, N, C)
    np.testing.assert_allclose(scores[1], hd[:, 1] @ w2[1] + b2[1])
    ds = rng.standard_normal((2, N, C))
    dhd, dw2, db2 = network.second_layer_backward(ds, cache)
    assert (dhd.shape, dw2.shape, db2.shape) == ((2, N, H), (2, H, C), (2, C))
    np.testing.assert_allclose(dhd[1], ds[1] @ w2[1].T)
    np.testing.assert_allclose(dw2[1], hd[:, 1].T @ ds[1])
    np.testing.assert_allclose(db2, ds.sum(axis=1))


def test_relu_forward_backward():
    s1 = np.array([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]])[:, None, :]  # (N, T=1, H)
    b1 = np.array([[0.5, 0.0, -0.25]])
    hd, cache = network.hidden_forward(s1.copy(), b1)
    assert hd.shape == s1.shape
    np.testing.assert_array_equal(hd[:, 0], [[0.0, 0.0, 1.75], [3.5, 0.0, 0.0]])
    dhd = np.arange(1.0, 7.0).reshape(1, 2, 3)  # (T, N, H)
    ds1 = network.hidden_backward(dhd, cache)
    assert ds1.shape == s1.shape
    np.testing.assert_array_equal(ds1[:, 0], [[0.0, 0.0, 3.0], [4.0, 0.0, 0.0]])


def test_softmax_rows_sum_to_one_and_stable():
    s = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    p = network.softmax(s)
    assert p.shape == s.shape
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-300)
    np.testing.assert_allclose(p[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())


def test_softmax_cross_entropy_loss_and_gradient():
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((1, N, C)) * 3
    y = rng.integers(0, C, size=N)
    expected_loss = -log_softmax(scores[0])[np.arange(N), y].mean()
    expected = (network.softmax(scores[0]) - one_hot(y, C)) / N
    loss, dscores = network.softmax_cross_entropy(scores.copy(), y)
    assert loss.shape == (1,) and loss[0] == pytest.approx(expected_loss, rel=1e-12)
    assert dscores.shape == (1, N, C)
    np.testing.assert_allclose(dscores[0], expected, rtol=1e-12, atol=1e-15)


def test_softmax_cross_entropy_large_scores_finite():
    scores = np.array([[[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]]])
    loss, dscores = network.softmax_cross_entropy(scores, np.array([0, 0]))
    assert np.isfinite(loss).all() and np.all(np.isfinite(dscores))
    assert loss[0] == pytest.approx(1e4 / 2, rel=1e-9)


def test_forward_and_predict_shapes():
    params, x, _ = tiny_problem()
    scores = network.forward(params, x)
    assert scores.shape == (1, N, C)
    h = np.maximum(x @ params["W1"][:, 0] + params["b1"][0], 0)
    np.testing.assert_allclose(scores[0], h @ params["W2"][0] + params["b2"][0])
    pred = network.predict(params, x, chunk=3)
    assert pred.shape == (1, N)
    np.testing.assert_array_equal(pred, scores.argmax(axis=2))


# ---------------------------------------------------------------- evaluate, cost


def test_evaluate_matches_direct_computation_and_ignores_chunk_size():
    rng = np.random.default_rng(7)
    params = network.init_params(D, H, C, rng, "float64")
    x = rng.standard_normal((23, D))
    y = rng.integers(0, C, size=23)
    lam = 0.05
    scores = network.forward(params, x)[0]
    loss = -log_softmax(scores)[np.arange(23), y].mean()
    penalty = lam * ((params["W1"] ** 2).sum() + (params["W2"] ** 2).sum())
    acc = (scores.argmax(axis=1) == y).mean()
    for chunk in (1, 4, 10, 23, 10000):
        m = network.evaluate(params, x, y, lam, chunk=chunk)[0]
        assert m["loss"] == pytest.approx(loss, rel=1e-12)
        assert m["cost"] == pytest.approx(loss + penalty, rel=1e-12)
        assert m["accuracy"] == pytest.approx(acc)
    lt, ct, _ = network.loss_and_grads(params, x, y, lam)
    assert lt[0] == pytest.approx(loss, rel=1e-12)
    assert ct[0] == pytest.approx(loss + penalty, rel=1e-12)


def test_cost_is_loss_plus_l2_of_weights_only():
    params, x, y = tiny_problem()
    lam = 0.3
    loss, cost, _ = network.loss_and_grads(params, x, y, lam)
    w2 = (params["W1"] ** 2).sum() + (params["W2"] ** 2).sum()
    assert cost[0] == pytest.approx(loss[0] + lam * w2, rel=1e-12)
    assert network.l2_penalty(params, lam)[0] == pytest.approx(lam * w2, rel=1e-12)
    # biases are not regularised: large biases leave the penalty unchanged
    big = dict(params, b1=params["b1"] + 100.0, b2=params["b2"] - 100.0)
    assert network.l2_penalty(big, lam) == network.l2_penalty(params, lam)
    loss0, cost0, _ = network.loss_and_grads(params, x, y, 0.0)
    assert cost0[0] == loss0[0] == pytest.approx(loss[0])


def test_bias_gradients_have_no_regularisation_term():
    params, x, y = tiny_problem()
    _, _, g0 = network.loss_and_grads(params, x, y, 0.0)
    _, _, g1 = network.loss_and_grads(params, x, y, 0.7)
    np.testing.assert_allclose(g1["b1"], g0["b1"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g1["b2"], g0["b2"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g1["W1"] - g0["W1"], 2 * 0.7 * params["W1"], atol=1e-12)
    np.testing.assert_allclose(g1["W2"] - g0["W2"], 2 * 0.7 * params["W2"], atol=1e-12)


# ---------------------------------------------------------------- init, optimizer


def test_init_params_statistics():
    d, h, c = 1000, 400, 10
    p = network.init_params(d, h, c, np.random.default_rng(0))
    assert p["W1"].shape == (d, 1, h) and p["b1"].shape == (1, h)
    assert p["W2"].shape == (1, h, c) and p["b2"].shape == (1, c)
    assert all(p[k].dtype == np.float32 for k in PARAM_KEYS)
    assert not p["b1"].any() and not p["b2"].any()
    assert p["W1"].std() == pytest.approx(1 / np.sqrt(d), rel=0.02)
    assert p["W2"].std() == pytest.approx(1 / np.sqrt(h), rel=0.05)
    # sample means within 5 standard errors of 0
    assert abs(p["W1"].mean()) < 5 / np.sqrt(d) / np.sqrt(d * h)
    assert abs(p["W2"].mean()) < 5 / np.sqrt(h) / np.sqrt(h * c)


def test_init_params_dtype_and_seed_reproducibility():
    a = network.init_params(D, H, C, np.random.default_rng(11), "float64")
    b = network.init_params(D, H, C, np.random.default_rng(11), "float64")
    other = network.init_params(D, H, C, np.random.default_rng(12), "float64")
    for key in PARAM_KEYS:
        assert a[key].dtype == np.float64
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["W1"], other["W1"])
    assert not np.array_equal(a["W2"], other["W2"])


def test_sgd_update_moves_by_minus_lr_grad_in_place():
    params, x, y = tiny_problem()
    _, _, grads = network.loss_and_grads(params, x, y, 0.1)
    before = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    lr = 0.037
    optim.sgd_update(params, grads, lr)
    for key in PARAM_KEYS:
        assert id(params[key]) == ids[key]
        np.testing.assert_array_equal(params[key], before[key] - lr * grads[key])
    # a step along the negative gradient with a small rate lowers the cost
    assert network.loss_and_grads(params, x, y, 0.1)[1][0] < network.loss_and_grads(
        before, x, y, 0.1
    )[1][0]


def test_sgd_update_zero_lr_is_identity():
    params, x, y = tiny_problem()
    _, _, grads = network.loss_and_grads(params, x, y, 0.0)
    before = {k: v.copy() for k, v in params.items()}
    optim.sgd_update(params, grads, 0.0)
    for key in PARAM_KEYS:
        np.testing.assert_array_equal(params[key], before[key])
