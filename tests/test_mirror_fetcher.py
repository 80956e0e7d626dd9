"""The fetcher records a batch only after its sync returned, and never loses a synced batch."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolmig.mirror import fetcher as fetcher_mod
from spoolmig.mirror.fetcher import NEW, Fetcher
from spoolmig.mirror.replica import Replica
from spoolmig.mirror.report import PassReport
from spoolmig.progress import NullProgress
from spoolmig.transport.base import Entry, Fetched


class _Source:
    """Sends the wanted files from memory; optionally fails after ``fail_after`` files."""

    def __init__(self, files: dict[bytes, bytes], fail_after: int | None = None) -> None:
        self.files, self.fail_after = files, fail_after

    def fetch(self, root: str, wanted: Iterator[Entry]) -> Iterator[Fetched]:
        for n, entry in enumerate(wanted):
            if self.fail_after is not None and n == self.fail_after:
                raise OSError("connection lost")
            data = self.files[entry.path]
            sent = Entry(path=entry.path, kind="f", size=len(data), mtime_ns=entry.mtime_ns, mode=0o600)
            yield Fetched(entry=sent, read=lambda n, d=[data]: d.pop() if d else b"", skip=lambda: None)


class _Replica(Replica):
    """Counts syncs; a commit must never see a file written after the last completed sync."""

    def __init__(self, root: str, events: list[tuple[str, Any]]) -> None:
        super().__init__(root)
        self.events = events
        self.lock = threading.Lock()

    def write_bytes(self, tree: str, rel: bytes, data: bytes, mode: int, mtime_ns: int, *,
                    replacing: bool = True) -> int:
        n = super().write_bytes(tree, rel, data, mode, mtime_ns, replacing=replacing)
        with self.lock:
            self.events.append(("write", rel))
        return n

    def sync(self) -> None:
        with self.lock:
            written = [e[1] for e in self.events if e[0] == "write"]
        super().sync()
        with self.lock:
            self.events.append(("synced", written))


def _run(tmp_path: Path, n: int, fail_after: int | None) -> tuple[list[tuple[str, Any]], list[bytes]]:
    files = {b"d/%d." % i: os.urandom(100 + i) for i in range(n)}
    events: list[tuple[str, Any]] = []
    (tmp_path / "mirror" / "t").mkdir(parents=True)
    replica = _Replica(str(tmp_path / "mirror"), events)
    replica.ensure_dir("t", b"d")
    recorded: list[bytes] = []

    def commit(rows: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
        paths = [r[1] for r in rows]
        synced = [e[1] for e in events if e[0] == "synced"]
        assert synced and set(paths) <= set().union(*map(set, synced)), "recorded before its sync"
        recorded.extend(paths)

    expected: dict[bytes, tuple[Any, ...]] = {}

    def wanted() -> Iterator[Entry]:
        for i, (path, data) in enumerate(files.items()):
            expected[path] = (i, path, b"d", "f", 0, len(data), 10**18, 0o600, 0, None, NEW)
            yield Entry(path=path, kind="f", size=len(data), mtime_ns=10**18, mode=0o600)

    f = Fetcher("t", "/src", replica, PassReport("incremental"), commit, batch_files=7, batch_bytes=1 << 30)
    if fail_after is None:
        f.run(_Source(files), NullProgress(), wanted(), expected)
    else:
        with pytest.raises(OSError):
            f.run(_Source(files, fail_after), NullProgress(), wanted(), expected)
    for path in recorded:
        assert (tmp_path / "mirror" / "t" / os.fsdecode(path)).read_bytes() == files[path]
    return events, recorded


def test_every_file_is_recorded_after_its_sync(tmp_path: Path) -> None:
    events, recorded = _run(tmp_path, 50, None)
    assert sorted(recorded) == sorted(b"d/%d." % i for i in range(50))
    assert sum(1 for e in events if e[0] == "synced") == 8  # 7 full batches of 7, then 1


def test_synced_batches_are_recorded_even_when_the_stream_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setattr(fetcher_mod, "SYNCS_BEHIND", 5)
    _events, recorded = _run(tmp_path, 50, fail_after=30)
    # 4 batches of 7 were complete before the failure: recorded once synced; the 2 files after them are not.
    assert len(recorded) == 28
