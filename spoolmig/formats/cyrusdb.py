"""One entry point for Cyrus's key-value databases: detect, read, write.

Backends: skiplist (formats/skiplist.md), twoskip (formats/twoskip.md) and
flat (formats/flat.md). Readers serve what a freshly restarted Cyrus serves
(uncommitted transactions rolled back) in Cyrus's iteration order, never
modify the file, and need no memory beyond the records they hand out: files
are memory-mapped read-only and walked in place.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from spoolmig.errors import FormatError, LocalFileError, UnsupportedFormat

from . import flat, skiplist, twoskip
from ._binary import Order, Report, sort_key

__all__ = ["Backend", "Db", "Order", "Report", "build", "check", "default_order", "detect", "guess_backend",
           "open_file", "records", "salvage", "sort_key"]

Backend = Literal["skiplist", "twoskip", "flat"]
BACKENDS: tuple[Backend, ...] = ("skiplist", "twoskip", "flat")

#: The comparator each backend uses unless opened with CYRUSDB_MBOXSORT.
_DEFAULT_ORDER: dict[str, Order] = {"skiplist": "signed", "twoskip": "raw", "flat": "mbox"}

#: The comparators Cyrus can open each backend with (default, CYRUSDB_MBOXSORT).
_ORDERS: dict[str, tuple[Order, ...]] = {"skiplist": ("signed", "mbox"), "twoskip": ("raw", "mbox"), "flat": ("mbox",)}

_BDB_MAGICS = {0x00053162: "btree", 0x00061561: "hash", 0x00042253: "queue"}
_CYRUS_MAGIC = b"\xa1\x02\x8b\x0d"
_DUMP_HINT = "dump it with the old server's ctl_mboxlist -d (or cyr_dbtool ... show) and read the dump"


def default_order(backend: Backend) -> Order:
    """The key order Cyrus uses for ``backend`` by default."""
    return _DEFAULT_ORDER[backend]


def _whole(buf: bytes | memoryview | Any) -> Any:
    """A buffer with ``find`` (bytes or mmap) for the fast paths, without copying if possible."""
    if isinstance(buf, memoryview):
        obj = buf.obj
        if isinstance(obj, (bytes, mmap.mmap)) and buf.c_contiguous and buf.nbytes == len(obj) and buf.itemsize == 1:
            return obj
        return buf.tobytes()
    if isinstance(buf, bytearray):
        return bytes(buf)
    return buf


def detect(buf: bytes | memoryview, *, file: str) -> Backend:
    """The backend of a database from its first bytes; UnsupportedFormat otherwise.

    An empty buffer is an empty database of any kind; it is reported as flat.
    """
    head = bytes(memoryview(buf)[:4096])
    if head.startswith(skiplist.MAGIC):
        return "skiplist"
    if head.startswith(twoskip.MAGIC):
        return "twoskip"
    if not head:
        return "flat"
    if len(head) >= 16:
        for fmt in (">I", "<I"):
            (magic,) = struct.unpack_from(fmt, head, 12)
            if magic in _BDB_MAGICS:
                raise UnsupportedFormat(file, 12, f"Berkeley DB {_BDB_MAGICS[magic]} database: spoolmig does not "
                                        "read Berkeley DB", hint=_DUMP_HINT)
    if head.startswith(_CYRUS_MAGIC):
        raise UnsupportedFormat(file, 0, "a Cyrus file but not a database (skiplist/twoskip magic expected)")
    nl = head.find(b"\n")
    first = head if nl < 0 else head[:nl]
    if b"\t" in first and b"\0" not in first and (nl >= 0 or len(head) == 4096):
        return "flat"
    raise UnsupportedFormat(file, 0, "not a Cyrus database (no skiplist or twoskip magic, not key TAB value lines)")


def records(buf: bytes | memoryview, *, file: str, backend: Backend | None = None,
            order: Order | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Committed records in the order a restarted Cyrus iterates them.

    ``order`` is the comparator the database is opened with. The default,
    None, takes the backend's default order (what ``cyr_dbtool`` uses) unless
    the file is sorted in mailbox order (a 2.3.8-3.4 server with
    ``improved_mboxlist_sort``), which such a server reads it with. Pass the
    order explicitly to get exactly ``cyr_dbtool`` (with ``-M`` for mbox),
    which refuses a skiplist not sorted in its order.
    """
    data = _whole(buf)
    if len(data) == 0:
        return iter(())
    kind = backend or detect(data, file=file)
    if kind == "skiplist":
        return skiplist.records(data, file=file, order=order)
    if kind == "twoskip":
        return twoskip.records(data, file=file, order=order)
    if kind == "flat":
        return flat.records(data, file=file)
    raise ValueError(f"unknown backend {kind!r}")


class Db:
    """A database file opened read-only (see :func:`open_file`)."""

    def __init__(self, buf: Any, file: str, backend: Backend) -> None:
        self.buf = buf
        self.file = file
        self.backend: Backend = backend

    def records(self, order: Order | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Committed records in Cyrus's iteration order."""
        return records(self.buf, file=self.file, backend=self.backend, order=order)

    def __len__(self) -> int:
        return len(self.buf)


@contextlib.contextmanager
def mapped(path: str | os.PathLike[str]) -> Iterator[Any]:
    """The bytes of ``path``, memory-mapped read-only (b"" for an empty file)."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY)
    except OSError as error:
        raise LocalFileError(f"{name}: {error.strerror}") from None
    try:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise LocalFileError(f"{name}: not a regular file")
            buf: Any = mmap.mmap(fd, info.st_size, access=mmap.ACCESS_READ) if info.st_size else b""
        except OSError as error:
            raise LocalFileError(f"{name}: {error.strerror}") from None
    finally:
        os.close(fd)
    try:
        yield buf
    finally:
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):
                buf.close()


@contextlib.contextmanager
def open_file(path: str | os.PathLike[str], *, backend: Backend | None = None) -> Iterator[Db]:
    """Map ``path`` read-only and detect its backend; an empty file is an empty database."""
    name = os.fspath(path)
    with mapped(name) as buf:
        yield Db(buf, name, backend or detect(buf, file=name))


def build(backend: Backend, records: Iterable[tuple[bytes, bytes]], *, order: Order | None = None,
          flat_escape: bool = True) -> bytes:
    """A complete database file Cyrus opens as is.

    ``order`` defaults to the backend's Cyrus default (skiplist signed,
    twoskip raw, flat mbox); pass ``mbox`` for a mailboxes.db of a server
    running with ``improved_mboxlist_sort``. ``flat_escape=False`` writes the
    2.0-2.4 flat format (no escaping).
    """
    chosen = order or _DEFAULT_ORDER[backend]
    if chosen not in _ORDERS.get(backend, ()):
        raise ValueError(f"Cyrus never reads a {backend} database in {chosen} order "
                         f"(possible: {', '.join(_ORDERS.get(backend, ()))})")
    if backend == "skiplist":
        return skiplist.build(records, order=chosen)
    if backend == "twoskip":
        return twoskip.build(records, order=chosen)
    if backend == "flat":
        return flat.build(records, escape=flat_escape, order=chosen)
    raise ValueError(f"unknown backend {backend!r}")


def check(buf: bytes | memoryview, *, file: str, backend: Backend | None = None) -> Report:
    """Structural check of a whole database (pointers, CRCs, order, lengths)."""
    data = _whole(buf)
    kind = backend or detect(data, file=file)
    module = {"skiplist": skiplist, "twoskip": twoskip, "flat": flat}[kind]
    return module.check(data, file=file)


def guess_backend(buf: bytes | memoryview, *, file: str) -> Backend:
    """Like :func:`detect`, but also recognises a skiplist/twoskip whose magic is damaged."""
    try:
        return detect(buf, file=file)
    except UnsupportedFormat as error:
        head = bytes(memoryview(buf)[:20])
        for kind, magic in (("skiplist", skiplist.MAGIC), ("twoskip", twoskip.MAGIC)):
            if len(head) == 20 and sum(a != b for a, b in zip(head, magic)) <= 4:
                return kind  # type: ignore[return-value]
        if b"\xa1\x02\x8b\x0d" not in head:
            raise error
        raise


def salvage(buf: bytes | memoryview, *, file: str, backend: Backend | None = None, order: Order | None = None
            ) -> tuple[list[tuple[bytes, bytes]], Report]:
    """Every intact committed record of a (damaged) database, sorted, with a report of the losses.

    ``order`` None: the order the file shows (``report.order`` says "mbox" for
    a mailbox-sorted file), else the backend's default.
    """
    data = _whole(buf)
    if len(data) == 0:
        return [], Report()
    kind = backend or guess_backend(data, file=file)
    module = {"skiplist": skiplist, "twoskip": twoskip, "flat": flat}[kind]
    return module.salvage(data, file=file, order=order)
