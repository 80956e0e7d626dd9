"""A local folder standing for the old server's ``/`` (an offline copy, e.g. an rsync'd ``/old``).

With folder ``/old`` the source root ``/var/spool/imap`` is read from
``/old/var/spool/imap``. Nothing outside the folder is ever opened: every
path is resolved one component at a time with ``openat(..., O_NOFOLLOW)``
from a descriptor of the folder, so a symlink inside the copy (even one
placed in a directory component, or swapped in while we walk) cannot lead
out of it. Symlinks *above* a root (``/old/var/spool -> /old/srv/spool``)
are resolved as a chroot would, staying inside the folder; symlinks below
a root are reported as entries and never followed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mod
import time
from collections.abc import Iterable, Iterator

from spoolmig.errors import TransportError
from spoolmig.transport._common import check_relpath, check_root, entry_from_stat, glob_matcher, join
from spoolmig.transport.base import Entry, Fetched, KnownPaths, Names, changed_only

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that a hostile source planted must not hang us.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: errno values that mean "gone or no longer what it was": never fatal.
_VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
_MAX_SYMLINKS = 40
_CHUNK = 1 << 20


def _plain_file(de: os.DirEntry[str]) -> bool:
    """Is this a regular file, by the directory's own type field (no stat)?"""
    try:
        return de.is_file(follow_symlinks=False)
    except OSError:
        return False


class LocalSource:
    """Read-only view of a local folder; see the module docstring."""

    def __init__(self, root_folder: str | os.PathLike[str]) -> None:
        self.folder = os.path.abspath(os.fspath(root_folder))
        if not os.path.isdir(self.folder):
            raise TransportError(f"{self.folder}: source folder does not exist or is not a directory")
        self._clocks: dict[str, int] = {}

    def describe(self) -> str:
        return self.folder

    # -- resolution ---------------------------------------------------------

    def _open_root(self, root: str) -> int | None:
        """Descriptor of ``root`` inside the folder, chroot-style; None if missing."""
        parts = [p.encode() for p in check_root(root).split("/") if p]
        fd = os.open(self.folder, _DIR_FLAGS & ~os.O_NOFOLLOW)
        stack = [fd]  # descriptors from the folder down; stack[0] is the folder
        links = 0
        try:
            while parts:
                part = parts.pop(0)
                if part == b"..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                if part in (b"", b"."):
                    continue
                try:
                    st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
                except OSError as error:
                    if error.errno in _VANISHED:
                        return None
                    raise self._error(root, error) from None
                if stat_mod.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_SYMLINKS:
                        return None
                    target = os.readlink(part, dir_fd=stack[-1])
                    if target.startswith(b"/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    parts[:0] = target.split(b"/")
                    continue
                try:
                    stack.append(os.open(part, _DIR_FLAGS, dir_fd=stack[-1]))
                except OSError as error:
                    if error.errno in _VANISHED:
                        return None
                    raise self._error(root, error) from None
            result = stack.pop()
            return result
        finally:
            for other in stack:
                os.close(other)

    def _open_dir(self, rootfd: int, rel: bytes) -> int | None:
        """Descriptor of directory ``rel`` below a root, never through a symlink."""
        fd = os.dup(rootfd)
        if not rel:
            return fd
        try:
            for part in rel.split(b"/"):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as error:
                    if error.errno in _VANISHED:
                        return None
                    raise self._error(rel, error) from None
                os.close(fd)
                fd = nfd
            result, fd = fd, -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    def _error(self, path: str | bytes, error: OSError) -> TransportError:
        shown = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
        return TransportError(f"{self.folder}: {shown}: {error.strerror}")

    # -- listing ------------------------------------------------------------

    def listing_clock(self, root: str) -> int | None:
        """This machine's clock when the last walk or stat in ``root`` began (the source's files share it)."""
        return self._clocks.get(root)

    def _entry(self, dirfd: int, name: bytes, path: bytes, since: int | None = None) -> Entry | None:
        """lstat as an Entry; None: vanished, or (with ``since``) its inode unchanged since then."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if since is not None and st.st_ctime_ns <= since:
                return None
            link = os.readlink(name, dir_fd=dirfd) if stat_mod.S_ISLNK(st.st_mode) else None
        except OSError as error:
            if error.errno in _VANISHED:
                return None
            raise self._error(path, error) from None
        return entry_from_stat(path, st, link)

    def walk(
        self, root: str, *, only_dirs_and: Iterable[bytes] = (), prune: Iterable[bytes] = (),
        since: int | None = None,
    ) -> Iterator[Entry]:
        """Depth-first, a directory before its contents (like ``find``); ``since`` as ``find -newerct``."""
        self._clocks[root] = time.time_ns()
        match = glob_matcher(only_dirs_and)
        pruned = {check_relpath(p) for p in prune}
        rootfd = self._open_root(root)
        if rootfd is None:
            return
        try:
            if b"" in pruned:
                return
            st = os.fstat(rootfd)
            yield entry_from_stat(b"", st)
            yield from self._walk_dir(rootfd, b"", match, pruned, since)
        finally:
            os.close(rootfd)

    def _walk_dir(self, dirfd: int, rel: bytes, match, pruned: set[bytes],  # noqa: ANN001
                  since: int | None) -> Iterator[Entry]:
        try:
            it = os.scandir(dirfd)
        except OSError as error:
            if error.errno in _VANISHED:
                return
            raise self._error(rel, error) from None
        with it:
            for de in it:
                name = os.fsencode(de.name)
                path = join(rel, name)
                try:
                    is_dir = de.is_dir(follow_symlinks=False)  # d_type: no stat
                except OSError:
                    is_dir = False
                if is_dir:
                    if path in pruned:
                        continue
                    entry = self._entry(dirfd, name, path)
                    if entry is None:
                        continue
                    yield entry
                    if entry.kind != "d":
                        continue  # replaced by something else since readdir
                    try:
                        sub = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
                    except OSError as error:
                        if error.errno in _VANISHED:
                            continue
                        raise self._error(path, error) from None
                    try:
                        yield from self._walk_dir(sub, path, match, pruned, since)
                    finally:
                        os.close(sub)
                elif match is None or match(name):
                    entry = self._entry(dirfd, name, path, since)
                    if entry is not None:
                        yield entry

    def list_dirs(
        self, root: str, dirs: Iterable[bytes], *, stat_globs: Iterable[bytes] | None = None
    ) -> Iterator[Entry | Names]:
        stat_match = None if stat_globs is None else (glob_matcher(stat_globs) or (lambda name: False))
        rootfd = self._open_root(root)
        try:
            for rel in dirs:
                check_relpath(rel)
                if rootfd is None:
                    continue
                fd = self._open_dir(rootfd, rel)
                if fd is None:
                    continue
                try:
                    try:
                        listed = [(os.fsencode(de.name), stat_match is not None and _plain_file(de))
                                  for de in os.scandir(fd)]
                    except OSError as error:
                        if error.errno in _VANISHED:
                            continue
                        raise self._error(rel, error) from None
                    names = []
                    for name, plain in listed:
                        if plain and not stat_match(name):  # type: ignore[misc]
                            names.append(name)
                            continue
                        entry = self._entry(fd, name, join(rel, name))
                        if entry is not None:
                            yield entry
                    if names:
                        yield Names(rel, names)
                finally:
                    os.close(fd)
        finally:
            if rootfd is not None:
                os.close(rootfd)

    # -- per-path operations -------------------------------------------------

    def _per_path(self, root: str, paths: Iterable[bytes]) -> Iterator[tuple[bytes, int | None, bytes]]:
        """Yield (path, parent descriptor or None if gone, base name); caches the parent."""
        rootfd = self._open_root(root)
        cached: tuple[bytes, int | None] | None = None
        try:
            for path in paths:
                check_relpath(path)
                if rootfd is None or not path:
                    yield path, (None if rootfd is None else rootfd), path
                    continue
                parent, _, name = path.rpartition(b"/")
                if cached is None or cached[0] != parent:
                    if cached is not None and cached[1] is not None:
                        os.close(cached[1])
                    cached = (parent, self._open_dir(rootfd, parent))
                yield path, cached[1], name
        finally:
            if cached is not None and cached[1] is not None:
                os.close(cached[1])
            if rootfd is not None:
                os.close(rootfd)

    def stat_changed(self, root: str, known: KnownPaths) -> Iterator[Entry | bytes]:
        return changed_only(self.stat(root, known.paths()))  # every answer is a full one here

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        self._clocks[root] = time.time_ns()
        for path, dirfd, name in self._per_path(root, paths):
            if dirfd is None:
                yield path
                continue
            if not path:
                yield entry_from_stat(b"", os.fstat(dirfd))
                continue
            entry = self._entry(dirfd, name, path)
            yield path if entry is None else entry

    def _open_file(self, dirfd: int | None, name: bytes, path: bytes) -> tuple[int, os.stat_result] | None:
        """Open a regular file for reading, or None if it is gone or not regular."""
        if dirfd is None or not path:
            return None
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dirfd)
        except OSError as error:
            if error.errno in _VANISHED or error.errno == errno.ENXIO:
                return None
            raise self._error(path, error) from None
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd, st

    def fetch(self, root: str, paths: Iterable[bytes | Entry]) -> Iterator[Fetched | bytes]:
        """Open each file with O_NOFOLLOW below verified directories; Entries are accepted as paths."""
        plain = (p.path if isinstance(p, Entry) else p for p in paths)
        for path, dirfd, name in self._per_path(root, plain):
            opened = self._open_file(dirfd, name, path)
            if opened is None:
                yield path
                continue
            fd, st = opened
            try:
                yield _local_fetched(fd, entry_from_stat(path, st))
            finally:
                os.close(fd)

    def checksum(self, root: str, paths: Iterable[bytes]) -> Iterator[tuple[bytes, str | None]]:
        for path, dirfd, name in self._per_path(root, paths):
            opened = self._open_file(dirfd, name, path)
            if opened is None:
                yield path, None
                continue
            fd, _st = opened
            try:
                digest = hashlib.sha256()
                while chunk := os.read(fd, _CHUNK):
                    digest.update(chunk)
            finally:
                os.close(fd)
            yield path, digest.hexdigest()

    def cyrus_processes(self) -> list[str]:
        """An offline copy has no running Cyrus."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_fetched(fd: int, entry: Entry) -> Fetched:
    """A Fetched reading at most ``entry.size`` bytes (the size the file had when opened)."""
    remaining = entry.size

    def read(n: int = _CHUNK) -> bytes:
        nonlocal remaining
        if remaining <= 0:
            return b""
        data = os.read(fd, min(n, remaining))
        remaining -= len(data)
        if not data:
            remaining = 0
        return data

    def skip() -> None:
        nonlocal remaining
        remaining = 0

    return Fetched(entry=entry, read=read, skip=skip)
