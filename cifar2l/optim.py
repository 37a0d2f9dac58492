"""Optimizer updates, kept apart from the gradient so gradients can be checked on their own.

Every update is element-wise; `parallel.rowwise` spreads it over the cores for wide layers
(bitwise the same result as one call).
"""

from __future__ import annotations

from .parallel import rowwise


def sgd_update(params: dict, grads: dict, lr: float) -> None:
    """Vanilla mini-batch gradient descent, in place: p -= lr * dp."""
    def step(p, g):
        p -= lr * g

    for key, g in grads.items():
        rowwise(step, params[key], g)


def init_velocity(params: dict) -> dict:
    """Zero momentum buffers, one per parameter."""
    return {k: v * 0 for k, v in params.items()}


def momentum_update(params: dict, grads: dict, lr: float, velocity: dict, gamma: float,
                    nesterov: bool = False) -> None:  # fmt: skip
    """Heavy-ball momentum, in place (the study's form): v = gamma v + lr g; p -= v.

    Nesterov: p -= gamma v + lr g, with v updated as above (the look-ahead step).
    """
    def step(p, g, v):
        v *= gamma
        v += lr * g
        if nesterov:
            p -= gamma * v + lr * g
        else:
            p -= v

    for key, g in grads.items():
        rowwise(step, params[key], g, velocity[key])


def decay_weights(params: dict, factor: float) -> None:
    """Decoupled weight decay (Loshchilov & Hutter 2019): W -= factor * W for the weight
    matrices (not the biases), apart from the gradient and the momentum buffer."""
    def shrink(p):
        p -= factor * p

    for key in ("W1", "W2"):
        rowwise(shrink, params[key])


def update(params: dict, grads: dict, lr: float, velocity: dict | None, gamma: float,
           nesterov: bool, weight_decay: float = 0.0) -> None:  # fmt: skip
    """The configured optimizer: plain SGD when there is no momentum buffer. Decoupled weight
    decay shrinks the weights by lr * weight_decay first (it follows the rate schedule)."""
    if weight_decay:
        decay_weights(params, lr * weight_decay)
    if velocity is None:
        sgd_update(params, grads, lr)
    else:
        momentum_update(params, grads, lr, velocity, gamma, nesterov)
