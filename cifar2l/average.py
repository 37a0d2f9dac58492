"""Weight averaging: a running average of a stack's weights over the end of training.

`train.average` samples the weights every `every` updates once `start` (a fraction) of the
updates are done, and folds each sample into an average of the same layout as the params
(W1 (D, T, H), b1 (T, H), W2 (T, H, C), b2 (T, C)):

- ema: avg <- decay * avg + (1 - decay) * W (Polyak averaging; the first sample starts it);
- swa: avg <- the uniform mean of every sample (Izmailov et al. 2018, "Averaging weights leads
  to wider optima"), here along one anneal rather than over restarts.

The network has no batch norm, so averaged weights need no statistics recomputed: they are
evaluated as they are. Both kinds are `avg += w * (W - avg)` with a per-sample weight w.
"""

from __future__ import annotations

from .network import PARAM_KEYS, array_module


def start_step(avg_cfg, total: int) -> int:
    """The update after which sampling begins (samples at start + every, start + 2 every...)."""
    return int(avg_cfg.start * total)


def due(avg_cfg, step: int, total: int) -> bool:
    """Whether the weights after `step` updates are a sample of the average."""
    begin = start_step(avg_cfg, total)
    return step > begin and (step - begin) % avg_cfg.every == 0


def sample_weight(avg_cfg, n: int) -> float:
    """The weight of the n-th sample (n >= 1) in the running average."""
    if n == 1:
        return 1.0
    return 1.0 / n if avg_cfg.kind == "swa" else 1.0 - avg_cfg.decay


def fold(average: dict | None, params: dict, w: float) -> dict:
    """average += w * (params - average), in place; a fresh copy of params when w == 1 (the
    first sample) or there is no average yet. Returns the average."""
    if average is None or w == 1.0:
        xp = array_module(params["W1"])
        return {k: xp.array(params[k], copy=True) for k in PARAM_KEYS}
    for k in PARAM_KEYS:
        a = average[k]
        a += a.dtype.type(w) * (params[k] - a)
    return average
