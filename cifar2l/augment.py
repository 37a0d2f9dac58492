"""Data augmentation applied to a mini-batch, in place, on the fly.

Every random draw comes from a NumPy Generator on the host (so NumPy and CuPy runs draw the same
numbers); the array work takes its module from the batch (`xp`).
"""

from __future__ import annotations

import numpy as np

from .network import array_module

C, S = 3, 32  # CIFAR-10 rows are the R, G, B planes of a 32x32 image: (N, 3072) = (N, 3, 32, 32)


def apply(xb, aug, rng: np.random.Generator) -> None:
    """All configured augmentations of a standardised batch xb (N, D), in place, in a fixed
    order: flip and translation, then brightness/contrast jitter, then Gaussian noise."""
    if aug.flip or aug.translate:
        flip_translate(xb, aug.flip, aug.translate, aug.pad, rng)
    if aug.brightness or aug.contrast:
        jitter(xb, aug.brightness, aug.contrast, rng)
    if aug.noise.fraction > 0:
        add_noise(xb, aug.noise.fraction, aug.noise.std, rng)


def flip_translate(xb, flip: bool, k: int, pad: str, rng: np.random.Generator) -> None:
    """Shift each image by (dy, dx) pixels, each uniform in [-k, k], filling the uncovered
    border by reflection or with zeros (the mean of a standardised input), then mirror it
    left-right with probability 1/2. One gather over the padded batch does both."""
    xp = array_module(xb)
    n = xb.shape[0]
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    dy, dx = rng.integers(-k, k + 1, size=(2, n)) if k else np.zeros((2, n), dtype=np.int64)
    img = xb.reshape(n, C, S, S)
    padded = xp.pad(img, ((0, 0), (0, 0), (k, k), (k, k)),
                    mode="reflect" if pad == "reflect" else "constant")  # fmt: skip
    j = np.arange(S)
    rows = (k + dy)[:, None] + j  # (N, S): source row of each output row
    cols = (k + dx)[:, None] + np.where(flips[:, None], S - 1 - j, j)
    rows, cols = xp.asarray(rows), xp.asarray(cols)
    out = padded[xp.arange(n)[:, None, None, None], xp.arange(C)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]  # fmt: skip
    xb[...] = out.reshape(n, C * S * S)


def jitter(xb, brightness: float, contrast: float, rng: np.random.Generator) -> None:
    """Per image: scale its deviation from its own mean by a factor uniform in
    [1 - contrast, 1 + contrast], then add an offset uniform in [-brightness, brightness]
    (standardised units, the same for the three channels)."""
    xp = array_module(xb)
    n = xb.shape[0]
    scale = rng.uniform(1 - contrast, 1 + contrast, size=n)
    shift = rng.uniform(-brightness, brightness, size=n)
    mean = xb.mean(axis=1, keepdims=True)
    xb -= mean
    xb *= xp.asarray(scale[:, None], dtype=xb.dtype)
    xb += mean + xp.asarray(shift[:, None], dtype=xb.dtype)


def add_noise(xb, fraction: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, std^2) noise to round(fraction * N) randomly chosen rows of xb (N, D), in place.

    Returns the indices of the noised rows.
    """
    xp = array_module(xb)
    n = xb.shape[0]
    k = int(round(fraction * n))
    if k == 0 or std == 0:
        return np.empty(0, dtype=np.int64)
    rows = np.sort(rng.choice(n, size=k, replace=False))
    noise = rng.standard_normal((k, xb.shape[1]), dtype=np.float32) * np.float32(std)
    xb[xp.asarray(rows)] += xp.asarray(noise.astype(xb.dtype, copy=False))
    return rows
