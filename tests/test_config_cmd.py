"""`cifar2l config`, configs/base.yaml and shipped config names (cifar2l/shipped.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cifar2l import knobs, shipped
from cifar2l.config import Config, dump_yaml, load_config
from cifar2l.lrrange import suggestion_yaml
from cifar2l.search.results import best_yaml_header

from .conftest import ROOT, invoke, ok, one_error_line

CONFIGS = ROOT / "configs"
SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


# ---------------------------------------------------------------- config CONFIG


def test_config_prints_the_resolved_yaml_with_overrides():
    result = ok("config", CONFIGS / "default.yaml", "--set", "optim.lambda=0.005", "--seed", 7)
    want = load_config(CONFIGS / "default.yaml", ["optim.lambda=0.005", "seed=7"])
    assert result.stdout == dump_yaml(want)
    assert result.stderr == ""
    assert "lambda: 0.005" in result.stdout and "seed: 7" in result.stdout


def test_config_json_is_the_resolved_dict():
    result = ok("config", CONFIGS / "smoke.yaml", "--json")
    assert json.loads(result.stdout) == load_config(CONFIGS / "smoke.yaml").to_dict()
    assert json.loads(result.stdout)["model"]["hidden"] == 8  # smoke.yaml over default.yaml


@pytest.mark.parametrize("name", ["best", "best.yaml", "smoke"])
def test_a_bare_name_is_the_shipped_config(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repo: no configs/ here
    stem = name.removesuffix(".yaml")
    assert ok("config", name).stdout == dump_yaml(load_config(CONFIGS / f"{stem}.yaml"))


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("default.yaml").write_text("model: {hidden: 3}\n")
    assert yaml.safe_load(ok("config", "default.yaml").stdout)["model"]["hidden"] == 3
    assert yaml.safe_load(ok("config", "default").stdout)["model"]["hidden"] == 50  # no file


def test_an_unknown_bare_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(invoke("config", "defualt"), 2, "'defualt'", "not a shipped config")
    assert all(name in line for name in SHIPPED), line


def test_a_missing_path_is_reported_as_such(tmp_path):
    one_error_line(invoke("config", tmp_path / "nope.yaml"), 2, "nope.yaml")


def test_invalid_configs_exit_2_with_one_line(tmp_path):
    bad_type = tmp_path / "bad.yaml"
    bad_type.write_text("extends: default.yaml\nmodel: {hidden: ten}\n")
    bad_extends = tmp_path / "orphan.yaml"
    bad_extends.write_text("extends: no-such-parent.yaml\n")
    one_error_line(invoke("config", "default", "--set", "model.hiddn=3"), 2,
                   "model.hiddn: unknown key", "did you mean 'hidden'")  # fmt: skip
    one_error_line(invoke("config", bad_type), 2, "bad.yaml", "extends")  # parent not beside it
    (tmp_path / "default.yaml").write_text("model: {hidden: 4}\n")
    one_error_line(invoke("config", bad_type), 2, "bad.yaml", "model.hidden", "'ten'")
    one_error_line(invoke("config", bad_extends), 2, "orphan.yaml", "no-such-parent.yaml")


@pytest.mark.parametrize("args", [[], ["default", "--list"], ["--defaults", "--list"],
                                  ["--list", "--set", "seed=1"], ["--defaults", "--seed", "3"]])
def test_config_takes_exactly_one_of_config_defaults_list(args):
    one_error_line(invoke("config", *args), 2, "config:")


def test_config_help_has_an_example():
    result = ok("config", "--help")
    assert "Example:" in result.stdout and "cifar2l config --defaults" in result.stdout


# ---------------------------------------------------------------- --list


def test_list_names_every_shipped_config_with_its_first_comment_line():
    rows = json.loads(ok("config", "--list", "--json").stdout)["configs"]
    assert [r["name"] for r in rows] == SHIPPED
    default = next(r for r in rows if r["name"] == "default")
    assert default["about"] == (CONFIGS / "default.yaml").read_text().splitlines()[0][2:]
    assert Path(default["path"]).resolve() == (CONFIGS / "default.yaml").resolve()
    table = ok("config", "--list").stdout
    assert "smoke" in table and "Table 2, left column" in table


# ---------------------------------------------------------------- --defaults, base.yaml


def model_keys(model=Config, prefix="") -> set[str]:
    """Every field of the config model, dotted, by alias, walked here independently of
    knobs.knobs: sections (plain or optional) recursively; a dict of models is a leaf."""
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.add(key)
        sub = knobs.section_model(field.annotation)
        if sub is not None:
            keys |= model_keys(sub, key + ".")
    return keys


def test_defaults_prints_base_yaml():
    result = ok("config", "--defaults")
    assert result.stdout == (CONFIGS / "base.yaml").read_text(), (
        "configs/base.yaml is out of step with the config model: regenerate it with "
        "`cifar2l config --defaults > configs/base.yaml`")
    listed = json.loads(ok("config", "--defaults", "--json").stdout)["knobs"]
    assert {k["key"] for k in listed} == model_keys()


def test_every_field_has_a_description():
    missing = [k.key for k in knobs.knobs() if not k.description.strip()]
    assert not missing, f"add description= to these fields in cifar2l/config.py: {missing}"


def test_base_yaml_documents_every_field():
    text = (CONFIGS / "base.yaml").read_text()
    raw = yaml.safe_load(text)
    for key in sorted(model_keys()):
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts):
            if node is None:  # an optional section, null by default: its keys are comments
                indent = "  " * i
                assert re.search(rf"^{indent}# {re.escape(part)}: .*# \S", text, re.M), key
                break
            assert part in node, f"{key} is not in configs/base.yaml"
            node = node[part]
        else:
            line = next(ln for ln in text.splitlines()
                        if ln.startswith("  " * (len(parts) - 1) + parts[-1] + ":"))  # fmt: skip
            assert re.search(r"# \S", line), f"{key} has no comment in configs/base.yaml"


def test_base_yaml_loads_to_the_model_defaults():
    assert dump_yaml(load_config(CONFIGS / "base.yaml")) == dump_yaml(Config())
    assert load_config(CONFIGS / "base.yaml").to_dict() == Config.model_validate({}).to_dict()


def test_distributions_are_named_in_the_search_space_comment():
    space = next(k for k in knobs.knobs() if k.key == "search.space")
    assert all(d in space.description for d in ("log_uniform", "uniform", "int_uniform",
                                                "choice"))  # fmt: skip


def test_default_yaml_points_at_the_full_list():
    head = "".join((CONFIGS / "default.yaml").read_text().splitlines(keepends=True)[:4])
    assert "configs/base.yaml" in head and "every knob is here" not in head.lower()


# ---------------------------------------------------------------- bare names in every command


def test_train_takes_a_bare_name(official_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = ok("train", "smoke", "--set", f"data.root={official_dir}", "--quiet", "--json")
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    assert Path(summary["run_dir"]).name.endswith("-train-smoke")
    saved = load_config(Path(summary["run_dir"]) / "config.yaml")
    assert saved.model.hidden == 8 and saved.schedule.n_s == 10  # smoke.yaml, extends resolved


@pytest.mark.parametrize("command", ["train", "gradcheck", "lrrange", "search", "config"])
def test_every_command_resolves_a_bare_name(command, tmp_path, monkeypatch):
    """The resolved file is what the error names: the shipped one, before any work."""
    monkeypatch.chdir(tmp_path)
    shipped_file = shipped.configs_dir() / "default.yaml"
    one_error_line(invoke(command, "default", "--set", "model.hiddn=1", "--out", "runs")
                   if command != "config" else invoke(command, "default", "--set",
                                                      "model.hiddn=1"),
                   2, str(shipped_file), "model.hiddn: unknown key")  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_resolve_keeps_paths_and_refuses_unknown_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("best.yml") == shipped.configs_dir() / "best.yaml"
    assert shipped.resolve("sub/best.yaml") == Path("sub/best.yaml")  # a path: as given
    Path("best").write_text("{}\n")
    assert shipped.resolve("best") == Path("best")  # an existing file wins
    with pytest.raises(Exception, match="not a shipped config"):
        shipped.resolve("nonesuch")


# ---------------------------------------------------------------- what a run writes


def test_suggestion_yaml_extends_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "lr"  # relative, as `--out runs` makes it
    run.mkdir(parents=True)
    (run / "suggestion.yaml").write_text(
        suggestion_yaml({"eta_min": 0.001, "eta_max": 0.05}, run, "lrrange-80"))
    hint = re.search(r"`extends: \[your-config.yaml, (\S+)\]`",
                     (run / "suggestion.yaml").read_text())  # fmt: skip
    assert hint and Path(hint[1]).is_absolute(), (run / "suggestion.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.yaml").write_text(f"extends: [{CONFIGS / 'smoke.yaml'}, {hint[1]}]\n")
    monkeypatch.chdir(elsewhere)
    cfg = load_config("mine.yaml")
    assert (cfg.schedule.eta_min, cfg.schedule.eta_max) == (0.001, 0.05)


def test_best_yaml_names_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header = best_yaml_header(Path("runs/s"), {"trial": 3, "params": {"optim.lambda": 0.01},
                                               "val_accuracy": 0.5}, {"metric": "val_accuracy"})
    command = re.search(r"#   cifar2l train (\S+)", header)[1]
    assert Path(command) == tmp_path / "runs" / "s" / "best.yaml"
    assert header.count("\n") == 3  # three header lines (tests/test_concurrency.py)
