"""The one durable-write path: every file spoolmig puts on disk goes through here.

A file is written under a temporary name in its final directory, flushed,
fsynced and renamed over the destination, so a reader (or a crash) sees
either the old file or the whole new one, never a torn one. Temporary names
carry :data:`TEMP_MARK` so leftovers of a killed run can be recognised and
removed. The mirror's hot path, :func:`publish_bytes`, writes new files
unnamed (O_TMPFILE) and names them when they are whole, so they leave no
temporary at all.
"""

from __future__ import annotations

import contextlib
import errno
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
#: An unnamed file in a directory (Linux 3.11+, ext4/xfs/btrfs/tmpfs); 0 where the platform has none.
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_UNNAMED_FILE = _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
#: errno of open(O_TMPFILE) when the kernel (EISDIR: it sees only O_DIRECTORY) or the filesystem cannot.
_NO_UNNAMED = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
#: errno of linkat through /proc/self/fd when /proc is not usable.
_NO_PROC = frozenset({errno.ENOENT, errno.EACCES})


def _read_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _open_proc_fd() -> int | None:
    """This process's /proc/self/fd, through which an unnamed file gets its name; None without it.

    "self" is resolved when the directory is opened: the descriptor names this
    process's descriptors even when a thread uses it, and a forked child must
    open its own (see :func:`_after_fork_in_child`).
    """
    if not _O_TMPFILE:
        return None
    try:
        return os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


_UMASK = _read_umask()
#: This process's part of the temporary names (getpid is a system call; kept current across fork).
_PID_B = [b"%d-" % os.getpid()]
#: The descriptor of /proc/<this pid>/fd, or None: then files are published by rename.
_PROC_FD = [_open_proc_fd()]
#: Whether unnamed files work here; set to False once, by the first call that finds they do not.
_UNNAMED_OK = [_PROC_FD[0] is not None]


def _after_fork_in_child() -> None:
    _PID_B[0] = b"%d-" % os.getpid()
    inherited = _PROC_FD[0]
    if inherited is not None:  # it names the parent's descriptors
        _PROC_FD[0] = _open_proc_fd()
        _UNNAMED_OK[0] = _UNNAMED_OK[0] and _PROC_FD[0] is not None
        with contextlib.suppress(OSError):
            os.close(inherited)


os.register_at_fork(after_in_child=_after_fork_in_child)


def publish_bytes(path: bytes, data: bytes, mode: int, mtime_ns: int, *, replacing: bool = False) -> None:
    """Put ``data`` at ``path`` atomically, without fsync (the caller syncs per batch).

    The same contract as :func:`atomic_writer` with ``fsync=False``, for the
    hot path of a mirror's first copy (one call per message file): raw system
    calls, no file object, no random name. Nothing partial is ever visible
    under ``path``; on any error nothing is left behind and an old ``path`` is
    untouched. A symbolic link at ``path`` is replaced, never followed.

    Where the kernel and filesystem can (Linux, O_TMPFILE), the file is born
    unnamed in the destination directory, gets its data, mode and mtime
    through its descriptor and is then given its name with
    ``linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW)``: one directory operation
    instead of a create plus a rename (less system time per file), and a
    process killed while writing leaves nothing behind (the kernel frees an unnamed
    inode) instead of a temporary. If ``path`` exists (a changed
    ``cyrus.index`` fetched again) the inode is linked to a TEMP_MARK name
    and renamed over it, so the replacement stays atomic; only a kill between
    that link and the rename leaves a temporary. Elsewhere (no O_TMPFILE, no
    /proc; decided once per process) the file is created under a TEMP_MARK
    name with ``O_EXCL|O_NOFOLLOW`` and renamed over ``path``.

    ``replacing``: the caller expects ``path`` to exist (a changed metadata
    file). It is then written under a TEMP_MARK name and renamed over, the
    fewest system calls for a replacement; an unnamed file would first fail
    to take the name, then be linked to a temporary one anyway.
    """
    head, sep, _ = path.rpartition(b"/")
    directory = (head or b"/") if sep else b"."
    if _UNNAMED_OK[0] and not replacing:
        proc = _PROC_FD[0]
        try:
            fd = os.open(directory, _UNNAMED_FILE, mode & 0o777)
        except OSError as error:
            if error.errno not in _NO_UNNAMED:
                raise
            _UNNAMED_OK[0] = False
        else:
            if _publish_unnamed(fd, proc, directory, path, data, mode, mtime_ns):
                return
            _publish_renamed(directory, path, data, mode, mtime_ns)
            _UNNAMED_OK[0] = False  # /proc could not name the file where a rename could
            return
    _publish_renamed(directory, path, data, mode, mtime_ns)


def _fill(fd: int, data: bytes, mode: int, mtime_ns: int) -> None:
    """Data, then the mode the umask took away (or set-id bits), then the mtime, all through ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if mode & _UMASK or mode & ~0o777:
        os.fchmod(fd, mode)
    os.utime(fd, ns=(mtime_ns, mtime_ns))


def _publish_unnamed(fd: int, proc: int | None, directory: bytes, path: bytes, data: bytes, mode: int,
                     mtime_ns: int) -> bool:
    """Fill the unnamed file ``fd`` and name it ``path``; False (nothing done) if /proc cannot name it."""
    try:
        _fill(fd, data, mode, mtime_ns)
        name = b"%d" % fd
        try:
            # A directory descriptor makes CPython call linkat(); link() on the /proc path gives EXDEV.
            os.link(name, path, src_dir_fd=proc, follow_symlinks=True)
        except FileExistsError:
            _link_over(name, proc, directory, path)
        except OSError as error:
            if error.errno in _NO_PROC:
                return False
            raise
    finally:
        os.close(fd)
    return True


def _link_over(name: bytes, proc: int | None, directory: bytes, path: bytes) -> None:
    """Replace an existing ``path`` with the unnamed file: link it to a temporary name, rename that over."""
    head = directory + b"/" + _TEMP_B + _PID_B[0]
    while True:
        tmp = head + b"%d" % next(_SEQ)
        try:
            os.link(name, tmp, src_dir_fd=proc, follow_symlinks=True)
            break
        except FileExistsError:
            continue
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _publish_renamed(directory: bytes, path: bytes, data: bytes, mode: int, mtime_ns: int) -> None:
    """The portable way: a TEMP_MARK file created O_EXCL|O_NOFOLLOW, filled, renamed over ``path``."""
    head = directory + b"/" + _TEMP_B + _PID_B[0]
    while True:
        tmp = head + b"%d" % next(_SEQ)
        try:
            fd = os.open(tmp, _NEW_FILE, mode & 0o777)
            break
        except FileExistsError:
            continue
    try:
        try:
            _fill(fd, data, mode, mtime_ns)
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
