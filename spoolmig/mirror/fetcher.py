"""Files from a source into the replica, durable batch by batch.

One :class:`Fetcher` consumes one ``source.fetch`` stream. Small files are
handed to writer threads in groups (file creation and rename are system calls
that release the GIL, so the disk work overlaps with reading the next files
off the network). Every ``batch_files`` files or ``batch_bytes`` bytes the
batch is made durable by one ``syncfs`` on a thread of its own, while the
next batch is already being read; only once a batch's sync returned are its
rows handed to ``commit`` (the state), so the state never records a file the
disk might not have. Who commits is the caller's business: the tree worker
writes SQLite, a fetch helper process sends the rows to its parent.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from spoolmig.mirror.replica import Replica
from spoolmig.mirror.report import PassReport, show_path
from spoolmig.progress import Progress
from spoolmig.transport.base import Entry, Fetched, Source

#: Writer threads (0: write in the fetching thread).
WRITERS = 2
#: Files up to this size are buffered and handed to the writers.
BUFFER_MAX = 4 << 20
#: Small files are handed to the writers in groups (one task each) of this size.
GROUP_FILES = 64
GROUP_BYTES = 1 << 20
#: Bound on buffered data waiting for the writers.
INFLIGHT_BYTES = 4 << 20
INFLIGHT_GROUPS = 16
#: Batches whose sync may run behind the fetching (each holds only its state rows).
SYNCS_BEHIND = 2

#: todo.action values: a file the replica does not have, one that differs, metadata copied again anyway.
NEW, CHANGED, RECOPY = 1, 2, 3

#: A todo row: id, path, dir, kind, cls, size, mtime_ns, mode, inode, link, action.
Row = tuple[Any, ...]
#: commit(state rows of the files now durable, (tree, path) of files gone from the source, bytes).
Commit = Callable[[list[tuple[Any, ...]], list[tuple[str, bytes]], int], None]


def wanted_entries(chunks: Iterable[list[Row]], expected: dict[bytes, Row]) -> Iterator[Entry]:
    """The entries a source is asked for, from chunks of todo rows; each row goes into ``expected`` first."""
    for rows in chunks:
        for r in rows:
            expected[r[1]] = r
            yield Entry(path=r[1], kind="f", size=r[5], mtime_ns=r[6], mode=r[7], inode=r[8])


def same_mtime(listed: int, sent: int) -> bool:
    """Is the mtime a transport sent the listed one (allowing for whole seconds, as old tar/SFTP send)?"""
    return listed == sent or (sent % 1_000_000_000 == 0 and listed // 1_000_000_000 == sent // 1_000_000_000)


class Fetcher:
    """Fetch the files of one tree; ``commit`` gets each batch once it is on disk."""

    def __init__(self, tree: str, root: str, replica: Replica, report: PassReport, commit: Commit,
                 *, batch_files: int, batch_bytes: int, sync_last: bool = True) -> None:
        self.tree, self.root, self.replica, self.report, self.commit = tree, root, replica, report, commit
        self.batch_files, self.batch_bytes = batch_files, batch_bytes
        #: False: the last batch is written but neither synced nor committed; it is left in
        #: :attr:`unsynced` for the caller to sync with others (one sync for a small pass, not one per tree).
        self.sync_last = sync_last
        self.unsynced: tuple[list[tuple[Any, ...]], list[tuple[str, bytes]], int] | None = None
        self._writers: ThreadPoolExecutor | None = None
        self._syncer: ThreadPoolExecutor | None = None
        self._syncs: collections.deque[tuple[Future[None], list[Any], list[tuple[str, bytes]], int]] = \
            collections.deque()
        self._inflight: collections.deque[tuple[Future[None], int]] = collections.deque()
        self._inflight_bytes = 0
        self._group: list[Any] = []
        self._group_bytes = 0
        self._futures: dict[int, Future[None]] = {}

    def run(self, source: Source, progress: Progress, wanted: Iterator[Entry], expected: dict[bytes, Row]) -> None:
        """Fetch what ``wanted`` yields (``expected`` maps each path to its todo row as it is yielded).

        What the source neither sent nor reported vanished stays in
        ``expected`` for the caller to report.
        """
        self._writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="spoolmig-write") if WRITERS else None
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="spoolmig-sync")
        ok = False
        try:
            self._stream(source, progress, wanted, expected)
            ok = True
        finally:
            if self._writers is not None:
                self._writers.shutdown(wait=True)
            self._writers = None
            self._inflight.clear()
            self._inflight_bytes = 0
            self._group, self._group_bytes = [], 0
            self._futures.clear()
            self._drain_syncs(record=ok)
            self._syncer.shutdown(wait=True)
            self._syncer = None

    def _stream(self, source: Source, progress: Progress, wanted: Iterator[Entry],
                expected: dict[bytes, Row]) -> None:
        name, replica, report = self.tree, self.replica, self.report
        done: list[Callable[[], tuple[Any, ...]]] = []
        gone: list[tuple[str, bytes]] = []
        size = 0
        for item in source.fetch(self.root, wanted):
            if isinstance(item, bytes):
                if expected.pop(item, None) is not None:
                    replica.remove(name, item)
                    gone.append((name, item))
                    report.add(files_vanished=1)
                continue
            row = expected.pop(item.entry.path, None)
            if row is None:
                item.skip()
                continue
            done.append(self._store(row, item))
            size += item.entry.size
            progress.advance(item.entry.size)
            if len(done) >= self.batch_files or size >= self.batch_bytes:
                self._sync([f() for f in done], gone, size)
                done, gone, size = [], [], 0
                self._futures.clear()
        rows = [f() for f in done]
        self._futures.clear()
        if self.sync_last:
            self._sync(rows, gone, size)
        elif rows or gone:
            self.unsynced = (rows, gone, size)

    def _sync(self, rows: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
        """The batch's files are written: sync them behind the fetching, commit those already synced."""
        if not rows and not gone:
            return
        assert self._syncer is not None
        self._syncs.append((self._syncer.submit(self.replica.sync), rows, gone, size))
        while self._syncs and (self._syncs[0][0].done() or len(self._syncs) > SYNCS_BEHIND):
            future, rows, gone, size = self._syncs.popleft()
            future.result()
            self.commit(rows, gone, size)

    def _drain_syncs(self, *, record: bool) -> None:
        """Wait for the syncs still running; commit their batches (also after a failure: they are on disk)."""
        while self._syncs:
            future, rows, gone, size = self._syncs.popleft()
            try:
                future.result()
            except OSError:
                if record:
                    raise
                continue
            self.commit(rows, gone, size)

    def _store(self, row: Row, item: Fetched) -> Callable[[], tuple[Any, ...]]:
        """Write one fetched file; return a function giving its state row once it is in place.

        Files up to :data:`BUFFER_MAX` are read here and written by the writer
        threads; bigger ones stream straight to disk.
        """
        _id, path, parent, _kind, cls, size, mtime_ns, _mode, inode, _link, action = row
        sent = item.entry
        mtime = mtime_ns if same_mtime(mtime_ns, sent.mtime_ns) else sent.mtime_ns
        mode = sent.mode & 0o7777
        replica, name = self.replica, self.tree

        def record(written: int) -> tuple[Any, ...]:
            changed = written != sent.size or sent.size != size or mtime != mtime_ns
            if changed:
                self.report.warn(f"{show_path(name, path)}: changed while it was copied; "
                                 "copied again next pass", count="files_changed_during")
            return (name, path, parent, "f", cls, written, mtime, mode, sent.inode or inode, None,
                    1 if changed else 0)

        if sent.size > BUFFER_MAX:
            written = replica.write_file(name, path, item, mode, mtime, replacing=action != NEW)
            result = record(written)
            return lambda: result
        data = item.read(BUFFER_MAX + 1)
        if len(data) > BUFFER_MAX or (data and len(data) < sent.size):
            chunks = [data]
            while chunk := item.read(1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        replica.ensure_dir(name, parent or b"")
        if self._writers is None:
            result = record(replica.write_bytes(name, path, data, mode, mtime, replacing=action != NEW))
            return lambda: result
        group = self._group
        index = len(group)
        group.append((name, path, data, mode, mtime, action != NEW))
        self._group_bytes += len(data)
        if len(group) >= GROUP_FILES or self._group_bytes >= GROUP_BYTES:
            self._flush_group()
        return lambda: record(group[index] if isinstance(group[index], int) else self._written(group, index))

    def _flush_group(self) -> None:
        """Hand the buffered small files to a writer thread as one task (one submit per group)."""
        group, size = self._group, self._group_bytes
        if not group:
            return
        assert self._writers is not None
        replica = self.replica

        def write_all() -> None:
            for i, (name, path, data, mode, mtime, replacing) in enumerate(group):
                group[i] = replica.write_bytes(name, path, data, mode, mtime, replacing=replacing)

        future = self._writers.submit(write_all)
        self._futures[id(group)] = future
        self._group, self._group_bytes = [], 0
        self._inflight.append((future, size))
        self._inflight_bytes += size
        while self._inflight and (self._inflight_bytes > INFLIGHT_BYTES or len(self._inflight) > INFLIGHT_GROUPS):
            oldest, n = self._inflight.popleft()
            oldest.result()
            self._inflight_bytes -= n

    def _written(self, group: list[Any], index: int) -> int:
        """Bytes written for one file of a group (waiting for its writer)."""
        if group is self._group:
            self._flush_group()
        self._futures[id(group)].result()
        return int(group[index])
