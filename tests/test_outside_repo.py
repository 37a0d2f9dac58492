"""Issue 17's "done when": the commands work outside the repo, from a NON-editable install.

A fresh virtualenv gets `pip install` of a copy of the repo (a real build: the wheel's files,
no editable link back to the checkout). Its dependencies are the ones of the environment
running the tests, reached through a .pth file naming that environment's site-packages: no
registry, so the test runs offline and in seconds, with the very numpy, numba, ... the suite
uses. From a directory outside the repo, with CIFAR2L_DATA pointing at a tiny synthetic source,
it trains `default` by its bare name and prints `config best` and `config --list`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import ROOT, write_official_dir

# The acceptance command, shrunk to seconds: the synthetic batches hold 40 images each (so a
# batch of 10), 2 * 50 updates.
TRAIN = ["train", "default", "--set", "schedule.n_s=50", "--set", "train.batch_size=10"]

pytestmark = pytest.mark.slow  # 74 s measured on 2 shared, busy cores (two trains, the first
# with a cold numba compile in the fresh install); `-m "not slow"` skips it


def site_dirs() -> list[str]:
    """The running environment's site-packages (where the dependencies are installed)."""
    paths = sysconfig.get_paths()
    found = [paths["purelib"], paths["platlib"]]
    found += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return list(dict.fromkeys(p for p in found if Path(p).is_dir()))


def copy_repo(dest: Path) -> Path:
    """What a build needs (pyproject.toml names README.md), without caches or build dirs."""
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("cifar2l", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def builds_wheels_here() -> bool:
    """Whether this environment's setuptools builds a wheel by itself (bdist_wheel is part of
    setuptools from 70.1; a venv's bundled 65.x needs the `wheel` package). If not, pip fetches
    a build backend for an isolated build, from the package registry."""
    try:
        from importlib.metadata import version

        major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    except Exception:  # absent, or a version string we cannot read
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def make_venv(base: Path) -> Path:
    """A fresh venv with the repo installed (not editable); returns its bin/ folder."""
    venv = base / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    (Path(site) / "_cifar2l_test_deps.pth").write_text("\n".join(site_dirs()) + "\n")
    offline = ["--no-build-isolation", "--no-index"] if builds_wheels_here() else []
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", *offline, str(copy_repo(base / "repo-copy"))],
                   check=True)  # fmt: skip
    return venv / "bin"


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("outside")
    bin_dir = make_venv(base)
    work = base / "work"  # the user's directory: no configs/ here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CIFAR2L_"))}
    env.update(CIFAR2L_DATA=str(write_official_dir(base / "data")),
               XDG_CACHE_HOME=str(base / "cache"), MPLCONFIGDIR=str(base / "mpl"),
               CIFAR2L_THREADS="1")  # 1 thread: BLAS threads on busy cores cost seconds a step

    def cifar2l(*args, code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run([str(bin_dir / "cifar2l"), *map(str, args)], cwd=work,
                                env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == code, (args, result.stdout[-2000:], result.stderr[-2000:])
        return result

    return SimpleNamespace(bin=bin_dir, work=work, env=env, cifar2l=cifar2l)


@pytest.fixture(scope="module")
def trained(outside) -> list[dict]:
    """Two runs of the acceptance command (the second with another seed), as summaries."""
    first = json.loads(outside.cifar2l(*TRAIN, "--json", "--quiet").stdout)
    second = json.loads(outside.cifar2l(*TRAIN, "--seed", 7, "--json", "--quiet").stdout)
    return [first, second]


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cifar2l").rglob(
        "__init__.py")}  # fmt: skip
    assert set(packages["packages"]) == found | {"cifar2l.configs"}
    assert packages["package-dir"] == {"cifar2l.configs": "configs"}


def test_the_install_is_not_editable_and_ships_every_config(outside):
    where = subprocess.run([str(outside.bin / "python"), "-c", "import cifar2l.shipped as s; "
                            "print(s.__file__); print(s.configs_dir())"], cwd=outside.work,
                           env=outside.env, capture_output=True, text=True, check=True)
    module, folder = map(Path, where.stdout.split())
    assert outside.bin.parent in module.parents and ROOT not in module.parents
    assert folder == module.parent / "configs"
    shipped = {p.name: p.read_bytes() for p in folder.glob("*.yaml")}
    assert shipped == {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}


def test_train_default_outside_the_repo(outside, trained):
    for summary in trained:
        run = outside.work / summary["run_dir"]
        assert summary["status"] == "completed" and run.name.endswith("-train-default")
        assert outside.work in run.resolve().parents
        assert (run / "weights.npz").is_file() and (run / "metrics.csv").is_file()
        assert "n_s: 50" in (run / "config.yaml").read_text()
    assert trained[0]["seed"] == 42 and trained[1]["seed"] == 7


def test_config_best_and_list_outside_the_repo(outside):
    best = outside.cifar2l("config", "best")
    assert "zca_eps: 1.0" in best.stdout and "hidden: 4096" in best.stdout  # configs/best.yaml
    listed = outside.cifar2l("config", "--list", "--json")
    names = [r["name"] for r in json.loads(listed.stdout)["configs"]]
    assert {"default", "best", "smoke", "base"} <= set(names)
    assert "default" in outside.cifar2l("config", "--list").stdout
    missing = outside.cifar2l("config", "nonesuch", code=2)
    assert missing.stderr.startswith("Error: ") and "default" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_runs_and_compare_outside_the_repo(outside, trained):
    listed = outside.cifar2l("runs")
    for summary in trained:
        assert Path(summary["run_dir"]).name in listed.stdout
    compared = outside.cifar2l("compare", *(s["run_dir"] for s in trained), "--json")
    made = outside.work / json.loads(compared.stdout)["run_dir"]  # relative to its cwd
    assert (made / "curves.png").stat().st_size > 0
    html = (made / "compare.html").read_text()
    assert all(Path(s["run_dir"]).name in html for s in trained)
