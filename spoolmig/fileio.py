"""The one durable-write path: every file spoolmig puts on disk goes through here.

A file is written under a temporary name in its final directory, flushed,
fsynced and renamed over the destination, so a reader (or a crash) sees
either the old file or the whole new one, never a torn one. Temporary names
carry :data:`TEMP_MARK` so leftovers of a killed run can be recognised and
removed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

#: Every temporary file spoolmig creates has a name starting with this.
TEMP_MARK = ".spoolmig-tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str],
    *,
    mode: int = 0o644,
    fsync: bool = True,
    mtime_ns: int | None = None,
) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` atomically on success.

    Args:
        path: the destination.
        mode: permission bits of the new file.
        fsync: flush the data and the directory entry to disk. Batch writers
            (the mirror) pass False and sync the filesystem once per batch.
        mtime_ns: if given, the new file's modification time.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=TEMP_MARK, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            if fsync:
                os.fsync(f.fileno())
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(directory)


#: Temporary names of :func:`publish_bytes`: TEMP_MARK, the pid and a counter (O_EXCL makes a clash harmless).
_SEQ = itertools.count()
_TEMP_B = TEMP_MARK.encode()
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def _read_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
#: This process's part of the temporary names (getpid is a system call; kept current across fork).
_PID_B = [b"%d-" % os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID_B.__setitem__(0, b"%d-" % os.getpid()))


def publish_bytes(path: bytes, data: bytes, mode: int, mtime_ns: int) -> None:
    """Put ``data`` at ``path`` atomically, without fsync (the caller syncs per batch).

    The same contract as :func:`atomic_writer` with ``fsync=False``, for the
    hot path of a mirror's first copy (one call per message file): raw system
    calls, no file object, no random name. The temporary is created with
    ``O_EXCL|O_NOFOLLOW``, gets mode and mtime through its descriptor, and is
    renamed over ``path``; on any error it is removed and ``path`` untouched.
    """
    head = path.rpartition(b"/")[0] + b"/" + _TEMP_B + _PID_B[0]
    while True:
        tmp = head + b"%d" % next(_SEQ)
        try:
            fd = os.open(tmp, _NEW_FILE, mode & 0o777)
            break
        except FileExistsError:
            continue
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mode & _UMASK or mode & ~0o777:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o644,
    fsync: bool = True,
    mtime_ns: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, mode=mode, fsync=fsync, mtime_ns=mtime_ns) as f:
        f.write(data)


def remove_temporaries(directory: str | os.PathLike[str]) -> int:
    """Delete leftovers of killed runs below ``directory``; return how many."""
    removed = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.startswith(TEMP_MARK):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
                    removed += 1
    return removed
