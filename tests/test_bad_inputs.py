"""One corpus of bad inputs, each driven through the CLI.

Every case must end the same way: its exit code (2 for config and usage errors, 1 for runtime and
data errors), exactly one `Error: ...` line on stderr naming the offending file, key or option,
nothing on stdout, no traceback, no "internal error", and no run directory under --out.

A case is `case(id, build, code)`: `build(ctx)` writes whatever the case needs under ctx.tmp and
returns the CLI arguments and the fragments the error line must contain.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest

from .conftest import (
    ROOT,
    invoke,
    make_tar,
    module_env,
    ok,
    one_error_line,
    png_bytes,
    synthetic_rows,
    write_image_dir,
    write_official_dir,
)

SMOKE = ROOT / "configs" / "smoke.yaml"
SEARCH_SPACE = "search:\n  trials: 2\n  space:\n    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"


@dataclass
class Ctx:
    tmp: Path
    mp: pytest.MonkeyPatch
    trained: Path  # a finished smoke run (module-wide, read-only: copy before changing it)

    @property
    def out(self) -> Path:
        return self.tmp / "runs"

    @cached_property
    def src(self) -> Path:
        """A tiny valid official source (40 rows per batch)."""
        return write_official_dir(self.tmp / "src")

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def smoke(self, text: str, name: str = "bad.yaml") -> Path:
        """A config over smoke.yaml and the tiny source (a parent file), with `text` on top."""
        self.write("base.yaml", f"extends: {SMOKE}\ndata:\n  root: {self.src}\n")
        return self.write(name, f"extends: base.yaml\n{text}")

    def run_copy(self) -> Path:
        return Path(shutil.copytree(self.trained, self.tmp / "run"))


Build = Callable[[Ctx], tuple[list, list[str]]]


def case(id: str, build: Build, code: int = 2):
    return pytest.param(build, code, id=id)


# ---------------------------------------------------------------- case factories


def raw_file(text: str | bytes, *fragments: str, command: str = "train") -> Build:
    """A config file holding exactly `text`."""

    def build(ctx: Ctx):
        path = ctx.write("bad.yaml", text)
        return [command, path, "--out", ctx.out], [str(path), *fragments]

    return build


def on_smoke(text: str, *fragments: str, command: str = "train", in_file: bool = True) -> Build:
    """A config file: smoke.yaml (with data.root) plus `text`; the error names the file too,
    unless `in_file` is false (a check against the data, which names only the key)."""

    def build(ctx: Ctx):
        path = ctx.smoke(text)
        return [command, path, "--out", ctx.out], [str(path)] * in_file + list(fragments)

    return build


def override(setting: str, *fragments: str, command: str = "train") -> Build:
    """smoke.yaml with one --set."""

    def build(ctx: Ctx):
        return [command, SMOKE, "--set", setting, "--out", ctx.out], list(fragments)

    return build


def with_source(make: Callable[[Ctx], Path], *fragments: str, named: bool = True) -> Build:
    """train smoke.yaml on the data source `make(ctx)` returns; the error names the source,
    unless `named` is false (then a fragment names the bad file inside it)."""

    def build(ctx: Ctx):
        root = make(ctx)
        return (["train", SMOKE, "--set", f"data.root={root}", "--out", ctx.out],
                [str(root)] * named + list(fragments))  # fmt: skip

    return build


def weights_case(change: Callable[[Path], Path], *fragments: str, split: str = "test") -> Build:
    """evaluate on a copy of the trained run, changed by `change(run_dir) -> target`; the error
    names the target (a bad --split names only the option)."""

    def build(ctx: Ctx):
        target = change(ctx.run_copy())
        return (["evaluate", target, "--split", split, "--out", ctx.out],
                [str(target)] * (split != "bogus") + list(fragments))  # fmt: skip

    return build


# ---------------------------------------------------------------- builders of single cases


def extends_cycle(ctx: Ctx):
    a, b = ctx.tmp / "a.yaml", ctx.tmp / "b.yaml"
    a.write_text("extends: b.yaml\nseed: 1\n")
    b.write_text("extends: a.yaml\nseed: 2\n")
    return ["train", a, "--out", ctx.out], [str(a), "extends", "cycle"]


def extends_self(ctx: Ctx):
    a = ctx.write("self.yaml", "extends: self.yaml\n")
    return ["train", a, "--out", ctx.out], [str(a), "cycle"]


def extends_missing(ctx: Ctx):
    a = ctx.write("child.yaml", "extends: no-such-parent.yaml\n")
    return ["train", a, "--out", ctx.out], [str(a), "no-such-parent.yaml", "not found"]


def missing_config(ctx: Ctx):
    path = ctx.tmp / "absent.yaml"
    return ["train", path, "--out", ctx.out], [str(path), "not found"]


def config_is_a_directory(ctx: Ctx):
    path = ctx.tmp / "folder.yaml"
    path.mkdir()
    return ["train", path, "--out", ctx.out], [str(path), "cannot read"]


def search_args(ctx: Ctx, *extra) -> list:
    path = ctx.smoke(SEARCH_SPACE, "search.yaml")
    return ["search", path, "--out", ctx.out, *extra]


def bad_shard(text: str) -> Build:
    return lambda ctx: (search_args(ctx, "--dir", ctx.out / "s", "--shard", text),
                        ["--shard", text])  # fmt: skip


def jobs_zero(ctx: Ctx):
    return search_args(ctx, "--jobs", 0), ["--jobs 0"]


def jobs_with_shard(ctx: Ctx):
    return search_args(ctx, "--jobs", 2, "--shard", "0/2"), ["--jobs", "--shard"]


def collect_non_search(ctx: Ctx):
    folder = ctx.tmp / "plain"
    folder.mkdir()
    return ["search", "collect", folder], [str(folder), "not a search directory"]


def collect_without_dir(ctx: Ctx):
    return ["search", "collect"], ["search collect"]


def search_extra_argument(ctx: Ctx):
    return search_args(ctx) + ["extra-dir"], ["extra-dir"]


def train_without_config(ctx: Ctx):
    return ["train", "--out", ctx.out], ["CONFIG"]


def cifar2l_data_nowhere(ctx: Ctx):
    nowhere = ctx.tmp / "env-nowhere"
    ctx.mp.setenv("CIFAR2L_DATA", str(nowhere))
    return ["train", SMOKE, "--out", ctx.out], ["CIFAR2L_DATA", str(nowhere)]


def no_source_and_no_download(ctx: Ctx):
    # data.root null, CIFAR2L_DATA unset, empty cache: the download from CIFAR2L_URL fails.
    return ["train", SMOKE, "--out", ctx.out], ["CIFAR2L_DATA", "download"]


def truncated_tar_gz(ctx: Ctx) -> Path:
    archive = make_tar(ctx.src, ctx.tmp / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    return archive


def random_bytes_tar_gz(ctx: Ctx) -> Path:
    return ctx.write("cifar-10-python.tar.gz", np.random.default_rng(0).bytes(4096))


def small_images(ctx: Ctx) -> Path:
    return write_image_dir(ctx.tmp / "img", train_per_class=5, test_per_class=1)


def undecodable_image(ctx: Ctx) -> Path:
    root = small_images(ctx)
    (root / "train" / "cat" / "0003.png").write_bytes(b"\x89PNG but not really" * 20)
    return root


def wrong_size_image(ctx: Ctx) -> Path:
    root = small_images(ctx)
    (root / "test" / "frog" / "0000.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    return root


def missing_class_folder(ctx: Ctx) -> Path:
    root = small_images(ctx)
    shutil.rmtree(root / "test" / "dog")
    return root


def write_batch(path: Path, x, y) -> None:
    path.write_bytes(pickle.dumps({b"data": x, b"labels": [int(v) for v in y]}))


def pickle_wrong_shape(ctx: Ctx) -> Path:
    write_batch(ctx.src / "data_batch_3", np.zeros((40, 100), np.uint8), np.zeros(40, int))
    return ctx.src


def pickle_labels_out_of_range(ctx: Ctx) -> Path:
    x, y = synthetic_rows(40, seed=4)
    y[5] = 10
    write_batch(ctx.src / "data_batch_4", x, y)
    return ctx.src


def pickle_garbage(ctx: Ctx) -> Path:
    (ctx.src / "test_batch").write_bytes(b"garbage, not a pickle")
    return ctx.src


def official_missing_batch(ctx: Ctx) -> Path:
    (ctx.src / "data_batch_5").unlink()
    return ctx.src


def neither_format(ctx: Ctx) -> Path:
    folder = ctx.tmp / "junk"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.txt").write_text("hello")
    return folder


def truncate_weights(run: Path) -> Path:
    weights = run / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:200])
    return weights


def rewrite_weights(run: Path, **changes) -> Path:
    weights = run / "weights.npz"
    with np.load(weights) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(weights, **arrays)
    return weights


def weights_stored_config_broken(run: Path) -> Path:
    return rewrite_weights(run, config=np.array("model: [unclosed\n"))


def run_without_weights(run: Path) -> Path:
    (run / "weights.npz").unlink()
    return run


def evaluate_bad_set(ctx: Ctx):
    return (["evaluate", ctx.trained, "--set", "model.hiden=3", "--out", ctx.out],
            ["--set model.hiden=3", "saved config", "only data.root"])  # fmt: skip


def evaluate_missing(ctx: Ctx):
    target = ctx.tmp / "no-such-run"
    return ["evaluate", target, "--out", ctx.out], [str(target), "no weights file"]


def out_under_file(command: str) -> Build:
    def build(ctx: Ctx):
        blocker = ctx.write("blocker", "a regular file\n")
        cfg = ctx.smoke("", "ok.yaml")
        return [command, cfg, "--out", blocker / "runs"], [str(blocker / "runs")]

    return build


def out_is_a_file(ctx: Ctx):
    blocker = ctx.write("blocker", "a regular file\n")
    return ["train", ctx.smoke("", "ok.yaml"), "--out", blocker], [str(blocker)]


def search_dir_under_file(ctx: Ctx):
    blocker = ctx.write("blocker", "a regular file\n")
    return search_args(ctx, "--dir", blocker / "search"), [str(blocker)]


def resume_without_run(ctx: Ctx):
    folder = ctx.tmp / "not-a-run"
    folder.mkdir()
    return ["train", "--resume", folder], [str(folder), "not a run directory"]


def resume_completed_run(ctx: Ctx):
    run = ctx.run_copy()
    return ["train", "--resume", run], [str(run), "no checkpoint", "completed"]


def resume_with_config(ctx: Ctx):
    return ["train", SMOKE, "--resume", ctx.tmp], ["--resume"]


# ---------------------------------------------------------------- the corpus

CASES = [
    # malformed YAML: whatever PyYAML rejects
    case("yaml-bad-indentation", raw_file("model:\n  hidden: 8\n bad: 1\n", "invalid YAML")),
    case("yaml-unclosed-bracket", raw_file("data:\n  train: [data_batch_1\n", "invalid YAML")),
    case("yaml-unclosed-brace", raw_file("model: {hidden: 8\n", "invalid YAML")),
    case("yaml-tab-indentation", raw_file("model:\n\thidden: 8\n", "invalid YAML", "line 2")),
    case("yaml-unclosed-quote", raw_file('data:\n  root: "abc\n', "invalid YAML")),
    case("yaml-mapping-in-scalar", raw_file("seed: 1: 2\n", "invalid YAML", "line 1")),
    case("yaml-undefined-alias", raw_file("seed: *nope\n", "invalid YAML", "nope")),
    case("yaml-python-tag", raw_file("seed: !!python/object/apply:os.system [ls]\n",
                                     "invalid YAML", "python/object")),  # fmt: skip
    case("yaml-two-documents", raw_file("seed: 1\n---\nseed: 2\n", "invalid YAML")),
    case("yaml-nul-character", raw_file("seed: 1\x00\n", "invalid YAML")),
    case("yaml-nested-too-deeply", raw_file("seed: " + "[" * 5000 + "]" * 5000 + "\n",
                                            "invalid YAML", "nested too deeply")),  # fmt: skip
    case("not-utf8", raw_file(b"seed: \xff\xfe\n", "cannot read")),
    case("top-level-list", raw_file("- seed\n- 1\n", "top level", "a list")),
    case("top-level-scalar", raw_file("just some words\n", "top level", "a string")),
    case("top-level-number", raw_file("42\n", "top level", "int")),
    case("non-string-key", raw_file("1: 2\n", "Keys should be strings")),
    # wrong types
    case("seed-string", on_smoke("seed: forty-two\n", "seed", "integer")),
    case("hidden-float", on_smoke("model: {hidden: 8.5}\n", "model.hidden", "integer")),
    case("lambda-list", on_smoke("optim: {lambda: [0.1]}\n", "optim.lambda", "number")),
    case("shuffle-string", on_smoke("train: {shuffle: sometimes}\n", "train.shuffle", "bool")),
    case("dtype-unknown", on_smoke("dtype: float16\n", "dtype", "float16")),
    case("batch-size-quoted", on_smoke('train: {batch_size: "100"}\n', "train.batch_size",
                                       "'100'")),  # fmt: skip
    case("data-root-number", raw_file("data: {root: 5}\n", "data.root", "string")),
    case("section-is-scalar", on_smoke("model: 5\n", "model")),
    case("train-batches-string", on_smoke("data: {train: some}\n", "data.train")),
    # unknown keys, with did-you-mean where close
    case("unknown-top-close", raw_file("seeed: 1\n", "seeed", "did you mean 'seed'")),
    case("unknown-top-far", raw_file("zzzz: 1\n", "zzzz", "unknown key", "allowed:")),
    case("unknown-top-int", raw_file("int: 1\n", "int", "unknown key")),
    case("unknown-data", on_smoke("data: {roots: x}\n", "data.roots", "did you mean 'root'")),
    case("unknown-model", raw_file("model: {hiden: 8}\n", "model.hiden", "'hidden'")),
    case("unknown-optim", raw_file("optim: {lamda: 0.1}\n", "optim.lamda", "'lambda'")),
    case("unknown-schedule", raw_file("schedule: {eta_mx: 0.1}\n", "schedule.eta_mx",
                                      "'eta_max'")),  # fmt: skip
    case("unknown-train", raw_file("train: {batchsize: 10}\n", "train.batchsize",
                                   "'batch_size'")),  # fmt: skip
    case("unknown-augment-noise", raw_file("augment: {noise: {fractoin: 0.1}}\n",
                                           "augment.noise.fractoin", "'fraction'")),  # fmt: skip
    case("unknown-gradcheck", raw_file("gradcheck: {dim: 4}\n", "gradcheck.dim", "'dims'")),
    case("unknown-search", raw_file("search: {trial: 4}\n", "search.trial", "'trials'")),
    case("unknown-lrrange", raw_file("lrrange: {lrmin: 0.1}\n", "lrrange.lrmin", "'lr_min'")),
    case("unknown-distribution", raw_file("search: {space: {optim.lambda: {normal: [0, 1]}}}\n",
                                          "search.space.optim.lambda.normal",
                                          "log_uniform")),  # fmt: skip
    # out-of-range and inconsistent values
    case("negative-lambda", on_smoke("optim: {lambda: -0.1}\n", "optim.lambda",
                                     "greater than or equal to 0")),  # fmt: skip
    case("negative-seed", on_smoke("seed: -1\n", "seed", "greater than or equal to 0")),
    case("eta-min-above-eta-max", on_smoke("schedule: {eta_min: 0.2, eta_max: 0.1}\n",
                                           "eta_min", "eta_max")),  # fmt: skip
    case("n-s-zero", on_smoke("schedule: {n_s: 0}\n", "schedule.n_s")),
    case("cycles-zero", on_smoke("schedule: {cycles: 0}\n", "schedule.cycles")),
    case("batch-size-zero", on_smoke("train: {batch_size: 0}\n", "train.batch_size")),
    case("batch-size-above-split", on_smoke("train: {batch_size: 41}\n", "train.batch_size",
                                            "exceeds", "40 rows")),  # fmt: skip
    case("dropout-one", on_smoke("model: {dropout: 1.0}\n", "model.dropout")),
    case("momentum-one", on_smoke("optim: {momentum: 1.0}\n", "optim.momentum")),
    case("nesterov-without-momentum", on_smoke("optim: {nesterov: true}\n", "nesterov",
                                               "momentum")),  # fmt: skip
    case("noise-fraction-two", on_smoke("augment: {noise: {fraction: 2}}\n",
                                        "augment.noise.fraction")),  # fmt: skip
    case("val-size-whole-split", on_smoke("data: {val: null, val_size: 40}\n", "data.val_size",
                                          "no training rows", in_file=False)),  # fmt: skip
    case("unknown-batch-name", on_smoke("data: {train: [data_batch_9]}\n", "data.train",
                                        "data_batch_9")),  # fmt: skip
    case("empty-batch-list", on_smoke("data: {train: []}\n", "data.train", "at least one")),
    case("train-val-overlap", on_smoke("data: {train: [data_batch_1, data_batch_2]}\n",
                                       "data_batch_2", "both")),  # fmt: skip
    case("val-and-val-size", on_smoke("data: {val_size: 5}\n", "data.val", "val_size")),
    case("no-validation-split", on_smoke("data: {val: null}\n", "validation split")),
    case("gradcheck-no-lambdas", on_smoke("gradcheck: {lambdas: []}\n", "gradcheck.lambdas",
                                          command="gradcheck")),  # fmt: skip
    case("gradcheck-dims-above-features", on_smoke("gradcheck: {dims: 3073}\n",
                                                   "gradcheck.dims", "3072", command="gradcheck",
                                                   in_file=False)),  # fmt: skip
    case("gradcheck-samples-above-split", on_smoke(
        "gradcheck: {samples: 41}\n", "gradcheck.samples", "40 training rows",
        command="gradcheck", in_file=False)),  # fmt: skip
    case("lrrange-min-above-max", on_smoke("lrrange: {lr_min: 1.0, lr_max: 0.5}\n", "lr_min",
                                           "lr_max", command="lrrange")),  # fmt: skip
    case("lrrange-min-equals-max", on_smoke("lrrange: {lr_min: 0.5, lr_max: 0.5}\n", "lr_min",
                                            command="lrrange")),  # fmt: skip
    case("search-empty-space", on_smoke("search: {trials: 2}\n", "search.space", "empty",
                                        command="search")),  # fmt: skip
    case("search-nan-bounds", on_smoke("search: {space: {optim.lambda: {uniform: [.nan, 1]}}}\n",
                                       "search.space.optim.lambda", "finite",
                                       command="search")),  # fmt: skip
    case("search-negative-seed", on_smoke(SEARCH_SPACE + "  seed: -3\n", "search.seed",
                                          command="search")),  # fmt: skip
    # extends
    case("extends-cycle", extends_cycle),
    case("extends-self", extends_self),
    case("extends-missing-parent", extends_missing),
    case("extends-number", raw_file("extends: 5\n", "extends:")),
    case("extends-list-of-numbers", raw_file("extends: [1, 2]\n", "extends:")),
    case("extends-empty-list", raw_file("extends: []\n", "extends:")),
    # --set
    case("set-no-equals", override("foo", "--set 'foo'", "dotted.key=value")),
    case("set-no-key", override("=1", "--set '=1'")),
    case("set-empty-part", override("a..b=1", "--set 'a..b=1'")),
    case("set-below-a-leaf", override("seed.x=1", "seed.x=1", "seed is not a section")),
    case("set-seed-string", override("seed=abc", str(SMOKE), "seed", "'abc'")),
    case("set-hidden-list", override("model.hidden=[1]", "model.hidden")),
    case("set-shuffle-int", override("train.shuffle=1", "train.shuffle")),
    case("set-unknown-key", override("optim.lamda=0.1", "optim.lamda", "'lambda'")),
    case("set-invalid-yaml", override("optim.lambda=[0.1", "--set optim.lambda",
                                      "invalid YAML")),  # fmt: skip
    # files and options
    case("missing-config", missing_config),
    case("config-is-a-directory", config_is_a_directory),
    case("train-without-config", train_without_config),
    case("resume-with-config", resume_with_config),
    case("shard-not-a-fraction", bad_shard("half")),
    case("shard-index-too-big", bad_shard("4/4")),
    case("shard-three-parts", bad_shard("1/2/3")),
    case("shard-zero-count", bad_shard("0/0")),
    case("jobs-zero", jobs_zero),
    case("jobs-with-shard", jobs_with_shard),
    case("search-extra-argument", search_extra_argument),
    case("collect-without-dir", collect_without_dir),
    case("collect-non-search-dir", collect_non_search, 1),
    # data sources (runtime errors: exit 1)
    case("data-root-nowhere", lambda ctx: (
        ["train", SMOKE, "--set", f"data.root={ctx.tmp / 'nowhere'}", "--out", ctx.out],
        ["data.root", str(ctx.tmp / "nowhere")]), 1),  # fmt: skip
    case("cifar2l-data-nowhere", cifar2l_data_nowhere, 1),
    case("no-source-download-fails", no_source_and_no_download, 1),
    case("truncated-tar-gz", with_source(truncated_tar_gz, "truncated or corrupt"), 1),
    case("random-bytes-tar-gz", with_source(random_bytes_tar_gz, "corrupt archive"), 1),
    case("undecodable-image", with_source(undecodable_image, "train/cat/0003.png",
                                          "cannot decode", named=False), 1),  # fmt: skip
    case("image-wrong-size", with_source(wrong_size_image, "test/frog/0000.png", "32x32",
                                         "16x16", named=False), 1),  # fmt: skip
    case("image-tar-undecodable", with_source(
        lambda ctx: make_tar(undecodable_image(ctx), ctx.tmp / "img.tar.gz", "cifar10"),
        "cifar10/train/cat/0003.png", "cannot decode", named=False), 1),  # fmt: skip
    case("missing-class-folder", with_source(missing_class_folder, "test/dog",
                                             "class folder missing"), 1),  # fmt: skip
    case("pickle-wrong-shape", with_source(pickle_wrong_shape, "data_batch_3", "(40, 100)"), 1),
    case("pickle-labels-out-of-range", with_source(pickle_labels_out_of_range, "data_batch_4",
                                                   "0..9"), 1),  # fmt: skip
    case("pickle-garbage", with_source(pickle_garbage, "test_batch", "unreadable"), 1),
    case("official-missing-batch", with_source(official_missing_batch, "data_batch_5"), 1),
    case("neither-format", with_source(neither_format, "not a CIFAR-10 source"), 1),
    # evaluate: weights
    case("evaluate-missing-path", evaluate_missing, 1),
    case("evaluate-run-without-weights", weights_case(run_without_weights, "no weights file"), 1),
    case("evaluate-truncated-weights", weights_case(truncate_weights,
                                                    "not a cifar2l weights file"), 1),  # fmt: skip
    case("evaluate-w2-wrong-shape", weights_case(
        lambda run: rewrite_weights(run, W2=np.zeros((8, 9), np.float32)),
        "inconsistent weight shapes", "(8, 9)"), 1),  # fmt: skip
    case("evaluate-weights-missing-mean", weights_case(
        lambda run: rewrite_weights(run, mean=None), "not a cifar2l weights file"), 1),
    case("evaluate-stored-config-broken", weights_case(weights_stored_config_broken,
                                                       "invalid YAML")),  # fmt: skip
    case("evaluate-split-bogus", weights_case(lambda run: run, "--split 'bogus'",
                                              split="bogus")),  # fmt: skip
    case("evaluate-bad-set", evaluate_bad_set),
    # runs directory: checked before anything is trained or written
    case("train-out-under-a-file", out_under_file("train"), 1),
    case("gradcheck-out-under-a-file", out_under_file("gradcheck"), 1),
    case("lrrange-out-under-a-file", out_under_file("lrrange"), 1),
    case("train-out-is-a-file", out_is_a_file, 1),
    case("search-dir-under-a-file", search_dir_under_file, 1),
    # resume
    case("resume-dir-without-run", resume_without_run, 1),
    case("resume-completed-run", resume_completed_run, 1),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished smoke run for the module (cases copy it before changing anything)."""
    base = tmp_path_factory.mktemp("trained")
    with module_env(base):
        src = write_official_dir(base / "src")
        ok("train", SMOKE, "--set", f"data.root={src}", "--out", base / "runs", "--quiet")
    (run,) = (base / "runs").iterdir()
    return run


def test_the_corpus_is_large_and_distinct():
    ids = [p.id for p in CASES]
    assert len(ids) >= 45 and len(set(ids)) == len(ids)


def refused_cleanly(ctx: Ctx, build: Build, code: int, guard=contextlib.nullcontext):
    """Run a corpus case (inside `guard()`, e.g. an alarm): one `Error:` line, exit `code`,
    no run directory and nothing beside the case's own inputs. Returns the result."""
    args, fragments = build(ctx)
    before = sorted(p.name for p in ctx.tmp.iterdir())
    with guard():
        result = invoke(*args)
    one_error_line(result, code, *fragments)
    assert not ctx.out.exists() or not any(ctx.out.iterdir()), list(ctx.out.iterdir())
    assert sorted(p.name for p in ctx.tmp.iterdir()) == before
    return result


@pytest.mark.parametrize(("build", "code"), CASES)
def test_bad_input(build, code, tmp_path, monkeypatch, trained):
    ctx = Ctx(tmp_path, monkeypatch, trained)
    args, fragments = build(ctx)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(*args)

    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code == code, (result.exit_code, output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    # Nothing was created: no run directory, and nothing else beside the case's own inputs.
    assert not ctx.out.exists() or not any(ctx.out.iterdir()), list(ctx.out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "blocker").exists() or (tmp_path / "blocker").is_file()
