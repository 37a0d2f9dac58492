"""End to end on the real CIFAR-10 (the JPEG copy in CI): runs only when CIFAR2L_DATA is set."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cifar2l.cli import app

from .conftest import REAL_DATA, ROOT

pytestmark = pytest.mark.skipif(not REAL_DATA, reason="CIFAR2L_DATA not set")


def test_default_config_reaches_the_study_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR2L_DATA", REAL_DATA)
    args = ["train", str(ROOT / "configs" / "default.yaml"), "--out", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["data"]["sizes"] == {"train": 10000, "val": 10000, "test": 10000}
    # The study: 0.4602 test accuracy (the course text: 0.4585).
    assert 0.45 <= summary["accuracy"]["test"] <= 0.475
    assert summary["accuracy"]["train"] > summary["accuracy"]["val"]


def test_gradcheck_config_passes_on_real_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR2L_DATA", REAL_DATA)
    args = ["gradcheck", str(ROOT / "configs" / "gradcheck.yaml"), "--out", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["passed"]
    for part in (summary, summary["dropout"], summary["full_size"]):  # >= 10x inside, any CPU
        assert max(part["floored_rel_error"].values()) * 10 <= summary["tolerance"], part
