"""Faults and hostile input on the config side (issue 15, items 5, 9 and 12).

5: a split definition that puts one image in two splits, or twice in one, is refused: by name at
   config load (exit 2), by pixels when the data holds the same image under two names (exit 1).
9: YAML alias bombs end at once, and no error line quotes an unbounded value.
12: click usage errors and non-finite numbers are one `Error:` line with exit 2, like every
    other error, through typer's CliRunner and through the real entry point.

The corpus cases follow tests/test_bad_inputs.py: exit code, one `Error:` line naming the key,
no traceback, nothing on stdout, no run directory; here every line is also under 500 characters.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, invoke, ok, synthetic_rows, write_image_dir, write_official_dir
from .test_bad_inputs import SMOKE, Build, Ctx, case, on_smoke, override, raw_file, write_batch

MAX_LINE = 500  # characters of an error line, whatever the input
ENTRY_POINT = Path(sys.executable).parent / "cifar2l"  # the installed console script


def sets(*settings: str, fragments: tuple = ()) -> Build:
    """train smoke.yaml on the tiny source with several --set."""

    def build(ctx: Ctx):
        args = ["train", SMOKE, "--out", ctx.out]
        for s in [f"data.root={ctx.src}", *settings]:
            args += ["--set", s]
        return args, list(fragments)

    return build


def argv(*args, fragments: tuple = ()) -> Build:
    """The CLI arguments as they are (`{out}` becomes the case's runs root)."""

    def build(ctx: Ctx):
        return [str(ctx.out) if a == "{out}" else a for a in args], list(fragments)

    return build


def check_one_line(result, code: int, fragments, ctx: Ctx, before: list[str]) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output, output[:2000]
    assert result.exit_code == code, (result.exit_code, output[:2000], result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[:2000]
    assert len(lines[0]) < MAX_LINE, (len(lines[0]), lines[0][:1000])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    assert not ctx.out.exists() or not any(ctx.out.iterdir()), list(ctx.out.iterdir())
    assert sorted(p.name for p in ctx.tmp.iterdir()) == before
    return lines[0]


def run_case(build: Build, code: int, tmp_path: Path, monkeypatch) -> str:
    ctx = Ctx(tmp_path, monkeypatch, trained=None)
    args, fragments = build(ctx)
    before = sorted(p.name for p in tmp_path.iterdir())
    return check_one_line(invoke(*args), code, fragments, ctx, before)


# ---------------------------------------------------------------- 5: one image, one split


def batch_copied(ctx: Ctx) -> Path:
    """An official source whose data_batch_2 is a byte copy of data_batch_1."""
    shutil.copyfile(ctx.src / "data_batch_1", ctx.src / "data_batch_2")
    return ctx.src


def rows_twice_in_batch(ctx: Ctx) -> Path:
    """data_batch_1's rows 20..39 repeat rows 0..19: a held-out val_size split shares them."""
    x, y = synthetic_rows(20, seed=9)
    write_batch(ctx.src / "data_batch_1", np.concatenate([x, x]), np.concatenate([y, y]))
    return ctx.src


def images_test_copies_train(ctx: Ctx) -> Path:
    """An image tree whose test images are copies of training images (all in data_batch_1)."""
    root = write_image_dir(ctx.tmp / "img", train_per_class=20, test_per_class=4)
    for cls_dir in sorted((root / "test").iterdir()):
        for png in sorted(cls_dir.iterdir()):
            shutil.copyfile(root / "train" / cls_dir.name / png.name, png)
    return root


def empty_val_batch(ctx: Ctx) -> Path:
    write_batch(ctx.src / "data_batch_2", np.zeros((0, 3072), np.uint8), [])
    return ctx.src


def on_source(make, *settings: str, fragments: tuple = ()) -> Build:
    def build(ctx: Ctx):
        root = make(ctx)
        args = ["train", SMOKE, "--out", ctx.out, "--set", f"data.root={root}"]
        for s in settings:
            args += ["--set", s]
        return args, [str(root), *fragments]

    return build


SPLIT_CASES = [
    # the reproduction: one batch twice, validation carved out of it
    case("train-batch-twice-val-size", sets("data.train=[data_batch_1,data_batch_1]",
                                            "data.val=null", "data.val_size=5",
                                            fragments=("data.train", "data_batch_1", "twice"))),
    case("train-batch-twice", on_smoke("data: {train: [data_batch_1, data_batch_3, "
                                       "data_batch_1]}\n", "data.train", "data_batch_1",
                                       "twice")),  # fmt: skip
    case("val-batch-twice", on_smoke("data: {val: [data_batch_2, data_batch_2]}\n", "data.val",
                                     "data_batch_2", "twice")),  # fmt: skip
    case("all-and-val", on_smoke("data: {train: all}\n", "data.train", "data.val", "both")),
    case("val-in-train", sets("data.train=[data_batch_1,data_batch_2]", "data.val=[data_batch_2]",
                              fragments=("data.train", "data.val", "data_batch_2"))),
    case("test-batch-as-train", on_smoke("data: {train: [test_batch]}\n", "data.train",
                                         "test_batch")),  # fmt: skip
    case("test-batch-as-val", on_smoke("data: {val: [test_batch]}\n", "data.val", "test_batch")),
    case("search-choice-twice", on_smoke(
        "search:\n  trials: 2\n  space:\n"
        "    data.train: {choice: [[data_batch_1, data_batch_1]]}\n",
        "data.train", "data_batch_1", "twice", command="search")),  # fmt: skip
    # the same image under two names: only the pixels can tell (a data error, exit 1)
    case("official-batch-copied", on_source(batch_copied, fragments=(
        "data.train", "data.val", "40 of the 40", "pixel-identical")), 1),
    case("rows-twice-val-size", on_source(rows_twice_in_batch, "data.val=null",
                                          "data.val_size=20", fragments=(
        "data.val_size", "data.train", "pixel-identical")), 1),  # fmt: skip
    case("image-test-copies-train", on_source(images_test_copies_train, fragments=(
        "data.test", "data.train", "40 of the 40", "pixel-identical")), 1),  # fmt: skip
    # a split with no images (was: internal ZeroDivisionError, after the run dir was made)
    case("empty-val-batch", on_source(empty_val_batch, fragments=(
        "data.val (data_batch_2)", "no images")), 1),
]


@pytest.mark.parametrize(("build", "code"), SPLIT_CASES)
def test_split_overlap(build, code, tmp_path, monkeypatch):
    run_case(build, code, tmp_path, monkeypatch)


def test_a_few_shared_images_only_warn(tmp_path):
    """One image shared by 200-row splits (0.5%): trained, with a warning that says so."""
    src = write_official_dir(tmp_path / "src", per_batch=200)
    x1, y1 = synthetic_rows(200, seed=0)  # data_batch_1 as conftest wrote it
    x2, y2 = synthetic_rows(200, seed=1)
    x2[7], y2[7] = x1[3], y1[3]
    write_batch(src / "data_batch_2", x2, y2)
    result = ok("train", SMOKE, "--set", f"data.root={src}", "--out", tmp_path / "runs")
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("Warning: ")]
    assert any("1 of the 200 data.val images" in w and "data.train" in w for w in warnings), (
        result.stderr)


def test_distinct_splits_pass_silently(tmp_path):
    src = write_official_dir(tmp_path / "src")
    result = ok("train", SMOKE, "--set", f"data.root={src}", "--out", tmp_path / "runs")
    assert "pixel-identical" not in result.stderr


# ---------------------------------------------------------------- 9: alias bombs, huge values


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic billion laughs as one flow list: level k holds `width` aliases of level k-1
    (9 levels of 9: 9**9 strings from 500 bytes). Its anchors live inside the value, so no
    unknown key stops the config before the value is looked at."""
    items = ["&l0 [lol]"]
    for k in range(1, levels + 1):
        items.append(f"&l{k} [{', '.join([f'*l{k - 1}'] * width)}]")
    return f"[{', '.join(items)}]"


def merge_bomb(levels: int = 9) -> str:
    """The same with mappings: each level `<<`-merges the one below 9 times."""
    items = ["&m0 {a: 1}"]
    for k in range(1, levels + 1):
        items.append(f"&m{k} {{<<: [{', '.join([f'*m{k - 1}'] * 9)}], b{k}: 1}}")
    return f"[{', '.join(items)}]"


BOMBS = {  # where the bomb is used: the first error would quote it, or train would dump it
    "seed": lambda: f"seed: {laughs()}\n",
    "unknown-key": lambda: f"bogus: {laughs()}\n",
    "search-choice": lambda: f"search:\n  space:\n    optim.lambda: {{choice: {laughs()}}}\n",
    "merge-keys": lambda: f"search:\n  space:\n    optim.lambda: {{choice: {merge_bomb()}}}\n",
}


def limited_memory():
    """In the child: at most 2 GiB of address space, so a bomb fails instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def cli_subprocess(*args, timeout: float = 60, bounded: bool = False):
    """The real `cifar2l` entry point in a child process (`bounded`: in 2 GiB)."""
    assert ENTRY_POINT.exists(), f"{ENTRY_POINT}: the console script is not installed"
    return subprocess.run([str(ENTRY_POINT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limited_memory if bounded else None,
                          cwd=ROOT)  # fmt: skip


def assert_one_line_process(proc, code: int, *fragments: str) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "internal error" not in output, output[:2000]
    assert proc.returncode == code, (proc.returncode, proc.stderr[:2000])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[:2000]
    assert len(lines[0]) < MAX_LINE, (len(lines[0]), lines[0][:1000])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("where", ["seed", "unknown-key", "search-choice", "merge-keys"])
def test_alias_bomb_in_a_file_ends_at_once(where, tmp_path):
    text = BOMBS[where]()
    assert len(text.encode()) < 1100
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    try:
        proc = cli_subprocess("train", path, "--out", tmp_path / "runs", bounded=True)
    except subprocess.TimeoutExpired:
        pytest.fail("a 1 KB alias bomb still ran after 60 s")
    assert_one_line_process(proc, 2, str(path), "aliases expand", "alias bomb")
    assert not (tmp_path / "runs").exists()


def test_alias_bomb_in_a_set_value_ends_at_once(tmp_path):
    try:
        proc = cli_subprocess("train", SMOKE, "--set", f"seed={laughs()}", "--out",
                              tmp_path / "runs", bounded=True)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("an alias bomb in --set still ran after 60 s")
    assert_one_line_process(proc, 2, "--set seed", "aliases expand", "alias bomb")


def test_recursive_alias_is_refused(tmp_path, monkeypatch):
    build = raw_file("seed: &a [*a]\n", "line 1", "an alias refers to", "contains itself")
    run_case(build, 2, tmp_path, monkeypatch)


def test_aliases_that_expand_a_little_still_work(tmp_path):
    """Anchors, aliases and `<<` merges of ordinary size load as before."""
    from cifar2l.config import load_config

    path = tmp_path / "anchors.yaml"
    path.write_text(f"extends: {SMOKE}\n"
                    "model: &m {hidden: 8, dropout: 0.25}\n"
                    "gradcheck: {<<: *m, lambdas: &l [0.0, 0.01]}\n"
                    "search:\n  space:\n    optim.lambda: {choice: *l}\n")  # fmt: skip
    cfg = load_config(path)
    assert (cfg.gradcheck.hidden, cfg.gradcheck.dropout) == (8, 0.25)
    assert cfg.search.space["optim.lambda"].args == [0.0, 0.01]


def long_value_cases() -> list:
    big, half = "x" * 900_000, "y" * 400_000
    items = ", ".join(["0"] * 100_000)  # pure-Python YAML reads this in seconds: once is enough
    some, batches = ", ".join(["0"] * 10_000), ", ".join(["data_batch_1"] * 10_000)
    return [
        case("string-1mb-in-int", raw_file(f"seed: {big}\n", "seed", "...")),
        case("string-1mb-quoted", raw_file(f'model: {{hidden: "{big}"}}\n', "model.hidden")),
        case("list-100k-in-int", raw_file(f"seed: [{items}]\n", "seed")),
        case("list-10k-batches", raw_file(f"data: {{train: [{batches}]}}\n", "data.train",
                                          "data_batch_1")),  # fmt: skip
        case("unknown-batch-1mb", raw_file(f"data: {{train: [{big}]}}\n", "data.train",
                                           "unknown batch")),  # fmt: skip
        case("unknown-key-1mb", raw_file(f"? {big}\n: 1\n", "unknown key")),
        case("unknown-key-1mb-simple", raw_file(f"{big}: 1\n", "invalid YAML")),  # > 1024: YAML
        case("duplicate-key-400kb", raw_file(f"? {half}\n: 1\n? {half}\n: 2\n", "duplicate key")),
        case("long-tag", raw_file(f"seed: !{big} 1\n", "invalid YAML")),
        case("distribution-10k", raw_file(
            f"search: {{space: {{optim.lambda: {{uniform: [{some}]}}}}}}\n",
            "search.space.optim.lambda", "uniform")),  # fmt: skip
        case("search-key-1mb", raw_file(f"search:\n  space:\n    ? {big}\n    : {{choice: [1]}}\n",
                                        "search.space", "not a config key")),  # fmt: skip
        case("set-1mb-value", argv("train", str(SMOKE), "--set", f"seed={big}", "--out", "{out}",
                                   fragments=("seed",))),  # fmt: skip
        case("set-1mb-key", argv("train", str(SMOKE), "--set", f"{big}=1", "--out", "{out}",
                                 fragments=("unknown key",))),  # fmt: skip
        case("set-1mb-no-equals", argv("train", str(SMOKE), "--set", big, "--out", "{out}",
                                       fragments=("--set", "dotted.key=value"))),  # fmt: skip
        case("set-below-leaf-1mb", argv("train", str(SMOKE), "--set", f"seed.x={big}", "--out",
                                        "{out}", fragments=("seed is not a section",))),
        case("file-over-1mb", raw_file("# padding\n" * 120_000, "larger than")),
        case("config-is-dev-zero", argv("train", "/dev/zero", "--out", "{out}",
                                        fragments=("/dev/zero", "not a regular file"))),
        case("search-extra-argument-1mb", argv("search", str(SMOKE), big, "--out", "{out}",
                                               fragments=("unexpected argument",))),
        case("unknown-option-1mb", argv("train", str(SMOKE), f"--{big}", "--out", "{out}",
                                        fragments=("no such option",))),
    ]


@pytest.mark.parametrize(("build", "code"), long_value_cases())
def test_huge_values_give_a_bounded_line(build, code, tmp_path, monkeypatch):
    run_case(build, code, tmp_path, monkeypatch)


# ---------------------------------------------------------------- 12: usage errors, non-finite


USAGE_CASES = [
    # (arguments, the option named, the command whose --help is pointed to)
    (["train", SMOKE, "--seed", "abc"], "--seed", "train"),
    (["train", SMOKE, "--seed", "1e3"], "--seed", "train"),
    (["train", SMOKE, "--repeat", "0"], "--repeat", "train"),
    (["train", SMOKE, "--repeat", "two"], "--repeat", "train"),
    (["train", SMOKE, "--bogus"], "--bogus", "train"),
    (["train", SMOKE, "--set"], "--set", "train"),
    (["train", SMOKE, "--threads", "x"], "--threads", "train"),
    (["train", SMOKE, "extra-argument"], "extra-argument", "train"),
    (["evaluate"], "TARGET", "evaluate"),
    (["evaluate", "somewhere", "--split"], "--split", "evaluate"),
    (["search", SMOKE, "--jobs"], "--jobs", "search"),
    (["search", SMOKE, "--jobs", "many"], "--jobs", "search"),
    (["search", SMOKE, "--repeat-best", "0"], "--repeat-best", "search"),
    (["lrrange", SMOKE, "--repeat", "-1"], "--repeat", "lrrange"),
    (["lrrange"], "CONFIG", "lrrange"),
    (["gradcheck"], "CONFIG", "gradcheck"),
    (["gradcheck", SMOKE, "--seed", "1.5"], "--seed", "gradcheck"),
    (["report"], "RUN_DIRS", "report"),
    (["--bogus"], "--bogus", None),
    (["bogus-command"], "bogus-command", None),
]


def usage_id(args) -> str:
    return "-".join(str(a) for a in args if a != SMOKE)[:40]


@pytest.mark.parametrize(("args", "option", "command"), USAGE_CASES,
                         ids=[usage_id(a) for a, _, _ in USAGE_CASES])  # fmt: skip
def test_usage_error_is_one_line(args, option, command, tmp_path, monkeypatch):
    where = f"cifar2l {command} --help" if command else "cifar2l --help"
    build = argv(args[0], "--out", "{out}", *map(str, args[1:])) if command else argv(*args)
    line = run_case(build, 2, tmp_path, monkeypatch)
    assert line.startswith(f"Error: {option}: "), line
    assert line.endswith(f"(see {where})"), line


@pytest.mark.parametrize(("args", "option", "command"), [
    (["train", SMOKE, "--seed", "abc"], "--seed", "train"),
    (["train", SMOKE, "--bogus"], "--bogus", "train"),
    (["evaluate"], "TARGET", "evaluate"),
    (["search", SMOKE, "--jobs"], "--jobs", "search"),
    (["bogus-command"], "bogus-command", None),
])  # fmt: skip
def test_usage_error_is_one_line_from_the_entry_point(args, option, command, tmp_path):
    proc = cli_subprocess(*args)
    line = assert_one_line_process(proc, 2)
    assert line.startswith(f"Error: {option}: "), line
    assert line.endswith(f"(see cifar2l {command} --help)" if command else "(see cifar2l --help)")


def test_python_dash_m_usage_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "cifar2l", "train", SMOKE, "--repeat", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert assert_one_line_process(proc, 2).startswith("Error: --repeat: ")


def test_help_version_and_no_arguments_still_work():
    assert "Usage" in ok("train", "--help").stdout
    assert ok("--version").stdout.startswith("cifar2l ")
    bare = invoke()  # no arguments: the help, as before
    assert bare.exit_code == 2 and "Commands" in bare.output, bare.output
    proc = cli_subprocess("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("cifar2l "), proc.stderr
    proc = cli_subprocess("search", "--help")
    assert proc.returncode == 0 and "--jobs" in proc.stdout, proc.stderr


def test_typer_exit_codes_are_kept(tmp_path):
    """A command's own exit code (ConfigError 2, RunError 1) still comes through the group."""
    proc = cli_subprocess("train", tmp_path / "absent.yaml", "--out", tmp_path / "runs")
    assert_one_line_process(proc, 2, "not found")
    proc = cli_subprocess("search", "collect", tmp_path)
    assert_one_line_process(proc, 1, "not a search directory")


NON_FINITE = [
    ("schedule: {eta_max: 1e400}\n", "schedule.eta_max"),
    ("schedule: {eta_min: -1e400}\n", "schedule.eta_min"),
    ("optim: {lambda: .inf}\n", "optim.lambda"),
    ("optim: {lambda: .nan}\n", "optim.lambda"),
    ("optim: {weight_decay: .inf}\n", "optim.weight_decay"),
    ("model: {dropout: .nan}\n", "model.dropout"),
    ("augment: {brightness: .inf}\n", "augment.brightness"),
    ("augment: {noise: {std: .inf}}\n", "augment.noise.std"),
    ("schedule: {kind: constant, eta: .inf}\n", "schedule.eta"),
    ("lrrange: {lr_max: .inf}\n", "lrrange.lr_max"),
    ("gradcheck: {lambdas: [0.0, .inf]}\n", "gradcheck.lambdas.1"),
    ("gradcheck: {h: .nan}\n", "gradcheck.h"),
    ("expected: {item: x, accuracy: {test: .nan}}\n", "expected.accuracy.test"),
    ("search:\n  space:\n    optim.lambda: {choice: [0.1, .inf]}\n", "optim.lambda"),
]


@pytest.mark.parametrize(("text", "key"), NON_FINITE, ids=[k for _, k in NON_FINITE])
def test_non_finite_numbers_are_config_errors(text, key, tmp_path, monkeypatch):
    command = "search" if text.startswith("search") else "train"
    run_case(on_smoke(text, key, "finite", command=command), 2, tmp_path, monkeypatch)


@pytest.mark.parametrize("setting", ["schedule.eta_max=1e400", "optim.lambda=.inf",
                                     "optim.lambda=-.inf", "optim.momentum=.nan"])  # fmt: skip
def test_non_finite_numbers_via_set(setting, tmp_path, monkeypatch):
    key = setting.split("=")[0]
    run_case(override(setting, str(SMOKE), key, "finite"), 2, tmp_path, monkeypatch)


# ---------------------------------------------------------------- the rest of the corpus


def python_tag_never_runs(ctx: Ctx):
    marker = ctx.tmp / "constructed"
    path = ctx.write("tag.yaml", f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    return ["train", path, "--out", ctx.out], [str(path), "invalid YAML"]


def python_tag_in_set(ctx: Ctx):
    marker = ctx.tmp / "constructed"
    return (["train", SMOKE, "--set", f'seed=!!python/object/apply:os.system ["touch {marker}"]',
             "--out", ctx.out], ["--set seed", "invalid YAML"])  # fmt: skip


MISC_CASES = [
    # ints that are not ints, negative counts
    case("seed-1e3", on_smoke("seed: 1e3\n", "seed", "integer")),
    case("seed-true", on_smoke("seed: true\n", "seed", "integer")),
    case("hidden-8.0", on_smoke("model: {hidden: 8.0}\n", "model.hidden", "integer")),
    case("hidden-negative", on_smoke("model: {hidden: -3}\n", "model.hidden")),
    case("n-s-negative", on_smoke("schedule: {n_s: -10}\n", "schedule.n_s")),
    case("trials-negative", on_smoke("search: {trials: -1}\n", "search.trials", command="search")),
    case("val-size-zero", on_smoke("data: {val: null, val_size: 0}\n", "data.val_size")),
    case("val-size-float", on_smoke("data: {val: null, val_size: 5.5}\n", "data.val_size")),
    case("translate-true", on_smoke("augment: {translate: true}\n", "augment.translate")),
    case("lambda-string-inf", on_smoke('optim: {lambda: "inf"}\n', "optim.lambda")),
    # YAML that is not a config
    case("top-level-list-of-maps", raw_file("- seed: 1\n", "top level", "a list")),
    case("top-level-null-list", raw_file("[]\n", "top level", "a list")),
    case("top-level-true", raw_file("true\n", "top level", "bool")),
    case("yaml-utf16", raw_file("seed: 1\n".encode("utf-16"), "cannot read")),
    case("yaml-nul-byte-mid-file", raw_file(b"model:\n  hidden: 8\x00\n", "invalid YAML")),
    case("yaml-tab-in-flow", raw_file("model: {hidden:\t8}\n", "invalid YAML", "line 1")),
    case("yaml-duplicate-nested", raw_file("schedule:\n  n_s: 1\n  n_s: 2\n", "duplicate key")),
    case("yaml-duplicate-bool-keys", raw_file("data: {on: 1, yes: 2}\n", "duplicate key")),
    case("yaml-python-tag-never-runs", python_tag_never_runs),
    case("set-python-tag-never-runs", python_tag_in_set),
    case("set-unknown-key-deep", override("optim.lambda.x=1", "optim.lambda is not a section")),
    case("set-bracket-key", override("data.train[0]=data_batch_3", "dotted.key=value")),
    case("set-space-key-unknown", override("search.space.optim.lamda={choice: [1]}",
                                           "search.space", "optim.lamda")),  # fmt: skip
    case("dotted-key-in-file", raw_file("optim.lambda: 0.1\n", "optim.lambda",
                                        "optim: {lambda: ...}")),  # fmt: skip
]


@pytest.mark.parametrize(("build", "code"), MISC_CASES)
def test_bad_input_corpus(build, code, tmp_path, monkeypatch):
    run_case(build, code, tmp_path, monkeypatch)
    assert not (tmp_path / "constructed").exists()


def test_set_of_a_dotted_search_space_key(tmp_path):
    """--set search.space.optim.lambda=... names the space key optim.lambda (not optim: lambda:)."""
    from cifar2l.config import load_config

    cfg = load_config(SMOKE, ["search.space.optim.lambda={uniform: [0.1, 0.2]}"])
    assert cfg.search.space["optim.lambda"].args == [0.1, 0.2]
