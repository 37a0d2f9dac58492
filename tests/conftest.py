"""Shared fixtures: tiny synthetic CIFAR-10 sources in both formats, written per test."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cifar2l.data import CIFAR10_CLASSES

REAL_DATA = os.environ.get("CIFAR2L_DATA")  # read before the autouse fixture clears it
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Each test gets its own cache, no CIFAR2L_DATA and no download address."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("CIFAR2L_DATA", raising=False)
    monkeypatch.setenv("CIFAR2L_URL", "file:///nonexistent/cifar-10-python.tar.gz")


@contextlib.contextmanager
def module_env(base: Path):
    """For a module-scoped fixture: what `isolated_env` does per test (a cache under `base`,
    no CIFAR2L_DATA, no download address)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        mp.delenv("CIFAR2L_DATA", raising=False)
        mp.setenv("CIFAR2L_URL", "file:///nonexistent/cifar-10-python.tar.gz")
        yield mp


def synthetic_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 rows whose mean colour depends on the label, so a network can learn them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = rng.integers(0, 256, size=(n, 3072)).astype(np.int64) // 2 + (y[:, None] * 12)
    return x.clip(0, 255).astype(np.uint8), y


def write_official_dir(root: Path, per_batch: int = 40, seed: int = 0) -> Path:
    """cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x, y = synthetic_rows(per_batch, seed + k)
        blob = {b"data": x, b"labels": [int(v) for v in y], b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(blob))
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def write_image_dir(root: Path, train_per_class: int = 20, test_per_class: int = 4,
                    fmt: str = "png", seed: int = 0) -> Path:
    """train/<class>/NNNN.<fmt> and test/<class>/NNNN.<fmt>, 32x32 RGB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CIFAR10_CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                img = (rng.integers(0, 128, (32, 32, 3)) + c * 12).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
    return root


def make_tar(src: Path, dest: Path, arcname: str) -> Path:
    mode = "w:gz" if dest.name.endswith("gz") else "w"
    with tarfile.open(dest, mode) as tar:
        tar.add(src, arcname=arcname)
    return dest


@pytest.fixture
def official_dir(tmp_path) -> Path:
    return write_official_dir(tmp_path / "src")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    return write_image_dir(tmp_path / "images")


@pytest.fixture
def smoke_args(official_dir, tmp_path) -> list[str]:
    """CLI arguments for a seconds-long training run on the synthetic official source."""
    return [
        str(ROOT / "configs" / "smoke.yaml"),
        "--set", f"data.root={official_dir}",
        "--out", str(tmp_path / "runs"),
        "--quiet",
    ]  # fmt: skip


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def invoke(*args):
    """Run the CLI in-process with stringified arguments."""
    from typer.testing import CliRunner

    from cifar2l.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_error_line(result, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one `Error: ...` line on stderr holding `fragments`, no traceback,
    nothing on stdout; returns the line."""
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


def summary_of(run_dir: Path) -> dict:
    """A run directory's summary.json."""
    return json.loads((run_dir / "summary.json").read_text())


def only_dir(out: Path) -> Path:
    """The one directory under `out` (a command's fresh run dir)."""
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(dirs) == 1, dirs
    return dirs[0]
