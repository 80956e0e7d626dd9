"""Big fetches split over helper processes, each with its own connection.

A first copy is bound by Python: one process decrypts the SSH stream
(paramiko), parses tar and hands files to its writers under one GIL, so on a
multi-core machine a single process leaves cores idle while rsync's four
processes use them. For a fetch of many files the tree worker therefore
fetches with its own connection as usual and starts helper processes beside
it (one fewer than the helpers wanted: on 2 cores, one). All take chunks of
rows from the same :class:`Dispenser` as they go, so a slow one never holds
up the others. A helper opens its own source connection and writes with its
own :class:`~spoolmig.mirror.fetcher.Fetcher`; once a batch is synced it
sends the batch's state rows back, and a thread of the parent records them.
The parent stays the only writer of the state and marks the directories
(``marks``) before any of their files is handed out.

If the parent dies, the helpers see their pipe close and stop; what they
wrote but the state does not record lies in marked directories, which the
next pass looks through (:func:`spoolmig.mirror.engine.recover_interrupted`).
If a helper dies, the pass fails with a one-line error, the same way.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import spoolmig
from spoolmig import errors
from spoolmig.mirror.fetcher import Fetcher, Row, wanted_entries
from spoolmig.mirror.replica import Replica
from spoolmig.mirror.report import PassReport
from spoolmig.progress import Progress

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

#: Helpers join a fetch from this many files (or bytes) on: below it, start-up (a new
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
    #: The level of the parent's "spoolmig" logger (-q/-v), so a helper says no more and no less.
    log_level: int = logging.WARNING


def worth_helpers(files: int, size: int) -> bool:
    return files >= MIN_FILES or size >= MIN_BYTES


#: glibc's mallopt parameter, and the size from which buffers get pages of their own.
_M_MMAP_THRESHOLD = -3
_MAPPED_FROM = 256 << 10


def map_big_buffers() -> bool:
    """Give buffers of 256 KiB and more their own pages, returned to the system when freed.

    glibc raises its mmap threshold each time a mapped buffer is freed, after
    which the fetch's megabyte buffers come from the heap and fragment it: at
    209k files each fetching process kept growing, the pair peaking at 156 MiB;
    with a fixed threshold from the pass's start 147.6 MiB, at the same speed.
    Only where there is glibc (elsewhere nothing changes; returns False).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAPPED_FROM))


#: The generation-0 threshold during a pass (CPython's default is 700).
GC_YOUNG = 50_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Around a pass: objects alive now (modules, configuration) out of the collector's sight, rarer collections.

    A fetch allocates a tuple (a row) and more per file, so with CPython's
    default threshold of 700 the collector ran constantly (perf: gc_collect_main,
    visit_decref, visit_reachable ~1.9 % of a first copy's CPU), each full
    collection walking every object of the imported modules again. gc.freeze()
    moves those to a generation no collection visits, and a generation-0
    threshold of 50,000 lets most short-lived containers die before one runs.
    The collector stays on (reference cycles are still freed), and afterwards
    the thresholds and the frozen objects are given back: tests run many passes in one process.
    """
    thresholds = gc.get_threshold()
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if froze:
            gc.unfreeze()


class _Helper:
    """The parent's end of one helper process."""

    def __init__(self, spec: HelperSpec, index: int) -> None:
        """A fresh interpreter (no fork: the parent has threads and an open SSH transport).

        Plain subprocess rather than multiprocessing: no resource-tracker process
        and no re-import of the caller's main module. Messages are pickles framed
        by :class:`multiprocessing.connection.Connection` on the child's stdin and
        stdout (the child moves its own stdout aside first).
        """
        from multiprocessing.connection import Connection

        self.index = index
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(spoolmig.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from spoolmig.mirror.helpers import helper_main; helper_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_child = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.from_child = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.finished = False  # said it is done
        self.send(spec)

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        return f"was killed by signal {-code}" if code < 0 else f"exited ({code})"

    def send(self, message: Any) -> None:
        try:
            self.to_child.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            pass  # it died: its end of from_child reports that

    def stop(self, *, now: bool) -> None:
        """Wait for a finished helper; kill one still working (what it wrote lies in marked directories)."""
        with contextlib.suppress(OSError):
            self.to_child.close()
        if not now:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.from_child.close()


class Dispenser:
    """Chunks of todo rows, handed to the in-process fetch and the helpers alike, whoever asks first.

    ``chunks`` yields lists of rows whose directories are already marked
    (it reads and writes the state, so it is only ever advanced under the lock).
    """

    def __init__(self, chunks: Iterator[list[Row]]) -> None:
        self._chunks = chunks
        self._pending: list[Row] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> list[Row] | None:
        """The next chunk; None when there is no more work (or the fetch is being stopped)."""
        with self._lock:
            if self._closed:
                return None
            if not self._pending:
                self._pending = next(self._chunks, [])
                if not self._pending:
                    self._closed = True
                    return None
            chunk, self._pending = self._pending[:CHUNK_ROWS], self._pending[CHUNK_ROWS:]
            return chunk

    def close(self) -> None:
        with self._lock:
            self._closed = True


class HelperPool:
    """``count`` helper processes fed from a dispenser by a thread of the parent.

    The thread answers the helpers' requests for work and records their synced
    batches with ``commit`` (which must be safe to call from it: the tree
    worker's state writes are serialised). Its failure closes the dispenser, so
    the in-process fetch stops after its current chunk; :meth:`finish` raises it.
    """

    def __init__(self, spec: HelperSpec, count: int, dispenser: Dispenser, progress: Progress,
                 report: PassReport, commit: Callable[..., None]) -> None:
        self.dispenser, self.progress, self.report, self.commit = dispenser, progress, report, commit
        self.helpers = [_Helper(spec, i) for i in range(count)]
        self.undelivered: list[bytes] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._coordinate, name="spoolmig-helpers", daemon=True)
        self._thread.start()

    def _coordinate(self) -> None:
        from multiprocessing.connection import wait

        helpers = self.helpers
        try:
            while not all(h.finished for h in helpers):
                ready = wait([h.from_child for h in helpers if not h.finished])
                for h in helpers:
                    if h.from_child in ready:
                        _receive(h, self.dispenser.take, self.progress, self.report, self.commit,
                                 self.undelivered)
        except BaseException as error:  # noqa: BLE001 - handed to the fetching thread by finish()
            self.error = error
            self.dispenser.close()
            self._stop(now=True)
        else:
            self._stop(now=False)

    def _stop(self, *, now: bool) -> None:
        for h in self.helpers:
            h.stop(now=now)

    def finish(self) -> list[bytes]:
        """Wait for the helpers to end; their failure is raised here. Returns what they could not get."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.undelivered

    def abort(self) -> None:
        """The in-process fetch failed: stop handing out work and stop the helpers now."""
        self.dispenser.close()
        self._stop(now=True)
        self._thread.join(30)


def _receive(h: _Helper, next_chunk: Callable[[], list[Row] | None], progress: Progress, report: PassReport,
             commit: Callable[..., None], undelivered: list[bytes]) -> None:
    try:
        message = h.from_child.recv()
    except (EOFError, OSError):
        raise errors.MirrorError(f"fetch helper {h.index} {h.exit_description()} in the middle of the pass; "
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


def helper_main() -> None:
    """The helper process: fetch what the parent hands out until it says there is no more."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it stops us by closing our pipe
    map_big_buffers()
    inbox_conn = Connection(os.dup(0), writable=False)
    out_conn = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # anything printed by accident goes to stderr, not into the message stream
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = _Outbox(out_conn)
    try:
        spec = inbox_conn.recv()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("spoolmig: %(message)s"))
        logger = logging.getLogger("spoolmig")
        logger.handlers[:] = [handler]
        logger.setLevel(spec.log_level)
        logger.propagate = False
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

        def chunks() -> Iterator[list[Row]]:
            out.send(("more",))
            while True:
                out.send(("more",))  # one chunk ahead: the next is on its way while this one is used
                chunk = inbox.get()
                if chunk is None:
                    return
                yield chunk

        def commit(done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
            out.flush()
            out.send(("batch", done, gone, size))

        fetcher = Fetcher(spec.tree, spec.root, replica, report, commit,
                          batch_files=spec.batch_files, batch_bytes=spec.batch_bytes)
        with fewer_collections():  # set up, source connected: what lives now lives to the end
            fetcher.run(source, out, wanted_entries(chunks(), expected), expected)
        out.flush()
        figures = {k: v - before[k] for k, v in report.figures.items() if v != before[k]}
        out.send(("done", list(expected), figures, report.warnings))
    finally:
        with contextlib.suppress(Exception):
            source.close()
