"""Writing into the replica without ever leaving it.

Every path handed here was checked by :func:`spoolmig.mirror.trees.check_relpath`
(no ``..``, no absolute path, no NUL). On top of that, no write goes *through*
a symbolic link: before a file is written, each directory component of its
path is ``lstat``-ed, and anything that is not a real directory (a symlink the
source once had there, a file) is removed and replaced by a directory. Source
symbolic links (sieve's ``defaultbc``) are recreated as symbolic links with
their target stored verbatim; they are never followed by spoolmig.

Files land through :func:`spoolmig.fileio.atomic_writer` (temporary name with
``TEMP_MARK`` in the same directory, rename) with ``fsync=False``: durability
is one :meth:`Replica.sync` per batch, before the state records the batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Callable, Iterator

from spoolmig.errors import ConfigError, MirrorError
from spoolmig.fileio import TEMP_MARK, atomic_writer, publish_bytes
from spoolmig.transport.base import Fetched

_TEMP = TEMP_MARK.encode()
_CHUNK = 1 << 20


def parse_owner(owner: str | None) -> tuple[int, int] | None:
    """``"user:group"`` → (uid, gid); None when unset or when not running as root."""
    if not owner:
        return None
    user, _, group = owner.partition(":")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        gid = (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid) if group else -1
    except KeyError:
        raise ConfigError(f"[mirror] owner: no such user or group in {owner!r}") from None
    if os.geteuid() != 0:
        return None
    return uid, gid


def _libc_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()


class Replica:
    """The replica directory ``<mirror.path>``; trees are its subdirectories."""

    def __init__(self, root: str, owner: tuple[int, int] | None = None) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.owner = owner
        self._root_user = os.geteuid() == 0
        #: Directories known to be real directories in this pass (bounded by the dir count).
        self._dirs: set[bytes] = set()

    def open_file(self, tree: str, rel: bytes) -> int | None:
        """A read-only descriptor of a replica file, never through a symlink; None if not a real file."""
        if not self._parent_is_real(tree, rel):
            return None
        try:
            return os.open(self.path(tree, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None

    def path(self, tree: str, rel: bytes) -> bytes:
        base = self.root + b"/" + tree.encode()
        return base + b"/" + rel if rel else base

    def _error(self, path: bytes, error: OSError) -> MirrorError:
        return MirrorError(f"replica {os.fsdecode(path)}: {error.strerror or error}")

    # -- directories -------------------------------------------------------

    def _unknown_components(self, tree: str, rel: bytes) -> Iterator[bytes]:
        """Absolute path of each directory from the tree down to ``rel`` not yet known to be real."""
        current = self.root
        for part in [tree.encode(), *(rel.split(b"/") if rel else [])]:
            current = current + b"/" + part
            if current not in self._dirs:
                yield current

    def ensure_dir(self, tree: str, rel: bytes) -> bytes:
        """Make ``rel`` (and its parents) real directories; return the absolute path."""
        full = self.path(tree, rel)
        if full in self._dirs:
            return full
        for current in self._unknown_components(tree, rel):
            try:
                st = os.lstat(current)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(current)  # a file or symlink where the source now has a directory
                    raise FileNotFoundError
            except FileNotFoundError:
                try:
                    os.mkdir(current, 0o700)
                except FileExistsError:
                    pass
                except OSError as error:
                    raise self._error(current, error) from None
                if self.owner:
                    os.lchown(current, *self.owner)
            except OSError as error:
                raise self._error(current, error) from None
            self._dirs.add(current)
        return full

    def is_real_dir(self, tree: str, rel: bytes) -> bool:
        """Is ``rel`` a directory reached through real directories only (no symlink on the way)?

        Every read-modify operation (remove, attributes, scans) checks this
        first, so a symlink in the replica, planted or left over, is never
        followed.
        """
        for current in self._unknown_components(tree, rel):
            try:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return False
            except FileNotFoundError:
                return False
            except OSError as error:
                raise self._error(current, error) from None
            self._dirs.add(current)
        return True

    def _parent_is_real(self, tree: str, rel: bytes) -> bool:
        return self.is_real_dir(tree, rel.rpartition(b"/")[0])

    def set_dir_attrs(self, tree: str, rel: bytes, mode: int, mtime_ns: int) -> None:
        """Give a directory the source's mode and mtime (after its entries are written).

        Not running as root, the owner keeps rwx so later passes can write into it.
        """
        if not self.is_real_dir(tree, rel):
            return
        full = self.path(tree, rel)
        try:
            os.chmod(full, mode if self._root_user else mode | 0o700, follow_symlinks=False)
            os.utime(full, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._error(full, error) from None

    # -- files -------------------------------------------------------------

    @contextlib.contextmanager
    def _placing(self, full: bytes, replacing: bool) -> Iterator[None]:
        """Around putting one file at ``full``: clear a stale directory, set the owner, name errors."""
        try:
            if replacing:
                self._clear_dir_in_the_way(full)
            yield
            if self.owner:
                os.lchown(full, *self.owner)
        except IsADirectoryError:
            raise MirrorError(f"replica {os.fsdecode(full)}: a directory the state does not know is in the way",
                              hint="run `spoolmig mirror --full` to compare the replica with its state") from None
        except OSError as error:
            raise self._error(full, error) from None

    def _clear_dir_in_the_way(self, full: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(full).st_mode):
                shutil.rmtree(full)
                self._dirs = {d for d in self._dirs if not (d == full or d.startswith(full + b"/"))}

    def write_file(self, tree: str, rel: bytes, item: Fetched, mode: int, mtime_ns: int, *,
                   replacing: bool = True) -> int:
        """Stream one fetched file into place (not yet synced); return the bytes written.

        ``replacing=False`` (a path the state does not know) skips looking for a
        directory in the way: the state records every directory spoolmig made.
        """
        parent, _, _ = rel.rpartition(b"/")
        self.ensure_dir(tree, parent)
        full = self.path(tree, rel)
        written = 0
        with self._placing(full, replacing):
            with atomic_writer(os.fsdecode(full), mode=mode, fsync=False, mtime_ns=mtime_ns) as f:
                while chunk := item.read(_CHUNK):
                    f.write(chunk)
                    written += len(chunk)
        return written

    def write_bytes(self, tree: str, rel: bytes, data: bytes, mode: int, mtime_ns: int, *,
                    replacing: bool = True) -> int:
        """Put a small file in place from memory (its parent must exist); return its size.

        The hot path of a first copy: :func:`spoolmig.fileio.publish_bytes`
        (raw system calls, no file object). May run in writer threads: only
        system calls and the thread-safe parts of this object are used.
        """
        full = self.path(tree, rel)
        with self._placing(full, replacing):
            publish_bytes(full, data, mode, mtime_ns, replacing=replacing)
        return len(data)

    def link_file(self, tree: str, existing: bytes, rel: bytes, size: int) -> bool:
        """Make ``rel`` another hard link to the replica file ``existing``; False if that is not possible.

        ``existing`` must be a regular file of ``size`` bytes reached through
        real directories (never a symlink); the new name lands by rename.
        """
        if not self._parent_is_real(tree, existing):
            return False
        src = self.path(tree, existing)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        try:
            self._swap_in(tree, rel, lambda tmp: os.link(src, tmp, follow_symlinks=False))
        except OSError as error:
            if error.errno in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP):
                return False  # cannot link here: fetch it instead
            raise self._error(self.path(tree, rel), error) from None
        return True

    def write_link(self, tree: str, rel: bytes, target: bytes, mtime_ns: int) -> None:
        """Recreate a source symbolic link (target stored as is, never followed)."""
        def make(tmp: bytes) -> None:
            os.symlink(target, tmp)
            os.utime(tmp, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            if self.owner:
                os.lchown(tmp, *self.owner)

        try:
            self._swap_in(tree, rel, make)
        except OSError as error:
            raise self._error(self.path(tree, rel), error) from None

    def _swap_in(self, tree: str, rel: bytes, make: Callable[[bytes], None]) -> None:
        """Create an entry with ``make(temporary name beside rel)``, then rename it over ``rel``.

        Whatever is in the way as a directory goes first; the temporary never
        outlives a failure. OSError is the caller's to explain.
        """
        parent, _, _ = rel.rpartition(b"/")
        directory = self.ensure_dir(tree, parent)
        full = self.path(tree, rel)
        tmp = directory + b"/" + _TEMP + os.urandom(6).hex().encode()
        self._clear_dir_in_the_way(full)
        try:
            make(tmp)
            os.replace(tmp, full)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, tree: str, rel: bytes) -> bool:
        """Delete an entry (a directory with everything below it); False if absent.

        Nothing is removed through a symlink: an entry whose parent is not a
        real directory of the replica is not there as far as the replica goes.
        """
        if rel and not self._parent_is_real(tree, rel):
            return False
        full = self.path(tree, rel)
        try:
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(full)
                self._dirs = {d for d in self._dirs if not (d == full or d.startswith(full + b"/"))}
            else:
                os.unlink(full)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise self._error(full, error) from None
        return True

    def exists(self, tree: str, rel: bytes) -> bool:
        return (not rel or self._parent_is_real(tree, rel)) and os.path.lexists(self.path(tree, rel))

    # -- durability and cleanup -------------------------------------------

    def sync(self) -> None:
        """Make everything written so far durable: one syncfs of the replica's filesystem."""
        if _SYNCFS is not None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _SYNCFS(fd) == 0:
                    return
            finally:
                os.close(fd)
        os.sync()

    def scan_dir(self, tree: str, rel: bytes) -> tuple[list[tuple[bytes, str]], int]:
        """Remove temporaries from one replica directory; return its other entries (name, kind) and the count."""
        directory = self.path(tree, rel)
        entries: list[tuple[bytes, str]] = []
        removed = 0
        if not self.is_real_dir(tree, rel):
            return entries, 0
        try:
            it = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return entries, 0
        with it:
            for e in it:
                if e.name.startswith(_TEMP):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                        removed += 1
                    continue
                try:
                    mode = e.stat(follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue
                kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f" if stat.S_ISREG(mode) else "o"
                entries.append((e.name, kind))
        return entries, removed

    def walk(self, tree: str) -> Iterator[tuple[bytes, str, int, int, int, bytes | None]]:
        """lstat every entry of a replica tree: (path, kind, size, mtime_ns, mode, link).

        Temporary leftovers are removed on the way; symlinks are reported, not followed.
        """
        top = self.path(tree, b"")
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        yield b"", "d", 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode), None
        stack = [b""]
        while stack:
            rel_dir = stack.pop()
            directory = top + b"/" + rel_dir if rel_dir else top
            try:
                it = os.scandir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    name = entry.name
                    rel = rel_dir + b"/" + name if rel_dir else name
                    if name.startswith(_TEMP):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        stack.append(rel)
                        yield rel, "d", 0, st.st_mtime_ns, stat.S_IMODE(mode), None
                    elif stat.S_ISLNK(mode):
                        yield rel, "l", st.st_size, st.st_mtime_ns, stat.S_IMODE(mode), os.readlink(entry.path)
                    elif stat.S_ISREG(mode):
                        yield rel, "f", st.st_size, st.st_mtime_ns, stat.S_IMODE(mode), None
                    else:
                        yield rel, "o", st.st_size, st.st_mtime_ns, stat.S_IMODE(mode), None

