"""Grid axes of a search: `grid: [a, b, ...]` (or a plain list) in search.space, and
`cifar2l search CONFIG --grid KEY=V1,V2,...` on the command line.

A grid axis is not drawn at random: every one of its values is run. The grid points are the
Cartesian product of the grid axes, in the order of the space (the --grid axes last, in the
order given), the last axis fastest. With random axes beside it, every grid point gets
`search.trials` draws of them (plan.plan_values); with grid axes only, one trial per point.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from .. import config as config_mod
from ..errors import ConfigError, brief, clip

MAX_TRIALS = 10000  # of a search with a grid: more is a typo (an extra axis), not a plan
EXAMPLE = "e.g. --grid optim.lambda=0.001,0.01,0.1"


# ---------------------------------------------------------------- the grid of a space


def grid_axes(space: dict) -> dict[str, list]:
    """The grid axes of a space (key -> values), in the order of the space."""
    return {key: dist.args for key, dist in space.items() if dist.kind == "grid"}


def grid_points(axes: dict[str, list]) -> list[dict]:
    """Every point of the grid, the last axis fastest."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def check_size(axes: dict[str, list], draws: int, source: str) -> None:
    """ConfigError when the grid (times `draws` random draws per point) makes too many trials;
    checked before a point is built."""
    points = math.prod(len(v) for v in axes.values())
    if points * draws > MAX_TRIALS:
        sizes = " x ".join(str(len(v)) for v in axes.values())
        times = f" x {draws} search.trials" if draws > 1 else ""
        raise ConfigError(f"{source}: the grid makes {sizes} = {points} points{times}, "
                          f"{points * draws} trials; at most {MAX_TRIALS} in one search")


# ---------------------------------------------------------------- --grid KEY=V1,V2,...


def parse_grid(text: str) -> tuple[str, list]:
    """`optim.lambda=0.001,0.01` -> ("optim.lambda", [0.001, 0.01]), each value YAML-typed as
    by --set; brackets and quotes nest: `evaluate.tta=[flip],[flip,shift]` is two values."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--grid {brief(text)}: expected KEY=V1,V2,..., {EXAMPLE}")
    check_key(key)
    items = split_values(values)
    if not all(item.strip() for item in items):
        raise ConfigError(f"--grid {clip(key, 80)}: an empty value in {brief(values)}; "
                          f"expected KEY=V1,V2,..., {EXAMPLE}")  # fmt: skip
    parsed = [config_mod.parse_yaml(item, f"--grid {clip(key, 80)}") for item in items]
    twice = [items[i] for i, v in enumerate(parsed) if repr(v) in map(repr, parsed[:i])]
    if twice:
        raise ConfigError(f"--grid {clip(key, 80)}: the value {brief(twice[0].strip(), 40)} "
                          "is given twice")  # fmt: skip
    return key, parsed


def check_key(key: str) -> None:
    if key == "init_seed":
        raise ConfigError("--grid init_seed: it is drawn per trial from search.seed; it "
                          "cannot be searched")  # fmt: skip
    if not config_mod.is_config_key(key):
        raise ConfigError(f"--grid {brief(key)}: not a config key (e.g. optim.lambda, "
                          "model.hidden)")  # fmt: skip


def split_values(text: str) -> list[str]:
    """`text` split at the commas outside brackets, braces and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def parse_grids(texts: list[str]) -> dict[str, list]:
    """The --grid options as axes (key -> values), in the order given."""
    axes: dict[str, list] = {}
    for text in texts:
        key, values = parse_grid(text)
        if key in axes:
            raise ConfigError(f"--grid {clip(key, 80)}: given twice; give all its values in "
                              "one --grid KEY=V1,V2,...")  # fmt: skip
        axes[key] = values
    return axes


def apply_grids(raw: dict, axes: dict[str, list]) -> dict:
    """`raw` with each --grid axis replacing its key's entry in search.space, the --grid axes
    after the config's own keys (a config without a search: section gets one)."""
    search = raw.get("search")
    space = search.get("space") if isinstance(search, dict) else None
    if space is not None and not isinstance(space, dict):
        raise ConfigError(f"--grid: search.space is not a mapping (got {brief(space)})")
    kept = {k: v for k, v in (space or {}).items() if k not in axes}
    new = {**kept, **{k: {"grid": v} for k, v in axes.items()}}
    return config_mod.set_dotted(raw, ["search", "space"], new, "--grid")


def load_search_config(path, overrides: list[str], grids: list[str]):
    """The config of `search CONFIG --set ... --grid ...`: --grid after --set, every value of
    a --grid checked against the config model (as --set), before anything is written."""
    axes = parse_grids(grids)
    check_size(axes, 1, "--grid")
    raw = config_mod.apply_overrides(config_mod.load_raw(Path(path)), overrides)
    cfg = config_mod.validate(apply_grids(raw, axes), str(path))
    base = {k: v for k, v in cfg.to_dict().items() if k != "search"}
    for key, values in axes.items():
        for value in values:
            what = f"--grid {clip(key, 80)} value {brief(value, 40)}"
            config_mod.validate(config_mod.set_dotted(base, key.split("."), value, what), what)
    return cfg
