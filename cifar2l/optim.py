"""Optimizer updates, kept apart from the gradient so gradients can be checked on their own."""

from __future__ import annotations


def sgd_update(params: dict, grads: dict, lr: float) -> None:
    """Vanilla mini-batch gradient descent, in place: p -= lr * dp."""
    for key, g in grads.items():
        params[key] -= lr * g


def init_velocity(params: dict) -> dict:
    """Zero momentum buffers, one per parameter."""
    return {k: v * 0 for k, v in params.items()}


def momentum_update(params: dict, grads: dict, lr: float, velocity: dict, gamma: float,
                    nesterov: bool = False) -> None:  # fmt: skip
    """Heavy-ball momentum, in place (the study's form): v = gamma v + lr g; p -= v.

    Nesterov: p -= gamma v + lr g, with v updated as above (the look-ahead step).
    """
    for key, g in grads.items():
        v = velocity[key]
        v *= gamma
        v += lr * g
        if nesterov:
            params[key] -= gamma * v + lr * g
        else:
            params[key] -= v


def update(params: dict, grads: dict, lr: float, velocity: dict | None, gamma: float,
           nesterov: bool) -> None:  # fmt: skip
    """The configured optimizer: plain SGD when there is no momentum buffer."""
    if velocity is None:
        sgd_update(params, grads, lr)
    else:
        momentum_update(params, grads, lr, velocity, gamma, nesterov)
