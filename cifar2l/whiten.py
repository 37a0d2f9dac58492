"""ZCA whitening of the standardised inputs (`data.zca_eps`), fitted on the training split.

With the training rows' mean m (D,) and covariance C = U diag(s) U^T (after standardisation),
x -> (x - m) W with W = U diag(1 / sqrt(s + eps)) U^T: every direction of the training data gets
unit variance (a direction with variance well under eps is left nearly as it was), and the
result stays an image (the nearest whitened one: W is symmetric), so flips and translations
still apply to it. Bell and Sejnowski 1997; Krizhevsky 2009 whitens CIFAR-10 this way, with
the epsilon regularising the small, noisy eigenvalues.
"""

from __future__ import annotations

import numpy as np

CHUNK = 4096  # rows per float64 block of the covariance (100 MB at D = 3072)


def covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of the rows of x (N, D), summed in float64 blocks."""
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((x.shape[1], x.shape[1]))
    for s in range(0, len(x), CHUNK):
        block = x[s : s + CHUNK].astype(np.float64) - mean
        cov += block.T @ block
    return mean, cov / len(x)


def fit(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The whitening (mean (D,), W (D, D)), float64, of the standardised training rows x."""
    mean, cov = covariance(x)
    s, u = np.linalg.eigh(cov)
    w = (u * (1.0 / np.sqrt(np.maximum(s, 0.0) + eps))) @ u.T
    return mean, (w + w.T) / 2  # symmetric to the last bit, whatever eigh's rounding


def apply(x: np.ndarray, mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(x - mean) @ W in x's dtype, in row blocks (one product per block, no float64 copy)."""
    dt = x.dtype
    m, wt = mean.astype(dt), w.astype(dt)
    out = np.empty_like(x)
    for s in range(0, len(x), CHUNK):
        np.matmul(x[s : s + CHUNK] - m, wt, out=out[s : s + CHUNK])
    return out
