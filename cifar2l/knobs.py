"""Every config knob with its default and its description, read off the pydantic model
(config.py): `cifar2l config --defaults` prints them, and configs/base.yaml is that text
(tests/test_config_cmd.py keeps the two equal and base.yaml equal to the model's defaults).
"""

from __future__ import annotations

import textwrap
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .config import Config

COLUMN = 24  # where the comments start
WIDTH = 100
REQUIRED = "<required>"
HEADER = """\
# Every knob of an experiment, with its default and what it means (with its units where it has
# any). Generated from the config model (cifar2l/config.py) by `cifar2l config --defaults`;
# tests/test_config_cmd.py keeps this file equal to it. A config lists only what it changes
# (`extends: default.yaml`); `cifar2l config CONFIG` prints one resolved.
"""


@dataclass(frozen=True)
class Knob:
    key: str  # dotted, by alias: optim.lambda
    default: Any  # JSON-typed; REQUIRED when it has none
    description: str
    section: bool  # a nested section: its knobs follow
    commented: bool  # inside an optional section that is null by default: shown as a comment


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field's type (`X` or `X | None`), None for a leaf."""
    if get_origin(annotation) in (Union, types.UnionType):
        found = [a for a in get_args(annotation) if isinstance(a, type)
                 and issubclass(a, BaseModel)]  # fmt: skip
        return found[0] if found else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def knobs(model: type[BaseModel] = Config, prefix: str = "",
          commented: bool = False) -> list[Knob]:  # fmt: skip
    """The knobs of `model` and its sections, depth first, in declaration order."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        default = REQUIRED if field.is_required() else to_jsonable_python(field.default)
        sub = section_model(field.annotation)
        out.append(Knob(key, default, field.description or "", sub is not None, commented))
        if sub is not None:
            out += knobs(sub, f"{key}.", commented or default is None)
    return out


def _flow(value: Any) -> str:
    """A value as one line of YAML (flow style)."""
    if value == REQUIRED:
        return REQUIRED
    return yaml.safe_dump({"k": value}, default_flow_style=True, width=10**6).strip()[4:-1]


def _line(knob: Knob) -> list[str]:
    depth = knob.key.count(".")
    name = knob.key.rsplit(".", 1)[-1]
    value = "" if knob.section and knob.default is not None else f" {_flow(knob.default)}"
    lead = "  " * depth + ("# " if knob.commented else "") + f"{name}:{value}"
    col = max(COLUMN, len(lead) + 2)
    text = knob.description + ("; its keys:" if knob.section and knob.default is None else "")
    wrapped = textwrap.wrap(text, WIDTH - col - 2) or [""]
    first = f"{lead.ljust(col)}# {wrapped[0]}".rstrip()
    return [first] + [" " * col + f"# {rest}" for rest in wrapped[1:]]


def defaults_yaml() -> str:
    """The defaults as commented YAML: loads to the model's defaults (configs/base.yaml)."""
    return HEADER + "".join(line + "\n" for knob in knobs() for line in _line(knob))
