"""Learning-rate schedules against the closed form of the study, and the logging grid."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cifar2l import loop, schedule
from cifar2l.config import ScheduleConfig

ETA_MIN, ETA_MAX, N_S = 1e-5, 1e-1, 500


def closed_form(t: int, eta_min: float, eta_max: float, n_s: int) -> float:
    """The issue's two branches, written out with the cycle index l."""
    l = t // (2 * n_s)  # noqa: E741 - the study's notation
    if 2 * l * n_s <= t <= (2 * l + 1) * n_s:
        return eta_min + (t - 2 * l * n_s) / n_s * (eta_max - eta_min)
    assert (2 * l + 1) * n_s <= t <= 2 * (l + 1) * n_s
    return eta_max - (t - (2 * l + 1) * n_s) / n_s * (eta_max - eta_min)


def eta(t, n_s=N_S):
    return schedule.cyclical(t, ETA_MIN, ETA_MAX, n_s)


def test_cyclical_key_points():
    assert eta(0) == pytest.approx(ETA_MIN, abs=1e-15)
    assert eta(N_S) == pytest.approx(ETA_MAX, rel=1e-12)
    assert eta(2 * N_S) == pytest.approx(ETA_MIN, abs=1e-15)
    mid = (ETA_MIN + ETA_MAX) / 2
    assert eta(N_S // 2) == pytest.approx(mid, rel=1e-12)
    assert eta(3 * N_S // 2) == pytest.approx(mid, rel=1e-12)
    assert eta(N_S // 4) == pytest.approx(ETA_MIN + 0.25 * (ETA_MAX - ETA_MIN), rel=1e-12)
    assert eta(N_S + N_S // 4) == pytest.approx(ETA_MAX - 0.25 * (ETA_MAX - ETA_MIN), rel=1e-12)


@pytest.mark.parametrize("cycle", [1, 2, 5])
def test_cyclical_later_cycles_repeat(cycle):
    base = 2 * N_S * cycle
    assert eta(base) == pytest.approx(ETA_MIN, abs=1e-15)
    assert eta(base + N_S) == pytest.approx(ETA_MAX, rel=1e-12)
    for t in (1, 123, N_S // 2, N_S + 7, 3 * N_S // 2, 2 * N_S - 1):
        assert eta(base + t) == pytest.approx(eta(t), rel=1e-12, abs=1e-15)
        assert eta(base + t) == pytest.approx(closed_form(base + t, ETA_MIN, ETA_MAX, N_S))


@pytest.mark.parametrize("n_s", [1, 3, 10, 800])
def test_cyclical_brute_force_three_cycles(n_s):
    lo, hi = 0.002, 0.3
    for t in range(0, 2 * n_s * 3 + 1):
        got = schedule.cyclical(t, lo, hi, n_s)
        assert got == pytest.approx(closed_form(t, lo, hi, n_s), rel=1e-12, abs=1e-15), t
        assert lo - 1e-15 <= got <= hi + 1e-15


def test_cyclical_is_monotone_on_each_half():
    ts = range(0, 2 * N_S + 1)
    values = [eta(t) for t in ts]
    assert (np.diff(values[: N_S + 1]) > 0).all()
    assert (np.diff(values[N_S:]) < 0).all()
    step = (ETA_MAX - ETA_MIN) / N_S
    assert values[1] - values[0] == pytest.approx(step, rel=1e-9)


def test_cyclical_flat_when_min_equals_max():
    assert {schedule.cyclical(t, 0.01, 0.01, 4) for t in range(20)} == {0.01}


def test_total_steps_cyclical_and_constant():
    assert schedule.total_steps(ScheduleConfig(n_s=500, cycles=1)) == 1000
    assert schedule.total_steps(ScheduleConfig(n_s=800, cycles=3)) == 4800
    assert schedule.total_steps(ScheduleConfig(n_s=7, cycles=2)) == 28
    assert schedule.total_steps(ScheduleConfig(kind="constant", steps=123, n_s=9)) == 123


def test_make_schedule_cyclical():
    cfg = ScheduleConfig(eta_min=0.001, eta_max=0.2, n_s=10, cycles=2)
    f = schedule.make_schedule(cfg)
    for t in range(0, schedule.total_steps(cfg) + 1):
        assert f(t) == pytest.approx(closed_form(t, 0.001, 0.2, 10), rel=1e-12)
    assert f(schedule.total_steps(cfg)) == pytest.approx(0.001)  # ends at a minimum


def test_constant_schedule():
    assert schedule.constant(0, 0.25) == 0.25
    assert schedule.constant(10**6, 0.25) == 0.25
    f = schedule.make_schedule(ScheduleConfig(kind="constant", eta=0.03, n_s=5))
    assert {f(t) for t in range(0, 50)} == {0.03}


def test_default_log_every_is_ten_points_per_cycle():
    assert schedule.default_log_every(ScheduleConfig(n_s=500)) == 100
    assert schedule.default_log_every(ScheduleConfig(n_s=800, cycles=3)) == 160
    assert schedule.default_log_every(ScheduleConfig(kind="constant", steps=1000)) == 100
    assert schedule.default_log_every(ScheduleConfig(n_s=2)) == 1  # never 0
    assert schedule.default_log_every(ScheduleConfig(kind="constant", steps=3)) == 1
    cfg = ScheduleConfig(n_s=800, cycles=3)
    points = loop.log_points(schedule.total_steps(cfg), schedule.default_log_every(cfg))
    assert len(points) == 10 * 3 + 1  # ten per cycle, plus step 0


def test_schedule_functions_accept_plain_namespaces():
    ns = SimpleNamespace(kind="cyclical", n_s=4, cycles=2, eta_min=0.1, eta_max=0.5)
    assert schedule.total_steps(ns) == 16
    assert schedule.make_schedule(ns)(4) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("total", "every", "expected"),
    [
        (20, 5, [0, 5, 10, 15, 20]),
        (20, 7, [0, 7, 14, 20]),
        (20, 100, [0, 20]),
        (3, 1, [0, 1, 2, 3]),
        (0, 5, [0]),
    ],
)
def test_log_points_include_zero_and_last(total, every, expected):
    points = loop.log_points(total, every)
    assert points == expected
    assert points[0] == 0 and points[-1] == total
    assert points == sorted(set(points))
