"""Learning-rate schedules, each a pure function of the update step t (0-based)."""

from __future__ import annotations

import math


def cyclical(t: int, eta_min: float, eta_max: float, n_s: int) -> float:
    """Triangular cyclical rate (Smith 2015): up from eta_min over n_s steps, down over n_s.

    For 2l n_s <= t <= (2l+1) n_s: eta_min + (t - 2l n_s) / n_s (eta_max - eta_min);
    for (2l+1) n_s <= t <= 2(l+1) n_s: eta_max - (t - (2l+1) n_s) / n_s (eta_max - eta_min).
    """
    pos = t % (2 * n_s)
    frac = pos / n_s if pos <= n_s else 2 - pos / n_s
    return eta_min + frac * (eta_max - eta_min)


def constant(t: int, eta: float) -> float:
    return eta


def one_cycle(t: int, eta_min: float, eta_max: float, length: int, warmup: float) -> float:
    """One-cycle rate (Smith & Topin 2017), repeated every `length` steps: a linear warm-up from
    eta_min to eta_max over the first `warmup` fraction of the cycle, then a cosine anneal back
    to eta_min at the cycle's end. Repeated, it is the restart schedule of snapshot ensembles."""
    pos = t % length
    up = round(warmup * length)
    if pos < up:
        return eta_min + pos / up * (eta_max - eta_min)
    frac = (pos - up) / (length - up) if length > up else 1.0
    return eta_min + 0.5 * (1 + math.cos(math.pi * frac)) * (eta_max - eta_min)


def total_steps(sched) -> int:
    """Number of updates a schedule config asks for (a cyclical one ends at an eta_min point)."""
    return 2 * sched.n_s * sched.cycles if sched.kind == "cyclical" else sched.steps


def cycle_length(sched) -> int | None:
    """Updates per cycle (None for a constant rate): snapshots and checkpoints fall on its ends."""
    if sched.kind == "cyclical":
        return 2 * sched.n_s
    return sched.steps // sched.cycles if sched.kind == "one_cycle" else None


def make_schedule(sched):
    """Config section -> eta(t)."""
    if sched.kind == "cyclical":
        return lambda t: cyclical(t, sched.eta_min, sched.eta_max, sched.n_s)
    if sched.kind == "one_cycle":
        n = cycle_length(sched)
        return lambda t: one_cycle(t, sched.eta_min, sched.eta_max, n, sched.warmup)
    return lambda t: constant(t, sched.eta)


def default_log_every(sched) -> int:
    """10 evaluation points per cycle (per run, for a constant rate)."""
    return max(1, (cycle_length(sched) or sched.steps) // 10)
