"""CIFAR-10 from either source format, with a decoded-array cache, splits and standardisation.

Sources (detected automatically):
- the official python release: a `cifar-10-batches-py/` directory or `cifar-10-python.tar.gz`;
- an image-folder tree `train/<class>/*` + `test/<class>/*`, as a directory or .tar/.tar.gz.

Rows follow the official layout: 3072 uint8 values = 1024 red, 1024 green, 1024 blue, each
row-major. Labels are indices into the class list (official order; on an image-folder source the
class folders sorted by name, which is the official order for CIFAR-10's folder names).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import console, kernels, runs, untrusted, whiten
from .errors import ConfigError, DataError, os_reason, shown

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_BYTES = 170_498_071  # its size: a download that runs past it cannot have the md5
BATCH_DIR = "cifar-10-batches-py"
N_BLOCKS = 5
BLOCK_ORDER_SEED = 0  # fixed: the image-folder "data_batch_k" blocks must never change
CACHE_VERSION = 1
IMAGE_EXT = (".png", ".jpg", ".jpeg")
D = 3072
CHANNELS = 3  # rows are the R, G, B planes of a 32x32 image, 1024 values each


@dataclass
class Dataset:
    """All of CIFAR-10, decoded: train rows in data_batch_1..5 order, then the test rows."""

    train_x: np.ndarray  # (50000, 3072) uint8
    train_y: np.ndarray  # (50000,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    batch_sizes: list[int]  # rows of data_batch_1..5 within train_x
    classes: list[str]
    source: str
    format: str  # "official" | "image-folder"

    def batch(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        k = int(name.rsplit("_", 1)[1]) - 1
        start = sum(self.batch_sizes[:k])
        stop = start + self.batch_sizes[k]
        return self.train_x[start:stop], self.train_y[start:stop]


# ---------------------------------------------------------------- where the data is


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar2l"


def find_source(root: str | None) -> Path:
    """CIFAR2L_DATA, else data.root, else the cache (downloading into it when empty)."""
    for origin, value in (("CIFAR2L_DATA", os.environ.get("CIFAR2L_DATA")), ("data.root", root)):
        if value:
            path = Path(value).expanduser()
            if not path.exists():
                raise DataError(f"{origin}={value}: no such file or directory")
            return path
    cache = cache_dir()
    for name in (BATCH_DIR, ARCHIVE_NAME):
        if (cache / name).exists():
            return cache / name
    return download(cache)


def download(cache: Path, url: str | None = None) -> Path:
    """Fetch the official archive into the cache, verify its md5, return its path."""
    url = url or os.environ.get("CIFAR2L_URL", URL)
    target = cache / ARCHIVE_NAME
    part = target.with_name(target.name + ".part")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        md5 = _fetch(url, part)
    except (OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise DataError(
            f"CIFAR-10 not found (CIFAR2L_DATA unset, data.root unset, nothing in {cache}) and "
            f"the download from {url} failed ({e}); set CIFAR2L_DATA to a local copy"
        ) from None
    if md5 != MD5:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: downloaded archive has md5 {md5}, expected {MD5}; deleted it")
    part.replace(target)
    return target


def _fetch(url: str, dest: Path) -> str:
    from .console import progress_bar

    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=30) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with progress_bar("download", total=total, unit="bytes") as advance:
            written = 0
            while chunk := resp.read(1 << 20):
                written += len(chunk)
                if written > ARCHIVE_BYTES:  # an endless or wrong source would fill the disk
                    raise ValueError(f"more than the archive's {ARCHIVE_BYTES} bytes")
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------- decoded cache


def load_dataset(source: Path) -> Dataset:
    """Decode `source` once, then serve it from uint8 .npy files in the cache."""
    source = Path(source)
    folder = cache_dir() / "decoded" / _source_key(source)
    # Temp dirs of processes killed while writing the cache (runs.is_stale_temp: a pid check on
    # this machine, an age check for another's); those of live writers, which share the cache,
    # stay. Wrongly removing one would only cost its writer the cache (_write_cache).
    runs.remove_stale_temps(folder.parent, recursive=False)
    if folder.exists():
        try:
            return _read_cache(folder)
        except (OSError, ValueError, KeyError, EOFError, TypeError):
            shutil.rmtree(folder, ignore_errors=True)  # damaged cache: decode again
    ds = decode(source)
    _write_cache(folder, ds)
    return ds


def _source_key(source: Path) -> str:
    # Path, size and mtime of the source and of everything under it: a changed source is re-read.
    real = source.resolve()
    st = real.stat()
    parts = [str(CACHE_VERSION), str(real), f"{st.st_size}:{st.st_mtime_ns}"]
    if real.is_dir():
        _stat_tree(real, "", parts)
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _stat_tree(folder, rel: str, parts: list[str]) -> None:
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        try:
            st = e.stat()
        except OSError:  # a dangling link, which decoding skips too
            st = e.stat(follow_symlinks=False)
        parts.append(f"{rel}{e.name}:{st.st_size}:{st.st_mtime_ns}")
        if e.is_dir(follow_symlinks=False):
            _stat_tree(e.path, f"{rel}{e.name}/", parts)


_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _read_cache(folder: Path) -> Dataset:
    meta = json.loads((folder / "meta.json").read_text())
    # Memory-mapped: a run reads only the batches it uses (data_batch_1 alone for Table 2).
    arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in _ARRAYS}
    return Dataset(**arrays, **meta)


def _write_cache(folder: Path, ds: Dataset) -> None:
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp.{runs.writer_tag()}."))
        tmp.chmod(0o777 & ~runs.umask())  # mkdtemp makes it 0700; a shared cache must be readable
        for k in _ARRAYS:
            np.save(tmp / f"{k}.npy", getattr(ds, k))
        meta = {k: getattr(ds, k) for k in ("batch_sizes", "classes", "source", "format")}
        (tmp / "meta.json").write_text(json.dumps(meta))
        tmp.rename(folder)
    except BaseException as e:
        # Another process filled the cache first, or it is read-only or full: the data is in
        # memory, so the run goes on uncached (saying so, unless another process won the race).
        # A signal (or any other error) goes on up, without leaving the half-written copy.
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        if not folder.is_dir():
            console.warn(f"data cache {shown(folder.parent)} not written ({os_reason(e)}); "
                         "the data is decoded again by every run")  # fmt: skip


# ---------------------------------------------------------------- decoding


def decode(source: Path) -> Dataset:
    """A directory or an archive; anything else (a FIFO, /dev/zero) is refused unread."""
    st = untrusted.check_kind(source, DataError, "data source", allow_dir=True)
    if stat.S_ISDIR(st.st_mode):
        files = _dir_members(source)
    else:
        files = _tar_members(source)
    return _assemble(files, str(source))


def _limit(name: str) -> int:
    """The most bytes a source file of this name may hold (untrusted.py)."""
    return untrusted.MAX_PICKLE_BYTES if _OFFICIAL.search(name) else untrusted.MAX_IMAGE_BYTES


def _dir_members(root: Path):
    """(relative path, reader) pairs for every regular file under a directory (FIFOs, devices
    and dangling links are skipped); a reader reads no more than the file's limit."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            yield rel, functools.partial(untrusted.read_limited, p, _limit(rel))


def _tar_members(path: Path):
    try:
        with untrusted.open_tar(path) as (tar, compressed):
            for count, m in enumerate(tar, 1):
                _check_member(path, m, count)
                if _wanted(m.name):
                    data = tar.extractfile(m).read()
                    yield m.name, (lambda d=data: d)
            if not compressed:
                _check_complete(tar)
    except untrusted.TooLarge as e:
        raise DataError(f"{path}: archive {e}: not CIFAR-10 (a compression bomb?)") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        detail = " ".join(str(e).split())  # tarfile lists each method it tried on its own line
        raise DataError(f"{path}: truncated or corrupt archive ({detail})") from None


def _check_member(path: Path, m: tarfile.TarInfo, count: int) -> None:
    """Refuse an archive of too many members, and a wanted member that is no regular file
    (links and devices are not followed out of an archive) or larger than its limit."""
    if count > untrusted.MAX_MEMBERS:
        raise DataError(f"{path}: more than {untrusted.MAX_MEMBERS} members: not CIFAR-10")
    if not _wanted(m.name):
        return
    if not m.isfile():
        raise DataError(f"{path}: {shown(m.name)}: {untrusted.member_kind(m)}, not a regular "
                        "file")  # fmt: skip
    if m.size > _limit(m.name):
        raise DataError(f"{path}: {shown(m.name)}: {m.size} bytes, more than the "
                        f"{_limit(m.name) // untrusted.MiB} MiB such a file may hold")  # fmt: skip


def _check_complete(tar: tarfile.TarFile) -> None:
    # tarfile ends the member list quietly at a truncated or garbled header; a complete archive
    # ends with a zero block there. (gzip, bz2 and xz streams report truncation themselves.)
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(end) != tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"no end-of-archive marker at byte {tar.offset}")


_OFFICIAL = re.compile(r"(?:^|/)(data_batch_[1-5]|test_batch|batches\.meta)$")
_IMAGE = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


def _wanted(name: str) -> bool:
    return bool(_OFFICIAL.search(name)) or (
        bool(_IMAGE.search(name)) and name.lower().endswith(IMAGE_EXT)
    )


def _assemble(members, source: str) -> Dataset:
    pickles, images, first = {}, {"train": {}, "test": {}}, {}
    for name, read in members:
        if m := _OFFICIAL.search(name):
            _one_copy(first, "official", name, m.start(1), source)
            pickles[m.group(1)] = (name, read())
        elif (m := _IMAGE.search(name)) and name.lower().endswith(IMAGE_EXT):
            _one_copy(first, "images", name, m.start(1), source)
            images[m.group(1)].setdefault(m.group(2), []).append((name, read))
    if "data_batch_1" in pickles or "test_batch" in pickles:
        return _from_pickles(pickles, source)
    if images["train"] or images["test"]:
        return _from_images(images, source)
    raise DataError(
        f"{source}: not a CIFAR-10 source: expected the official python release "
        f"({BATCH_DIR}/ or {ARCHIVE_NAME}) or image folders train/<class>/ and test/<class>/"
    )


def _one_copy(first: dict, kind: str, name: str, cut: int, source: str) -> None:
    """Refuse a source holding two copies (`cifar-10-batches-py/` beside a `.bak` of it, two
    image trees): one would win silently, by the order of the names. `name[:cut]` is the
    folder that holds the batches (or train/ and test/)."""
    folder, seen = first.setdefault(kind, (name[:cut], name))
    if folder != name[:cut]:
        raise DataError(f"{source}: two copies of CIFAR-10 ({shown(seen)} and {shown(name)}); "
                        "point data.root at one of them")  # fmt: skip


def _from_pickles(pickles: dict, source: str) -> Dataset:
    wanted = [f"data_batch_{k}" for k in range(1, N_BLOCKS + 1)] + ["test_batch"]
    missing = [n for n in wanted if n not in pickles]
    if missing:
        raise DataError(f"{source}: official release is missing {', '.join(missing)}")
    parts = {n: _unpickle_batch(*pickles[n], source) for n in wanted}
    classes = _official_classes(pickles.get("batches.meta"), source)
    train = [parts[n] for n in wanted[:-1]]
    return Dataset(
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=parts["test_batch"][0],
        test_y=parts["test_batch"][1],
        batch_sizes=[len(y) for _, y in train],
        classes=classes,
        source=source,
        format="official",
    )


def _unpickle_batch(name: str, blob: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = untrusted.unpickle(blob)  # containers and numpy arrays only: no code runs
        x = np.asarray(d[b"data"])
        y = np.asarray(d[b"labels"])
    except Exception as e:  # any unpickling failure means a corrupt file
        raise DataError(f"{source}: {name}: unreadable batch ({type(e).__name__}: {e})") from None
    if y.size and y.dtype.kind not in "iu":  # 1.5 or True must not pass as a class index
        raise DataError(f"{source}: {name}: labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != D or y.shape != (x.shape[0],):
        raise DataError(
            f"{source}: {name}: expected uint8 data of shape (N, {D}) and N labels, "
            f"got data {x.dtype} {x.shape} and labels {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{source}: {name}: labels must lie in 0..9")
    return x, y


CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


def _official_classes(meta, source: str) -> list[str]:
    """The class names of batches.meta: 10 distinct names, one per label 0..9."""
    if meta is None:
        return list(CIFAR10_CLASSES)
    try:
        d = untrusted.unpickle(meta[1])
        names = [n.decode() if isinstance(n, bytes) else n for n in d[b"label_names"]]
    except Exception as e:
        raise DataError(f"{source}: batches.meta: unreadable ({type(e).__name__}: {e})") from None
    if len(names) != len(CIFAR10_CLASSES) or len(set(names)) != len(names) or \
            not all(isinstance(n, str) and n for n in names):  # fmt: skip
        raise DataError(f"{source}: batches.meta: label_names must be "
                        f"{len(CIFAR10_CLASSES)} distinct names (labels 0..9), got "
                        f"{shown(names, 120)}")  # fmt: skip
    return names


def _from_images(images: dict, source: str) -> Dataset:
    classes = sorted(images["train"])
    every = set(images["train"]) | set(images["test"])
    for split in ("train", "test"):
        missing = sorted(every - set(images[split]))
        if not images[split] or missing:
            what = missing[0] if missing else "every class"
            raise DataError(f"{source}: {split}/{what}: class folder missing")
    train_x, train_y = _decode_split(images["train"], classes)
    test_x, test_y = _decode_split(images["test"], classes)
    order, sizes = block_order(train_y, len(classes))
    return Dataset(
        train_x=train_x[order],
        train_y=train_y[order],
        test_x=test_x,
        test_y=test_y,
        batch_sizes=sizes,
        classes=classes,
        source=source,
        format="image-folder",
    )


def _decode_split(by_class: dict, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode images class by class, each class sorted by file name."""
    from .console import progress_bar

    items = [(c, name, read) for c in classes for name, read in sorted(by_class[c])]
    x = np.empty((len(items), D), dtype=np.uint8)
    y = np.empty(len(items), dtype=np.int64)
    converted: dict[str, list[str]] = {}  # mode -> images expanded to RGB from it
    with progress_bar("decode", total=len(items)) as advance:
        for i, (c, name, read) in enumerate(items):
            x[i] = _decode_image(name, read(), converted)
            y[i] = classes.index(c)
            advance(1)
    for mode, names in converted.items():
        console.warn(f"{len(names)} {mode} image(s) expanded to RGB exactly, e.g. {names[0]}")
    return x, y


# Modes that convert to 8-bit RGB exactly: grey levels, palettes, bilevel (alpha: when opaque).
_EXACT_MODES = ("L", "P", "1", "RGBA", "LA", "PA")


def _decode_image(name: str, blob: bytes, converted: dict) -> np.ndarray:
    """A 32x32 image file -> its row (D,) uint8. Its size and mode are checked before a pixel
    is decoded (a decompression bomb never is); modes that would change its values (16-bit,
    float, CMYK, transparency) are refused; exact conversions are noted in `converted`."""
    from PIL import Image, UnidentifiedImageError

    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as im:
                if im.size != (32, 32):
                    raise DataError(f"{name}: expected a 32x32 image, got "
                                    f"{im.size[0]}x{im.size[1]}")  # fmt: skip
                arr = _rgb_pixels(name, im, converted)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, *bombs) as e:
        raise DataError(f"{name}: cannot decode image ({e})") from None
    return arr.transpose(2, 0, 1).reshape(D)  # HWC -> the official R, G, B planes


def _rgb_pixels(name: str, im, converted: dict) -> np.ndarray:
    """(32, 32, 3) uint8 of an opened image, when its mode converts to RGB exactly."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode not in _EXACT_MODES:
        raise DataError(f"{name}: image mode {im.mode} (e.g. 16-bit, float or CMYK) does not "
                        "convert to 8-bit RGB exactly; expected an RGB image")  # fmt: skip
    rgba = np.asarray(im.convert("RGBA"))
    if (rgba[..., 3] != 255).any():
        raise DataError(f"{name}: image mode {im.mode} with transparent pixels: their colour "
                        "is undefined; expected an opaque RGB image")  # fmt: skip
    if im.mode != "P":  # a palette only stores RGB compactly; grey or alpha is worth a word
        converted.setdefault(im.mode, []).append(name)
    return np.ascontiguousarray(rgba[..., :3])


def block_order(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """The documented order of image-folder training rows, cut into data_batch_1..5.

    Rows arrive grouped by class, each class sorted by file name. They are dealt round-robin
    over the classes (image j of class c lands at position j * n_classes + c when the classes are
    balanced), cut into 5 contiguous blocks, and each block is shuffled by a fixed permutation
    from numpy.random.default_rng(0). On the 50,000-image CIFAR-10 tree every block holds the
    files 1000k..1000k+999 of every class, 10,000 rows, class-mixed.
    """
    per_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    rank = np.empty(len(labels), dtype=np.int64)  # position of a row within its class
    for rows in per_class:
        rank[rows] = np.arange(len(rows))
    order = np.lexsort((labels, rank))  # by rank, then by class: round-robin
    rng = np.random.default_rng(BLOCK_ORDER_SEED)
    blocks = [b[rng.permutation(len(b))] for b in np.array_split(order, N_BLOCKS)]
    return np.concatenate(blocks), [len(b) for b in blocks]


# ---------------------------------------------------------------- splits and standardisation


@dataclass
class Split:
    x: np.ndarray  # (N, D) standardised, float32 or float64
    y: np.ndarray  # (N,) int64


@dataclass
class Prepared:
    train: Split
    val: Split
    test: Split | None
    mean: np.ndarray  # (D,) training-split statistics
    std: np.ndarray
    classes: list[str]
    source: str
    format: str
    fingerprints: dict[str, str] = field(default_factory=dict)  # split -> fingerprint()
    zca_mean: np.ndarray | None = None  # data.zca_eps: the whitening (whiten.py), else None
    zca: np.ndarray | None = None  # (D, D)


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """The first 16 hex digits of the sha256 of a split's labels and raw uint8 pixels: the same
    images in the same order give the same value on any machine (0.1 s for 45,000 images)."""
    h = hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).data)
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()[:16]


def select_splits(ds: Dataset, data_cfg, rng: np.random.Generator) -> dict:
    """Raw uint8 (x, y) per split, by batch names or by a seeded hold-out of `val_size` rows."""
    names = [f"data_batch_{k}" for k in range(1, N_BLOCKS + 1)]
    train_names = names if data_cfg.train == "all" else data_cfg.train
    train = _concat([ds.batch(n) for n in train_names])
    if data_cfg.val_size is not None:
        n = len(train[1])
        if data_cfg.val_size >= n:
            raise ConfigError(f"data.val_size: {data_cfg.val_size} leaves no training rows ({n})")
        perm = rng.permutation(n)
        held, kept = perm[: data_cfg.val_size], np.sort(perm[data_cfg.val_size :])
        val, train = (train[0][held], train[1][held]), (train[0][kept], train[1][kept])
    else:
        val = _concat([ds.batch(n) for n in data_cfg.val])
    test = (ds.test_x, ds.test_y) if data_cfg.test else None
    return {"train": train, "val": val, "test": test}


def _concat(parts):
    """One (x, y) of the parts; a single part as it is, a read-only view of the cache like the
    test split (its raw rows are only read: checked, hashed and standardised; not copied)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


# ---------------------------------------------------------------- one image, one split

# 32 of a row's 384 8-byte words, spread over the image, and a fixed odd multiplier for each: a
# row's key is the wrapped sum of their products. Equal rows have equal keys; a shared key is
# then confirmed on the full rows, so a collision can never refuse good data.
_KEY_WORDS = np.linspace(0, D // 8 - 1, 32).astype(np.intp)
_KEY_MULTIPLIERS = np.random.default_rng(0).integers(1, 2**63, 32, dtype=np.uint64) | np.uint64(1)
SHARED_LIMIT = 0.01  # a larger fraction of a split seen in another one is refused


def row_keys(x: np.ndarray) -> np.ndarray:
    """(N,) uint64 keys of (N, 3072) uint8 rows (see _KEY_WORDS); ~0.03 s for 60,000 rows."""
    words = np.ascontiguousarray(x).view(np.uint64)[:, _KEY_WORDS]
    return (words * _KEY_MULTIPLIERS).sum(axis=1, dtype=np.uint64)


def shared_rows(a: np.ndarray, keys_a: np.ndarray, b: np.ndarray, keys_b: np.ndarray) -> int:
    """How many rows of `b` equal, pixel for pixel, a row of `a` (with their row_keys)."""
    if not len(a) or not len(b):
        return 0
    order = np.argsort(keys_a, kind="stable")
    sorted_keys = keys_a[order]
    at = np.searchsorted(sorted_keys, keys_b).clip(max=len(a) - 1)
    candidates = np.flatnonzero(sorted_keys[at] == keys_b)
    if not len(candidates):
        return 0
    match = order[at[candidates]]  # the first row of `a` with that key
    return int((a[match] == b[candidates]).all(axis=1).sum())


def split_keys(data_cfg) -> dict[str, str]:
    """The config keys that define each split, for messages."""
    train = "all" if data_cfg.train == "all" else ", ".join(data_cfg.train)
    val = "data.val_size (held out of data.train)" if data_cfg.val_size is not None else (
        f"data.val ({', '.join(data_cfg.val)})")  # fmt: skip
    return {"train": f"data.train ({train})", "val": val, "test": "data.test (test_batch)"}


def check_splits(raw: dict, data_cfg, source: str) -> None:
    """Refuse a split without images, and splits that share images (the same image under two
    names in the data: a copied batch or file); a few shared images, as a real dataset may
    hold, are only reported."""
    names = [k for k in ("train", "val", "test") if raw.get(k) is not None]
    where = split_keys(data_cfg)
    for name in names:
        if not len(raw[name][1]):
            raise DataError(f"{source}: {where[name]}: the {name} split has no images")
    keys = {k: row_keys(raw[k][0]) for k in names}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            n = shared_rows(raw[first][0], keys[first], raw[second][0], keys[second])
            if not n:
                continue
            size = len(raw[second][1])
            what = (f"{where[second]} and {where[first]}: {n} of the {size} data.{second} images "
                    f"are pixel-identical to data.{first} images")  # fmt: skip
            if n > SHARED_LIMIT * min(size, len(raw[first][1])):
                raise DataError(f"{source}: {what}; the same image under two names would be in "
                                "two splits")  # fmt: skip
            console.warn(f"{source}: {what} (under {SHARED_LIMIT:.0%}, kept)")


def fit_standardizer(x: np.ndarray, per: str = "per_feature") -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (D,) of the training rows (float64); constant features get std 1.

    per_feature: one mean and std per input (the study's); per_channel: one per colour plane
    (3 values, each repeated over its 1024 pixels), as convolutional pipelines standardise.
    One pass: E[x^2] - E[x]^2 from exact sums: integer sums of uint8 pixels and their squares
    (kernels.column_sums; its NumPy reference while numba loads), or float64 sums of float32
    squares for other inputs, which are exact for pixel values (<= 255^2) too, so all give the
    same bits.
    """
    if x.dtype == np.uint8:
        sums = kernels.column_sums_ref if kernels.importing() else kernels.column_sums
        total, squares = sums(x)
        mean, sq = total / len(x), squares / len(x)
    else:
        xf = x.astype(np.float32)
        mean = xf.mean(axis=0, dtype=np.float64)
        sq = np.einsum("ij,ij->j", xf, xf, dtype=np.float64) / len(x)
    if per == "per_channel":
        planes = CHANNELS, -1
        mean = np.repeat(mean.reshape(planes).mean(axis=1), x.shape[1] // CHANNELS)
        sq = np.repeat(sq.reshape(planes).mean(axis=1), x.shape[1] // CHANNELS)
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    std[std == 0] = 1.0
    return mean, std


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, dtype) -> np.ndarray:
    """(x - mean) / std in `dtype`, mean and std rounded to it first (kernels.standardize).
    While the kernels are still loading (preload.py's thread: numba's import takes ~0.5 s),
    NumPy's passes of the reference, which give the same bits, do not wait for them."""
    dt = np.dtype(dtype)
    out = np.empty(x.shape, dtype=dt)
    fn = kernels.standardize_ref if kernels.importing() else kernels.standardize
    return fn(x, mean.astype(dt), std.astype(dt), out)


def prepare(data_cfg, dtype: str, rng: np.random.Generator) -> Prepared:
    """Locate, load, split and standardise with the training split's statistics only."""
    ds = load_dataset(find_source(data_cfg.root))
    raw = select_splits(ds, data_cfg, rng)
    check_splits(raw, data_cfg, ds.source)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL
        prints = {k: pool.submit(fingerprint, *v) for k, v in raw.items() if v is not None}
        mean, std = fit_standardizer(raw["train"][0], data_cfg.standardize)

        def split(pair):
            return None if pair is None else Split(standardize(pair[0], mean, std, dtype), pair[1])

        splits = {k: split(raw[k]) for k in ("train", "val", "test")}
        fingerprints = {k: f.result() for k, f in prints.items()}
    zca = whitened(splits, data_cfg.zca_eps)
    return Prepared(**splits, mean=mean, std=std, classes=ds.classes, source=ds.source,
                    format=ds.format, fingerprints=fingerprints, zca_mean=zca[0],
                    zca=zca[1])  # fmt: skip


def whitened(splits: dict, eps: float | None) -> tuple:
    """With data.zca_eps: every split whitened (in place of its rows) by the whitening fitted
    on the standardised training split; returns (mean, W), or (None, None) without."""
    if eps is None:
        return None, None
    mean, w = whiten.fit(splits["train"].x, eps)
    for k, s in splits.items():
        if s is not None:
            splits[k] = Split(whiten.apply(s.x, mean, w), s.y)
    return mean, w
