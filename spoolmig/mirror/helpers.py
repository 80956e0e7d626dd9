"""Big fetches split over helper processes, each with its own connection.

A first copy is bound by Python: one process decrypts the SSH stream
(paramiko), parses tar and hands files to its writers under one GIL, so on a
multi-core machine a single process leaves cores idle while rsync's four
processes use them. For a fetch of many files the tree worker therefore
hands the rows of its ``todo`` table, in chunks, to a few helper processes.
Each opens its own source connection and writes with its own
:class:`~spoolmig.mirror.fetcher.Fetcher`; once a batch is synced the helper
sends its state rows back and the parent records them. The parent stays the
only writer of the state, marks the directories stale before any of their
files is handed out (as the in-process fetch does), and hands out work
as the helpers ask for it, so a slow helper never holds up the others.

If the parent dies, the helpers see their pipe close and stop; what they
wrote but the state does not record lies in stale directories, which the
next pass looks through (:func:`spoolmig.mirror.engine.recover_interrupted`).
If a helper dies, the pass fails with a one-line error, the same way.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spoolmig import errors
from spoolmig.mirror.fetcher import Fetcher, Row
from spoolmig.mirror.replica import Replica
from spoolmig.mirror.report import PassReport
from spoolmig.progress import Progress
from spoolmig.transport.base import Entry

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

#: A fetch goes to helpers from this many files (or bytes) on: below it, start-up (a new
#: interpreter and SSH connection, ~0.5 s each) costs more than the second core gains.
MIN_FILES = 20_000
MIN_BYTES = 2 << 30
#: Rows per chunk handed to a helper. A helper asks for the next chunk when it starts on one,
#: so its transport never waits for the parent and the last chunks go to whoever is free.
CHUNK_ROWS = 1000
#: Progress is reported to the parent every this many bytes.
PROGRESS_BYTES = 4 << 20


@dataclass(frozen=True)
class HelperSpec:
    """What a helper needs to work on a tree: everything picklable, nothing open."""

    source: Any  # spoolmig.config.SourceConfig
    replica_root: str
    owner: tuple[int, int] | None
    tree: str
    root: str
    batch_files: int
    batch_bytes: int


def worth_helpers(files: int, size: int) -> bool:
    return files >= MIN_FILES or size >= MIN_BYTES


class _Helper:
    """The parent's end of one helper process."""

    def __init__(self, ctx: Any, spec: HelperSpec, index: int) -> None:
        self.index = index
        to_child_r, self.to_child = ctx.Pipe(duplex=False)
        self.from_child, from_child_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_helper_main, args=(spec, to_child_r, from_child_w),
                                name=f"spoolmig-fetch-{index}", daemon=True)
        self.proc.start()
        to_child_r.close()
        from_child_w.close()
        self.finished = False  # said it is done

    def send(self, message: Any) -> None:
        try:
            self.to_child.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            pass  # it died: its end of from_child reports that

    def stop(self, *, now: bool) -> None:
        """Wait for a finished helper; kill one still working (what it wrote lies in stale directories)."""
        with contextlib.suppress(OSError):
            self.to_child.close()
        if not now:
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        with contextlib.suppress(OSError):
            self.from_child.close()


def fetch_with_helpers(spec: HelperSpec, count: int, rows: Iterator[list[Row]], progress: Progress,
                       report: PassReport, commit: Callable[..., None]) -> list[bytes]:
    """Fetch the rows (in chunks, each chunk's directories already marked stale) with ``count`` helpers.

    ``commit(rows, gone, size)`` records each synced batch. Returns the paths
    no helper got from the source (neither sent nor reported vanished).
    """
    import multiprocessing  # here: a pass that needs no helpers does not pay for importing it
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    helpers = [_Helper(ctx, spec, i) for i in range(count)]
    undelivered: list[bytes] = []
    pending: list[Row] = []

    def next_chunk() -> list[Row] | None:
        nonlocal pending
        if not pending:
            pending = next(rows, [])
            if not pending:
                return None
        chunk, pending = pending[:CHUNK_ROWS], pending[CHUNK_ROWS:]
        return chunk

    ok = False
    try:
        while not all(h.finished for h in helpers):
            ready = wait([h.from_child for h in helpers if not h.finished])
            for h in helpers:
                if h.from_child in ready:
                    _receive(h, next_chunk, progress, report, commit, undelivered)
        ok = True
    finally:
        for h in helpers:
            h.stop(now=not ok)
    return undelivered


def _receive(h: _Helper, next_chunk: Callable[[], list[Row] | None], progress: Progress, report: PassReport,
             commit: Callable[..., None], undelivered: list[bytes]) -> None:
    try:
        message = h.from_child.recv()
    except (EOFError, OSError):
        h.proc.join(2)
        code = h.proc.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
        raise errors.MirrorError(f"fetch helper {h.index} {how} in the middle of the pass; "
                                 "the next pass completes what it left") from None
    kind = message[0]
    if kind == "more":
        h.send(next_chunk())
    elif kind == "progress":
        progress.advance(message[1])
    elif kind == "batch":
        _, done, gone, size = message
        commit(done, gone, size)
    elif kind == "done":
        _, left, figures, warnings = message
        undelivered.extend(left)
        report.add(**figures)
        for line in warnings:
            report.warn(line)
        h.finished = True
    elif kind == "error":
        _, name, text, hint = message
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.SpoolmigError)):
            cls = errors.MirrorError
        try:
            error = cls(text, hint=hint)
        except TypeError:  # a class with its own constructor (FormatError): keep the text
            error = errors.MirrorError(text, hint=hint)
        raise error


# -- the helper process ---------------------------------------------------------------


class _Outbox:
    """The helper's messages to the parent, from its one fetching thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.bytes = 0
        self.last = time.monotonic()

    def send(self, message: Any) -> None:
        self.conn.send(message)

    # Progress protocol
    def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self.bytes += n
        if self.bytes >= PROGRESS_BYTES or time.monotonic() - self.last > 0.5:
            self.flush()

    def flush(self) -> None:
        if self.bytes:
            self.conn.send(("progress", self.bytes))
            self.bytes = 0
        self.last = time.monotonic()

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


def _helper_main(spec: HelperSpec, inbox_conn: Connection, out_conn: Connection) -> None:
    """Run in the helper: fetch what the parent hands out until it says there is no more."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it stops us by closing our pipe
    out = _Outbox(out_conn)
    try:
        _helper_fetch(spec, inbox_conn, out)
    except errors.SpoolmigError as error:
        with contextlib.suppress(OSError):
            out.send(("error", type(error).__name__, str(error), error.hint))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the parent is gone: stop quietly
    except Exception as error:  # a bug: say it in one line rather than a traceback on the terminal
        with contextlib.suppress(OSError):
            out.send(("error", "MirrorError", f"fetch helper failed: {type(error).__name__}: {error}", None))


def _helper_fetch(spec: HelperSpec, inbox_conn: Connection, out: _Outbox) -> None:
    from spoolmig.transport import open_source

    inbox: queue.Queue[list[Row] | None] = queue.Queue()

    def read() -> None:  # always drain the parent's pipe, so its sends never wait on our sends
        while True:
            try:
                chunk = inbox_conn.recv()
            except (EOFError, OSError):
                chunk = None
            inbox.put(chunk)
            if chunk is None:
                return

    threading.Thread(target=read, name="spoolmig-inbox", daemon=True).start()
    source = open_source(spec.source)
    try:
        replica = Replica(spec.replica_root, spec.owner)
        report = PassReport(mode="helper")
        expected: dict[bytes, Row] = {}
        before = dict(report.figures)

        def wanted() -> Iterator[Entry]:
            out.send(("more",))
            while True:
                out.send(("more",))  # one chunk ahead: the next is on its way while this one is used
                chunk = inbox.get()
                if chunk is None:
                    return
                for r in chunk:
                    expected[r[1]] = r
                    yield Entry(path=r[1], kind="f", size=r[5], mtime_ns=r[6], mode=r[7], inode=r[8])

        def commit(done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
            out.flush()
            out.send(("batch", done, gone, size))

        fetcher = Fetcher(spec.tree, spec.root, replica, report, commit,
                          batch_files=spec.batch_files, batch_bytes=spec.batch_bytes)
        fetcher.run(source, out, wanted(), expected)
        out.flush()
        figures = {k: v - before[k] for k, v in report.figures.items() if v != before[k]}
        out.send(("done", list(expected), figures, report.warnings))
    finally:
        with contextlib.suppress(Exception):
            source.close()
