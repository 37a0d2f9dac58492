"""Config loading: shipped files, extends, --set overrides, and one-line error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cifar2l.config import Config, dump_yaml, load_config, parse_yaml
from cifar2l.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.exit_code == 2
    return msg


# ---------------------------------------------------------------- shipped configs


def test_default_yaml():
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg.seed == 42
    assert cfg.dtype == "float32"
    assert cfg.data.root is None
    assert cfg.data.train == ["data_batch_1"]
    assert cfg.data.val == ["data_batch_2"]
    assert cfg.data.test == "test_batch"
    assert cfg.data.val_size is None
    assert cfg.model.hidden == 50
    assert cfg.optim.lambda_ == 0.01
    s = cfg.schedule
    assert (s.kind, s.eta_min, s.eta_max, s.n_s, s.cycles) == ("cyclical", 1e-5, 0.1, 500, 1)
    assert cfg.train.batch_size == 100
    assert cfg.train.shuffle is True
    assert cfg.train.log_every is None


def test_cycles3_extends_default():
    base = load_config(CONFIGS / "default.yaml")
    cfg = load_config(CONFIGS / "cycles3.yaml")
    assert cfg.schedule.n_s == 800
    assert cfg.schedule.cycles == 3
    # everything else is inherited
    assert cfg.schedule.eta_min == base.schedule.eta_min
    assert cfg.schedule.eta_max == base.schedule.eta_max
    assert cfg.model == base.model and cfg.optim == base.optim
    assert cfg.data == base.data and cfg.train == base.train
    assert cfg.seed == base.seed
    # the study's numbers differ: each config states its own item
    assert cfg.model_copy(update={"schedule": base.schedule, "expected": base.expected}) == base


def test_gradcheck_yaml():
    cfg = load_config(CONFIGS / "gradcheck.yaml")
    assert cfg.seed == 123
    gc = cfg.gradcheck
    assert (gc.dims, gc.samples, gc.hidden) == (20, 2, 50)
    assert gc.lambdas == [0.0, 0.01]
    assert gc.h == 1e-5 and gc.tolerance == 1e-6
    assert cfg.model.hidden == 50  # inherited from default.yaml


def test_smoke_yaml():
    cfg = load_config(CONFIGS / "smoke.yaml")
    assert cfg.model.hidden == 8
    assert cfg.schedule.n_s == 10 and cfg.schedule.cycles == 1
    assert cfg.train.batch_size == 10 and cfg.train.log_every == 5
    assert cfg.optim.lambda_ == 0.01  # inherited


@pytest.mark.parametrize("name", ["default", "cycles3", "gradcheck", "smoke"])
def test_dump_and_reload_round_trip(name, tmp_path):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    text = dump_yaml(cfg)
    doc = yaml.safe_load(text)
    assert "lambda" in doc["optim"] and "lambda_" not in doc["optim"]
    assert doc["optim"]["lambda"] == cfg.optim.lambda_
    assert load_config(write(tmp_path, text)) == cfg


def test_round_trip_after_overrides(tmp_path):
    sets = ["optim.lambda=1", "data.train=all", "data.val=null", "data.val_size=5000",
            "schedule.eta_min=1e-4", "dtype=float64", "data.root=/some/where"]  # fmt: skip
    cfg = load_config(CONFIGS / "default.yaml", sets)
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg
    assert again.optim.lambda_ == 1.0
    assert again.data.train == "all" and again.data.val_size == 5000


# ---------------------------------------------------------------- overrides and typing


def test_set_overrides_are_yaml_typed():
    cfg = load_config(CONFIGS / "default.yaml", ["optim.lambda=0.02", "train.shuffle=false"])
    assert cfg.optim.lambda_ == 0.02 and isinstance(cfg.optim.lambda_, float)
    assert cfg.train.shuffle is False
    cfg = load_config(CONFIGS / "default.yaml",
                      ["model.hidden=64", "data.val=[data_batch_3, data_batch_4]", "seed=7"])
    assert cfg.model.hidden == 64
    assert cfg.data.val == ["data_batch_3", "data_batch_4"]
    assert cfg.seed == 7


def test_later_set_wins_and_extends_is_overridable():
    cfg = load_config(CONFIGS / "cycles3.yaml", ["schedule.n_s=10", "schedule.n_s=20"])
    assert cfg.schedule.n_s == 20 and cfg.schedule.cycles == 3


def test_set_creates_missing_sections(tmp_path):
    cfg = load_config(write(tmp_path, "seed: 1\n"), ["schedule.cycles=4"])
    assert cfg.schedule.cycles == 4 and cfg.seed == 1


@pytest.mark.parametrize("text", ["1e-5", "1E-5", "+1e-5", "1.0e-5", "1.e-5"])
def test_exponent_without_dot_is_a_float(text, tmp_path):
    assert parse_yaml(text, "x") == pytest.approx(1e-5)
    assert isinstance(parse_yaml(text, "x"), float)
    cfg = load_config(write(tmp_path, f"optim:\n  lambda: {text}\n"))
    assert cfg.optim.lambda_ == pytest.approx(1e-5)
    assert load_config(CONFIGS / "default.yaml", [f"schedule.eta_min={text}"]).schedule.eta_min \
        == pytest.approx(1e-5)


def test_plain_numbers_keep_their_yaml_types():
    assert parse_yaml("10", "x") == 10 and isinstance(parse_yaml("10", "x"), int)
    assert parse_yaml("0.5", "x") == 0.5
    assert parse_yaml("abc", "x") == "abc"
    assert parse_yaml("null", "x") is None


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


# ---------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        ("optim:\n  lambd: 0.1\n", "optim.lambd", "did you mean 'lambda'"),
        ("model:\n  hiden: 3\n", "model.hiden", "did you mean 'hidden'"),
        ("sed: 3\n", "sed", "did you mean 'seed'"),
        ("model:\n  hidden: fifty\n", "model.hidden", "integer"),
        ("train:\n  batch_size: 1.5\n", "train.batch_size", "integer"),
        ("train:\n  shuffle: \"yes\"\n", "train.shuffle", "boolean"),
        ("model:\n  hidden: \"10\"\n", "model.hidden", "integer"),
        ("optim:\n  lambda: -0.1\n", "optim.lambda", "greater than or equal to 0"),
        ("train:\n  batch_size: 0\n", "train.batch_size", "greater than or equal to 1"),
        ("schedule:\n  n_s: 0\n", "schedule.n_s", "greater than or equal to 1"),
        ("schedule:\n  eta_min: 0.5\n  eta_max: 0.1\n", "schedule", "eta_min"),
        ("data:\n  train: [data_batch_9]\n", "data.train", "data_batch_9"),
        ("data:\n  val: [test_batch]\n", "data.val", "test_batch"),
        ("data:\n  train: [data_batch_1, data_batch_2]\n", "data", "data_batch_2"),
        ("data:\n  train: all\n", "data", "both"),
        ("data:\n  val_size: 1000\n", "data", "val_size"),
        ("data:\n  val: null\n", "data", "val_size"),
        ("dtype: float16\n", "dtype", "float16"),
        ("schedule:\n  kind: cosine\n", "schedule.kind", "cosine"),
    ],
)
def test_invalid_values_name_file_and_key(text, key, what, tmp_path):
    path = write(tmp_path, text)
    msg = config_error(path)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert what in msg, msg


def test_unknown_key_lists_allowed_keys(tmp_path):
    msg = config_error(write(tmp_path, "train:\n  batchsize: 10\n"))
    assert "train.batchsize: unknown key" in msg
    assert "did you mean 'batch_size'" in msg
    assert "shuffle" in msg and "log_every" in msg


def test_unknown_key_without_close_match(tmp_path):
    msg = config_error(write(tmp_path, "zzzzzz: 1\n"))
    assert "zzzzzz: unknown key" in msg and "did you mean" not in msg


def test_unknown_key_via_set_reports_key():
    msg = config_error(CONFIGS / "default.yaml", ["optim.lambd=0.1"])
    assert msg.startswith(f"{CONFIGS / 'default.yaml'}: optim.lambd: unknown key")
    assert "'lambda'" in msg


def test_eta_min_above_eta_max_via_set():
    msg = config_error(CONFIGS / "default.yaml", ["schedule.eta_min=0.5"])
    assert "schedule" in msg and "eta_min" in msg and "eta_max" in msg


def test_eta_order_ignored_for_constant_schedule():
    cfg = load_config(CONFIGS / "default.yaml",
                      ["schedule.kind=constant", "schedule.eta_min=0.5", "schedule.eta_max=0.1"])
    assert cfg.schedule.kind == "constant"


def test_broken_yaml_reports_line(tmp_path):
    path = write(tmp_path, "seed: 1\nmodel:\n  hidden: [1, 2\noptim: {}\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}: invalid YAML")
    assert re.search(r"line [34]\b", msg), msg


def test_top_level_list(tmp_path):
    path = write(tmp_path, "- seed\n- 1\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}: ") and "mapping" in msg and "list" in msg


def test_extends_cycle(tmp_path):
    write(tmp_path, "extends: b.yaml\nseed: 1\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nseed: 2\n", "b.yaml")
    msg = config_error(tmp_path / "a.yaml")
    assert "extends" in msg and "cycle" in msg
    assert "a.yaml" in msg and "b.yaml" in msg


def test_extends_self(tmp_path):
    msg = config_error(write(tmp_path, "extends: exp.yaml\n"))
    assert "cycle" in msg


def test_extends_missing_parent(tmp_path):
    path = write(tmp_path, "extends: nothere.yaml\n")
    msg = config_error(path)
    assert msg.startswith(f"{path}: extends: ")
    assert "nothere.yaml" in msg and "not found" in msg


def test_extends_relative_to_file_and_chained(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "seed: 5\nmodel:\n  hidden: 7\n", "base.yaml")
    write(tmp_path, "extends: ../base.yaml\nmodel:\n  hidden: 9\n", "sub/mid.yaml")
    path = write(tmp_path, "extends: sub/mid.yaml\noptim:\n  lambda: 0.2\n", "top.yaml")
    cfg = load_config(path)
    assert (cfg.seed, cfg.model.hidden, cfg.optim.lambda_) == (5, 9, 0.2)


def test_extends_must_be_a_string(tmp_path):
    msg = config_error(write(tmp_path, "extends: [a.yaml]\n"))
    assert "extends" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = config_error(path)
    assert msg.startswith(f"{path}: ") and "not found" in msg


@pytest.mark.parametrize("bad", ["foo", "=3", "a..b=1", ".a=1", "a.=1", "1a=2", "a b=1"])
def test_bad_set_syntax(bad):
    msg = config_error(CONFIGS / "default.yaml", [bad])
    assert "--set" in msg and repr(bad) in msg
    assert "key=value" in msg


def test_set_through_a_non_section():
    msg = config_error(CONFIGS / "default.yaml", ["seed.x=1"])
    assert "seed.x=1" in msg and "seed" in msg and "not a section" in msg


def test_set_through_a_non_section_absent_from_file(tmp_path):
    msg = config_error(write(tmp_path, "model:\n  hidden: 3\n"), ["seed.x=1"])
    assert "seed" in msg


def test_set_with_broken_yaml_value():
    msg = config_error(CONFIGS / "default.yaml", ["data.val=[data_batch_3"])
    assert msg.startswith("--set data.val: invalid YAML")


def test_set_wrong_type_names_key():
    msg = config_error(CONFIGS / "default.yaml", ["train.batch_size=big"])
    assert "train.batch_size" in msg and "'big'" in msg


@pytest.mark.parametrize("text, key", [
    ("seed: 1\nseed: 2\n", "seed"),
    ("data:\n  root: /x\ndata:\n  train: all\n", "data"),
    ("optim: {lambda: 0.1, lambda: 0.2}\n", "lambda"),
])  # fmt: skip
def test_duplicate_keys_are_an_error(tmp_path, text, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: invalid YAML (line ")
    assert f"duplicate key '{key}'" in str(e.value)


def test_yaml_merge_keys_still_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("schedule:\n  <<: {n_s: 7, cycles: 2}\n  cycles: 3\n")
    cfg = load_config(path)
    assert (cfg.schedule.n_s, cfg.schedule.cycles) == (7, 3)
