"""plotter.py: a run's figures drawn in a helper process, the same files as drawn in process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cifar2l import plots, plotter
from cifar2l.errors import RunError
from tests.conftest import ROOT, ok, only_dir

FIGURES = ("accuracy.png", "cost.png", "loss.png", "lr.png")
METRICS = [f"{k}_{m}" for k in ("train", "val") for m in ("loss", "cost", "accuracy")]
ROWS = [{"step": s, **{key: 1.0 / (s + 1) for key in METRICS}} for s in range(0, 30, 10)]


def _fail(path: str) -> None:
    raise RunError(f"{path}: cannot write the figure (test)")


def _write(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


def _die_in_helper(parent: int, path: str) -> None:
    """Kills the helper it runs in; drawn again here (the fallback), it writes `path`."""
    if os.getpid() != parent:
        os._exit(3)
    _write(path)


def test_helper_draws_in_another_process_and_waits(tmp_path, monkeypatch):
    monkeypatch.setenv(plotter.ENV, "1")
    plot = plotter.Plotter.start()
    try:
        assert plot.pool is not None
        plot.submit(_write, str(tmp_path / "a"))
        plot.wait()  # written when wait returns
        assert int((tmp_path / "a").read_text()) != os.getpid()
    finally:
        plot.close()
    assert plot.pool is None


def test_a_figures_error_is_raised_by_wait(tmp_path, monkeypatch):
    monkeypatch.setenv(plotter.ENV, "1")
    plot = plotter.Plotter.start()
    try:
        plot.submit(_fail, str(tmp_path / "x.png"))
        with pytest.raises(RunError, match="cannot write the figure"):
            plot.wait()
    finally:
        plot.close()


def test_a_dead_helper_leaves_its_figures_to_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv(plotter.ENV, "1")
    plot = plotter.Plotter.start()
    try:
        plot.submit(_die_in_helper, os.getpid(), str(tmp_path / "a"))  # the pool breaks
        plot.submit(_write, str(tmp_path / "b"))
        plot.wait()
        for name in ("a", "b"):
            assert int((tmp_path / name).read_text()) == os.getpid()
    finally:
        plot.close()


@pytest.mark.parametrize("value", ["0", "off", "no"])
def test_disabled_draws_here(tmp_path, monkeypatch, value):
    monkeypatch.setenv(plotter.ENV, value)
    plot = plotter.Plotter.start()
    assert plot.pool is None
    plot.submit(_write, str(tmp_path / "c"))  # at once, before wait
    assert int((tmp_path / "c").read_text()) == os.getpid()


def test_helper_figures_equal_in_process_figures(smoke_args, tmp_path, monkeypatch):
    """The same run drawn by the helper and in process: the same four PNGs, pixel for pixel."""
    pixels = {}
    for value in ("1", "0"):
        monkeypatch.setenv(plotter.ENV, value)
        out = tmp_path / f"runs-{value}"
        ok("train", *smoke_args, "--out", out, "--name", "same")
        run = only_dir(out)
        pixels[value] = {f: Image.open(run / f).tobytes() for f in FIGURES}
    assert pixels["1"] == pixels["0"]


def test_cli_process_draws_and_leaves_no_helper(official_dir, tmp_path):
    """The real command (python -m cifar2l): four figures, exit 0, no process left over."""
    env = {**os.environ, plotter.ENV: "1"}
    cmd = [sys.executable, "-m", "cifar2l", "train", str(ROOT / "configs" / "smoke.yaml"),
           "--set", f"data.root={official_dir}", "--out", str(tmp_path / "runs"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    run = only_dir(tmp_path / "runs")
    for f in FIGURES:
        assert Image.open(run / f).size[0] > 100
    assert not processes_naming(str(tmp_path / "runs"))


def processes_naming(text: str) -> list[str]:
    """Command lines (from /proc) of the live processes whose arguments contain `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in args:
            found.append(args)
    return found


def _fail_in_child(parent: int, path: str) -> None:
    if os.getpid() != parent:
        raise RuntimeError("a figure's error (test)")
    _write(path)


def test_in_two_draws_half_in_a_forked_copy(tmp_path):
    paths = [tmp_path / name for name in "abcd"]
    plotter.in_two([functools.partial(_write, str(p)) for p in paths])
    pids = [int(p.read_text()) for p in paths]
    assert pids[:2] == [os.getpid()] * 2
    assert pids[2] == pids[3] != os.getpid()


def test_in_two_redraws_what_the_copy_failed_and_raises_what_fails_here(tmp_path):
    """A figure the copy could not write is drawn here; an error here is the caller's."""
    draws = [functools.partial(_write, str(tmp_path / "a")),
             functools.partial(_fail_in_child, os.getpid(), str(tmp_path / "b"))]  # fmt: skip
    plotter.in_two(draws)
    assert [int((tmp_path / n).read_text()) for n in "ab"] == [os.getpid()] * 2
    with pytest.raises(RunError, match="cannot write the figure"):
        plotter.in_two([functools.partial(_write, str(tmp_path / "c")),
                        functools.partial(_fail, str(tmp_path / "x.png"))])  # fmt: skip


def test_in_two_waits_for_the_copy_before_raising_an_error_here(tmp_path):
    with pytest.raises(RunError, match="cannot write the figure"):
        plotter.in_two([functools.partial(_fail, str(tmp_path / "x.png")),
                        functools.partial(_write, str(tmp_path / "b"))])  # fmt: skip
    assert int((tmp_path / "b").read_text()) != os.getpid()  # written when in_two raised


def test_in_two_without_a_process_to_spare_draws_everything_here(tmp_path, monkeypatch):
    def no_fork():
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    plotter.in_two([functools.partial(_write, str(tmp_path / n)) for n in "ab"])
    assert [int((tmp_path / n).read_text()) for n in "ab"] == [os.getpid()] * 2


def test_run_figures_draw_the_four_figures(tmp_path):
    from cifar2l import config as config_mod

    cfg = config_mod.load_config(ROOT / "configs" / "smoke.yaml")
    plotter.Plotter().submit_figures(plots.run_figures, ROWS, cfg, 20, tmp_path)  # in turn, here
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(FIGURES)


HELPER_SCRIPT = """
import sys, time
from cifar2l import plotter
plot = plotter.Plotter.start()
plot.submit(time.sleep, 0)
plot.wait()
print(list(plot.pool._processes)[0], flush=True)
time.sleep(60)
"""


def test_a_killed_command_takes_its_helper_along(monkeypatch):
    """SIGKILL on the command (no cleanup of its own): the helper dies with it."""
    import signal
    import time

    env = {**os.environ, plotter.ENV: "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HELPER_SCRIPT], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    helper = int(proc.stdout.readline())
    assert Path(f"/proc/{helper}").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while not gone(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(helper)


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for init to reap it)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
