"""scripts/slurm/ against a real SLURM cluster: runs when SLURM_CONF names a running one.

`.ci/run` starts a one-node cluster (scripts/slurm-local.sh) and sets SLURM_CONF; elsewhere these
tests are skipped.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifar2l.cli import app

from .conftest import ROOT, write_official_dir

pytestmark = pytest.mark.skipif(
    not (os.environ.get("SLURM_CONF") and shutil.which("sbatch")),
    reason="no SLURM cluster (SLURM_CONF unset or sbatch missing)",
)
CIFAR2L = str(Path(sys.executable).parent / "cifar2l")
SCRIPTS = ROOT / "scripts" / "slurm"


def sbatch(*args: str, timeout: float = 600) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def results(path: Path) -> list[dict]:
    with open(path / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture
def search_config(tmp_path) -> Path:
    src = write_official_dir(tmp_path / "src", per_batch=60)
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        f"extends: {ROOT / 'configs' / 'smoke.yaml'}\n"
        f"data: {{root: {src}, train: all, val: null, val_size: 50}}\n"
        "search:\n  trials: 6\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
        "    model.hidden: {int_uniform: [4, 16]}\n"
    )
    return cfg


def test_array_search_then_collect_matches_a_local_run(search_config, tmp_path):
    local = tmp_path / "local"
    result = CliRunner().invoke(app, ["search", str(search_config), "--dir", str(local), "-q"])
    assert result.exit_code == 0, result.output

    shared = tmp_path / "shared"
    env = f"ALL,CONFIG={search_config},SEARCH_DIR={shared},CIFAR2L={CIFAR2L}"
    logs = f"--output={tmp_path}/slurm-%x-%A_%a.out"
    array = sbatch("--array=0-2", f"--export={env}", logs, str(SCRIPTS / "search.sbatch"))
    sbatch("--wait", f"--dependency=afterany:{array}", f"--export={env}",
           f"--output={tmp_path}/collect-%j.out", str(SCRIPTS / "collect.sbatch"))  # fmt: skip

    out = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))
    assert (shared / "results.csv").is_file(), out
    rows = results(shared)
    assert [r["status"] for r in rows] == ["completed"] * 6, out
    assert rows == results(local)
    assert (shared / "best.yaml").is_file() and (shared / "search.png").is_file()
    # Each trial ran exactly once: one run's files, one command line, shards 0..2 all used.
    commands = [(shared / "trials" / f"{i:03d}" / "command.txt").read_text() for i in range(6)]
    assert all("search" in c for c in commands)
    assert len(list(tmp_path.glob("slurm-cifar2l-search-*_*.out"))) == 3
