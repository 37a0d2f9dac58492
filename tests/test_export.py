"""`cifar2l export RUN... --tensorboard DIR` on tiny synthetic runs: the event files are read
back here, record by record (TFRecord framing and CRCs checked), and compared with the runs'
CSVs, config.yaml and summary.json. Tests that read events need tensorboardX (the
`tensorboard` extra, in `dev`); the error paths, the missing extra's included, run without it.
"""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from cifar2l import export

from .conftest import (
    ROOT,
    invoke,
    module_env,
    ok,
    one_error_line,
    only_dir,
    summary_of,
    write_official_dir,
)

SMOKE = ROOT / "configs" / "smoke.yaml"
SPACE_KEYS = ["optim.lambda", "model.hidden"]


# ---------------------------------------------------------------- reading event files


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> list[bytes]:
    """The records of a TFRecord file: uint64 length, uint32 masked CRC of the length, data,
    uint32 masked CRC of the data (little-endian); every CRC checked."""
    blob, pos, records = path.read_bytes(), 0, []
    while pos < len(blob):
        header = blob[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
        assert crc == masked_crc32c(header), f"{path}: bad length CRC at byte {pos}"
        data = blob[pos + 12:pos + 12 + length]
        (crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
        assert len(data) == length and crc == masked_crc32c(data), f"{path}: bad record at {pos}"
        records.append(data)
        pos += 16 + length
    return records


def read_events(run_dir: Path) -> list:
    """Every Event of the event files directly in `run_dir` (one TensorBoard run)."""
    from tensorboardX.proto.event_pb2 import Event

    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {run_dir}"
    events = []
    for f in files:
        for record in read_records(f):
            e = Event()
            e.ParseFromString(record)
            events.append(e)
    return events


def values(events, plugin: str | None = None):
    """(step, Summary.Value) of the events, only those of `plugin` when given."""
    for e in events:
        for v in e.summary.value:
            if plugin is None or v.metadata.plugin_data.plugin_name == plugin:
                yield e.step, v


def scalars(events) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for step, v in values(events):
        if v.WhichOneof("value") == "simple_value":
            out.setdefault(v.tag, []).append((step, v.simple_value))
    return out


def texts(events) -> dict[str, str]:
    return {v.tag: v.tensor.string_val[0].decode() for _, v in values(events, "text")}


def hparams_of(events) -> SimpleNamespace:
    """The hparams plugin's records: whether an experiment record was written, the session's
    values and whether it ended."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    found = SimpleNamespace(experiment=False, hparams=None, ended=False)
    for _, v in values(events, "hparams"):
        data = HParamsPluginData()
        data.ParseFromString(v.metadata.plugin_data.content)
        kind = data.WhichOneof("data")
        if kind == "experiment":
            found.experiment = True
        elif kind == "session_start_info":
            found.hparams = {k: getattr(h, h.WhichOneof("kind"))
                             for k, h in data.session_start_info.hparams.items()}  # fmt: skip
        elif kind == "session_end_info":
            found.ended = True
    return found


def csv_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """What the export must hold of one CSV: `<stem>/<column>` -> (step, value) of each row."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, path
    return {f"{path.stem}/{c}": [(int(r["step"]), float(r[c])) for r in rows if r[c] != ""]
            for c in rows[0] if c != "step"}  # fmt: skip


def assert_csv_scalars(events, run_dir: Path, names: tuple[str, ...]) -> None:
    """Each column of each named CSV is a scalar tag with the CSV's steps and values (to
    float32 rounding: TensorBoard stores a scalar as a float32)."""
    got = scalars(events)
    for name in names:
        for tag, points in csv_series(run_dir / name).items():
            assert tag in got, (tag, sorted(got))
            assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
            np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points],
                                       rtol=2e-7, atol=1e-30, err_msg=tag)  # fmt: skip


# ---------------------------------------------------------------- runs to export


def search_config(path: Path, src: Path) -> Path:
    path.write_text(
        f"extends: {SMOKE}\n"
        f"data: {{root: {src}, train: all, val: null, val_size: 40}}\n"
        "search:\n  trials: 2\n  seed: 0\n  space:\n"
        "    optim.lambda: {log_uniform: [1.0e-4, 1.0e-1]}\n"
        "    model.hidden: {int_uniform: [4, 16]}\n"
    )
    return path


def lrrange_config(path: Path, src: Path) -> Path:
    path.write_text(
        f"extends: {ROOT / 'configs' / 'lrrange-80.yaml'}\n"
        f"data: {{root: {src}, val_size: 40}}\n"
        "model: {hidden: 8}\ntrain: {batch_size: 20}\n"
        "lrrange: {epochs: 2, eval_every: 1, train_eval_rows: 50, stop_factor: 1.0e9}\n"
    )
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> SimpleNamespace:
    """A train run, a `train --repeat 2` run, a 2-trial search and an LR range test, made once
    for the module through the CLI on a synthetic source."""
    base = tmp_path_factory.mktemp("export")
    with module_env(base):
        src = write_official_dir(base / "src", per_batch=60)  # a rise for lrrange
        common = ["--set", f"data.root={src}", "--quiet"]
        ok("train", SMOKE, *common, "--out", base / "train")
        # its own name: two runs started in the same second would share a run-dir name
        ok("train", SMOKE, *common, "--repeat", "2", "--out", base / "repeat", "--name", "rep")
        ok("search", search_config(base / "search.yaml", src), "--out", base / "search",
           "--quiet")  # fmt: skip
        ok("lrrange", lrrange_config(base / "lr.yaml", src), "--out", base / "lrrange",
           "--quiet")  # fmt: skip
    return SimpleNamespace(train=only_dir(base / "train"), repeat=only_dir(base / "repeat"),
                           search=only_dir(base / "search"),
                           lrrange=only_dir(base / "lrrange"))  # fmt: skip


@pytest.fixture(scope="module")
def exported(made, tmp_path_factory) -> Path:
    """All four runs exported by one command (needs tensorboardX)."""
    pytest.importorskip("tensorboardX")
    tb = tmp_path_factory.mktemp("tb") / "tb"
    result = ok("export", made.train, made.repeat, made.search, made.lrrange,
                "--tensorboard", tb, "--json")  # fmt: skip
    done = json.loads(result.stdout)
    assert done["status"] == "completed" and len(done["exports"]) == 4
    return tb


# ---------------------------------------------------------------- what is written


def test_train_scalars_equal_its_csvs(made, exported):
    events = read_events(exported / made.train.name)
    assert_csv_scalars(events, made.train, ("metrics.csv", "timing.csv"))
    rows = list(csv.DictReader((made.train / "metrics.csv").open()))
    assert len(scalars(events)["metrics/val_accuracy"]) == len(rows) > 2


def test_config_and_command_are_text(made, exported):
    found = texts(read_events(exported / made.train.name))
    stored = found["config.yaml/text_summary"]
    assert all(line.startswith("    ") for line in stored.splitlines())  # a markdown code block
    unindented = "\n".join(line[4:] for line in stored.splitlines())
    assert unindented == (made.train / "config.yaml").read_text().rstrip("\n")
    command = (made.train / "command.txt").read_text().strip()
    assert found["command.txt/text_summary"].strip() == command != ""


def test_train_hparams_are_the_config_and_final_metrics(made, exported):
    events = read_events(exported / made.train.name)
    hp = hparams_of(events)
    cfg = yaml.safe_load((made.train / "config.yaml").read_text())
    assert hp.ended
    assert hp.hparams["optim.lambda"] == pytest.approx(cfg["optim"]["lambda"])
    assert hp.hparams["model.hidden"] == cfg["model"]["hidden"] == 8
    assert hp.hparams["train.shuffle"] is True and hp.hparams["dtype"] == "float32"
    assert not any(k.split(".")[0] in ("gradcheck", "lrrange", "search", "expected")
                   for k in hp.hparams)  # fmt: skip
    assert "gradcheck.lambdas" not in hp.hparams  # a list: no hparams type
    assert not hp.experiment  # TensorBoard builds the columns from all runs' sessions
    summary = summary_of(made.train)
    got = scalars(events)
    assert {"final/accuracy.val", "final/accuracy.test", "final/best_val_accuracy",
            "final/loss.val"} <= set(got)  # fmt: skip
    assert not any("seconds" in t or "timing." in t for t in got if t.startswith("final/"))
    last = max(int(r["step"]) for r in csv.DictReader((made.train / "metrics.csv").open()))
    (step, value), = got["final/accuracy.test"]
    assert step == last and value == pytest.approx(summary["accuracy"]["test"], rel=1e-6)


def test_repeat_exports_each_seed_as_its_own_run(made, exported):
    top = exported / made.repeat.name
    subs = sorted(p.relative_to(top).as_posix() for p in top.rglob("events.out.tfevents.*"))
    assert subs == [f"{d}/{f.name}" if d else f.name for d, f in
                    [("", next(top.glob("events.*"))),
                     ("repeats/00", next((top / "repeats/00").glob("events.*"))),
                     ("repeats/01", next((top / "repeats/01").glob("events.*")))]]
    for k in ("00", "01"):
        events = read_events(top / "repeats" / k)
        assert_csv_scalars(events, made.repeat / "repeats" / k, ("metrics.csv",))
        seed = yaml.safe_load((made.repeat / "repeats" / k / "config.yaml").read_text())
        assert hparams_of(events).hparams["init_seed"] == pytest.approx(seed["init_seed"])
    root = read_events(top)  # the mean over the seeds
    assert hparams_of(root).hparams["model.hidden"] == 8
    assert {"final/accuracy.val", "final/accuracy_std.val"} <= set(scalars(root))


def test_search_trials_have_the_searched_keys(made, exported):
    top = exported / made.search.name
    assert hparams_of(read_events(top)).hparams is None  # the root holds no trial's values
    assert "config.yaml/text_summary" in texts(read_events(top))
    trials = sorted((made.search / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        events = read_events(top / "trials" / trial.name)
        assert_csv_scalars(events, trial, ("metrics.csv",))
        hp = hparams_of(events)
        cfg = yaml.safe_load((trial / "config.yaml").read_text())
        assert sorted(hp.hparams) == sorted(SPACE_KEYS)
        assert hp.hparams["optim.lambda"] == pytest.approx(cfg["optim"]["lambda"], rel=1e-12)
        assert hp.hparams["model.hidden"] == cfg["model"]["hidden"]
        assert "final/accuracy.val" in scalars(events)


def test_lrrange_sweep_is_exported(made, exported):
    events = read_events(exported / made.lrrange.name)
    assert_csv_scalars(events, made.lrrange, ("lrrange.csv",))
    hp = hparams_of(events)
    assert "lrrange.lr_max" in hp.hparams and "final/suggestion.eta_max" in scalars(events)


def test_no_temporary_directory_is_left(exported):
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- bad inputs


def test_existing_export_is_refused_untouched(made, exported):
    before = sorted((p, p.stat().st_size) for p in (exported / made.train.name).rglob("*"))
    result = invoke("export", made.train, "--tensorboard", exported)
    one_error_line(result, 2, str(exported / made.train.name), "exists", "--tensorboard")
    assert sorted((p, p.stat().st_size) for p in (exported / made.train.name).rglob("*")) \
        == before  # fmt: skip


def test_not_a_run_dir(made, tmp_path):
    pytest.importorskip("tensorboardX")
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing", made.train / "config.yaml"):
        result = invoke("export", made.train, bad, "--tensorboard", tmp_path / "tb")
        one_error_line(result, 2, str(bad), "not a run directory")
    result = invoke("export", made.train.parent, "--tensorboard", tmp_path / "tb")
    one_error_line(result, 2, str(made.train.parent), "a runs root?")
    assert not (tmp_path / "tb").exists()  # checked before anything is written


def test_two_runs_of_one_name_are_refused(made, tmp_path):
    twin = tmp_path / "other" / made.train.name
    twin.mkdir(parents=True)
    (twin / "summary.json").write_text("{}")
    result = invoke("export", made.train, twin, "--tensorboard", tmp_path / "tb")
    one_error_line(result, 2, str(twin), "both would be exported")
    assert not (tmp_path / "tb").exists()


def test_unwritable_dir(made, tmp_path):
    pytest.importorskip("tensorboardX")
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "tb"):
        result = invoke("export", made.train, "--tensorboard", bad)
        one_error_line(result, 1, str(bad), "--tensorboard")


def test_no_target_given(made):
    one_error_line(invoke("export", made.train), 2, "--tensorboard DIR")


def test_missing_extra_names_it(made, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now fails
    result = invoke("export", made.train, "--tensorboard", tmp_path / "tb")
    one_error_line(result, 1, "tensorboardX", "pip install 'cifar2l[tensorboard]'")
    assert not (tmp_path / "tb").exists()


def test_failure_midway_leaves_nothing(made, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    real, calls = export.write_part, []

    def failing(*args):
        calls.append(args)
        if len(calls) == 2:  # the second run inside the --repeat run
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(export, "write_part", failing)
    result = invoke("export", made.repeat, "--tensorboard", tmp_path / "tb")
    one_error_line(result, 1, "No space left on device")
    assert list((tmp_path / "tb").iterdir()) == []  # no half export, no temporary dir


def test_help_has_example_and_names_the_extra():
    out = ok("export", "--help").stdout
    assert "Example:" in out and "cifar2l export " in out and "tensorboard --logdir" in out
    assert "cifar2l[tensorboard]" in out  # the brackets survive rich markup


def test_leftover_of_a_killed_export_is_removed(made, tmp_path):
    pytest.importorskip("tensorboardX")
    from cifar2l import runs

    tb = tmp_path / "tb"
    host = runs.writer_tag().split("-")[0]
    dead = tb / f".{made.train.name}.export.{host}-999999999.abcd1234"  # no such pid
    alive = tb / f".{made.train.name}.export.{runs.writer_tag()}.abcd1234"  # this process
    for d in (dead, alive):
        d.mkdir(parents=True)
        (d / "events.out.tfevents.1.x").write_bytes(b"")
    ok("export", made.train, "--tensorboard", tb, "--quiet")
    assert not dead.exists() and alive.exists()
    assert sorted(p.name for p in tb.iterdir()) == sorted([made.train.name, alive.name])
    assert (tb / made.train.name).stat().st_mode & 0o777 == 0o777 & ~runs.umask()


def test_final_metrics_keep_accuracies_not_settings_or_timing():
    summary = {"accuracy": {"val": 0.5}, "average": {"decay": 0.99, "accuracy": {"val": 0.6}},
               "max_rel_error": {"W1": 1e-9}, "passed": True, "tolerance": 1e-6, "seconds": 3,
               "timing": {"total": 3.0}, "accuracy_runs": {"val": [0.4, 0.6]}}  # fmt: skip
    assert export.final_metrics(summary) == {"final/accuracy.val": 0.5,
                                             "final/average.accuracy.val": 0.6,
                                             "final/max_rel_error.W1": 1e-9}  # fmt: skip


def test_hparams_keep_the_commands_own_section_and_scalars_only():
    cfg = {"seed": 1, "data": {"root": None, "zca_eps": 0.1}, "lrrange": {"lr_max": 1.0},
           "gradcheck": {"h": 1e-5, "lambdas": [0.0]}, "expected": {"item": "x"},
           "search": {"trials": 3}}  # fmt: skip
    assert export.hparam_values(cfg, None, "lrrange") == {"seed": 1, "data.zca_eps": 0.1,
                                                          "lrrange.lr_max": 1.0}  # fmt: skip
    assert export.hparam_values(cfg, ["data.zca_eps", "data.root"], "train") == \
        {"data.zca_eps": 0.1}  # fmt: skip
