"""Test-time augmentation: the softmax outputs of a network averaged over views of each image.

`evaluate.tta` names the views besides the image itself: `flip` adds its mirror, `shift` its
four 1-pixel shifts (up, down, left, right; the border filled as in training, augment.pad), and
both together give every shift of the image and of its mirror (10 views). The views are made by
the gather training uses for its flips and shifts (kernels.gather_augment), so with
`augment.flip` and `augment.translate` a view is one of the images the network trained on.
Plain accuracies stay what they are; TTA ones are reported beside them.
"""

from __future__ import annotations

import numpy as np

from . import kernels, network

SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # (dy, dx) of the `shift` views


def views(tta) -> list[tuple[bool, int, int]]:
    """The (flip, dy, dx) of every view, the image itself first."""
    flips = (False, True) if "flip" in tta else (False,)
    shifts = SHIFTS if "shift" in tta else SHIFTS[:1]
    return [(f, dy, dx) for f in flips for dy, dx in shifts]


def view_rows(x, view: tuple[bool, int, int], reflect: bool, out):
    """out[:] = every image of x (N, D) under one view (flip, dy, dx); returns out."""
    flip, dy, dx = view
    n = x.shape[0]
    idx = np.arange(n)
    k = max(abs(dy), abs(dx))
    return kernels.gather_augment(x, idx, np.full(n, flip), np.full(n, dy), np.full(n, dx), k,
                                  reflect, out)  # fmt: skip


def probabilities(params, x, tta, reflect: bool = True, chunk: int | None = None):
    """x (N, D) -> the softmax outputs (T, N, C) averaged over the views of `tta`, in chunks
    of rows (one view of a chunk in memory at a time)."""
    xp, vs = network.array_module(x), views(tta)
    chunk = chunk or network.eval_chunk(params)
    parts = []
    for s in range(0, x.shape[0], chunk):
        xs = xp.ascontiguousarray(x[s : s + chunk])
        buf = xp.empty_like(xs)
        total = network.probabilities(params, xs, chunk)
        for v in vs[1:]:
            total += network.probabilities(params, view_rows(xs, v, reflect, buf), chunk)
        parts.append(total / len(vs))
    return xp.concatenate(parts, axis=1)


def accuracy(params, splits: dict, tta, reflect: bool = True) -> list[dict]:
    """Per trial: {split: TTA accuracy} of every split in `splits` ({name: Split})."""
    per = {k: np.asarray((probabilities(params, s.x, tta, reflect).argmax(axis=2) == s.y)
                         .mean(axis=1)) for k, s in splits.items()}  # fmt: skip
    return [{k: float(v[i]) for k, v in per.items()} for i in range(network.trials(params))]
