"""Named random streams: every draw comes from an explicit numpy Generator."""

from __future__ import annotations

import numpy as np


def make_rngs(seed: int, init_seed: int | None = None) -> dict[str, np.random.Generator]:
    """Independent named streams from one seed: a new use of randomness never shifts the others.

    `init_seed`, when given, replaces the initialisation stream alone: search trials share the
    data split and mini-batch order (common random numbers) and differ in their initialisation.
    """
    # Children are keyed by position: streams added at the end never change the earlier ones.
    init, shuffle, split, dropout, augment = np.random.SeedSequence(seed).spawn(5)
    if init_seed is not None:
        init = np.random.SeedSequence(init_seed)
    return {
        "init": np.random.default_rng(init),
        "shuffle": np.random.default_rng(shuffle),
        "split": np.random.default_rng(split),
        "dropout": np.random.default_rng(dropout),
        "augment": np.random.default_rng(augment),
    }


def init_seeds(seed: int, n: int) -> list[int]:
    """n initialisation seeds spawned from `seed`: one per search trial or repeat."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]
