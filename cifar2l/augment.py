"""Data augmentation applied to a mini-batch, in place, on the fly.

Every random draw comes from a NumPy Generator on the host (so NumPy and CuPy runs draw the same
numbers); the array work takes its module from the batch (`xp`).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .network import array_module

C, S = 3, 32  # CIFAR-10 rows are the R, G, B planes of a 32x32 image: (N, 3072) = (N, 3, 32, 32)


def batch(x, idx, aug, rng: np.random.Generator, out):
    """out[:] = the rows x[idx] (N, D) with every configured augmentation, in a fixed order:
    flip and translation (drawn here, applied by one gather), then brightness/contrast jitter,
    then Gaussian noise. Returns out."""
    if aug.flip or aug.translate:
        flips, dy, dx = flip_translate_draws(len(idx), aug.flip, aug.translate, rng)
        kernels.gather_augment(x, idx, flips, dy, dx, aug.translate, aug.pad == "reflect", out)
    else:
        gather(x, idx, out)
    if aug.brightness or aug.contrast:
        jitter(out, aug.brightness, aug.contrast, rng)
    if aug.noise.fraction > 0:
        add_noise(out, aug.noise.fraction, aug.noise.std, rng)
    return out


def apply(xb, aug, rng: np.random.Generator) -> None:
    """All configured augmentations of a batch xb (N, D), in place (`batch` of its own rows)."""
    batch(xb.copy(), np.arange(xb.shape[0]), aug, rng, xb)


def gather(x, idx, out):
    """out[:] = x[idx] without allocating (kernels.gather_rows)."""
    return kernels.gather_rows(x, idx, out)


def flip_translate_draws(n: int, flip: bool, k: int, rng: np.random.Generator) -> tuple:
    """Per image: mirror it (probability 1/2) and shift it by (dy, dx), each uniform in
    [-k, k]: flips (N,) bool, dy (N,), dx (N,) int64."""
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    dy, dx = rng.integers(-k, k + 1, size=(2, n)) if k else np.zeros((2, n), dtype=np.int64)
    return flips, dy, dx


def flip_translate(xb, flip: bool, k: int, pad: str, rng: np.random.Generator) -> None:
    """Shift each image of xb (N, D) by (dy, dx) pixels, filling the uncovered border by
    reflection or with zeros (the mean of a standardised input), then mirror it left-right
    (flip_translate_draws), in place."""
    flips, dy, dx = flip_translate_draws(xb.shape[0], flip, k, rng)
    src = xb.copy()
    idx = np.arange(xb.shape[0])
    kernels.gather_augment(src, idx, flips, dy, dx, k, pad == "reflect", xb)


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
    noise = kernels.standard_normal_f32(rng, (k, xb.shape[1])) * np.float32(std)
    xb[xp.asarray(rows)] += xp.asarray(noise.astype(xb.dtype, copy=False))
    return rows
