"""Property-based tests (hypothesis): whatever a config file or a --set holds, loading it either
gives a Config or raises one ConfigError whose message is one line naming its source; through the
CLI, any config ends in exit 0, 1 or 2 with at most one `Error:` line and never a traceback."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cifar2l.config import Config, load_config
from cifar2l.errors import ConfigError

from .conftest import ROOT, invoke, write_official_dir

DEFAULT = ROOT / "configs" / "default.yaml"
SMOKE = ROOT / "configs" / "smoke.yaml"
FIXTURE_SETTINGS = dict(
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],  # fmt: skip
)


def config_keys(model=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree, sections included (data, data.root, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.append(key)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += config_keys(field.annotation, key + ".")
    return keys


DOTTED = config_keys()
PARTS = sorted({p for k in DOTTED for p in k.split(".")} | {"extends", "space", "log_uniform",
                                                            "uniform", "int_uniform", "choice"})
NAMED = ["all", "float32", "float64", "data_batch_1", "data_batch_2", "data_batch_9",
         "test_batch", "cyclical", "constant", "linear", "exponential", "auto", "off",
         "val_accuracy", "optim.lambda", "model.hidden", "1e-5", "100", "yes", "null"]  # fmt: skip


# ---------------------------------------------------------------- strategies


def scalars(small: bool = False):
    ints = st.integers(-3, 64) if small else st.integers() | st.integers(-3, 200)
    return st.one_of(
        st.none(), st.booleans(), ints,
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, 1e-5]),
        st.text(max_size=12), st.sampled_from(NAMED),
    )  # fmt: skip


def keys():
    return st.sampled_from(PARTS) | st.text(max_size=8) | st.sampled_from(DOTTED)


def values(small: bool = False):
    return st.recursive(
        scalars(small),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(keys() | st.integers(-2, 2) | st.none(), children, max_size=4),
        max_leaves=12,
    )


def set_path(doc: dict, dotted: str, value) -> dict:
    """doc with doc[a][b]...[z] = value, sections made (or replaced) as needed."""
    node = doc
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value
    return doc


@st.composite
def documents(draw, small: bool = False) -> dict:
    """Random top-level keys, then values put at random real dotted keys (deep keys are hit)."""
    doc = draw(st.dictionaries(keys(), values(small), max_size=4))
    for key, value in draw(st.lists(st.tuples(st.sampled_from(DOTTED), values(small)),
                                    max_size=6)):  # fmt: skip
        set_path(doc, key, value)
    if draw(st.booleans()):
        doc["extends"] = draw(st.sampled_from([str(SMOKE), "cfg.yaml", "missing.yaml", ""])
                              | values(small))  # fmt: skip
    return doc


def dumped(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def mangled(draw) -> str:
    """A dumped document with a few characters replaced or inserted: mostly broken YAML."""
    text = dumped(draw(documents()))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(list("[]{}:-\t\"'&*!%|>#,?@`\n ")) | st.text(max_size=3))
        text = text[:i] + junk + text[i + draw(st.integers(0, 2)):]
    return text


config_texts = st.one_of(
    documents().map(dumped),
    documents().map(lambda d: yaml.safe_dump(d, default_flow_style=True)),
    mangled(),
    st.text(max_size=200),
    st.binary(max_size=200),
)


def assert_one_line(e: ConfigError, *sources: str) -> None:
    msg = str(e)
    assert len(msg.splitlines()) == 1 and msg == msg.strip(), repr(msg)
    assert msg.startswith(sources), (sources, msg)


# ---------------------------------------------------------------- (a) config files


@settings(max_examples=400, **FIXTURE_SETTINGS)
@given(text=config_texts)
@example(text="int: 1\n")  # a key that looks like one of pydantic's union tags
@example(text="search: {space: {optim.lambda: {str: 1}}}\n")
@example(text="data: {'a\\nb': 1}\n".replace("'", '"'))  # a key holding a line break
@example(text="extends: \"x\\u2028y\"\n")
@example(text="seed: " + "[" * 3000)
@example(text="seed: -1\n")
@example(text=f"extends: {SMOKE}\nsearch: {{space: {{model.hidden: {{uniform: [.nan, 1]}}}}}}\n")
def test_any_config_file_loads_or_fails_with_one_line(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert_one_line(e, str(path))
    else:
        assert isinstance(cfg, Config)


# ---------------------------------------------------------------- (b) --set overrides

set_keys = st.one_of(
    st.sampled_from(DOTTED),
    st.lists(st.sampled_from(PARTS) | st.text(string.ascii_letters + "_", max_size=6),
             min_size=1, max_size=4).map(".".join),
    st.text(max_size=15),
)  # fmt: skip
set_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(NAMED + ["[", "{a: 1}", "-1", ".nan", ".inf", "[data_batch_1]", "", " "]),
    values().map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


@settings(max_examples=400, **FIXTURE_SETTINGS)
@given(key=set_keys, value=set_values)
@example(key="int", value="1")
@example(key="search.space", value="{optim.lambda: {int: 1}}")
@example(key="data.root", value='"a\\nb"')
@example(key="seed", value="-5")
def test_any_override_loads_or_fails_with_one_line(key, value):
    try:
        cfg = load_config(DEFAULT, [f"{key}={value}"])
    except ConfigError as e:
        assert_one_line(e, str(DEFAULT), "--set ")
    else:
        assert isinstance(cfg, Config)


# ---------------------------------------------------------------- (c) through the CLI

FAST = """\
gradcheck: {dims: 5, hidden: 4, samples: 2, full_size_coords: 3, full_size_samples: 4}
model: {hidden: 4}
"""


floats01 = st.floats(-0.1, 1.1) | st.sampled_from([0.0, 0.5, 1.0, float("nan")])
PLAUSIBLE = {  # the keys a gradient check reads, with values near their valid ranges
    "seed": st.integers(-1, 10**6), "dtype": st.sampled_from(["float32", "float64", "half"]),
    "data.train": st.sampled_from(["all", ["data_batch_1"], ["data_batch_3", "data_batch_4"],
                                   ["data_batch_2"], []]),
    "data.val": st.sampled_from([None, ["data_batch_2"], ["data_batch_5"]]),
    "data.val_size": st.none() | st.integers(0, 210), "data.test": st.sampled_from([None, "x"]),
    "model.hidden": st.integers(0, 20), "model.dropout": floats01,
    "gradcheck.dims": st.integers(0, 30), "gradcheck.samples": st.integers(0, 45),
    "gradcheck.hidden": st.integers(0, 20), "gradcheck.dropout": floats01,
    "gradcheck.lambdas": st.lists(st.floats(-1, 1) | st.just(float("inf")), max_size=3),
    "gradcheck.h": st.floats(-1e-3, 1e-2), "gradcheck.tolerance": st.floats(-1e-6, 1.0),
    "gradcheck.full_size_samples": st.integers(0, 45),
    "gradcheck.full_size_coords": st.integers(0, 10),
    "gradcheck.full_size_tolerance": st.floats(-1e-6, 1.0),
}  # fmt: skip


@st.composite
def plausible(draw) -> dict:
    """A few gradcheck-relevant keys with values near (and sometimes just past) their ranges."""
    doc: dict = {}
    for key in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=4, unique=True)):
        set_path(doc, key, draw(PLAUSIBLE[key]))
    return doc


@pytest.fixture
def cli_base(tmp_path) -> Path:
    """smoke.yaml on a tiny source, with a fast gradient check; random configs extend it."""
    src = write_official_dir(tmp_path / "src")
    base = tmp_path / "base.yaml"
    base.write_text(f"extends: {SMOKE}\ndata: {{root: {src}}}\n{FAST}")
    return base


@settings(max_examples=50, **FIXTURE_SETTINGS)
@given(doc=plausible() | documents(small=True))
@example(doc={"gradcheck": {"samples": 41}})
@example(doc={"gradcheck": {"lambdas": []}})
@example(doc={"seed": -1})
@example(doc={})
def test_gradcheck_on_any_config_exits_cleanly(cli_base, doc):
    tmp = cli_base.parent
    if isinstance(doc.get("data"), dict):
        doc["data"].pop("root", None)  # a random root could be "/" (read all of it) or "~"
    doc["extends"] = cli_base.name
    config = tmp / "cfg.yaml"
    config.write_text(dumped(doc))
    out = tmp / "runs"
    before = len(list(out.iterdir())) if out.exists() else 0

    result = invoke("gradcheck", config, "--out", out, "--json")

    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code in (0, 1, 2), (result.exit_code, output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    after = len(list(out.iterdir())) if out.exists() else 0
    if result.exit_code == 0 or (result.exit_code == 1 and result.stdout):
        summary = json.loads(result.stdout)  # ran to the end: passed, or a failed check
        assert summary["passed"] is (result.exit_code == 0)
        assert after == before + 1
        return
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    assert after == before  # a failure before the check leaves no run directory
