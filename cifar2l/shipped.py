"""The shipped configs (configs/*.yaml): package data, so a bare name works from any directory.

`cifar2l train default` reads `default.yaml` of the installed package (or of the source
checkout when running from the tree); a path that exists always wins over a shipped name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ConfigError, brief

SUFFIXES = (".yaml", ".yml")


def configs_dir() -> Path:
    """The shipped configs: the source checkout's configs/ when running from the tree (an
    editable install maps it too), else the installed package's cifar2l/configs/."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    return Path(str(resources.files("cifar2l") / "configs"))


def names() -> list[str]:
    """The shipped config names (file stems), sorted."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def resolve(name: str | Path) -> Path:
    """The config file NAME means: NAME itself when it exists, else the shipped config of that
    bare name (with or without .yaml). Raises ConfigError for an unknown bare name."""
    path = Path(name)
    if path.exists() or len(path.parts) != 1:  # a path: an existing one wins, a missing one
        return path                            # is reported by load_config as such
    stem = path.stem if path.suffix in SUFFIXES else path.name
    shipped = configs_dir() / f"{stem}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{brief(str(name))}: no such file, and not a shipped config (shipped: "
                      f"{', '.join(names())})")  # fmt: skip


def about(path: Path) -> str:
    """The first comment line of a config file (what it is), '' when it starts with none."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip() if line.lstrip().startswith("#") else ""
    return ""


def listing() -> list[dict[str, str]]:
    """[{name, about, path}] of every shipped config."""
    folder = configs_dir()
    return [{"name": n, "about": about(folder / f"{n}.yaml"), "path": str(folder / f"{n}.yaml")}
            for n in names()]  # fmt: skip
