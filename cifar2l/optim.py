"""Optimizer updates, kept apart from the gradient so gradients can be checked on their own."""

from __future__ import annotations


def sgd_update(params: dict, grads: dict, lr: float) -> None:
    """Vanilla mini-batch gradient descent, in place: p -= lr * dp."""
    for key, g in grads.items():
        params[key] -= lr * g
