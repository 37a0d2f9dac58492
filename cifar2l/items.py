"""The study's items: the shipped config of each, its seeds, and whether a run reproduces it.

The study's numbers live in one place, the `expected:` blocks of configs/*.yaml. A run counts
as a reproduction of an item only when its resolved config equals the item's shipped config,
up to keys that cannot change its numbers (where the data lives, how often it logs or saves)
and sections its command never reads, and when it trained on the CIFAR-10 split sizes the
config implies. Anything else is a modification, named key by key.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from . import config as config_mod
from . import shipped

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = shipped.configs_dir()  # package data when installed, the checkout's configs/ here

# Every item `make report` runs: (command, config stem). Order matters: the fine search
# refines the coarse one.
REPORT_ITEMS = [("gradcheck", "gradcheck"), ("train", "default"), ("train", "cycles3"),
                ("search", "search-coarse"), ("search", "search-fine"), ("train", "final"),
                ("train", "final-3cycles"), ("lrrange", "lrrange-80"), ("lrrange", "lrrange-40"),
                ("train", "model-80"), ("train", "model-40"), ("train", "table4-120"),
                ("train", "table4-140"), ("train", "best")]  # fmt: skip

# Keys that cannot change a run's numbers: where the data lives, how often metrics are logged
# (evaluation draws no random numbers) or checkpoints written (resume is bitwise exact), what
# a search prints, and the study's numbers themselves.
NEUTRAL = ("data.root", "train.log_every", "train.checkpoint_every", "search.top_k", "expected")
# The sections each command reads; a difference elsewhere changes nothing it computes.
TRAINING = ("seed", "init_seed", "dtype", "data", "model", "optim", "augment", "schedule",
            "train")  # fmt: skip
READS = {"train": TRAINING, "search": (*TRAINING, "search"),
         "lrrange": ("seed", "init_seed", "dtype", "data", "model", "optim", "augment",
                     "train.batch_size", "train.shuffle", "lrrange"),
         "gradcheck": ("seed", "data", "model.hidden", "optim.label_smoothing", "gradcheck")}
# Images per official batch and in the test batch.
BATCH, TEST = 10000, 10000


@lru_cache(maxsize=1)
def shipped() -> dict[str, Path]:
    """{item label: its config file} for every shipped config with an expected: block."""
    out = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = config_mod.load_config(path)
        if cfg.expected is not None:
            out[cfg.expected.item] = path
    return out


def item_config(label: str):
    """The shipped Config of an item, or None for an item no shipped config names."""
    path = shipped().get(label)
    return config_mod.load_config(path) if path else None


def seeds(cfg) -> int:
    """Initialisation seeds `make report` trains an item with (its expected.seeds)."""
    return cfg.expected.seeds if cfg.expected is not None else 1


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _read(key: str, command: str) -> bool:
    if any(key == n or key.startswith(f"{n}.") for n in NEUTRAL):
        return False
    return any(key == s or key.startswith(f"{s}.") for s in READS.get(command, TRAINING))


def config_differences(ours, item, command: str) -> list[str]:
    """`key=value` (ours) for every key the command reads where our config differs."""
    a, b = flatten(ours.to_dict()), flatten(item.to_dict())
    if command == "search" and ours.search.refine_from != item.search.refine_from:
        a.pop("search.refine_from", None)  # a fine search names its own coarse run
        b.pop("search.refine_from", None)
    keys = [k for k in dict.fromkeys([*a, *b]) if _read(k, command) and a.get(k) != b.get(k)]
    return [f"{k}={json.dumps(a.get(k))}" for k in keys]


def expected_sizes(cfg) -> dict[str, int]:
    """Split sizes on the full CIFAR-10 (50,000 training and 10,000 test images)."""
    d = cfg.data
    train = BATCH * (5 if d.train == "all" else len(d.train))
    val = d.val_size if d.val_size is not None else BATCH * len(d.val)
    sizes = {"train": train - (d.val_size or 0), "val": val}
    if d.test:
        sizes["test"] = TEST
    return sizes


def data_differences(sizes: dict | None, cfg) -> list[str]:
    """`data: train 40 images (CIFAR-10 gives 10000)` when a run trained on other data."""
    if not sizes:
        return []
    want = expected_sizes(cfg)
    return [f"data: {k} {sizes.get(k)} images (CIFAR-10 gives {n})" for k, n in want.items()
            if sizes.get(k) != n]  # fmt: skip
