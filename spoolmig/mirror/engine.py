"""One mirror pass over every tree: lock, (quiet check), scan, apply, (verify), record.

The pass runs in two phases so that progress has totals and ``--dry-run``
can stop half-way: first every tree is listed and compared with the state
(:meth:`TreeWorker.scan`), then every tree's changes are applied
(:meth:`TreeWorker.apply`). With ``jobs > 1`` trees are handled by that many
threads, each with its own source connection; SQLite writes are serialised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from spoolmig.config import Config
from spoolmig.errors import LockedError, MirrorError, SourceNotQuiet
from spoolmig.mirror import state as st
from spoolmig.mirror.helpers import fewer_collections, map_big_buffers
from spoolmig.mirror.lock import MirrorLock
from spoolmig.mirror.replica import Replica, parse_owner
from spoolmig.mirror.report import PassReport
from spoolmig.mirror.trees import Tree, trees_from_config
from spoolmig.mirror.worker import TreeWorker, digest_spec, prepare_walks, source_digest
from spoolmig.progress import NullProgress, Progress
from spoolmig.transport.base import Source

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """How to run a pass (the ``spoolmig mirror`` flags)."""

    full: bool = False
    final: bool = False
    checksum: bool = False
    dry_run: bool = False
    jobs: int = 1
    #: --final: seconds between the two listings that must agree.
    quiet_wait: float = 2.0
    batch_files: int = 2000
    batch_bytes: int = 64 << 20
    #: Processes sharing a big fetch when one tree is mirrored at a time, this one included (0 or 1:
    #: this one alone; the CLI uses one per core, up to 4). Helpers connect from ``cfg.source``.
    helpers: int = 0

    @property
    def mode(self) -> str:
        return "final" if self.final else "full" if self.full else "incremental"


class _LockedProgress:
    """Progress shared by worker threads."""

    def __init__(self, inner: Progress) -> None:
        self.inner, self.lock = inner, threading.Lock()

    def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
        with self.lock:
            self.inner.start(label, total, unit)

    def advance(self, n: int = 1) -> None:
        with self.lock:
            self.inner.advance(n)

    def note(self, message: str) -> None:
        with self.lock:
            self.inner.note(message)

    def finish(self) -> None:
        with self.lock:
            self.inner.finish()


class _SourcePool:
    """Up to ``jobs`` source connections, opened on demand, one per running thread."""

    def __init__(self, first: Source, factory: Callable[[], Source], jobs: int) -> None:
        self.factory, self.jobs = factory, jobs
        self.free: queue.Queue[Source] = queue.Queue()
        self.free.put(first)
        self.opened = [first]
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[Source]:
        try:
            source = self.free.get_nowait()
        except queue.Empty:
            with self.lock:
                grow = len(self.opened) < self.jobs
            if grow:
                source = self.factory()
                with self.lock:
                    self.opened.append(source)
            else:
                source = self.free.get()
        try:
            yield source
        finally:
            self.free.put(source)

    def close(self) -> None:
        for source in self.opened[1:]:
            with contextlib.suppress(Exception):
                source.close()


def _parallel(pool: _SourcePool, jobs: int, work: list[T], fn: Callable[[T, Source], None]) -> None:
    """Run ``fn(item, source)`` for every item on up to ``jobs`` threads; re-raise the first error."""
    def run(item: T) -> None:
        with pool.take() as source:
            fn(item, source)

    if jobs <= 1 or len(work) <= 1:
        for item in work:
            run(item)
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="spoolmig-mirror") as executor:
        futures = [executor.submit(run, item) for item in work]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def check_quiet(source: Source, trees: list[Tree], wait: float, *, sleep: bool = True) -> list[tuple[int, int]]:
    """--final's precondition, first half: no Cyrus process, then a first cheap listing.

    The second listing, ``wait`` seconds later, is the pass's own walk
    (compared in :func:`_phases` before anything is applied), and a third one
    ends the pass. With ``sleep=False`` the caller waits (doing local work
    meanwhile) before that second listing starts.
    """
    prepare_walks(source, [digest_spec(t) for t in trees])  # they run while ps does
    procs = source.cyrus_processes()
    if procs:
        shown = "; ".join(p[:80] for p in procs[:3]) + (" ..." if len(procs) > 3 else "")
        raise SourceNotQuiet(f"{source.describe()}: Cyrus is still running ({len(procs)} processes: {shown})",
                             hint="stop Cyrus on the source (the maintenance window), then run --final again")
    first = [source_digest(source, t) for t in trees]
    if sleep:
        time.sleep(wait)
    return first


def _wait_until(deadline: float | None) -> None:
    if deadline is not None:
        time.sleep(max(0.0, deadline - time.monotonic()))


def _not_quiet(source: str, tree: Tree, wait: float, before: tuple[int, int], after: tuple[int, int]) -> SourceNotQuiet:
    return SourceNotQuiet(
        f"{source}: {tree.root} changed between two listings {wait:g} s apart ({before[1]} then {after[1]} entries)",
        hint="something still writes to the spool; stop it (or wait longer: --quiet-wait)")


def run_pass(cfg: Config, open_source: Callable[[], Source], options: Options = Options(),
             progress: Progress | None = None) -> PassReport:
    """Run one pass; return its report (the caller turns it into output and an exit code)."""
    map_big_buffers()  # from the start: the listing's buffers fragment the heap too
    progress = _LockedProgress(progress or NullProgress())
    trees = trees_from_config(cfg)
    mirror = cfg.mirror.path
    report = PassReport(mode=options.mode, dry_run=options.dry_run)
    started = time.monotonic()
    if options.dry_run:
        if os.path.isdir(os.path.join(mirror, st.STATE_DIR)):
            _refuse_if_locked(os.path.join(mirror, st.STATE_DIR))
        with st.scratch_copy(mirror) as conn:
            _run(cfg, trees, conn, None, None, open_source, options, progress, report)
        report.duration = time.monotonic() - started
        return report
    state_dir = os.path.join(mirror, st.STATE_DIR)
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as error:
        raise MirrorError(f"{state_dir}: cannot create the mirror directory: {error.strerror}") from None
    with MirrorLock(state_dir):
        conn = st.open_state(st.state_path(mirror))
        try:
            replica = Replica(mirror, parse_owner(cfg.mirror.owner))
            _run(cfg, trees, conn, replica, st.state_path(mirror), open_source, options, progress, report)
        finally:
            st.close_state(conn)
    report.duration = time.monotonic() - started
    return report


def _refuse_if_locked(state_dir: str) -> None:
    """A dry run reads the state: not while a pass writes it (the lock is only tested)."""
    import fcntl

    path = os.path.join(state_dir, "lock")
    if not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockedError(f"{path}: a spoolmig pass is running; a dry run would read half-written state") from None
    finally:
        os.close(fd)


def _run(cfg: Config, trees: list[Tree], conn, replica: Replica | None, state_file: str | None,  # noqa: ANN001
         open_source: Callable[[], Source], options: Options, progress: Progress, report: PassReport) -> None:
    first = open_source()
    pool = _SourcePool(first, open_source, options.jobs)
    pass_id = None
    try:
        report.source = first.describe()
        digests = check_quiet(first, trees, options.quiet_wait, sleep=False) if options.final else None
        quiet_until = time.monotonic() + options.quiet_wait if options.final else None
        if replica is not None:
            pass_id = st.begin_pass(conn, options.mode, report.source)
            report.pass_id = pass_id
            recover_interrupted(conn, replica, trees)
        if state_file is None:  # dry run: the scratch copy of the state, nothing applied
            _wait_until(quiet_until)
            _dry_run_scan(trees, conn, report, options, cfg, pool, digests)
        else:
            assert replica is not None
            workers = [TreeWorker(t, conn if i == 0 else st.open_worker(state_file), replica, report,
                                  full=options.full, final=options.final, checksum=options.checksum,
                                  delete=cfg.mirror.delete, batch_files=options.batch_files,
                                  batch_bytes=options.batch_bytes)
                       for i, t in enumerate(trees)]
            if options.helpers > 1 and options.jobs <= 1:
                for w in workers:
                    w.helpers, w.helper_source = options.helpers, cfg.source
            try:
                with fewer_collections():  # set up, source connected: what lives now lives to the end
                    _phases(workers, pool, options, progress, report, digests, quiet_until)
            finally:
                for w in workers[1:]:
                    w.conn.close()
        outcome = "warnings" if report.has_warnings else "ok"
        if options.final and report.statement is None and not options.dry_run:
            outcome = "differences"
        if pass_id is not None:
            st.end_pass(conn, pass_id, outcome, report.figures)
    except BaseException as error:
        if pass_id is not None:
            outcome = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            with contextlib.suppress(Exception):
                st.end_pass(conn, pass_id, outcome, report.figures, message=str(error)[:500])
        raise
    finally:
        pool.close()
        with contextlib.suppress(Exception):
            first.close()


def _dry_run_scan(trees: list[Tree], conn, report: PassReport, options: Options, cfg: Config,  # noqa: ANN001
                  pool: _SourcePool, digests: list[tuple[int, int]] | None) -> None:
    """A dry run scans every tree on the scratch copy, one after the other."""
    t0 = time.monotonic()
    for i, tree in enumerate(trees):
        worker = TreeWorker(tree, conn, None, report, full=options.full, final=options.final,
                            checksum=False, delete=cfg.mirror.delete,
                            batch_files=options.batch_files, batch_bytes=options.batch_bytes)
        with pool.take() as source:
            worker.scan(source)
        if digests is not None and worker.digest is not None and worker.digest.value() != digests[i]:
            raise _not_quiet(report.source, tree, options.quiet_wait, digests[i], worker.digest.value())
    report.add(list_seconds=time.monotonic() - t0)


def _phases(workers: list[TreeWorker], pool: _SourcePool, options: Options, progress: Progress,
            report: PassReport, digests: list[tuple[int, int]] | None, quiet_until: float | None = None) -> None:
    t0 = time.monotonic()
    progress.start("listing", None, "entries")
    if options.jobs <= 1:
        for w in workers:  # local work fills --final's quiet wait
            w.reconcile()
    _wait_until(quiet_until)  # the pass's listing is the quiet check's second one
    if options.jobs <= 1:
        prepare_walks(pool.opened[0], [w.walk_spec() for w in workers])
    _parallel(pool, options.jobs, workers, lambda w, s: _scan(w, s, progress, prepare=options.jobs > 1))
    progress.finish()
    t1 = time.monotonic()
    report.add(list_seconds=t1 - t0)
    if digests is not None:
        for w, before in zip(workers, digests):
            if w.digest is not None and w.digest.value() != before:
                raise _not_quiet(report.source, w.tree, options.quiet_wait, before, w.digest.value())
    if options.final and options.jobs <= 1:
        for w in workers:  # re-checked from the closing listing below: no stat command per tree
            w.recheck_from_listing = True
    total = sum(w.planned_bytes() for w in workers)
    progress.start("copying", total, "B")
    _parallel(pool, options.jobs, workers, lambda w, s: w.apply(s, progress))
    if any(w.unsynced for w in workers):  # one sync for the last batches of every tree
        assert workers[0].replica is not None
        workers[0].replica.sync()
    for w in workers:
        w.finish(synced=True)
    progress.finish()
    report.add(fetch_seconds=time.monotonic() - t1)
    files = size = 0
    if options.final:
        # The closing listing, after every tree was copied: the quiet check's third digest,
        # and the sizes and mtimes the copied metadata files are re-checked against.
        with pool.take() as source:
            prepare_walks(source, [digest_spec(w.tree) for w in workers])
            for w in workers:  # local work while the source lists (its output waits in the channel's window)
                w.read_replica()
            after = []
            for w in workers:
                listed: dict[bytes, tuple[int, int]] = {}
                after.append(source_digest(source, w.tree, listed if w.recheck_from_listing else None))
                w.recheck_metadata_listed(listed)
        for w in workers:
            n, b = w.verify()
            files, size = files + n, size + b
        during = [w.digest.value() if w.digest is not None else None for w in workers]
        if after != during:
            report.differ("the source changed during the final pass (its listing before and after differ)")
        if report.differences_total == 0:
            report.statement = f"replica equals source: {files} files, {size} bytes"
    report.figures["replica_files"], report.figures["replica_bytes"] = st.replica_totals(workers[0].conn)


def _scan(worker: TreeWorker, source: Source, progress: Progress, *, prepare: bool) -> None:
    """Scan a tree; with ``prepare``, its listing started first on the connection that reads it.

    Trees scanned in parallel each have a connection of their own: started
    this way, the listing is dated by the source's clock like the one
    command of a pass on one connection, so the tree's next pass may still
    hear only of what changed since.
    """
    if prepare:
        prepare_walks(source, [worker.walk_spec()])
    worker.scan(source, progress)


def recover_interrupted(conn, replica: Replica, trees: list[Tree]) -> None:  # noqa: ANN001
    """Clean up after a pass killed while writing.

    A pass marks every directory before it writes into it and clears the
    mark after the writes are synced and recorded; opening the state made the
    marks a crash left into stale rows (:func:`.state.open_state`). So the stale
    directories are the only places holding temporaries (removed here) or files
    the state does not record (given an untrusted placeholder row here, so the
    pass compares them with the source: fetched again, or deleted if gone).
    """
    by_name = {t.name: t for t in trees}
    dirs = conn.execute("SELECT tree, path FROM files INDEXED BY files_stale WHERE stale = 1 AND kind = 'd'"
                        " UNION SELECT tree, dir FROM files INDEXED BY files_stale WHERE stale = 1 AND kind <> 'd'"
                        ).fetchall()
    removed = 0
    for tree_name, rel in dirs:
        tree = by_name.get(tree_name)
        if tree is None or rel is None:
            continue
        names, removed_here = replica.scan_dir(tree_name, rel)
        removed += removed_here
        if not names:
            continue
        known = {r[0] for r in conn.execute("SELECT path FROM files WHERE tree = ? AND dir = ?", (tree_name, rel))}
        unknown = []
        for name, kind in names:
            path = rel + b"/" + name if rel else name
            if path not in known:
                unknown.append((tree_name, path, rel, kind, tree.classify(path, kind)))
        if unknown:
            with st.write(conn):
                conn.executemany(
                    "INSERT OR IGNORE INTO files(tree, path, dir, kind, cls, size, mtime_ns, mode, inode, link,"
                    " stale) VALUES(?,?,?,?,?,-1,-1,-1,0,NULL,1)", unknown)
    if removed:
        log.info("removed %d temporary files left by an interrupted pass", removed)
