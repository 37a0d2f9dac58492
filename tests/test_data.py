"""The data layer: both source formats, block order, cache, source lookup, download, splits."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar2l import data
from cifar2l.config import DataConfig
from cifar2l.data import (
    ARCHIVE_NAME,
    BATCH_DIR,
    CIFAR10_CLASSES,
    Dataset,
    block_order,
    cache_dir,
    download,
    find_source,
    load_dataset,
    prepare,
    select_splits,
)
from cifar2l.errors import ConfigError, DataError

from .conftest import make_tar, png_bytes, synthetic_rows, write_image_dir, write_official_dir

BATCHES = [f"data_batch_{k}" for k in range(1, 6)]
SIZES = (11, 12, 13, 14, 15)  # unequal, so that a wrong batch offset shows


# ---------------------------------------------------------------- helpers


def write_batch(path: Path, x: np.ndarray, y) -> None:
    blob = {b"data": x, b"labels": [int(v) for v in y], b"batch_label": path.name.encode()}
    path.write_bytes(pickle.dumps(blob))


def write_batches(folder: Path, sizes=SIZES, n_test: int = 9, seed: int = 0,
                  classes: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An official-format folder with batches of the given sizes; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, name in enumerate([*BATCHES, "test_batch"]):
        x, y = synthetic_rows(sizes[k] if k < 5 else n_test, seed + 10 * k)
        write_batch(folder / name, x, y)
        written[name] = (x, y)
    if classes is not None:
        meta = {b"label_names": [c.encode() for c in classes]}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return written


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))


def image_row(path: Path) -> np.ndarray:
    """The official layout computed plane by plane: all red, then all green, then all blue."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return np.concatenate([arr[:, :, 0].ravel(), arr[:, :, 1].ravel(), arr[:, :, 2].ravel()])


def image_rows(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of root/split/<class>/* in class order, each class by file name."""
    xs, ys = [], []
    for c, name in enumerate(CIFAR10_CLASSES):
        for f in sorted((root / split / name).iterdir()):
            xs.append(image_row(f))
            ys.append(c)
    return np.stack(xs), np.array(ys)


def forbid_decode(monkeypatch) -> None:
    def boom(source):
        raise AssertionError(f"decode({source}) called: the cache was not used")

    monkeypatch.setattr(data, "decode", boom)


def count_decodes(monkeypatch) -> list:
    calls, real = [], data.decode

    def counting(source):
        calls.append(source)
        return real(source)

    monkeypatch.setattr(data, "decode", counting)
    return calls


def assert_same_dataset(a: Dataset, b: Dataset) -> None:
    for k in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        assert getattr(a, k).dtype == getattr(b, k).dtype
    assert (a.batch_sizes, a.classes, a.source, a.format) == (
        b.batch_sizes, b.classes, b.source, b.format)


def unique_rows_dataset(sizes=(20, 20, 20, 20, 20), n_test: int = 7, seed: int = 0) -> Dataset:
    """A Dataset whose rows carry their own index in the first two bytes."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    x[:, 0], x[:, 1] = np.arange(n) // 256, np.arange(n) % 256
    tx = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    return Dataset(
        train_x=x, train_y=rng.integers(0, 10, n), test_x=tx, test_y=rng.integers(0, 10, n_test),
        batch_sizes=list(sizes), classes=list(CIFAR10_CLASSES), source="mem", format="official",
    )


def row_ids(x: np.ndarray) -> np.ndarray:
    return x[:, 0].astype(np.int64) * 256 + x[:, 1]


# ---------------------------------------------------------------- official format


@pytest.mark.parametrize("kind", ["dir", "tar.gz"])
def test_official_source_rows_in_batch_order(tmp_path, kind):
    names = [f"class{i}" for i in range(10)]  # not the default list: must come from batches.meta
    folder = tmp_path / "src" / BATCH_DIR
    written = write_batches(folder, classes=names)
    source = folder if kind == "dir" else make_tar(folder, tmp_path / ARCHIVE_NAME, BATCH_DIR)

    ds = load_dataset(source)

    assert ds.format == "official"
    assert ds.classes == names
    assert ds.batch_sizes == list(SIZES)
    assert ds.source == str(source)
    np.testing.assert_array_equal(ds.train_x, np.concatenate([written[n][0] for n in BATCHES]))
    np.testing.assert_array_equal(ds.train_y, np.concatenate([written[n][1] for n in BATCHES]))
    np.testing.assert_array_equal(ds.test_x, written["test_batch"][0])
    np.testing.assert_array_equal(ds.test_y, written["test_batch"][1])
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    for k, name in enumerate(BATCHES):
        x, y = ds.batch(name)
        np.testing.assert_array_equal(x, written[name][0], err_msg=name)
        np.testing.assert_array_equal(y, written[name][1], err_msg=name)
        assert len(y) == SIZES[k]


def test_official_batch_3_is_the_third_pickle(tmp_path):
    written = write_batches(tmp_path / BATCH_DIR)
    x, y = load_dataset(tmp_path / BATCH_DIR).batch("data_batch_3")
    np.testing.assert_array_equal(x, written["data_batch_3"][0])
    np.testing.assert_array_equal(y, written["data_batch_3"][1])
    assert x.shape == (13, 3072)


def test_official_without_meta_uses_official_class_names(tmp_path):
    write_batches(tmp_path / BATCH_DIR, classes=None)
    assert load_dataset(tmp_path / BATCH_DIR).classes == CIFAR10_CLASSES


# ---------------------------------------------------------------- image-folder format


@pytest.mark.parametrize("kind", ["dir", "tar", "tar.gz"])
def test_image_folder_sources(tmp_path, kind):
    root = write_image_dir(tmp_path / "images", train_per_class=5, test_per_class=2)
    (root / "README.txt").write_text("not an image")  # stray files are ignored
    if kind == "dir":
        source = root
    else:
        source = make_tar(root, tmp_path / f"cifar10-jpeg.{kind}", "cifar10-jpeg")

    ds = load_dataset(source)

    assert ds.format == "image-folder"
    assert ds.classes == sorted(ds.classes) == CIFAR10_CLASSES
    assert ds.source == str(source)
    test_x, test_y = image_rows(root, "test")
    np.testing.assert_array_equal(ds.test_x, test_x)
    np.testing.assert_array_equal(ds.test_y, test_y)
    assert ds.batch_sizes == [10] * 5
    train_x, train_y = image_rows(root, "train")
    # every training image exactly once, in the documented block order
    order, sizes = block_order(train_y, 10)
    np.testing.assert_array_equal(ds.train_x, train_x[order])
    np.testing.assert_array_equal(ds.train_y, train_y[order])
    assert sizes == ds.batch_sizes


def test_image_folder_accepts_jpeg(tmp_path):
    root = write_image_dir(tmp_path / "jpg", train_per_class=5, test_per_class=1, fmt="jpg")
    ds = load_dataset(root)
    assert ds.train_x.shape == (50, 3072) and ds.test_x.shape == (10, 3072)
    np.testing.assert_array_equal(np.bincount(ds.train_y, minlength=10), [5] * 10)


def test_image_row_layout_is_red_green_blue_planes_row_major(tmp_path):
    root = write_image_dir(tmp_path / "images", train_per_class=5, test_per_class=2)
    h, w = np.mgrid[0:32, 0:32]
    red = (7 * h + w).astype(np.uint8)  # differs from its transpose
    green = (7 * w + h + 3).astype(np.uint8)
    blue = (255 - h - 2 * w).astype(np.uint8)
    img = np.stack([red, green, blue], axis=-1)
    (root / "test" / "cat" / "0000.png").write_bytes(png_bytes(img))
    (root / "train" / "dog" / "0002.png").write_bytes(png_bytes(img))
    expected = np.concatenate([red.ravel(), green.ravel(), blue.ravel()])

    ds = load_dataset(root)

    cat, dog = CIFAR10_CLASSES.index("cat"), CIFAR10_CLASSES.index("dog")
    row = ds.test_x[2 * cat]  # test rows: class by class, files by name
    np.testing.assert_array_equal(row, expected)
    assert ds.test_y[2 * cat] == cat
    # red (0,0), red (0,1), red (1,0), green (0,0), blue (0,0), blue (31,31)
    assert [row[0], row[1], row[32], row[1024], row[2048], row[3071]] == [0, 1, 7, 3, 255, 162]
    hits = np.flatnonzero((ds.train_x == expected).all(axis=1))
    assert len(hits) == 1
    assert ds.train_y[hits[0]] == dog


def test_image_folder_batches_hold_the_documented_files(tmp_path):
    root = write_image_dir(tmp_path / "images", train_per_class=10, test_per_class=1)
    ds = load_dataset(root)
    assert ds.batch_sizes == [20] * 5
    for k, name in enumerate(BATCHES):
        x, y = ds.batch(name)
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [2] * 10)
        want = sorted(
            (c, image_row(root / "train" / cls / f"{i:04d}.png").tobytes())
            for c, cls in enumerate(CIFAR10_CLASSES) for i in (2 * k, 2 * k + 1)
        )
        got = sorted((int(label), row.tobytes()) for row, label in zip(x, y, strict=True))
        assert got == want, name


# ---------------------------------------------------------------- block order


def test_block_order_follows_the_documented_rule():
    per_class, n_classes = 20, 10
    labels = np.repeat(np.arange(n_classes), per_class)  # grouped by class, files by name
    dealt = [c * per_class + j for j in range(per_class) for c in range(n_classes)]
    rng = np.random.default_rng(0)
    expected = []
    for b in range(5):
        block = np.array(dealt[40 * b:40 * (b + 1)])
        expected.extend(block[rng.permutation(40)])

    order, sizes = block_order(labels, n_classes)

    np.testing.assert_array_equal(order, expected)
    assert sizes == [40] * 5


def test_block_order_balanced_blocks_hold_their_rank_range():
    per_class = 20
    labels = np.repeat(np.arange(10), per_class)
    order, sizes = block_order(labels, 10)
    rank = np.tile(np.arange(per_class), 10)  # position of a row within its class
    start = 0
    for k, size in enumerate(sizes):
        block = order[start:start + size]
        start += size
        np.testing.assert_array_equal(np.bincount(labels[block], minlength=10), [4] * 10)
        assert set(rank[block]) == set(range(4 * k, 4 * k + 4))
        assert not np.all(np.diff(block) > 0)  # shuffled inside the block


def test_block_order_is_a_deterministic_permutation():
    labels = np.random.default_rng(7).integers(0, 10, size=137)  # unbalanced, interleaved
    order, sizes = block_order(labels, 10)
    again, sizes_again = block_order(labels.copy(), 10)
    np.testing.assert_array_equal(order, again)
    assert sizes == sizes_again and sum(sizes) == 137 and len(sizes) == 5
    np.testing.assert_array_equal(np.sort(order), np.arange(137))
    # each block is a contiguous piece of the round-robin sequence (by rank, then class)
    rank = np.empty(137, dtype=np.int64)
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        rank[rows] = np.arange(len(rows))
    dealt = sorted(range(137), key=lambda i: (rank[i], labels[i]))
    start = 0
    for size in sizes:
        assert set(order[start:start + size]) == set(dealt[start:start + size])
        start += size


# ---------------------------------------------------------------- cache


@pytest.mark.parametrize("kind", ["dir", "tar.gz"])
def test_second_load_is_served_from_the_cache(tmp_path, monkeypatch, kind):
    folder = write_official_dir(tmp_path / "src")
    source = folder if kind == "dir" else make_tar(folder, tmp_path / ARCHIVE_NAME, BATCH_DIR)
    calls = count_decodes(monkeypatch)
    first = load_dataset(source)
    assert len(calls) == 1
    assert len(list((cache_dir() / "decoded").iterdir())) == 1

    forbid_decode(monkeypatch)
    second = load_dataset(source)

    assert_same_dataset(first, second)


def test_changed_pickle_is_read_again(tmp_path, monkeypatch):
    folder = write_official_dir(tmp_path / "src")
    before = load_dataset(folder)
    x, y = synthetic_rows(40, seed=99)  # same shape, other content
    write_batch(folder / "data_batch_3", x, y)
    bump_mtime(folder / "data_batch_3")
    calls = count_decodes(monkeypatch)

    after = load_dataset(folder)

    assert len(calls) == 1
    np.testing.assert_array_equal(after.batch("data_batch_3")[0], x)
    assert not np.array_equal(before.batch("data_batch_3")[0], x)
    np.testing.assert_array_equal(after.batch("data_batch_1")[0], before.batch("data_batch_1")[0])


def test_changed_image_inside_a_class_folder_is_read_again(tmp_path, monkeypatch):
    root = write_image_dir(tmp_path / "images", train_per_class=5, test_per_class=1)
    load_dataset(root)
    path = root / "test" / "cat" / "0000.png"
    path.write_bytes(png_bytes(np.full((32, 32, 3), 200, dtype=np.uint8)))
    bump_mtime(path)
    calls = count_decodes(monkeypatch)

    after = load_dataset(root)

    assert len(calls) == 1
    assert (after.test_x[CIFAR10_CLASSES.index("cat")] == 200).all()


def test_dangling_link_in_a_directory_source_is_ignored(tmp_path, monkeypatch):
    root = write_image_dir(tmp_path / "images", train_per_class=5, test_per_class=1)
    (root / "train" / "cat" / "zzzz.png").symlink_to(tmp_path / "gone.png")
    first = load_dataset(root)
    assert first.train_x.shape == (50, 3072)
    forbid_decode(monkeypatch)
    assert_same_dataset(first, load_dataset(root))


def _damage(folder: Path, how: str) -> None:
    if how == "truncated-npy":
        blob = (folder / "train_x.npy").read_bytes()
        (folder / "train_x.npy").write_bytes(blob[: len(blob) // 2])
    elif how == "empty-npy":
        (folder / "test_y.npy").write_bytes(b"")
    elif how == "missing-npy":
        (folder / "train_y.npy").unlink()
    elif how == "garbage-meta":
        (folder / "meta.json").write_text("{not json")
    elif how == "incomplete-meta":
        (folder / "meta.json").write_text(json.dumps({"classes": []}))
    elif how == "missing-meta":
        (folder / "meta.json").unlink()


@pytest.mark.parametrize("how", ["truncated-npy", "empty-npy", "missing-npy", "garbage-meta",
                                 "incomplete-meta", "missing-meta"])
def test_damaged_cache_is_recovered(tmp_path, monkeypatch, how):
    folder = write_official_dir(tmp_path / "src")
    good = load_dataset(folder)
    (entry,) = (cache_dir() / "decoded").iterdir()
    _damage(entry, how)

    recovered = load_dataset(folder)
    assert_same_dataset(good, recovered)

    forbid_decode(monkeypatch)  # the cache was rewritten whole
    assert_same_dataset(good, load_dataset(folder))


# ---------------------------------------------------------------- where the data is


def test_find_source_env_var_wins_over_data_root(tmp_path, monkeypatch):
    env, root = tmp_path / "env", tmp_path / "root"
    env.mkdir()
    root.mkdir()
    monkeypatch.setenv("CIFAR2L_DATA", str(env))
    assert find_source(str(root)) == env
    assert find_source(None) == env


def test_find_source_data_root_wins_over_cache(tmp_path):
    cached = write_official_dir(cache_dir())
    root = tmp_path / "root"
    root.mkdir()
    assert find_source(str(root)) == root
    assert find_source(None) == cached == cache_dir() / BATCH_DIR


def test_find_source_finds_the_archive_in_the_cache(tmp_path):
    archive = make_tar(write_official_dir(tmp_path / "src"), tmp_path / "a.tar.gz", BATCH_DIR)
    cache_dir().mkdir(parents=True)
    shutil.copy(archive, cache_dir() / ARCHIVE_NAME)
    assert find_source(None) == cache_dir() / ARCHIVE_NAME


def test_find_source_expands_user(tmp_path, monkeypatch):
    (tmp_path / "home" / "cifar").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CIFAR2L_DATA", "~/cifar")
    assert find_source(None) == tmp_path / "home" / "cifar"


def test_missing_env_path_names_the_variable(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("CIFAR2L_DATA", str(missing))
    with pytest.raises(DataError, match="CIFAR2L_DATA") as e:
        find_source(str(root))  # an existing data.root does not hide the mistake
    assert str(missing) in str(e.value)


def test_missing_data_root_names_the_key(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"data\.root") as e:
        find_source(str(missing))
    assert str(missing) in str(e.value)


def test_empty_cache_attempts_the_download_and_fails(tmp_path):
    with pytest.raises(DataError, match="CIFAR2L_DATA") as e:
        find_source(None)
    assert "file:///nonexistent/cifar-10-python.tar.gz" in str(e.value)
    assert not (cache_dir() / ARCHIVE_NAME).exists()
    assert not (cache_dir() / (ARCHIVE_NAME + ".part")).exists()


def test_empty_cache_downloads_from_cifar2l_url(tmp_path, monkeypatch):
    archive = make_tar(write_official_dir(tmp_path / "src"), tmp_path / "remote.tar.gz", BATCH_DIR)
    monkeypatch.setattr(data, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("CIFAR2L_URL", archive.as_uri())

    found = find_source(None)

    assert found == cache_dir() / ARCHIVE_NAME
    assert found.read_bytes() == archive.read_bytes()
    assert load_dataset(found).format == "official"
    assert find_source(None) == found  # now served from the cache without downloading


# ---------------------------------------------------------------- download


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_with_bad_md5_deletes_it(tmp_path):
    remote = tmp_path / "remote.bin"
    remote.write_bytes(b"definitely not CIFAR-10" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5"):
        download(cache, remote.as_uri())
    assert _leftovers(cache) == []


def test_download_from_unreachable_url_says_to_set_cifar2l_data(tmp_path):
    cache = tmp_path / "cache"
    url = (tmp_path / "no-such-file.tar.gz").as_uri()
    with pytest.raises(DataError, match="CIFAR2L_DATA") as e:
        download(cache, url)
    assert url in str(e.value)
    assert _leftovers(cache) == []


def test_download_with_good_md5_lands_in_the_cache(tmp_path, monkeypatch):
    remote = tmp_path / "remote.bin"
    payload = bytes(range(256)) * 50
    remote.write_bytes(payload)
    monkeypatch.setattr(data, "MD5", hashlib.md5(payload).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (ARCHIVE_NAME + ".part")).write_bytes(b"stale partial download")

    target = download(cache, remote.as_uri())

    assert target == cache / ARCHIVE_NAME
    assert target.read_bytes() == payload
    assert _leftovers(cache) == [ARCHIVE_NAME]


# ---------------------------------------------------------------- corrupt inputs


@pytest.mark.parametrize("fmt", ["official", "image-folder"])
def test_truncated_tar_gz(tmp_path, fmt):
    if fmt == "official":
        archive = make_tar(write_official_dir(tmp_path / "src"), tmp_path / ARCHIVE_NAME, BATCH_DIR)
    else:
        root = write_image_dir(tmp_path / "img", train_per_class=5, test_per_class=1)
        archive = make_tar(root, tmp_path / "cifar10-jpeg.tar.gz", "cifar10-jpeg")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        load_dataset(archive)
    assert str(archive) in str(e.value)


@pytest.mark.parametrize("where", ["in-a-header", "in-member-data"])
def test_truncated_plain_tar(tmp_path, where):
    root = write_image_dir(tmp_path / "img", train_per_class=5, test_per_class=1)
    archive = make_tar(root, tmp_path / "cifar10-jpeg.tar", "cifar10-jpeg")
    with tarfile.open(archive) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
    member = files[len(files) // 2]
    cut = member.offset + 100 if where == "in-a-header" else member.offset_data + 10
    archive.write_bytes(archive.read_bytes()[:cut])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        load_dataset(archive)
    assert str(archive) in str(e.value)


@pytest.mark.parametrize("kind", ["dir", "tar.gz"])
def test_undecodable_image(tmp_path, kind):
    root = write_image_dir(tmp_path / "img", train_per_class=5, test_per_class=1)
    (root / "train" / "cat" / "0003.png").write_bytes(b"\x89PNG but not really" * 20)
    source = root if kind == "dir" else make_tar(root, tmp_path / "x.tar.gz", "cifar10-jpeg")
    with pytest.raises(DataError, match="cannot decode") as e:
        load_dataset(source)
    assert "train/cat/0003.png" in str(e.value)


def test_image_of_the_wrong_size(tmp_path):
    root = write_image_dir(tmp_path / "img", train_per_class=5, test_per_class=1)
    small = np.zeros((16, 16, 3), dtype=np.uint8)
    (root / "test" / "frog" / "0000.png").write_bytes(png_bytes(small))
    with pytest.raises(DataError, match="32x32") as e:
        load_dataset(root)
    assert "test/frog/0000.png" in str(e.value)
    assert "16x16" in str(e.value)


@pytest.mark.parametrize("split", ["test", "train"])
def test_missing_class_folder(tmp_path, split):
    root = write_image_dir(tmp_path / "img", train_per_class=5, test_per_class=1)
    shutil.rmtree(root / split / "dog")
    with pytest.raises(DataError, match="class folder missing") as e:
        load_dataset(root)
    assert f"{split}/dog" in str(e.value)


def test_missing_test_split(tmp_path):
    root = write_image_dir(tmp_path / "img", train_per_class=5, test_per_class=1)
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="test/"):
        load_dataset(root)


def test_pickle_with_wrong_data_shape(tmp_path):
    folder = write_official_dir(tmp_path / "src")
    x = np.zeros((40, 100), dtype=np.uint8)
    write_batch(folder / "data_batch_2", x, np.zeros(40, dtype=int))
    with pytest.raises(DataError, match="data_batch_2") as e:
        load_dataset(folder)
    assert "(40, 100)" in str(e.value)


def test_pickle_with_labels_out_of_range(tmp_path):
    folder = write_official_dir(tmp_path / "src")
    x, y = synthetic_rows(40, seed=4)
    y[5] = 10
    write_batch(folder / "data_batch_4", x, y)
    with pytest.raises(DataError, match="data_batch_4") as e:
        load_dataset(folder)
    assert "0..9" in str(e.value)


def test_pickle_that_does_not_unpickle(tmp_path):
    folder = write_official_dir(tmp_path / "src")
    (folder / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset(folder)


def test_official_release_missing_a_batch(tmp_path):
    folder = write_official_dir(tmp_path / "src")
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5"):
        load_dataset(folder)


def test_source_that_is_neither_format(tmp_path):
    folder = tmp_path / "junk"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a CIFAR-10 source") as e:
        load_dataset(folder)
    assert str(folder) in str(e.value)

    plain = tmp_path / "cifar.tar.gz"
    plain.write_bytes(b"this is no archive at all" * 10)
    with pytest.raises(DataError) as e:
        load_dataset(plain)
    assert str(plain) in str(e.value)


# ---------------------------------------------------------------- splits


def test_select_splits_by_batch_names():
    ds = unique_rows_dataset(sizes=(10, 11, 12, 13, 14))
    rng = np.random.default_rng(0)

    s = select_splits(ds, DataConfig(train=["data_batch_1"], val=["data_batch_2"]), rng)
    np.testing.assert_array_equal(row_ids(s["train"][0]), np.arange(0, 10))
    np.testing.assert_array_equal(s["train"][1], ds.train_y[:10])
    np.testing.assert_array_equal(row_ids(s["val"][0]), np.arange(10, 21))
    np.testing.assert_array_equal(s["test"][0], ds.test_x)

    cfg = DataConfig(train=["data_batch_3", "data_batch_5"], val=["data_batch_4"], test=None)
    s = select_splits(ds, cfg, rng)
    np.testing.assert_array_equal(row_ids(s["train"][0]), [*range(21, 33), *range(46, 60)])
    np.testing.assert_array_equal(row_ids(s["val"][0]), np.arange(33, 46))
    assert s["test"] is None


def test_select_splits_val_size_holds_out_rows():
    ds = unique_rows_dataset()
    cfg = DataConfig(train="all", val=None, val_size=17)

    s = select_splits(ds, cfg, np.random.default_rng(5))

    train_ids, val_ids = row_ids(s["train"][0]), row_ids(s["val"][0])
    assert len(val_ids) == 17 and len(train_ids) == 100 - 17
    assert not set(train_ids) & set(val_ids)
    assert np.all(np.diff(train_ids) > 0)  # the kept rows stay in batch order
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, val_ids])), np.arange(100))
    np.testing.assert_array_equal(s["train"][1], ds.train_y[train_ids])  # labels follow rows
    np.testing.assert_array_equal(s["val"][1], ds.train_y[val_ids])

    same = select_splits(ds, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(row_ids(same["val"][0]), val_ids)
    other = select_splits(ds, cfg, np.random.default_rng(6))
    assert set(row_ids(other["val"][0])) != set(val_ids)


@pytest.mark.parametrize(("train", "val_size"), [("all", 100), ("all", 250),
                                                 (["data_batch_1"], 20)])
def test_val_size_leaving_no_training_rows(train, val_size):
    ds = unique_rows_dataset()
    cfg = DataConfig(train=train, val=None, val_size=val_size)
    with pytest.raises(ConfigError, match="val_size"):
        select_splits(ds, cfg, np.random.default_rng(0))


# ---------------------------------------------------------------- standardisation


def _manual(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) - mean) / std


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_prepare_standardises_with_training_statistics(tmp_path, dtype):
    folder = tmp_path / BATCH_DIR
    written = write_batches(folder, sizes=(30, 25, 20, 20, 20), n_test=15)
    # make the validation batch clearly different, so its own statistics would not match
    x2, y2 = written["data_batch_2"]
    x2 = (x2 // 4 + 100).astype(np.uint8)
    write_batch(folder / "data_batch_2", x2, y2)
    cfg = DataConfig(root=str(folder))

    p = prepare(cfg, dtype, np.random.default_rng(0))

    train_raw = written["data_batch_1"][0].astype(np.float64)
    mean, std = train_raw.mean(axis=0), train_raw.std(axis=0)
    np.testing.assert_allclose(p.mean, mean)
    np.testing.assert_allclose(p.std, std)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for split in (p.train, p.val, p.test):
        assert split.x.dtype == np.dtype(dtype)
    np.testing.assert_allclose(p.train.x.mean(axis=0), 0, atol=tol * 10)
    np.testing.assert_allclose(p.train.x.std(axis=0), 1, atol=tol * 10)
    np.testing.assert_allclose(p.train.x, _manual(written["data_batch_1"][0], mean, std), atol=tol)
    np.testing.assert_allclose(p.val.x, _manual(x2, mean, std), atol=tol)
    np.testing.assert_allclose(p.test.x, _manual(written["test_batch"][0], mean, std), atol=tol)
    # val rows are x // 4 + 100: a quarter of the train spread, not rescaled to std 1 on their own
    assert p.val.x.std(axis=0).mean() < 0.5
    np.testing.assert_array_equal(p.train.y, written["data_batch_1"][1])
    np.testing.assert_array_equal(p.val.y, y2)
    assert (p.format, p.classes, p.source) == ("official", CIFAR10_CLASSES, str(folder))


def test_prepare_with_val_size_uses_only_the_kept_rows(tmp_path):
    folder = write_official_dir(tmp_path / "src")
    cfg = DataConfig(root=str(folder), train="all", val=None, val_size=50)

    p = prepare(cfg, "float64", np.random.default_rng(3))

    raw = select_splits(load_dataset(folder), cfg, np.random.default_rng(3))
    np.testing.assert_allclose(p.mean, raw["train"][0].mean(axis=0))
    all_rows = load_dataset(folder).train_x.astype(np.float64)
    assert not np.allclose(p.mean, all_rows.mean(axis=0))
    assert p.train.x.shape == (150, 3072) and p.val.x.shape == (50, 3072)
    np.testing.assert_allclose(p.val.x, _manual(raw["val"][0], p.mean, p.std), atol=1e-12)


def test_constant_features_do_not_produce_nan(tmp_path):
    folder = tmp_path / BATCH_DIR
    written = write_batches(folder)
    x1, y1 = written["data_batch_1"]
    x1 = x1.copy()
    x1[:, 0] = 0
    x1[:, 7] = 123
    write_batch(folder / "data_batch_1", x1, y1)

    p = prepare(DataConfig(root=str(folder)), "float32", np.random.default_rng(0))

    for split in (p.train, p.val, p.test):
        assert np.isfinite(split.x).all()
    assert p.std[0] == 1.0 and p.std[7] == 1.0
    np.testing.assert_array_equal(p.train.x[:, [0, 7]], 0)
    x2 = written["data_batch_2"][0]
    np.testing.assert_allclose(p.val.x[:, 7], x2[:, 7].astype(np.float64) - 123)
