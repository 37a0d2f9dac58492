"""Data augmentation applied to a mini-batch, in place, on the fly."""

from __future__ import annotations

import numpy as np


def add_noise(xb, fraction: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, std^2) noise to round(fraction * N) randomly chosen rows of xb (N, D), in place.

    Returns the indices of the noised rows.
    """
    n = xb.shape[0]
    k = int(round(fraction * n))
    if k == 0 or std == 0:
        return np.empty(0, dtype=np.int64)
    rows = np.sort(rng.choice(n, size=k, replace=False))
    noise = rng.standard_normal((k, xb.shape[1]), dtype=np.float32) * np.float32(std)
    xb[rows] += noise.astype(xb.dtype, copy=False)
    return rows
