"""Runtime conditions and hostile files (issue 15, item 10): a full disk, read-only directories,
`--dir` naming a file, over-long names, malformed archives, images and metadata, hostile pickles
and special files (FIFOs, devices, broken links, unreadable files) given as a config or data path.

Each ends with one `Error: ...` line and its exit code (1 at run time, 2 for a bad option), and a
run that fails mid-way is marked `failed` with its reason, never left `running`. The corpus cases
follow tests/test_bad_inputs.py (same checks: nothing is written); the rest drive the CLI with
an injected ENOSPC, a real small tmpfs, read-only directories and restricted permissions.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cifar2l import runs, untrusted

from .conftest import (
    ROOT,
    invoke,
    module_env,
    ok,
    one_error_line,
    png_bytes,
    synthetic_rows,
    write_image_dir,
    write_official_dir,
)
from .test_bad_inputs import (
    SEARCH_SPACE,
    SMOKE,
    Ctx,
    case,
    refused_cleanly,
    search_args,
    with_source,
)

IS_ROOT = os.geteuid() == 0
REAL_TEMP_FILE = runs.temp_file
EXPECTED = "expected={item: 'Table 2: smoke', accuracy: {train: 0.0, val: 0.0}, tolerance: 2.0}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished smoke run that `report` compares (its config has an expected: block)."""
    base = tmp_path_factory.mktemp("trained")
    with module_env(base):
        src = write_official_dir(base / "src")
        ok("train", SMOKE, "--set", f"data.root={src}", "--set", EXPECTED,
           "--out", base / "runs", "--quiet")  # fmt: skip
    (run,) = (base / "runs").iterdir()
    return run


# ---------------------------------------------------------------- builders: special files


def fifo(ctx: Ctx, name: str = "fifo") -> Path:
    path = ctx.tmp / name
    os.mkfifo(path)
    return path


def config_path(make) -> callable:
    """train on the config path `make(ctx)` returns: exit 2, the error names the path."""

    def build(ctx: Ctx):
        path = make(ctx)
        return ["train", path, "--out", ctx.out], [str(path), "config file"]

    return build


def broken_link(ctx: Ctx, name: str = "link") -> Path:
    path = ctx.tmp / name
    path.symlink_to(ctx.tmp / "gone")
    return path


# ---------------------------------------------------------------- builders: archives


def official_tar(ctx: Ctx, replace: dict | None = None, extra=()) -> Path:
    """cifar-10-python.tar.gz of the tiny source; `replace` maps a file name to a TarInfo (and
    optional data) written in its place; `extra`: more (TarInfo, data) members first."""
    archive = ctx.tmp / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in extra:
            tar.addfile(info, None if data is None else io.BytesIO(data))
        for f in sorted(ctx.src.iterdir()):
            name = f"cifar-10-batches-py/{f.name}"
            if replace and f.name in replace:
                info, data = replace[f.name]
                info.name = name
                tar.addfile(info, None if data is None else io.BytesIO(data))
            else:
                tar.add(f, arcname=name)
    return archive


def member(kind: bytes, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo("x")
    info.type = kind
    for k, v in fields.items():
        setattr(info, k, v)
    return info


def tar_with(kind: bytes, **fields):
    return lambda ctx: official_tar(ctx, {"data_batch_1": (member(kind, **fields), None)})


def huge_member(ctx: Ctx) -> Path:
    # A header that declares 300 MiB: refused from the header, never read (the data is absent).
    return official_tar(ctx, {"data_batch_2": (member(tarfile.REGTYPE, size=300 << 20), None)})


def gzip_bomb(ctx: Ctx) -> Path:
    """An unwanted member of 3 MiB of zeros (a few KiB compressed), over a 2 MiB bound."""
    ctx.mp.setattr(untrusted, "MAX_ARCHIVE_BYTES", 2 << 20)
    zeros = bytes(3 << 20)
    return official_tar(ctx, extra=[(member(tarfile.REGTYPE, name="padding", size=len(zeros)),
                                     zeros)])  # fmt: skip


def pax_bomb(ctx: Ctx) -> Path:
    """A pax header record of 3 MiB (tarfile reads those whole) over a 2 MiB bound."""
    ctx.mp.setattr(untrusted, "MAX_ARCHIVE_BYTES", 2 << 20)
    archive = ctx.tmp / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.pax_headers = {"comment": "z" * (3 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    return archive


def member_in_image_tar(kind: bytes):
    """An image tree archive whose train/cat/0001.png is a link or device."""

    def make(ctx: Ctx) -> Path:
        root = small_images(ctx)
        (root / "train" / "cat" / "0001.png").unlink()
        archive = ctx.tmp / "images.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname="cifar10")
            tar.addfile(member(kind, name="cifar10/train/cat/0001.png", linkname="/etc/passwd"))
        return archive

    return make


# ---------------------------------------------------------------- builders: images, pickles


def small_images(ctx: Ctx) -> Path:
    return write_image_dir(ctx.tmp / "img", train_per_class=5, test_per_class=1)


def with_image(write):
    """The image tree with train/cat/0001.png replaced by `write(path)`."""

    def make(ctx: Ctx) -> Path:
        root = small_images(ctx)
        write(root / "train" / "cat" / "0001.png")
        return root

    return make


def save_image(mode: str, value, size=(32, 32), fmt="PNG"):
    def write(path: Path) -> None:
        from PIL import Image

        Image.new(mode, size, value).save(path, format=fmt)

    return write


def truncated(fmt: str):
    def write(path: Path) -> None:
        from PIL import Image

        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, format=fmt)
        path.write_bytes(path.read_bytes()[:200])

    return write


def sixteen_bit(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((32, 32), 60000, np.uint16)).save(path, format="PNG")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit RGB pixels and holds none (a bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))  # fmt: skip

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")  # fmt: skip


def decompression_bomb(pixels: int):
    """PIL warns above Image.MAX_IMAGE_PIXELS (89 M) and refuses above twice that."""
    return lambda path: path.write_bytes(png_header(pixels // 10000, 10000))


def with_pickle(name: str, obj):
    """The tiny official source with `name` replaced by pickle.dumps(obj)."""

    def make(ctx: Ctx) -> Path:
        (ctx.src / name).write_bytes(pickle.dumps(obj))
        return ctx.src

    return make


class Hostile:
    """A pickle that runs a shell command while it loads (when loaded with pickle.loads)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_pickle(ctx: Ctx) -> Path:
    (ctx.src / "data_batch_2").write_bytes(pickle.dumps(Hostile(ctx.tmp / "PWNED")))
    return ctx.src


def float_labels(ctx: Ctx) -> Path:
    x, y = synthetic_rows(40, seed=1)
    blob = {b"data": x, b"labels": [float(v) + 0.5 for v in y]}
    (ctx.src / "data_batch_1").write_bytes(pickle.dumps(blob))
    return ctx.src


# ---------------------------------------------------------------- builders: names and paths


def long_name(command: str):
    def build(ctx: Ctx):
        args = search_args(ctx) if command == "search" else ["train", ctx.smoke("", "ok.yaml"),
                                                             "--out", ctx.out]  # fmt: skip
        return [*args, "--name", "n" * 300], ["--name", "too long"]

    return build


def long_out(parts: int, length: int):
    def build(ctx: Ctx):
        out = ctx.tmp.joinpath(*["o" * length] * parts)
        return ["train", ctx.smoke("", "ok.yaml"), "--out", out], ["--out", "too long"]

    return build


def dir_is_a_file(ctx: Ctx):
    blocker = ctx.write("blocker", "a regular file\n")
    return search_args(ctx, "--dir", blocker), ["--dir", str(blocker), "not a directory"]


def report_out_is_a_file(ctx: Ctx):
    blocker = ctx.write("blocker", "a regular file\n")
    return ["report", ctx.trained, "--out", blocker], [str(blocker)]


def report_out_too_long(ctx: Ctx):
    out = ctx.tmp / ("r" * 300)
    return ["report", ctx.trained, "--out", out], ["--out", "too long"]


# fmt: off
CASES = [
    # special files as a config path (exit 2) or a data path (exit 1); must not hang or read
    # forever: a FIFO is refused before it is opened, a device before it is read
    case("config-fifo", config_path(fifo)),
    case("config-dev-zero", config_path(lambda ctx: Path("/dev/zero"))),
    case("config-dev-urandom", config_path(lambda ctx: Path("/dev/urandom"))),
    case("config-broken-symlink", config_path(broken_link)),
    case("config-too-large", config_path(lambda ctx: ctx.write("big.yaml", "#" * (2 << 20)))),
    case("data-root-fifo", with_source(fifo, "FIFO"), 1),
    case("data-root-dev-zero", with_source(lambda ctx: Path("/dev/zero"), "character device"), 1),
    case("data-root-dev-urandom", with_source(lambda ctx: Path("/dev/urandom"), "device"), 1),
    case("data-root-broken-symlink", with_source(broken_link, "no such file"), 1),
    # archives: links, devices, directories, huge members, bombs
    case("tar-symlink-member", with_source(tar_with(tarfile.SYMTYPE, linkname="/etc/passwd"),
                                           "data_batch_1", "symbolic link"), 1),  # fmt: skip
    case("tar-hardlink-member", with_source(tar_with(
        tarfile.LNKTYPE, linkname="cifar-10-batches-py/data_batch_2"), "data_batch_1",
        "hard link"), 1),  # fmt: skip
    case("tar-device-member", with_source(tar_with(tarfile.CHRTYPE, devmajor=1, devminor=5),
                                          "data_batch_1", "character device"), 1),  # fmt: skip
    case("tar-fifo-member", with_source(tar_with(tarfile.FIFOTYPE), "data_batch_1", "FIFO"), 1),
    case("tar-directory-member", with_source(tar_with(tarfile.DIRTYPE), "data_batch_1",
                                             "a directory"), 1),  # fmt: skip
    case("tar-huge-member", with_source(huge_member, "data_batch_2", "314572800 bytes"), 1),
    case("tar-gzip-bomb", with_source(gzip_bomb, "more than 2 MiB", "bomb"), 1),
    case("tar-pax-header-bomb", with_source(pax_bomb, "more than 2 MiB"), 1),
    case("image-tar-symlink-member", with_source(member_in_image_tar(tarfile.SYMTYPE),
                                                 "train/cat/0001.png", "symbolic link"), 1),
    case("image-tar-device-member", with_source(member_in_image_tar(tarfile.BLKTYPE),
                                                "train/cat/0001.png", "block device"), 1),
    # images
    case("image-truncated-png", with_source(with_image(truncated("PNG")), "train/cat/0001.png",
                                            "cannot decode", named=False), 1),  # fmt: skip
    case("image-truncated-jpeg", with_source(with_image(truncated("JPEG")),
                                             "train/cat/0001.png", "cannot decode",
                                             named=False), 1),  # fmt: skip
    case("image-1x1", with_source(with_image(save_image("RGB", (1, 2, 3), (1, 1))),
                                  "train/cat/0001.png", "32x32", "1x1", named=False), 1),
    case("image-16-bit", with_source(with_image(sixteen_bit), "train/cat/0001.png", "I;16",
                                     named=False), 1),  # fmt: skip
    case("image-float", with_source(with_image(save_image("F", 0.5, fmt="TIFF")),
                                    "train/cat/0001.png", "mode F", named=False), 1),
    case("image-cmyk-jpeg", with_source(with_image(save_image("CMYK", (1, 2, 3, 4), fmt="JPEG")),
                                        "train/cat/0001.png", "CMYK", named=False), 1),
    case("image-rgba-transparent", with_source(with_image(save_image("RGBA", (9, 9, 9, 0))),
                                               "train/cat/0001.png", "transparent",
                                               named=False), 1),  # fmt: skip
    case("image-decompression-bomb", with_source(with_image(decompression_bomb(400_000_000)),
                                                 "train/cat/0001.png", "decompression bomb",
                                                 named=False), 1),  # fmt: skip
    case("image-decompression-bomb-warning", with_source(
        with_image(decompression_bomb(100_000_000)), "train/cat/0001.png",
        "decompression bomb", named=False), 1),  # fmt: skip
    case("image-huge-dimensions", with_source(with_image(lambda p: p.write_bytes(
        png_header(5000, 5000))), "train/cat/0001.png", "32x32", "5000x5000", named=False), 1),
    case("image-huge-file", with_source(with_image(
        lambda p: p.write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)) + bytes(5 << 20))),
        "train/cat/0001.png", "larger than 4 MiB", named=False), 1),  # fmt: skip
    # metadata and pickles
    case("pickle-hostile-reduce", with_source(hostile_pickle, "data_batch_2",
                                              "refused to load posix.system"), 1),  # fmt: skip
    case("pickle-float-labels", with_source(float_labels, "data_batch_1", "integers",
                                            "float64"), 1),  # fmt: skip
    case("pickle-top-level-list", with_source(with_pickle("test_batch", [1, 2, 3]),
                                              "test_batch", "unreadable"), 1),  # fmt: skip
    case("pickle-top-level-string", with_source(with_pickle("data_batch_1", "text"),
                                                "data_batch_1", "unreadable"), 1),  # fmt: skip
    case("meta-names-not-strings", with_source(with_pickle("batches.meta", {
        b"label_names": list(range(10))}), "batches.meta", "label_names"), 1),  # fmt: skip
    case("meta-two-names", with_source(with_pickle("batches.meta", {
        b"label_names": [b"cat", b"dog"]}), "batches.meta", "10 distinct"), 1),  # fmt: skip
    case("meta-duplicate-names", with_source(with_pickle("batches.meta", {
        b"label_names": [b"cat"] * 10}), "batches.meta", "distinct"), 1),  # fmt: skip
    case("meta-not-a-dict", with_source(with_pickle("batches.meta", [b"cat"]), "batches.meta",
                                        "unreadable"), 1),  # fmt: skip
    case("meta-no-names", with_source(with_pickle("batches.meta", {b"names": []}),
                                      "batches.meta", "unreadable"), 1),  # fmt: skip
    # names and paths given as options
    case("train-name-too-long", long_name("train")),
    case("search-name-too-long", long_name("search")),
    case("out-component-too-long", long_out(1, 300)),
    case("out-over-path-max", long_out(25, 200)),
    case("report-out-too-long", report_out_too_long),
    case("search-dir-too-long", lambda ctx: (search_args(ctx, "--dir", ctx.tmp / ("d" * 300)),
                                             ["--dir", "too long"])),
    case("search-dir-is-a-file", dir_is_a_file, 1),
    case("report-out-is-a-file", report_out_is_a_file, 1),
]
# fmt: on


@pytest.mark.parametrize(("build", "code"), CASES)
def test_runtime_bad_input(build, code, tmp_path, monkeypatch, trained):
    """The checks of test_bad_inputs.test_bad_input, run under an alarm: nothing may hang."""
    refused_cleanly(Ctx(tmp_path, monkeypatch, trained), build, code, lambda: alarm(60))
    assert not (tmp_path / "PWNED").exists(), "the hostile pickle ran its command"


@contextlib.contextmanager
def alarm(seconds: int):
    """Fail (instead of hanging the suite) when the body takes longer than `seconds`."""
    import signal

    def expired(signum, frame):
        raise AssertionError(f"still running after {seconds} s: a read that never ends?")

    before = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def test_the_runtime_corpus_is_distinct():
    ids = [p.id for p in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


def test_a_pickle_is_never_run_by_the_unpickler(tmp_path):
    marker = tmp_path / "PWNED"
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        untrusted.unpickle(pickle.dumps(Hostile(marker)))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_unpickler_still_reads_numpy_batches(protocol):
    x, y = synthetic_rows(7, seed=3)
    blob = {b"data": x, b"labels": [int(v) for v in y], b"names": {b"a": (1.5, True, None)}}
    back = untrusted.unpickle(pickle.dumps(blob, protocol=protocol))
    assert back[b"data"].dtype == np.uint8 and (back[b"data"] == x).all()
    assert back[b"labels"] == [int(v) for v in y] and back[b"names"] == {b"a": (1.5, True, None)}


# ---------------------------------------------------------------- image modes converted exactly


@pytest.mark.parametrize(("write", "mode"), [
    (save_image("L", 77), "L"),
    (save_image("RGBA", (9, 8, 7, 255)), "RGBA"),
    (save_image("P", 3), None),
])  # fmt: skip
def test_exact_image_modes_are_decoded_and_named(write, mode, tmp_path, monkeypatch):
    """Grey, opaque-alpha and palette images convert to RGB exactly: the run goes on, and a
    grey or alpha image is named in one warning (a palette is only a way of storing RGB)."""
    ctx = Ctx(tmp_path, monkeypatch, None)
    root = with_image(write)(ctx)
    result = ok("train", SMOKE, "--set", f"data.root={root}", "--out", ctx.out,
                "--set", "train.batch_size=5")  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    if mode is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"1 {mode} image" in warnings[0], warnings
        assert "train/cat/0001.png" in warnings[0]


# ---------------------------------------------------------------- a full disk (injected ENOSPC)


def disk_full_from(monkeypatch, n: int | None) -> list[str]:
    """From the n-th new file on (0-based; None: never) runs.temp_file fails with ENOSPC, and
    keeps failing, as a full disk does. Every file cifar2l writes goes through it (atomic
    writes, npz files, figures). Rewriting a file's existing bytes in place still works, as on
    a real full disk. Returns the names asked for, in order."""
    names = []

    def temp_file(folder, name, suffix=""):
        names.append(name)
        if n is not None and len(names) > n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / name))
        return REAL_TEMP_FILE(folder, name, suffix)

    monkeypatch.setattr(runs, "temp_file", temp_file)
    return names


def only_run(out: Path) -> Path | None:
    found = list(out.iterdir()) if out.exists() else []
    assert len(found) <= 1, found
    return found[0] if found else None


def leftovers(run: Path) -> list[str]:
    return [p.name for p in run.rglob(".*")]


@pytest.fixture
def writes_of_a_run(smoke_args, monkeypatch, tmp_path) -> list[str]:
    """The files a smoke train run writes, in order (also fills this test's data cache)."""
    names = disk_full_from(monkeypatch, None)
    ok("train", *smoke_args[:-1], "--out", tmp_path / "counted", "--quiet")
    assert names[:3] == ["config.yaml", "command.txt", "summary.json"], names
    assert names[-1] == "summary.json" and "weights.npz" in names, names
    return names


def test_a_full_disk_at_any_write_fails_the_run_cleanly(writes_of_a_run, smoke_args,
                                                        monkeypatch, tmp_path):  # fmt: skip
    """ENOSPC at each file a train run writes, in turn: one Error line naming the file and the
    reason, exit 1; then either no run directory at all (the disk filled while it was laid
    out) or one marked `failed` with that reason, never `running`, no temp files left."""
    out = tmp_path / "runs"
    for n, name in enumerate(writes_of_a_run):
        disk_full_from(monkeypatch, n)
        result = invoke("train", *smoke_args)
        line = one_error_line(result, 1, name, "No space left on device")
        run = only_run(out)
        if n < 3:  # config.yaml, command.txt, the first summary: the directory is removed
            assert run is None, (n, name, list(run.iterdir()))
            continue
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "failed", (n, name, summary)
        assert "No space left on device" in summary["error"] and name in summary["error"]
        assert summary["error"] in line
        assert leftovers(run) == [], (n, name)
        shutil.rmtree(run)


def test_a_full_disk_at_the_last_summary_leaves_no_running_run(writes_of_a_run, smoke_args,
                                                               monkeypatch, tmp_path):  # fmt: skip
    """Everything written but the final summary: the run is marked failed (the summary is
    rewritten in place, which needs no free space), with weights.npz beside it."""
    disk_full_from(monkeypatch, len(writes_of_a_run) - 1)
    one_error_line(invoke("train", *smoke_args), 1, "summary.json", "No space left")
    run = only_run(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "summary.json" in summary["error"]
    assert summary["command"] == "train" and summary["run_dir"] == str(run)
    assert (run / "weights.npz").is_file() and leftovers(run) == []


def test_a_full_disk_in_a_repeat_run_marks_it_failed(smoke_args, monkeypatch, tmp_path):
    names = disk_full_from(monkeypatch, None)
    ok("train", *smoke_args[:-1], "--repeat", 2, "--out", tmp_path / "counted", "--quiet")
    disk_full_from(monkeypatch, names.index("weights.npz"))
    one_error_line(invoke("train", *smoke_args, "--repeat", 2), 1, "weights.npz",
                   "No space left")  # fmt: skip
    run = only_run(tmp_path / "runs")
    statuses = [json.loads(p.read_text())["status"] for p in run.rglob("summary.json")]
    assert statuses and set(statuses) == {"failed"}, statuses


def test_a_full_disk_while_a_search_is_laid_out(tmp_path, monkeypatch, official_dir):
    cfg = tmp_path / "search.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata:\n  root: {official_dir}\n{SEARCH_SPACE}")
    disk_full_from(monkeypatch, 0)
    result = invoke("search", cfg, "--dir", tmp_path / "s", "--quiet")
    one_error_line(result, 1, "search.json", "No space left on device")


# ---------------------------------------------------------------- a real small file system


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_fails_the_run_cleanly(tiny_fs, smoke_args):
    """A smoke run's 340 KB do not fit in 256 KiB: it fails on a real ENOSPC, marked failed."""
    result = invoke("train", *smoke_args[:-3], "--out", tiny_fs / "runs", "--quiet")
    one_error_line(result, 1, "No space left on device")
    run = only_run(tiny_fs / "runs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert leftovers(run) == []


# ---------------------------------------------------------------- read-only directories


@contextlib.contextmanager
def read_only(path: Path):
    """`path` (a directory) made read-only: mode 0o555, or for root (whom modes do not stop)
    the immutable attribute (chattr +i); skipped where neither is possible."""
    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        path.chmod(0o555)
        undo = ["chmod", "755", str(path)]
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(path)]
    else:
        pytest.skip("root, and chattr +i is not supported here: cannot make a read-only dir")
    try:
        yield path
    finally:
        subprocess.run(undo, check=True)


def test_read_only_search_dir(tmp_path, official_dir):
    cfg = tmp_path / "search.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata:\n  root: {official_dir}\n{SEARCH_SPACE}")
    with read_only(tmp_path / "s") as folder:
        result = invoke("search", cfg, "--dir", folder, "--quiet")
        one_error_line(result, 1, str(folder))
        assert list(folder.iterdir()) == []


def test_read_only_finished_search(tmp_path, official_dir):
    """--resume (which claims trials with lock files) and collect on a search dir that has
    become read-only: one line each, nothing changed."""
    cfg = tmp_path / "search.yaml"
    cfg.write_text(f"extends: {SMOKE}\ndata:\n  root: {official_dir}\n{SEARCH_SPACE}")
    folder = tmp_path / "s"
    ok("search", cfg, "--dir", folder, "--quiet", "--no-collect")
    before = sorted(str(p) for p in folder.rglob("*"))
    with read_only(folder), read_only(folder / "trials"):
        one_error_line(invoke("search", "--resume", folder, "--quiet"), 1, str(folder))
        one_error_line(invoke("search", "collect", folder, "--quiet"), 1, str(folder),
                       "cannot write")  # fmt: skip
    assert sorted(str(p) for p in folder.rglob("*")) == before


def test_read_only_runs_root(tmp_path, smoke_args):
    with read_only(tmp_path / "ro") as folder:
        result = invoke("train", *smoke_args[:-3], "--out", folder, "--quiet")
        one_error_line(result, 1, str(folder), "not writable")
        assert list(folder.iterdir()) == []


def test_read_only_report_dir(tmp_path, trained):
    with read_only(tmp_path / "report") as folder:
        result = invoke("report", trained, "--out", folder, "--quiet")
        one_error_line(result, 1, str(folder))
        assert list(folder.iterdir()) == []


def test_read_only_data_cache_falls_back_to_decoding(tmp_path, smoke_args, monkeypatch):
    """The run goes on without the cache, saying so in one warning line."""
    cache = tmp_path / "ro-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with read_only(cache):
        result = ok("train", *smoke_args[:-1], "--json")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "data cache" in warnings[0] and "not written" in warnings[0]
    assert json.loads(result.stdout)["status"] == "completed"
    assert list(cache.iterdir()) == []


def test_read_only_cache_is_one_warning_in_a_fresh_process(tmp_path, official_dir):
    """matplotlib, whose caches live there too, adds no lines of its own."""
    cache = tmp_path / "ro-cache"
    with read_only(cache):
        done = subprocess.run(
            [sys.executable, "-m", "cifar2l", "train", str(SMOKE), "--set",
             f"data.root={official_dir}", "--out", str(tmp_path / "runs"), "--json"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache)},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("Warning: data cache") and "not written" in line


# ---------------------------------------------------------------- unreadable files


def cli_without_root_powers(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that file permissions apply to: as root, with the capabilities
    that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped by capsh."""
    cmd = [sys.executable, "-m", "cifar2l", *map(str, args)]
    if IS_ROOT:
        if shutil.which("capsh") is None:
            pytest.skip("root without capsh: permissions cannot be made to apply")
        cmd = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
               'exec "$0" "$@"', *cmd]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def assert_one_line(done: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_unreadable_config_file(tmp_path):
    cfg = tmp_path / "secret.yaml"
    cfg.write_text(f"extends: {SMOKE}\n")
    cfg.chmod(0)
    done = cli_without_root_powers("train", cfg, "--out", tmp_path / "runs", cwd=tmp_path)
    # click checks a path argument's readability itself and answers with a usage box (issue
    # 15, item 12, makes every usage error one line): here only its code and the path count.
    assert done.returncode == 2 and str(cfg) in done.stderr.replace("│\n│ ", ""), done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_unreadable_data_file(tmp_path, official_dir):
    (official_dir / "data_batch_3").chmod(0)
    done = cli_without_root_powers("train", SMOKE, "--set", f"data.root={official_dir}",
                                   "--out", tmp_path / "runs", "--quiet", cwd=tmp_path)  # fmt: skip
    assert_one_line(done, 1, "data_batch_3", "Permission denied")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unreadable_data_archive(tmp_path, official_dir):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(official_dir, arcname="cifar-10-batches-py")
    archive.chmod(0)
    done = cli_without_root_powers("train", SMOKE, "--set", f"data.root={archive}",
                                   "--out", tmp_path / "runs", "--quiet", cwd=tmp_path)  # fmt: skip
    assert_one_line(done, 1, str(archive), "cannot read data source", "Permission denied")


def test_a_fifo_config_does_not_hang_a_real_process(tmp_path):
    """No writer ever opens the FIFO: opening it would block the process for good."""
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    done = subprocess.run([sys.executable, "-m", "cifar2l", "train", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert_one_line(done, 2, str(path), "FIFO")
