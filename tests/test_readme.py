"""The README's example commands run as written (issue 13).

Every `cifar2l ...` line of a ```bash block in README.md is run, block by block in order, in a
scratch directory holding the shipped configs, on the real data (CIFAR2L_DATA; CI sets it).
Lines that take minutes are listed in SLOW with the reason; the test fails when a listed line
no longer appears in the README (so the list cannot go stale) and when a README command fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REAL_DATA, ROOT

README = ROOT / "README.md"
BIN = Path(sys.executable).parent

# Lines that run for minutes on the real data; each is exercised elsewhere on tiny data.
SLOW = {
    "cifar2l train configs/final.yaml --set train.checkpoint_every=2000 --out runs/demo":
        "98 epochs (tests/test_resume.py interrupts and resumes runs)",
    "cifar2l train --resume runs/demo/*-train-final": "needs the interrupted run above",
    "cifar2l train configs/best.yaml": "22-25 minutes",
    "cifar2l train configs/best.yaml --repeat 2": "45 minutes",
    "cifar2l search configs/search-recipe.yaml --dir runs/search-recipe": "9 minutes",
    "cifar2l search configs/search-zca.yaml --dir runs/search-zca": "9 minutes",
    "cifar2l search configs/search-zca2.yaml --dir runs/search-zca2": "9 minutes",
    "cifar2l search configs/search-zca3.yaml --dir runs/search-zca3": "6 minutes",
    "cifar2l train configs/proxy.yaml": "100 s (a 1024-unit network on all the training images)",
    "cifar2l lrrange configs/lrrange-80.yaml --repeat 5": "5 sweeps of 16 s",
    "cifar2l search configs/search-coarse.yaml --jobs 2 --dir runs/coarse --repeat-best 5":
        "2 minutes (tests/test_search.py runs searches on tiny data)",
    "cifar2l search configs/search-fine.yaml --refine runs/coarse --dir runs/fine":
        "1 minute, after the coarse search",
    "cifar2l search configs/search-coarse.yaml --dir runs/coarse --shard 0/4":
        "a shard of the coarse search",
    "cifar2l search collect runs/coarse": "after the shards",
    "cifar2l search --resume runs/coarse": "after an interrupted coarse search",
    "cifar2l search configs/search-best.yaml --dir runs/search-best": "15 minutes",
}  # fmt: skip


def bash_blocks(text: str) -> list[list[str]]:
    """The `cifar2l` command lines of each ```bash block (comments stripped)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
        out.append([line for line in lines if line.startswith("cifar2l ")])
    return [b for b in out if b]


def test_the_slow_list_names_readme_commands():
    commands = {c for block in bash_blocks(README.read_text()) for c in block}
    assert set(SLOW) <= commands, set(SLOW) - commands


@pytest.mark.skipif(not REAL_DATA, reason="CIFAR2L_DATA not set (CI sets it)")
def test_readme_commands_run_as_written(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "CIFAR2L_DATA": REAL_DATA, "PATH": f"{BIN}:{os.environ['PATH']}"}
    took = {}
    for block in bash_blocks(README.read_text()):
        for command in block:
            if command in SLOW:
                continue
            start = time.perf_counter()
            proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            assert proc.returncode == 0, (command, proc.stderr[-2000:])
            took[command] = round(time.perf_counter() - start, 1)
    print(json.dumps(took, indent=1))  # shown with -s: what to move to SLOW when it grows
    assert len(took) >= 10
