"""The SSH source's SFTP fallback: every operation one SFTP request at a time.

When it is used (:class:`~spoolmig.transport.ssh.SshSource` decides, per
connection): the account has no usable shell (an SFTP-only account, e.g.
``internal-sftp`` or a ``ForceCommand``), the remote tools are not GNU
(``find`` without ``-printf``: old Solaris), or ``force_sftp`` was asked for;
``checksum`` also comes here when the source has no ``sha256sum``, ``fetch``
for a file over ``large_file``, and a tar stream dropped mid-file resumes here
at its offset (:meth:`SftpReader.resume`).

What it gives up against the streamed commands:

* inodes: SFTP v3 carries none, so every :class:`Entry` has ``inode`` 0;
* nanoseconds: mtimes are whole seconds (a fetch keeps the listing's
  nanoseconds when the second and the size agree);
* the tar stream: one round trip per directory and per file (anchors.md 5.2),
  large files read with prefetch, checksums computed here from the whole file.

paramiko is imported only by :mod:`.ssh` (tests/test_architecture.py): this
module uses the SFTP client and files it is handed through their methods, and
gets what needs paramiko's names from ssh.py: the raw READDIR (``readdir``)
and paramiko's ``SSHException`` (``ssh_error``). What it shares with the tar
path of ssh.py (:class:`Lost`, :func:`buffered`) is in :mod:`._common`.
"""

from __future__ import annotations

import hashlib
import socket
import stat as stat_mod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from spoolmig.errors import TransportError
from spoolmig.transport import _remote
from spoolmig.transport._common import BUFFER_LIMIT, Lost, MiB, buffered, check_relpath, join, kind_of, show
from spoolmig.transport.base import Entry, Fetched

T = TypeVar("T")
#: SFTP reads: 128 requests of 64 KiB in flight (8 MiB). paramiko's defaults
#: (unbounded requests of 32 KiB) measured 8 MB/s on a 512 MiB file over
#: loopback, these ~80 MB/s, like the tar stream on the same machine. 64 KiB is
#: what old sftp-servers answer in full; a shorter answer is re-requested by
#: paramiko, never lost.
_PREFETCH = 128
_SFTP_READ = 65536


class Conn(Protocol):
    """What the reader needs of a connection: its SFTP client, opened on first use."""

    def sftp(self, timeout: float) -> Any: ...


C = TypeVar("C", bound=Conn)
#: ``readdir(sftp_client, path)``: the raw entries of a directory, ``.`` and ``..`` left out.
Readdir = Callable[[Any, bytes], list[tuple[bytes, Any]]]


class SftpReader(Generic[C]):
    """The SFTP operations of one SSH source, on whichever of its connections is live.

    It holds no connection: ``live()`` gives the source's current one
    (reconnecting if it dropped), ``reconnect(failed, why)`` replaces a failed
    one with backoff (``None``: whatever is current), and ``connected()`` says
    whether the source is still connected, to tell a dropped connection from
    an error about one path.
    """

    def __init__(self, where: str, *, io_timeout: float, retries: int, live: Callable[[], C],
                 reconnect: Callable[[C | None, str], C], connected: Callable[[], bool],
                 readdir: Readdir, ssh_error: type[Exception]) -> None:
        self.where = where
        self.io_timeout, self.retries = io_timeout, retries
        self.live, self.reconnect, self.connected = live, reconnect, connected
        self.readdir, self.ssh_error = readdir, ssh_error

    # -- what SshSource falls back to -----------------------------------------

    def walk(self, conn: C, root: str, match: Callable[[bytes], bool] | None,
             pruned: set[bytes]) -> Iterator[Entry]:
        base = root.encode()
        try:
            st = self._call(lambda: conn.sftp(self.io_timeout).stat(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        if not stat_mod.S_ISDIR(st.st_mode or 0) or b"" in pruned:
            return
        yield self._entry(conn, base, b"", st)
        stack = [b""]
        while stack:
            rel = stack.pop()
            try:
                children = self._listdir(conn, full(root, rel))
            except (FileNotFoundError, NotADirectoryError):
                continue
            subdirs = []
            for name, attr in children:
                path = join(rel, name)
                if stat_mod.S_ISDIR(attr.st_mode or 0):
                    if path in pruned:
                        continue
                    yield self._entry(conn, full(root, path), path, attr)
                    subdirs.append(path)
                elif match is None or match(name):
                    yield self._entry(conn, full(root, path), path, attr)
            stack.extend(reversed(subdirs))

    def list_dirs(self, root: str, dirs: Iterable[bytes]) -> Iterator[Entry]:
        """SFTP reads every entry's attributes anyway: all come as Entries, never as Names."""
        return self._items(dirs, lambda c, d: self._list(c, root, d), root, lambda d: [])

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        return self._items(paths, lambda c, p: [self._stat(c, root, p)], root, lambda p: [p])

    def checksum(self, root: str, paths: Iterable[bytes]) -> Iterator[tuple[bytes, str | None]]:
        return self._items(paths, lambda c, p: [(p, self._sha256(c, root, p))], root, lambda p: [(p, None)])

    def fetch(self, conn: C, root: str, item: bytes | Entry, dirs_ok: set[bytes]) -> Fetched | bytes:
        """One file; ``dirs_ok`` holds the ancestors already verified by this fetch's earlier files."""
        rel = item.path if isinstance(item, Entry) else item
        if len(dirs_ok) > 10000:
            dirs_ok.clear()
        if not self._dirs_ok(conn, root, rel, dirs_ok):
            return rel
        opened = self._open(conn, root, rel)
        if opened is None:
            return rel
        f, st = opened
        mtime_ns = int(st.st_mtime or 0) * 1_000_000_000
        if isinstance(item, Entry) and item.size == st.st_size and item.mtime_ns // 1_000_000_000 == st.st_mtime:
            mtime_ns = item.mtime_ns  # the listing's nanoseconds, same second and size
        entry = Entry(path=rel, kind="f", size=st.st_size or 0, mtime_ns=mtime_ns, mode=(st.st_mode or 0) & 0o7777)
        if entry.size <= BUFFER_LIMIT:
            try:
                data = self._call(lambda: f.read(entry.size))
            finally:
                f.close()
            return buffered(entry, data[:entry.size])
        f.prefetch(entry.size, _PREFETCH)
        offset = 0
        resumed: Callable[[int], bytes] | None = None

        def read(n: int = MiB) -> bytes:
            nonlocal offset, resumed
            if offset >= entry.size:
                f.close()
                return b""
            if resumed is not None:
                data = resumed(n)
            else:
                try:
                    data = self._call(lambda: f.read(min(n, entry.size - offset)))
                except Lost as error:
                    resumed = self.resume(root, entry, offset, str(error))
                    data = resumed(n)
            offset += len(data)
            if not data:
                offset = entry.size
            return data

        def skip() -> None:
            nonlocal offset
            offset = entry.size
            f.close()

        return Fetched(entry=entry, read=read, skip=skip)

    def resume(self, root: str, entry: Entry, offset: int, why: str) -> Callable[[int], bytes]:
        """Continue reading ``entry`` at ``offset`` over a new connection, if the file is unchanged."""
        conn = self.reconnect(None, why)
        sftp = conn.sftp(self.io_timeout)
        path = full(root, entry.path)
        try:
            st = sftp.lstat(path)
            if (not stat_mod.S_ISREG(st.st_mode or 0) or st.st_size != entry.size
                    or int(st.st_mtime or 0) != entry.mtime_ns // 1_000_000_000):
                raise TransportError(f"{self.where}: {show(entry.path)} changed while the "
                                     "connection was down; fetch it again")
            f = sftp.open(path, "rb")
            f.MAX_REQUEST_SIZE = _SFTP_READ
            f.seek(offset)
            f.prefetch(entry.size - offset, _PREFETCH)
        except OSError as error:
            raise TransportError(f"{self.where}: resuming {show(entry.path)}: {error}") from None
        remaining = entry.size - offset

        def read(n: int) -> bytes:
            nonlocal remaining
            if remaining <= 0:
                f.close()
                return b""
            try:
                data = f.read(min(n, remaining))
            except (OSError, EOFError, self.ssh_error) as error:
                raise TransportError(f"{self.where}: reading {show(entry.path)}: {error}") from None
            remaining -= len(data)
            if not data:
                remaining = 0
            return data

        return read

    def command_lines(self, conn: C) -> list[str]:
        """Command lines of the running processes, from /proc (no shell to run ``ps``)."""
        sftp = conn.sftp(self.io_timeout)
        try:
            pids = [n for n, _a in self._listdir(conn, b"/proc") if n.isdigit()]
        except FileNotFoundError:
            raise TransportError(f"{self.where}: cannot list processes: no shell and no /proc",
                                 hint="stop Cyrus on the source and check by hand") from None
        lines = []
        for pid in pids:
            try:
                with self._call(lambda: sftp.open(b"/proc/" + pid + b"/cmdline", "rb")) as f:
                    raw = self._call(lambda: f.read(65536))
            except (FileNotFoundError, PermissionError, TransportError):
                continue
            if raw:
                lines.append(raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace"))
        return lines

    # -- one request at a time ------------------------------------------------

    def _items(self, items: Iterable[T], one: Callable[[C, T], Iterable[Any]],
               root: str, gone: Callable[[T], Iterable[Any]]) -> Iterator[Any]:
        """Per-item SFTP operations, each retried after a reconnect (they are idempotent)."""
        dirs_ok: set[bytes] = set()  # ancestors verified to be real directories
        for item in items:
            check_relpath(item.path if isinstance(item, Entry) else item)  # type: ignore[arg-type]
            attempts = 0
            while True:
                conn = self.live()
                try:
                    if len(dirs_ok) > 10000:
                        dirs_ok.clear()
                    path = item.path if isinstance(item, Entry) else item
                    if not self._dirs_ok(conn, root, path, dirs_ok):  # type: ignore[arg-type]
                        values = list(gone(item))
                        break
                    values = list(one(conn, item))
                    break
                except Lost as error:
                    attempts += 1
                    if attempts > self.retries:
                        raise TransportError(f"{self.where}: {error}") from None
                    self.reconnect(conn, str(error))
            yield from values

    def _dirs_ok(self, conn: C, root: str, path: bytes, dirs_ok: set[bytes]) -> bool:
        """lstat each ancestor of ``path`` (once per batch of work): SFTP, too, follows links mid-path."""
        for prefix in _remote.ancestors([path]):
            if prefix in dirs_ok:
                continue
            try:
                st = self._call(lambda: conn.sftp(self.io_timeout).lstat(full(root, prefix)))
            except (FileNotFoundError, NotADirectoryError):
                return False
            if not stat_mod.S_ISDIR(st.st_mode or 0):
                return False
            dirs_ok.add(prefix)
        return True

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (FileNotFoundError, NotADirectoryError):
            raise
        except PermissionError as error:
            raise TransportError(f"{self.where}: permission denied: {error}") from None
        except (EOFError, socket.timeout, self.ssh_error, ConnectionError) as error:
            raise Lost(f"SFTP: {error}") from None
        except OSError as error:
            if not self.connected() or "closed" in str(error).lower():
                raise Lost(f"SFTP: {error}") from None
            raise TransportError(f"{self.where}: SFTP: {error}") from None

    def _listdir(self, conn: C, path: bytes) -> list[tuple[bytes, Any]]:
        sftp = conn.sftp(self.io_timeout)
        return self._call(lambda: self.readdir(sftp, path))

    def _entry(self, conn: C, path: bytes, rel: bytes, attr: Any) -> Entry:
        mode = attr.st_mode or 0
        link = None
        if stat_mod.S_ISLNK(mode):
            target = self._call(lambda: conn.sftp(self.io_timeout).readlink(path))
            link = target.encode("utf-8", "surrogateescape") if isinstance(target, str) else target
        return Entry(path=rel, kind=kind_of(mode), size=attr.st_size or 0,
                     mtime_ns=int(attr.st_mtime or 0) * 1_000_000_000, mode=mode & 0o7777, link=link)

    def _list(self, conn: C, root: str, rel: bytes) -> list[Entry]:
        path = full(root, rel)
        try:
            st = self._call(lambda: conn.sftp(self.io_timeout).lstat(path))
            if rel and not stat_mod.S_ISDIR(st.st_mode or 0):
                return []  # became a symlink or a file: never followed
            children = self._listdir(conn, path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self._entry(conn, full(root, join(rel, n)), join(rel, n), a) for n, a in children]

    def _stat(self, conn: C, root: str, rel: bytes) -> Entry | bytes:
        path = full(root, rel)
        try:
            st = self._call(lambda: conn.sftp(self.io_timeout).lstat(path) if rel
                            else conn.sftp(self.io_timeout).stat(path))
            return self._entry(conn, path, rel, st)
        except (FileNotFoundError, NotADirectoryError):
            return rel

    def _open(self, conn: C, root: str, rel: bytes) -> tuple[Any, Any] | None:
        """Open a regular file (lstat first: a symlink's target is never read)."""
        path = full(root, rel)
        sftp = conn.sftp(self.io_timeout)
        try:
            st = self._call(lambda: sftp.lstat(path))
            if not stat_mod.S_ISREG(st.st_mode or 0):
                return None
            f = self._call(lambda: sftp.open(path, "rb"))
            f.MAX_REQUEST_SIZE = _SFTP_READ
            fst = self._call(f.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_mod.S_ISREG(fst.st_mode or 0) or fst.st_size != st.st_size:
            f.close()
            return None  # swapped for something else between lstat and open
        return f, fst

    def _sha256(self, conn: C, root: str, rel: bytes) -> str | None:
        opened = self._open(conn, root, rel)
        if opened is None:
            return None
        f, st = opened
        digest = hashlib.sha256()
        try:
            f.prefetch(st.st_size or 0, _PREFETCH)
            while chunk := self._call(lambda: f.read(MiB)):
                digest.update(chunk)
        finally:
            f.close()
        return digest.hexdigest()


def full(root: str, rel: bytes) -> bytes:
    """The absolute path on the source of ``rel`` below ``root``."""
    base = root.encode().rstrip(b"/")
    return base + b"/" + rel if rel else (base or b"/")
