"""Reading files that may be hostile or odd: config files and data sources.

Every read here is bounded: a FIFO is refused before it is opened (opening one blocks until a
writer comes), a device such as /dev/zero is refused before it is read (it never ends), a
regular file larger than its limit is refused unread, an archive may not decompress to more
than MAX_ARCHIVE_BYTES (a gzip bomb), and a pickle may build nothing but builtin containers and
numpy arrays (a pickle can otherwise run any code while it loads).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import pickle
import stat
import tarfile
from pathlib import Path

from .errors import Cifar2lError, DataError, os_reason, shown

MiB = 1 << 20
MAX_CONFIG_BYTES = 1 * MiB  # configs are a few hundred bytes
MAX_PICKLE_BYTES = 256 * MiB  # an official batch is 30 MiB (10,000 rows of 3,072 bytes)
MAX_IMAGE_BYTES = 4 * MiB  # a 32x32 image is a few KiB, even with metadata
MAX_ARCHIVE_BYTES = 4096 * MiB  # decompressed; the official tar is 178 MiB, the JPEG tree 93 MiB
MAX_MEMBERS = 1_000_000  # the JPEG tree has 60,023; each member costs memory in tarfile

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}  # fmt: skip


def kind(mode: int) -> str:
    """What a file of st_mode `mode` is, in words ("a FIFO (named pipe)", "a regular file")."""
    return _KINDS.get(stat.S_IFMT(mode), "a regular file")


def check_kind(path: Path, error: type[Cifar2lError], what: str = "file",
               allow_dir: bool = False) -> os.stat_result:  # fmt: skip
    """stat(path), following links; `error` naming `what` unless it is a regular file (or, with
    `allow_dir`, a directory)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{shown(path)}: cannot read {what}: broken symbolic link (to "
                        f"{shown(os.readlink(path))})") from None  # fmt: skip
        raise error(f"{shown(path)}: {what} not found") from None
    except OSError as e:
        raise error(f"{shown(path)}: cannot read {what} ({os_reason(e)})") from None
    if not (stat.S_ISREG(st.st_mode) or allow_dir and stat.S_ISDIR(st.st_mode)):
        wanted = "a regular file or a directory" if allow_dir else "a regular file"
        raise error(f"{shown(path)}: cannot read {what}: {kind(st.st_mode)}, not {wanted}")
    return st


def read_limited(path: Path, limit: int, error: type[Cifar2lError] = DataError,
                 what: str = "file") -> bytes:  # fmt: skip
    """The bytes of a regular file of at most `limit` bytes; `error` naming `what` for anything
    else (the kind is checked again once open: the file may have been swapped meanwhile)."""
    check_kind(path, error, what)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{shown(path)}: cannot read {what}: {kind(st.st_mode)}, not a "
                            "regular file")  # fmt: skip
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{shown(path)}: cannot read {what} ({os_reason(e)})") from None
    if len(data) > limit:
        raise error(f"{shown(path)}: cannot read {what}: larger than {limit // MiB} MiB")
    return data


# ---------------------------------------------------------------- archives


class TooLarge(tarfile.TarError):
    """An archive that decompresses to more than its bound."""


class Bounded(io.RawIOBase):
    """A read-only view of a (decompressing) stream that refuses to go past `limit` bytes:
    tarfile reads headers, pax records and skipped members through it, so no archive can make
    it decompress more than that."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.pos = inner, limit, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        if self.pos + len(buffer) > self.limit + 1:
            buffer = memoryview(buffer)[: max(self.limit + 1 - self.pos, 0)]
        n = self.inner.readinto(buffer)
        self.pos += n
        if self.pos > self.limit:
            raise TooLarge(f"decompresses to more than {self.limit // MiB} MiB")
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset}.get(whence)
        if target is None:  # SEEK_END would decompress everything
            raise io.UnsupportedOperation("seek from the end")
        if target > self.limit:
            raise TooLarge(f"decompresses to more than {self.limit // MiB} MiB")
        self.pos = self.inner.seek(target)
        return self.pos


_COMPRESSED = ((b"\x1f\x8b", gzip.GzipFile), (b"BZh", bz2.BZ2File),
               (b"\xfd7zXZ\x00", lzma.LZMAFile))  # fmt: skip


@contextlib.contextmanager
def open_tar(path: Path, limit: int | None = None):
    """Yield (the tar archive at `path`, read through Bounded to `limit` bytes, by default
    MAX_ARCHIVE_BYTES; whether it is compressed)."""
    limit = MAX_ARCHIVE_BYTES if limit is None else limit
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as e:  # not "corrupt": e.g. no read permission
        raise DataError(f"{shown(path)}: cannot read data source ({os_reason(e)})") from None
    with raw:
        magic = raw.read(6)
        raw.seek(0)
        opener = next((o for m, o in _COMPRESSED if magic.startswith(m)), None)
        stream = opener(fileobj=raw) if opener else raw
        with tarfile.open(fileobj=io.BufferedReader(Bounded(stream, limit)), mode="r:") as tar:
            yield tar, opener is not None


def member_kind(m: tarfile.TarInfo) -> str:
    """What a non-regular archive member is, in words."""
    if m.issym():
        return f"a symbolic link (to {shown(m.linkname)})"
    if m.islnk():
        return f"a hard link (to {shown(m.linkname)})"
    if m.isdir():
        return "a directory"
    return {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
            tarfile.FIFOTYPE: "a FIFO"}.get(m.type, f"a member of type {m.type!r}")  # fmt: skip


# ---------------------------------------------------------------- pickles

# What the official batches are made of (Python 2 cPickle of dicts, lists, byte strings and
# numpy arrays), under numpy 1's and numpy 2's module names: nothing that can run code.
_PICKLE_GLOBALS = {
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
      for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *(("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytes",
                                "bytearray", "str", "int", "float", "complex", "bool")),
}  # fmt: skip


class BatchUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside _PICKLE_GLOBALS: a hostile pickle whose
    __reduce__ names os.system (or anything else) fails to load instead of running."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {shown(module, 60)}."
                                         f"{shown(name, 60)} (a pickle may hold only "
                                         "containers and numpy arrays)")  # fmt: skip
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id (not a plain data pickle)")


def unpickle(blob: bytes):
    """Load a data pickle (bytes keys stay bytes, as the official batches need)."""
    return BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
