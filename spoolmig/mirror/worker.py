"""One tree's share of a pass: list, compare with the state, then apply.

Set-based throughout: what the source shows goes into the temporary table
``seen`` in chunks, SQL compares it with ``files`` and fills ``todo``
(files and links to fetch) and ``dels`` (entries to delete); the apply step
reads those tables back in chunks. No per-file Python object outlives its
chunk.

Listing (research/cyrus-formats.md §9: message files ``<uid>.`` are written
once; a mailbox directory's mtime changes when a message is added or
expunged; only ``cyrus.*`` files change in place):

* full cover (first pass of a tree, ``--full``, ``--final``): one walk of
  everything;
* incremental, configdirectory and sievedir (every file changes in place):
  one walk that shows every directory and only the files whose inode
  changed since the last clean pass; then, as below, ``list_dirs`` of the
  directories whose mtime changed (where files were deleted);
* incremental, partition: ``stat`` of every directory and ``cyrus.*`` file the state
  records, by path (no directory of the source is read: a walk would read
  every message file's name to find them), compared with the state as the
  answers stream in; then ``list_dirs`` of the directories whose mtime
  changed, and of the new directories those listings show, round after
  round; then ``stat`` of the paths the state marks stale. A directory row is
  written with the mtime seen before its entries were listed, and only after
  all of them were applied, so a change during the pass is seen by the next
  one.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from spoolmig.errors import MirrorError
from spoolmig.mirror import helpers
from spoolmig.mirror import state as st
from spoolmig.mirror.fetcher import CHANGED, NEW, RECOPY, Fetcher, same_mtime, wanted_entries
from spoolmig.mirror.replica import Replica
from spoolmig.mirror.report import PassReport, show_path
from spoolmig.mirror.trees import (
    CLS_DIR,
    CLS_META,
    CLS_PLAIN,
    META_RE,
    SUSPECT_PATH,
    Tree,
    check_relpath,
    split,
)
from spoolmig.progress import Progress
from spoolmig.transport.base import Entry, KnownPaths, Names, Source, Walk

log = logging.getLogger(__name__)

#: Rows moved between Python and SQLite at a time.
CHUNK = 5000
#: Paths a dry run names per tree and action.
SAMPLE = 20
#: Directory mtimes are checked for freshness when the source's newest mtime is this close to our
#: clock: the tolerated clock skew between the two machines (a source whose clock is behind by more
#: loses the protection; --final, which lists everything, does not depend on it).
FRESH_CLOCK_WINDOW_NS = 30 * 1_000_000_000
#: An incremental pass hears from the source only of paths changed (ctime) since this long before
#: the last clean pass's listing began (see :meth:`TreeWorker.walk_spec`): room for file times
#: taken from a clock a little behind the source's own (a file server's), at the cost of hearing
#: again of the changes of those two minutes.
UNCHANGED_MARGIN_NS = 120 * 1_000_000_000
#: Re-list everything with one walk when more directories than this fraction changed.
RELIST_WALK_FRACTION = 0.5
#: ... and more than this many (below it, listing them is cheap anyway).
RELIST_WALK_MIN = 100
#: Most values one ``IN (...)`` list binds (SQLite's limit is 32766 since 3.32; older ones 999).
_IN_LIMIT = 900

_TEMP_TABLES = """
DROP TABLE IF EXISTS temp.seen; DROP TABLE IF EXISTS temp.relist; DROP TABLE IF EXISTS temp.gone;
DROP TABLE IF EXISTS temp.todo; DROP TABLE IF EXISTS temp.dels; DROP TABLE IF EXISTS temp.disk;
CREATE TEMP TABLE seen(path BLOB PRIMARY KEY, dir BLOB, kind TEXT, cls INTEGER, size INTEGER,
    mtime_ns INTEGER, mode INTEGER, inode INTEGER, link BLOB, copied INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TEMP TABLE relist(path BLOB PRIMARY KEY, named INTEGER NOT NULL DEFAULT 0, round INTEGER NOT NULL DEFAULT 0)
    WITHOUT ROWID;
CREATE TEMP TABLE gone(path BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE todo(id INTEGER PRIMARY KEY, path BLOB UNIQUE, dir BLOB, kind TEXT, cls INTEGER,
    size INTEGER, mtime_ns INTEGER, mode INTEGER, inode INTEGER, link BLOB, action INTEGER,
    later INTEGER NOT NULL DEFAULT 0);
CREATE INDEX temp.todo_inode ON todo(inode);
CREATE TEMP TABLE dels(path BLOB PRIMARY KEY, kind TEXT, size INTEGER) WITHOUT ROWID;
CREATE TEMP TABLE disk(path BLOB PRIMARY KEY, kind TEXT, size INTEGER, mtime_ns INTEGER,
    mode INTEGER, link BLOB) WITHOUT ROWID;
"""

_DIFFERS = """(f.stale = 1 OR f.kind <> s.kind OR f.size <> s.size OR f.mtime_ns <> s.mtime_ns
    OR f.mode <> s.mode OR (s.kind = 'f' AND f.inode <> s.inode AND f.inode <> 0 AND s.inode <> 0)
    OR f.link IS NOT s.link)"""
_NOT_SEEN = "NOT EXISTS (SELECT 1 FROM seen s WHERE s.path = f.path AND s.kind = f.kind)"
#: Record an entry. A path's dir and cls follow from the path and kind, and a row of another kind is
#: gone by then (:meth:`TreeWorker._drop`), so the row is updated without them: files_by_dir's entry moves
#: only when size or stale changes, and for message files files_known has none. Never REPLACE: it skips
#: the totals triggers.
_UPSERT = st.Insert(
    "INSERT INTO main.files(tree, path, dir, kind, cls, size, mtime_ns, mode, inode, link, stale)",
    "(?,?,?,?,?,?,?,?,?,?,?)",
    "ON CONFLICT(tree, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
    " mode = excluded.mode, inode = excluded.inode, link = excluded.link, stale = excluded.stale")
#: The rows an incremental pass stats by path (directories and metadata files); files_known covers
#: every column these statements read.
_KNOWN_FROM = " FROM main.files INDEXED BY files_known WHERE tree = ?1 AND cls > 0"
_KNOWN_PATHS = "SELECT path" + _KNOWN_FROM
_KNOWN_COUNT = "SELECT count(*)" + _KNOWN_FROM
#: Known rows that stand for nothing: recorded stale, or without attributes (a directory a killed pass made).
_KNOWN_DOUBTFUL = "SELECT path, kind" + _KNOWN_FROM + " AND (stale = 1 OR mtime_ns < 0 OR mode < 0)"
#: Known rows whose directory is not recorded as one: nothing vouches for what the source said of them
#: (a directory swapped for a symlink resolves through it). (A doubtful directory is stat'ed again:
#: if it is not one any more, what is below it leaves ``seen``.)
_KNOWN_ORPHANS = ("SELECT f.path, f.kind FROM main.files f INDEXED BY files_known WHERE f.tree = ?1 AND f.cls > 0"
                  " AND f.dir IS NOT NULL AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.path = f.dir)"
                  " AND NOT EXISTS (SELECT 1 FROM main.files d WHERE d.tree = ?1 AND d.path = f.dir AND d.kind = 'd')")
#: The recorded directories into ``seen``, as recorded and marked ``copied`` (the doubtful ones left out).
_SEEN_RECORDED_DIRS = (f"INSERT INTO seen SELECT path, dir, kind, cls, size, mtime_ns, mode, inode, link, 1"
                       f" FROM main.files INDEXED BY files_known WHERE tree = ? AND cls > 0 AND cls = {CLS_DIR}"
                       f" AND stale = 0 AND mtime_ns >= 0 AND mode >= 0")
_SEEN_DIR = "SELECT 1 FROM seen WHERE path = ? AND kind = 'd'"
#: The recorded message files of some directories, as one value per directory: their base names
#: joined by NUL (never in a name), read through files_by_dir (its key holds the path). Built in
#: SQLite, with no row or Python object per file; bytes as stored (group_concat copies them as text,
#: the cast gives them back untouched). A file directly in the root has the dir b"".
_RECORDED_NAMES = ("SELECT dir, CAST(group_concat(substr(path, length(dir) + 1 + (length(dir) > 0)), x'00') AS BLOB)"
                   " FROM main.files INDEXED BY files_by_dir WHERE tree = ? AND dir IN ({dirs})"
                   f" AND kind = 'f' AND cls = {CLS_PLAIN} AND stale = 0 GROUP BY dir")
#: Is a directory, as listed in ``seen``, to be listed (new, changed, or not trusted)?
_DIR_CHANGED = "(f.path IS NULL OR f.kind <> 'd' OR f.mtime_ns <> s.mtime_ns OR f.stale = 1)"
#: A directory this pass writes into (:meth:`TreeWorker._mark_dirs`).
_MARK = st.Insert("INSERT OR IGNORE INTO main.marks(tree, path)", "(?,?)")
_MARK_STALE = st.Insert("INSERT INTO main.files(tree, path, dir, kind, cls, size, mtime_ns, mode, inode, link, stale)",
                        "(?,?,?,?,?,-1,-1,-1,0,NULL,1)", "ON CONFLICT(tree, path) DO UPDATE SET stale = 1")
_SEEN_COLUMNS = "seen(path, dir, kind, cls, size, mtime_ns, mode, inode, link)"
#: A listed entry into ``seen``; a directory already seen keeps its row with ``_KEEP_SEEN``.
_PUT_SEEN = st.Insert("INSERT OR REPLACE INTO " + _SEEN_COLUMNS, "(?,?,?,?,?,?,?,?,?)")
_KEEP_SEEN = st.Insert("INSERT OR IGNORE INTO " + _SEEN_COLUMNS, "(?,?,?,?,?,?,?,?,?)")
#: The directories in ``seen`` that may differ from what the state records: those not copied from it
#: (``copied``: put there by :data:`_SEEN_RECORDED_DIRS` and not answered since; an answer replaces the
#: row). A no-change pass has thousands of directories in ``seen`` and none to look up in ``files``:
#: the three statements that did so were ~9 % of its time.
_SEEN_DIRS_TO_COMPARE = "s.kind = 'd' AND s.copied = 0"
_PUT_DISK = st.Insert("INSERT OR REPLACE INTO disk", "(?,?,?,?,?,?)")


class TreeWorker:
    """Mirror one tree; its SQLite connection owns the temporary tables."""

    def __init__(self, tree: Tree, conn: sqlite3.Connection, replica: Replica | None, report: PassReport,
                 *, full: bool, final: bool, checksum: bool, delete: bool,
                 batch_files: int, batch_bytes: int) -> None:
        self.tree, self.conn, self.replica, self.report = tree, conn, replica, report
        self.full, self.final, self.checksum, self.delete = full, final, checksum, delete
        self.batch_files, self.batch_bytes = batch_files, batch_bytes
        #: Helper processes for a big fetch (see :mod:`spoolmig.mirror.helpers`), and the source
        #: configuration they connect with; 0/None: always fetch in this process.
        self.helpers = 0
        self.helper_source: Any = None
        #: Written but not yet synced: (tree, path) removed from the replica, and batches of
        #: (rows, gone, size), recorded by the state after the next sync of this process.
        self._unsynced_drops: list[tuple[str, bytes]] = []
        self._unsynced: list[tuple[list[tuple[Any, ...]], list[tuple[str, bytes]], int]] = []
        self._big_fetch = False
        self.full_cover = False
        self.skipped = False
        self._reconciled = False
        self._replica_read = False
        #: --final: the engine re-checks the metadata files from its closing listing (no stat command per tree).
        self.recheck_from_listing = False
        #: Directories whose entries this pass wrote or removed (their local mtime moved).
        self.touched: set[bytes] = set()
        self._progress: Progress | None = None
        self._fresh_from: int | None = None
        #: ``dels`` rows (path, kind, replaced) deleted only after the hard links (:meth:`_delete`).
        self._put_off_dels: list[tuple[bytes, str, int]] = []
        #: (path, size) of recorded message files a by-name listing no longer shows (:meth:`_compare_names`).
        self._gone_plain: list[tuple[bytes, int]] = []
        #: --final: the cheap-listing digest of this pass's walk.
        self.digest: ListingDigest | None = None
        #: Metadata files the state records that the source no longer shows as such (:meth:`_stat_known`).
        self._vanished: list[tuple[bytes]] = []
        #: Directories a listing of the current round showed (:meth:`_relist` looks for new ones among them).
        self._listed_dirs: list[bytes] = []
        self._prune = frozenset(tree.prune)
        #: The source's clock before the listing the directory mtimes come from (:meth:`_freshness_limit`).
        self._listed_at: int | None = None
        #: The last clean pass's ``_listed_at`` when this pass asked for changes since (:meth:`walk_spec`).
        self._since_clock: int | None = None
        self._errors_at_scan = 0
        # The pass's tables in memory (a no-change pass spends a tenth of its time writing them to a
        # temp file), except for a tree walked in full: 200k rows that would count against memory.
        in_memory = not self._full_cover(self._prior())
        conn.execute(f"PRAGMA temp_store = {'MEMORY' if in_memory else 'FILE'}")  # before the tables: it drops them
        conn.executescript(_TEMP_TABLES)

    # ------------------------------------------------------------------ scan

    def _prior(self) -> int:
        """Does the state know any file of this tree? (EXISTS: a count would read the whole tree.)"""
        return int(self.conn.execute("SELECT EXISTS(SELECT 1 FROM main.files WHERE tree = ?)",
                                     (self.tree.name,)).fetchone()[0])

    def walk_spec(self) -> Walk | KnownPaths:
        """The listing :meth:`scan` starts with, for a source to start ahead.

        A :class:`Walk` for a tree walked in full, and for a tree whose every
        file is metadata (:attr:`Tree.all_meta`: the configdirectory, the
        sievedir), which is walked for what changed since the last clean
        pass; the :class:`KnownPaths` of a partition's incremental listing.
        """
        tree = self.tree
        if self._full_cover(self._prior()):
            return Walk(tree.root, (), tuple(tree.prune))
        if tree.all_meta:
            return Walk(tree.root, (), tuple(tree.prune), self._since())
        return KnownPaths(tree.root, self._known_paths, self._since())

    def _since(self) -> int | None:
        """What an incremental listing asks to hear of: changes since the last clean pass's listing, less a margin.

        Sets ``_since_clock`` (that listing's clock; None: hear of everything).
        """
        self._since_clock = None if self.checksum else st.listed_clock(self.conn, self.tree.name, self._identity())
        return None if self._since_clock is None else self._since_clock - UNCHANGED_MARGIN_NS

    def _identity(self) -> str:
        """What the recorded listing clock is only good for: this source, root and filters."""
        tree = self.tree
        return repr((self.report.source, tree.root, tree.prune, tree.all_meta,
                     tree.include.pattern if tree.include is not None else None,
                     tree.exclude.pattern if tree.exclude is not None else None))

    def _full_cover(self, prior: int) -> bool:
        """Is the tree walked in full (first pass, --full, --final)?"""
        return self.full or self.final or prior == 0

    def scan(self, source: Source, progress: Progress | None = None) -> None:
        """List the source, compare with the state, fill ``todo`` and ``dels``."""
        tree, conn = self.tree, self.conn
        self._progress = progress
        self._errors_at_scan = int(self.report.figures["errors"])
        prior = self._prior()
        self.full_cover = self._full_cover(prior)
        self.reconcile()
        if self.full_cover:
            entries: Iterable[Entry] = source.walk(tree.root, prune=tree.prune)
            if self.final:  # the quiet check's second listing comes from this walk
                self.digest = ListingDigest(tree)
                entries = self._digesting(entries, self.digest)
            self._load(entries)
            self._listed_at = _clock(source, tree.root)
        elif tree.all_meta:
            self._walk_changed(source)
        else:
            briefed, self._listed_at = self._stat_known(source)  # the clock: before the listings to come
            if briefed and (self._listed_at is None or self._since_clock is None
                            or self._listed_at < self._since_clock):
                # "Unchanged since" is only as good as the source's clock: it went back (or is unknown).
                # (What this first stat counted as listed is counted again: a rare path.)
                log.warning("%s: the source's clock is behind its last clean pass; stat'ing everything",
                            tree.name)
                conn.execute("DELETE FROM seen")
                _, self._listed_at = self._stat_known(source, brief=False)
            self._relist(source)
        if conn.execute("SELECT 1 FROM seen WHERE path = x''").fetchone() is None:
            if prior or tree.name != "sieve":
                self.report.warn(f"{tree.name}: source directory {tree.root} not found; "
                                 f"{'replica left as it is' if prior else 'nothing copied'}", count="errors")
            self.skipped = True
            conn.execute("DELETE FROM seen")
            return
        self._fresh_from = self._freshness_limit(self._listed_at)
        self._diff()
        if self.checksum:
            self._compare_checksums(source)
        self._count()

    def _walk_changed(self, source: Source) -> None:
        """Incremental listing of a tree of metadata files: one walk for what changed since the last clean pass.

        Every file of the configdirectory may change in place, so each one is
        looked at every pass; a walk that prints every directory and only the
        entries whose ctime is later than ``since`` (:meth:`Source.walk`)
        costs the source one ``find`` and sends no path list (60,000 seen,
        subscription and quota files on a big server). What was deleted is
        found as on a partition: its directory's mtime moved, so it is listed
        again (:meth:`_relist`); a directory not shown is gone with what it
        held (:meth:`_diff`). A source that could not date the walk listed
        everything: the tree is then covered in full.
        """
        tree = self.tree
        since = self._since()
        self._load(source.walk(tree.root, prune=tree.prune, since=since))
        self._listed_at = _clock(source, tree.root)
        if since is None or self._listed_at is None:
            self.full_cover = True
        elif self._since_clock is not None and self._listed_at < self._since_clock:
            log.warning("%s: the source's clock is behind its last clean pass; walking the whole tree", tree.name)
            self._walk_whole(source)
        else:
            self._relist(source)

    def _walk_whole(self, source: Source) -> None:
        """Start the listing again as one walk of everything (the tree is then covered in full)."""
        self.conn.execute("DELETE FROM seen")
        self.conn.execute("DELETE FROM relist")
        self.full_cover = True
        self._load(source.walk(self.tree.root, prune=self.tree.prune))
        self._listed_at = _clock(source, self.tree.root)

    @staticmethod
    def _digesting(entries: Iterable[Entry], digest: ListingDigest) -> Iterator[Entry]:
        for e in entries:
            if digest.wants(e):
                digest.add(e)
            yield e

    def _freshness_limit(self, clock_ns: int | None) -> int | None:
        """Directory mtimes at or after this are too fresh to be trusted next pass.

        File times move in clock ticks (whole seconds on ext3 and other old
        file systems, a few milliseconds on Linux), so a message delivered in
        the same tick right after our listing leaves the directory's mtime as
        we recorded it. Only directories whose mtime is in the tick the
        listing began in, or later, are at risk: they are recorded without
        their mtime and listed again next pass. ``clock_ns`` is the source's
        clock before the listing (:meth:`Source.listing_clock`); a second's
        margin covers the coarse clock file times are taken from. Without it,
        the newest mtime listed stands in for the listing's start when it is
        within :data:`FRESH_CLOCK_WINDOW_NS` of our clock (a busy source),
        which also takes the burst of changes before it as fresh.
        """
        if clock_ns is not None:
            return (clock_ns // 1_000_000_000 - 1) * 1_000_000_000
        newest = self.conn.execute("SELECT max(mtime_ns) FROM seen").fetchone()[0]
        if newest is None or newest < time.time_ns() - FRESH_CLOCK_WINDOW_NS:
            return None
        return (newest // 1_000_000_000 - 1) * 1_000_000_000

    def _rows(self, entries: Iterable[Entry | bytes]) -> Iterable[tuple[Any, ...]]:
        """``seen`` rows of the acceptable entries (a hot loop: one pass per listed entry, inlined)."""
        tree, report = self.tree, self.report
        suspect = SUSPECT_PATH.search
        filtered = tree.include is not None or tree.exclude is not None
        all_meta, meta = tree.all_meta, META_RE.match
        pruned = self._prune
        for e in entries:
            if isinstance(e, bytes):
                continue  # vanished (from stat)
            path, kind, size, mtime_ns, mode, inode, link = e
            if path and suspect(path):
                problem = check_relpath(path)
                if problem:
                    report.warn(f"{show_path(tree.name, path)}: skipped: the name {problem}", count="errors")
                    continue
            if kind == "o":
                report.warn(f"{show_path(tree.name, path)}: skipped: not a file, directory or symlink",
                            count="skipped")
                continue
            if filtered and not tree.accepts(path):
                continue
            if path in pruned:  # a staging area a listing of its parent shows (a walk never enters it)
                continue
            head, _, base = path.rpartition(b"/")
            cls = CLS_DIR if kind == "d" else CLS_META if all_meta or meta(base) else CLS_PLAIN  # = Tree.classify
            yield (path, head if path else None, kind, cls, size, mtime_ns, mode & 0o7777, inode, link)

    def _load(self, entries: Iterable[Entry | bytes], *, keep_dirs: bool = False) -> int:
        """Insert entries into ``seen``; with ``keep_dirs`` an already seen directory keeps its row."""
        conn = self.conn
        put_dir = _KEEP_SEEN if keep_dirs else _PUT_SEEN
        n = 0
        files: list[tuple[Any, ...]] = []
        dirs: list[tuple[Any, ...]] = []

        def flush() -> None:
            conn.execute("BEGIN")
            _PUT_SEEN.many(conn, files)
            put_dir.many(conn, dirs)
            conn.execute("COMMIT")
            if keep_dirs:
                self._listed_dirs.extend(d[0] for d in dirs)
            if self._progress is not None:
                self._progress.advance(len(files) + len(dirs))
            files.clear()
            dirs.clear()

        for row in self._rows(entries):
            (dirs if row[2] == "d" else files).append(row)
            n += 1
            if len(files) + len(dirs) >= CHUNK:
                flush()
        flush()
        self.report.add(entries_listed=n)
        return n

    def _known_paths(self) -> Iterator[bytes]:
        """The state's directories and metadata files of this tree, in path order, a chunk at a time."""
        conn, name = self.conn, self.tree.name
        rows = conn.execute(_KNOWN_PATHS + " ORDER BY path LIMIT ?2", (name, CHUNK)).fetchall()
        while rows:
            yield from (row[0] for row in rows)
            rows = conn.execute(_KNOWN_PATHS + " AND path > ?3 ORDER BY path LIMIT ?2",
                                (name, CHUNK, rows[-1][0])).fetchall()

    def _stat_known(self, source: Source, *, brief: bool = True) -> tuple[int, int | None]:
        """Incremental listing: stat what the state knows to be a directory or metadata file, by path.

        A walk would have to read every directory of the source, message
        file names included, to find them. Every recorded directory goes into
        ``seen`` as recorded, in one statement, marked ``copied``: only the
        directories answered since, which replace their rows, are compared
        with the state (listed again if their mtime moved). The source sends
        only what differs from what was recorded:
        :meth:`Source.stat_changed` leaves out the paths unchanged since the
        last clean pass's listing (:class:`KnownPaths` ``since``: the inode's
        ctime is older), so most of them cost no Python at all. An answer
        replaces the directory's row, or puts the metadata file into ``seen``;
        what vanished, or is of another kind now, is noted for :meth:`_diff`,
        and what was below it leaves ``seen``. New entries show in the
        listings of their (changed) directories (:meth:`_relist`).

        Rows recorded stale or without their attributes (a directory a killed
        pass made) stand for nothing: not answered, they are stat'ed again.
        So is a path whose directory the state does not know (nothing vouched
        for it). Returns how many paths went unanswered (the caller checks
        the source's clock) and the source's clock before the stat; ``brief``
        False forbids them.
        """
        conn, tree, name = self.conn, self.tree, self.tree.name
        conn.execute(_SEEN_RECORDED_DIRS, (name,))  # (seen is the connection's own: no transaction to wait for)
        total = conn.execute(_KNOWN_COUNT, (name,)).fetchone()[0]
        doubtful = dict(conn.execute(_KNOWN_DOUBTFUL, (name,)).fetchall())  # path -> recorded kind
        answered = 0
        vanished: list[bytes] = []
        below: list[bytes] = []  # were directories: nothing below them is read through what is there now
        recorded_dir = conn.cursor()

        def differing(answers: Iterable[Entry | bytes]) -> Iterator[Entry]:
            nonlocal answered
            for got in answers:
                answered += 1
                path = got if isinstance(got, bytes) else got.path
                kind = doubtful.pop(path, None)
                if kind is None:  # the bulk insert above holds the recorded directories
                    kind = "d" if recorded_dir.execute(_SEEN_DIR, (path,)).fetchone() else "f"
                if isinstance(got, bytes):
                    vanished.append(path)  # a directory: found by its absence from seen, with what it held
                    if kind == "d":
                        below.append(path)
                    continue
                if kind == "d" and got.kind != "d":
                    below.append(path)
                elif got.kind != kind:
                    vanished.append(path)  # the other kind's row goes (a file of the same kind stays)
                yield got

        self._load(differing(source.stat_changed(tree.root, KnownPaths(tree.root, self._known_paths))))
        briefed = total - answered
        if briefed and not brief:
            raise MirrorError(f"{tree.name}: the source left {briefed} paths unanswered by a plain stat")
        clock = _clock(source, tree.root)  # of this stat (another one, below, has its own)
        orphans = conn.execute(_KNOWN_ORPHANS, (name,)).fetchall()
        if orphans:  # their answers stand for nothing: stat'ed again, checked, in place of them
            conn.executemany("DELETE FROM seen WHERE path = ?", [(p,) for p, _ in orphans])
            doubtful.update(orphans)
        if doubtful:
            self._load(differing(source.stat(tree.root, sorted(doubtful))), keep_dirs=True)
        if below:
            ranges = [(p + b"/", p + b"0") for p in below]  # b"0" follows b"/": the range of paths below p
            gone = set(vanished)
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM seen WHERE path > ? AND path < ?", ranges)
            conn.executemany("DELETE FROM seen WHERE path = ? AND kind = 'd'", [(p,) for p in below if p in gone])
            conn.execute("COMMIT")
            vanished = [p for p in vanished if not any(p.startswith(lo) for lo, _ in ranges)]
        self._vanished = [(p,) for p in vanished]
        if self._progress is not None:
            self._progress.advance(briefed)
        self.report.add(entries_listed=briefed)
        return briefed, clock

    def _relist(self, source: Source) -> None:
        """Incremental listing: entries of changed directories (new ones in turn), stats of stale paths."""
        conn, name = self.conn, self.tree.name
        conn.execute(
            "INSERT INTO relist(path) SELECT s.path FROM seen s LEFT JOIN main.files f"
            f" ON f.tree = ? AND f.path = s.path WHERE {_SEEN_DIRS_TO_COMPARE} AND {_DIR_CHANGED}", (name,))
        relisted = conn.execute("SELECT count(*) FROM relist").fetchone()[0]
        dirs = conn.execute("SELECT count(*) FROM seen WHERE kind = 'd'").fetchone()[0]
        if relisted > max(RELIST_WALK_MIN, RELIST_WALK_FRACTION * dirs):
            # Most directories changed: one walk is cheaper than listing them one by one.
            log.info("%s: %d of %d directories changed; walking the whole tree", name, relisted, dirs)
            self._walk_whole(source)
            return
        round_ = 0
        while relisted:
            self.report.add(dirs_relisted=relisted)
            self._listed_dirs = []
            self._list_round(source, round_)
            round_ += 1
            # New directories are known only from their parents' listings: they are listed next.
            if self._listed_dirs:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT OR IGNORE INTO relist(path, round) SELECT s.path, ?2 FROM seen s LEFT JOIN main.files f"
                    f" ON f.tree = ?3 AND f.path = s.path WHERE s.path = ?1 AND s.kind = 'd' AND {_DIR_CHANGED}",
                    [(d, round_, name) for d in self._listed_dirs])
                conn.execute("COMMIT")
            self._listed_dirs = []
            relisted = conn.execute("SELECT count(*) FROM relist WHERE round = ?", (round_,)).fetchone()[0]
        stale = [r[0] for r in conn.execute(
            "SELECT f.path FROM main.files f INDEXED BY files_stale WHERE f.tree = ? AND f.stale = 1 AND f.kind <> 'd'"
            " AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.path = f.path)"
            " AND (f.dir IS NULL OR f.dir NOT IN (SELECT path FROM relist))", (name,))]
        if stale:
            self._load(source.stat(self.tree.root, stale), keep_dirs=True)

    def _list_round(self, source: Source, round_: int) -> None:
        """List the directories queued for this round, a chunk at a time."""
        conn, last = self.conn, None
        while True:
            batch = [r[0] for r in conn.execute(
                "SELECT path FROM relist WHERE round = ?3 AND (?1 IS NULL OR path > ?1) ORDER BY path LIMIT ?2",
                (last, CHUNK, round_))]
            if not batch:
                break
            last = batch[-1]
            blocks: list[Names] = []
            listing = source.list_dirs(self.tree.root, batch, stat_globs=self.tree.stat_globs)
            self._load(_set_aside(listing, blocks), keep_dirs=True)
            if blocks:
                self._compare_names(source, blocks)

    def _compare_names(self, source: Source, blocks: list[Names]) -> None:
        """Message files listed by name only: sets compared, only new names stat'ed.

        A message file never changes once written (the trust of every
        incremental pass), so a name the state records, not stale, is the same
        file: nothing to do, not even a row in ``seen``. A new name (or a stale
        or unknown one) is stat'ed and loaded like any listed entry. A recorded
        name no longer listed is gone (:meth:`_diff`). The directories are
        marked ``named`` so the diff's per-directory deletion check leaves
        their recorded message files to this comparison.

        Both sides are whole sets of base names per directory (the state's
        read as one value per directory, :data:`_RECORDED_NAMES`): a path is
        built only for a name that is new or gone.
        """
        conn, name = self.conn, self.tree.name
        dirs = [b.dir for b in blocks]
        recorded: dict[bytes, bytes] = {}
        for i in range(0, len(dirs), _IN_LIMIT):
            part = dirs[i:i + _IN_LIMIT]
            recorded.update(conn.execute(_RECORDED_NAMES.format(dirs=",".join("?" * len(part))),
                                         (name, *part)).fetchall())
        new_paths: list[bytes] = []
        gone: list[bytes] = []
        listed = 0
        for block in blocks:
            names = set(block.names)
            listed += len(names)
            joined = recorded.get(block.dir)
            known = set(joined.split(b"\0")) if joined else set()
            if names == known:
                continue
            prefix = block.dir + b"/" if block.dir else b""
            new_paths.extend(prefix + n for n in names - known)
            gone.extend(prefix + n for n in known - names)
        for i in range(0, len(gone), _IN_LIMIT):
            part = gone[i:i + _IN_LIMIT]
            self._gone_plain.extend(conn.execute(
                f"SELECT path, size FROM main.files WHERE tree = ? AND path IN ({','.join('?' * len(part))})",
                (name, *part)).fetchall())
        conn.execute("BEGIN")
        conn.executemany("UPDATE relist SET named = 1 WHERE path = ?", [(d,) for d in dirs])
        conn.execute("COMMIT")
        new = []
        for path in sorted(new_paths):
            problem = check_relpath(path)
            if problem:
                self.report.warn(f"{show_path(name, path)}: skipped: the name {problem}", count="errors")
            else:
                new.append(path)
        known_listed = listed - len(new)  # the new ones count when loaded
        if self._progress is not None:
            self._progress.advance(known_listed)
        self.report.add(entries_listed=known_listed)
        if new:
            self._load(source.stat(self.tree.root, new), keep_dirs=True)

    def reconcile(self) -> None:
        """--full/--final: compare the replica on disk with the state (local work; once, before listing)."""
        if (self.full or self.final) and self.replica is not None and not self._reconciled:
            self._reconciled = True
            self._reconcile_with_disk()

    def _reconcile_with_disk(self) -> None:
        """--full/--final trust nothing: what is on disk but differs from the state becomes stale."""
        assert self.replica is not None
        conn, tree = self.conn, self.tree
        t0 = time.monotonic()
        self._load_disk()
        matches = """EXISTS (SELECT 1 FROM disk d WHERE d.path = f.path AND d.kind = f.kind AND (f.kind = 'd'
            OR (f.kind = 'l' AND d.link IS f.link)
            OR (f.kind = 'f' AND d.size = f.size AND d.mtime_ns = f.mtime_ns AND d.mode = f.mode)))"""
        unknown = [(tree.name, p, split(p), k, tree.classify(p, k)) for p, k in conn.execute(
            "SELECT d.path, d.kind FROM disk d WHERE d.kind IN ('f', 'l', 'd') AND NOT EXISTS"
            " (SELECT 1 FROM main.files f WHERE f.tree = ? AND f.path = d.path)", (tree.name,))]
        with st.write(conn):
            conn.execute(f"UPDATE main.files AS f SET stale = 1 WHERE f.tree = ? AND f.stale = 0 AND NOT {matches}",
                         (tree.name,))
            _MARK_STALE.many(conn, unknown)
        self.report.add(verify_seconds=time.monotonic() - t0)

    def _load_disk(self) -> None:
        """The replica tree as it is on disk, into ``disk`` (one transaction per chunk, not per row)."""
        assert self.replica is not None
        conn = self.conn
        walk = self.replica.walk(self.tree.name)
        while rows := list(itertools.islice(walk, CHUNK)):
            conn.execute("BEGIN")
            _PUT_DISK.many(conn, rows)
            conn.execute("COMMIT")

    def _diff(self) -> None:
        conn, name = self.conn, self.tree.name
        force = 1 if self.final else 0
        conn.execute("BEGIN")
        conn.execute(f"""
            INSERT INTO todo(path, dir, kind, cls, size, mtime_ns, mode, inode, link, action)
            SELECT s.path, s.dir, s.kind, s.cls, s.size, s.mtime_ns, s.mode, s.inode, s.link,
                CASE WHEN f.path IS NULL OR f.size < 0 THEN {NEW} WHEN {_DIFFERS} THEN {CHANGED} ELSE {RECOPY} END
            FROM seen s LEFT JOIN main.files f ON f.tree = :tree AND f.path = s.path
            WHERE s.kind IN ('f', 'l') AND (f.path IS NULL OR f.size < 0 OR {_DIFFERS}
                OR (:force AND s.cls = {CLS_META}))
            ORDER BY s.path""", {"tree": name, "force": force})
        ins = "INSERT OR IGNORE INTO dels SELECT f.path, f.kind, f.size FROM "
        if self.full_cover:
            conn.execute(ins + f"main.files f WHERE f.tree = ? AND {_NOT_SEEN}", (name,))
        else:
            # The recorded directories no longer listed as such, read once, through files_known:
            # files_by_dir covers these columns too, and a state given it by an upgrade (created last)
            # had SQLite walk every file of the tree by it. Each is deleted, and below, what it held.
            conn.execute(
                "INSERT INTO gone SELECT f.path FROM main.files f INDEXED BY files_known WHERE f.tree = ?"
                " AND f.cls > 0 AND f.cls = ? AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.path = f.path"
                " AND s.kind = 'd')", (name, CLS_DIR))
            conn.execute(ins + "gone g CROSS JOIN main.files f ON f.tree = ? AND f.path = g.path", (name,))
            # Metadata files the listing found gone, or of another kind (:meth:`_stat_known`).
            conn.executemany(ins + f"main.files f WHERE f.tree = ? AND f.path = ? AND {_NOT_SEEN}",
                             [(name, p) for (p,) in self._vanished])
            # Driven by the few relisted/gone directories, through files_by_dir: left to itself SQLite's
            # planner walks every file of the tree (130 ms of a 1.3 s no-change pass at 209k files), or
            # once per directory (5 s for 200 directories). tests/test_mirror_plans.py holds this.
            conn.execute(ins + "relist r CROSS JOIN main.files f INDEXED BY files_by_dir"
                         f" ON f.tree = ? AND f.dir = r.path WHERE {_NOT_SEEN}"
                         f" AND NOT (r.named AND f.kind = 'f' AND f.cls = {CLS_PLAIN} AND f.stale = 0)",
                         (name,))
            # Recorded message files of directories listed by name that are no longer there.
            conn.executemany("INSERT OR IGNORE INTO dels SELECT ?1, 'f', ?2"
                             " WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.path = ?1 AND s.kind = 'f')",
                             self._gone_plain)
            conn.execute(ins + "gone g CROSS JOIN main.files f INDEXED BY files_by_dir ON f.tree = ? AND f.dir = g.path",
                         (name,))
            conn.execute(ins + f"main.files f INDEXED BY files_stale WHERE f.tree = ? AND f.stale = 1 AND {_NOT_SEEN}",
                         (name,))
        conn.execute("COMMIT")

    def _compare_checksums(self, source: Source) -> None:
        """--checksum: the source's sha256 against the replica's for every file not fetched anyway."""
        conn, last = self.conn, None
        while True:
            batch = [r[0] for r in conn.execute(
                "SELECT s.path FROM seen s WHERE s.kind = 'f' AND (?1 IS NULL OR s.path > ?1)"
                " AND NOT EXISTS (SELECT 1 FROM todo t WHERE t.path = s.path) ORDER BY s.path LIMIT ?2",
                (last, 500))]
            if not batch:
                break
            last = batch[-1]
            bad = []
            for path, digest in source.checksum(self.tree.root, batch):
                if digest is None or digest != self._local_sha256(path):
                    bad.append(path)
            if bad:
                self.report.add(checksum_mismatches=len(bad))
                for path in bad[:10]:
                    self.report.warn(f"{show_path(self.tree.name, path)}: sha256 differs from the source; copied again")
                conn.execute("BEGIN")
                conn.executemany(
                    f"INSERT OR IGNORE INTO todo(path, dir, kind, cls, size, mtime_ns, mode, inode, link, action)"
                    f" SELECT path, dir, kind, cls, size, mtime_ns, mode, inode, link, {CHANGED} FROM seen"
                    f" WHERE path = ?", [(p,) for p in bad])
                conn.execute("COMMIT")

    def _local_sha256(self, path: bytes) -> str | None:
        if self.replica is None:
            return None
        fd = self.replica.open_file(self.tree.name, path)
        if fd is None:
            return None
        digest = hashlib.sha256()
        try:
            with open(fd, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            return None
        return digest.hexdigest()

    def _count(self) -> None:
        conn = self.conn
        for action, files, nbytes in ((NEW, "files_new", "bytes_new"), (CHANGED, "files_changed", "bytes_changed"),
                                      (RECOPY, "files_recopied", "bytes_recopied")):
            n, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM todo WHERE action = ?",
                                   (action,)).fetchone()
            self.report.add(**{files: n, nbytes: size})
        n, size = conn.execute(
            "SELECT count(*), coalesce(sum(max(size, 0)), 0) FROM dels d WHERE kind <> 'd'"
            " AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.path = d.path)").fetchone()
        self.report.add(files_deleted=n, bytes_deleted=size)
        self.report.add(dirs_total=conn.execute("SELECT count(*) FROM seen WHERE kind = 'd'").fetchone()[0])
        if self.replica is None:  # a dry run shows a sample of what it would do
            label = {NEW: "fetch (new)", CHANGED: "fetch (changed)", RECOPY: "copy again (metadata)"}
            for path, action in conn.execute("SELECT path, action FROM todo ORDER BY id LIMIT ?", (SAMPLE,)):
                self.report.plan(f"{label[action]}: {show_path(self.tree.name, path)}")
            for (path,) in conn.execute("SELECT path FROM dels d WHERE kind <> 'd' AND NOT EXISTS"
                                        " (SELECT 1 FROM seen s WHERE s.path = d.path) ORDER BY path LIMIT ?",
                                        (SAMPLE,)):
                self.report.plan(f"{'delete' if self.delete else 'keep (gone from source)'}: "
                                 f"{show_path(self.tree.name, path)}")

    def planned_bytes(self) -> int:
        return int(self.conn.execute("SELECT coalesce(sum(size), 0) FROM todo WHERE kind = 'f'").fetchone()[0])

    # ----------------------------------------------------------------- apply

    def apply(self, source: Source, progress: Progress) -> None:
        """Delete, create directories, fetch in durable batches; :meth:`finish` records the rest.

        The last small batch of each fetch is left unsynced: the engine syncs the
        replica once for all trees, then calls :meth:`finish` on each.
        """
        if self.skipped:
            return
        self._plan_hard_links()
        self._delete()
        self._make_dirs()
        self._fetch(source, progress, later=0)
        if self.unsynced and self._has_put_off():  # links need their first path recorded
            assert self.replica is not None
            self.replica.sync()
            self._synced([], [], 0)
        self._hard_links()
        self._delete_put_off()
        self._fetch(source, progress, later=2)
        if self.final and not self.recheck_from_listing:
            self._recheck_metadata(source)
        if self._big_fetch:
            # Trees are applied one after the other: give back this one's page cache (its todo of a
            # first copy is the whole tree) before the next tree's fetch needs the memory. Not after a
            # small fetch: recording its last batch in finish() wants those pages (0.6 s at 209k files).
            self.conn.execute("PRAGMA shrink_memory")

    @property
    def unsynced(self) -> bool:
        return bool(self._unsynced or self._unsynced_drops)

    def finish(self, *, synced: bool) -> None:
        """After apply: record what waited for a sync (``synced``: the engine just synced the replica),
        then the directories, and the listing's clock.

        In one transaction: a directory's row shares its pages with its
        ``cyrus.*`` files' rows, and each transaction wrote every page it
        changed to the WAL again (and the closing checkpoint copied it).
        """
        if self.skipped or self.replica is None:
            return
        if self.unsynced and not synced:
            self.replica.sync()
        done, gone, size = self._take_unsynced([], [], 0)
        self._touch(done)
        directories = self._finish_dirs()
        # A clean pass (no error since the scan began, in any tree): the next may hear only of
        # what changed since its listing. After errors, it hears of everything again: a file
        # that failed to copy must be retried even if it does not change.
        clean = self.report.figures["errors"] == self._errors_at_scan
        conn = self.conn
        with st.write(conn):
            self._put_files(done, gone)
            _UPSERT.many(conn, directories)
            conn.execute("DELETE FROM main.marks WHERE tree = ?", (self.tree.name,))  # all is as recorded now
            st.put_listed_clock(conn, self.tree.name, self._identity(), self._listed_at if clean else None)
        self.report.add(bytes_fetched=size)

    def _delete(self) -> None:
        """Delete what is gone from the source, except what a new path may still be linked from.

        A mailbox renamed on the source keeps its message files' inodes: the
        new paths are put off to be linked to the old ones (:meth:`_plan_hard_links`).
        So the old files, and the directories that hold them, are deleted only
        after :meth:`_hard_links` (:meth:`_delete_put_off`): a rename costs a
        link per message here instead of fetching the mailbox again.
        """
        conn = self.conn
        sources = {r[0] for r in conn.execute(
            "SELECT d.path FROM dels d CROSS JOIN main.files f ON f.tree = ? AND f.path = d.path"
            " WHERE d.kind = 'f' AND f.kind = 'f' AND f.inode <> 0 AND EXISTS (SELECT 1 FROM todo t"
            " WHERE t.inode = f.inode AND t.size = f.size AND t.mtime_ns = f.mtime_ns AND t.later = 1)",
            (self.tree.name,))}
        last = None
        while True:
            rows = conn.execute(
                "SELECT d.path, d.kind, EXISTS (SELECT 1 FROM seen s WHERE s.path = d.path)"
                " FROM dels d WHERE ?1 IS NULL OR d.path < ?1 ORDER BY d.path DESC LIMIT ?2", (last, CHUNK)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            now = []
            for row in rows:
                path, kind, replaced = row
                if sources and not replaced and (kind == "d" or path in sources):
                    self._put_off_dels.append(row)
                else:
                    now.append(row)
            self._drop(now)

    def _delete_put_off(self) -> None:
        """The deletions :meth:`_delete` kept for after the links (children before their directories)."""
        rows, self._put_off_dels = self._put_off_dels, []
        for i in range(0, len(rows), CHUNK):
            self._drop(rows[i:i + CHUNK])

    def _drop(self, rows: list[tuple[bytes, str, int]]) -> None:
        """Delete these ``dels`` rows (path, kind, replaced) from the replica.

        The state forgets a path whose kind changed at once, the others with the next sync.
        """
        assert self.replica is not None
        conn, name, replica = self.conn, self.tree.name, self.replica
        kept = 0
        dropped = []  # in the rows' order: children before their directories
        other_kind, later = [], []  # forgotten now, or with the next sync
        for path, _kind, replaced in rows:
            if self.delete or replaced or not replica.exists(name, path):
                dropped.append((name, path))
                (other_kind if replaced else later).append((name, path))
                parent = split(path)
                if parent is not None:
                    self.touched.add(parent)
            else:
                kept += 1
        if dropped:
            # A path whose kind changed (a file where a directory was, or the reverse) is forgotten
            # now, before its new kind is recorded; its directory, marked, covers a crash.
            with st.write(conn):
                self._mark_dirs({split(p) for _, p in dropped})
                conn.executemany("DELETE FROM main.files WHERE tree = ? AND path = ?", other_kind)
            for _, path in dropped:
                replica.remove(name, path)
            # The rest is forgotten by the state with the next batch that is synced anyway (one sync
            # less per pass); until then their directories are marked.
            self._unsynced_drops.extend(later)
        if kept:
            self.report.add(files_kept=kept)

    def _make_dirs(self) -> None:
        assert self.replica is not None
        conn, name = self.conn, self.tree.name
        new = conn.execute(
            "SELECT s.path, s.dir FROM seen s LEFT JOIN main.files f ON f.tree = ? AND f.path = s.path"
            f" WHERE {_SEEN_DIRS_TO_COMPARE} AND (f.path IS NULL OR f.kind <> 'd' OR f.stale = 1) ORDER BY s.path",
            (name,)).fetchall()
        for i in range(0, len(new), CHUNK):
            chunk = new[i:i + CHUNK]
            with st.write(conn):
                _MARK_STALE.many(conn, [(name, p, d, "d", CLS_DIR) for p, d in chunk])
                self._mark_dirs({d for _, d in chunk})
            for path, parent in chunk:
                self.replica.ensure_dir(name, path)
                if parent is not None:
                    self.touched.add(parent)

    def _mark_dirs(self, dirs: set[bytes | None]) -> None:
        """Directories about to change locally: marked in ``marks`` (see :mod:`.state`), their rows untouched.

        Called inside a write transaction; :meth:`_finish_dirs` takes the marks
        away once everything written into them is recorded. A pass that dies
        first leaves them, and the next one distrusts those directories.
        """
        _MARK.many(self.conn, sorted((self.tree.name, d) for d in dirs if d is not None))

    def _plan_hard_links(self) -> None:
        """Message files the source hard-links (Cyrus's singleinstancestore) are linked, not fetched again.

        A file is put off (``later = 1``) when another path with the same
        source inode, size and mtime is already recorded, or comes earlier in
        this pass; once the earlier one is in place it is linked locally.
        """
        conn = self.conn
        conn.execute("BEGIN")
        conn.execute("DROP TABLE IF EXISTS temp.dup")
        conn.execute(
            f"CREATE TEMP TABLE dup AS SELECT inode, size, mtime_ns, min(path) AS first FROM todo"
            f" WHERE kind = 'f' AND inode <> 0 AND cls = {CLS_PLAIN} GROUP BY inode, size, mtime_ns"
            f" HAVING count(*) > 1")
        conn.execute(
            "UPDATE todo SET later = 1 WHERE id IN (SELECT t.id FROM dup d JOIN todo t ON t.inode = d.inode"
            " AND t.size = d.size AND t.mtime_ns = d.mtime_ns AND t.path <> d.first)")
        conn.execute(
            f"UPDATE todo SET later = 1 WHERE id IN (SELECT t.id FROM todo t CROSS JOIN main.files f"
            f" INDEXED BY files_inode ON f.tree = ? AND f.inode = t.inode AND f.kind = 'f' AND f.stale = 0 AND f.size = t.size"
            f" AND f.mtime_ns = t.mtime_ns AND f.path <> t.path"
            f" WHERE t.kind = 'f' AND t.inode <> 0 AND t.cls = {CLS_PLAIN})", (self.tree.name,))
        conn.execute("COMMIT")

    def _hard_links(self) -> None:
        """Link the put-off files to a recorded path of the same source inode; the rest is fetched."""
        assert self.replica is not None
        conn, name, replica = self.conn, self.tree.name, self.replica
        last = 0
        while True:
            rows = conn.execute(
                "SELECT id, path, dir, kind, cls, size, mtime_ns, mode, inode FROM todo WHERE later = 1 AND id > ?"
                " ORDER BY id LIMIT ?", (last, self.batch_files)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            with st.write(conn):
                self._mark_dirs({r[2] for r in rows})
            done, fetch = [], []
            for _id, path, parent, _kind, cls, size, mtime_ns, mode, inode in rows:
                primary = conn.execute(
                    "SELECT path FROM main.files WHERE tree = ? AND inode = ? AND kind = 'f' AND stale = 0"
                    " AND size = ? AND mtime_ns = ? AND path <> ? LIMIT 1",
                    (name, inode, size, mtime_ns, path)).fetchone()
                if primary is not None and replica.link_file(name, primary[0], path, size):
                    done.append((name, path, parent, "f", cls, size, mtime_ns, mode, inode, None, 0))
                else:
                    fetch.append((_id,))
            self.report.add(files_linked=len(done))
            self._record_after_sync(done, [], 0)
            if fetch:
                conn.execute("BEGIN")
                conn.executemany("UPDATE todo SET later = 2 WHERE id = ?", fetch)
                conn.execute("COMMIT")

    def _fetch(self, source: Source, progress: Progress, *, later: int = 0) -> None:
        """Fetch every file of ``todo`` in one streamed call; durable every batch.

        The entries are handed to the source lazily, a chunk at a time, so the
        transport can pipeline (start the next tar batch while this one is
        read). Before the source sees a chunk, the directories it will write
        into are marked in the state: after a crash the next pass looks in
        exactly those directories for temporaries and for files the state does
        not record (see :func:`spoolmig.mirror.engine.recover_interrupted`). A
        file replaced but not yet recorded still has its old row, which differs
        from the source, so it is fetched again. Every ``batch_files`` files or
        ``batch_bytes`` bytes the written files are synced and recorded in one
        transaction; the last, partial batch waits for the pass's one closing sync
        (:meth:`finish`). A big fetch is shared with helper processes
        (:mod:`spoolmig.mirror.helpers`).
        """
        conn, name, replica, report = self.conn, self.tree.name, self.replica, self.report
        assert replica is not None
        expected: dict[bytes, tuple[Any, ...]] = {}

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            last = 0
            while True:
                with st.write(conn):  # also serialises the read with the helpers' thread
                    rows = conn.execute(
                        "SELECT id, path, dir, kind, cls, size, mtime_ns, mode, inode, link, action FROM todo"
                        " WHERE id > ? AND kind = 'f' AND later = ? ORDER BY id LIMIT ?",
                        (last, later, self.batch_files)).fetchall()
                    if rows:
                        self._mark_dirs({r[2] for r in rows})
                if not rows:
                    return
                last = rows[-1][0]
                yield rows

        fetcher = Fetcher(name, self.tree.root, replica, report, self._synced,
                          batch_files=self.batch_files, batch_bytes=self.batch_bytes, sync_last=False)
        files, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM todo"
                                   " WHERE kind = 'f' AND later = ?", (later,)).fetchone()
        big = helpers.worth_helpers(files, size)
        self._big_fetch = self._big_fetch or big
        if big and self.helpers > 1 and self.helper_source is not None:
            # This process fetches too; the helpers take chunks from the same dispenser.
            spec = helpers.HelperSpec(self.helper_source, os.fsdecode(replica.root), replica.owner, name,
                                      self.tree.root, self.batch_files, self.batch_bytes,
                                      logging.getLogger("spoolmig").getEffectiveLevel())
            dispenser = helpers.Dispenser(chunks())
            pool = helpers.HelperPool(spec, self.helpers - 1, dispenser, progress, report, self._record)
            try:
                fetcher.run(source, progress, wanted_entries(iter(dispenser.take, None), expected), expected)
            except BaseException:
                pool.abort()
                raise
            for path in pool.finish():
                expected[path] = ()
        else:
            fetcher.run(source, progress, wanted_entries(chunks(), expected), expected)
        if fetcher.unsynced is not None:
            self._unsynced.append(fetcher.unsynced)
        for path in expected:  # neither sent nor reported vanished: stays stale, retried next pass
            report.warn(f"{show_path(name, path)}: not delivered by the source; retried next pass", count="errors")
        if later == 0:
            self._links()

    def _has_put_off(self) -> bool:
        """Are files put off to be hard-linked to an earlier path (``todo.later = 1``)?"""
        return bool(self.conn.execute("SELECT EXISTS(SELECT 1 FROM todo WHERE later = 1)").fetchone()[0])

    def _record_after_sync(self, done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
        """The batch's files are in place: recorded after the next sync (at the latest :meth:`finish`'s)."""
        if done or gone:
            self._unsynced.append((done, gone, size))

    def _synced(self, done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
        """This process just synced the replica: record ``done``/``gone`` and all that waited for a sync.

        (Only this process's own syncs: a helper's sync may have begun before our writes ended.)
        """
        self._record(*self._take_unsynced(done, gone, size))

    def _take_unsynced(self, done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int
                       ) -> tuple[list[tuple[Any, ...]], list[tuple[str, bytes]], int]:
        """``done``/``gone``/``size`` with all that waited for a sync added (and no longer waiting)."""
        gone = gone + self._unsynced_drops
        for w_done, w_gone, w_size in self._unsynced:
            done, gone, size = done + w_done, gone + w_gone, size + w_size
        self._unsynced, self._unsynced_drops = [], []
        return done, gone, size

    def _record(self, done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]], size: int) -> None:
        """Record a batch of files that are on disk (synced) in one transaction."""
        if not done and not gone and not size:
            return
        with st.write(self.conn):
            self._put_files(done, gone)
        self._touch(done)
        self.report.add(bytes_fetched=size)

    def _put_files(self, done: list[tuple[Any, ...]], gone: list[tuple[str, bytes]]) -> None:
        """The rows of files now on disk, and of files gone from it (in the caller's transaction)."""
        _UPSERT.many(self.conn, done)
        self.conn.executemany("DELETE FROM main.files WHERE tree = ? AND path = ?", gone)

    def _touch(self, done: list[tuple[Any, ...]]) -> None:
        """The directories these files were written into get their attributes again (:meth:`_finish_dirs`)."""
        for r in done:
            if r[2] is not None:
                self.touched.add(r[2])

    def _links(self) -> None:
        """Recreate the source's symbolic links (few: sieve's defaultbc)."""
        assert self.replica is not None
        conn, name = self.conn, self.tree.name
        rows = conn.execute("SELECT id, path, dir, kind, cls, size, mtime_ns, mode, inode, link FROM todo"
                            " WHERE kind = 'l' ORDER BY id").fetchall()
        for i in range(0, len(rows), self.batch_files):
            chunk = rows[i:i + self.batch_files]
            with st.write(conn):
                _MARK_STALE.many(conn, [(name, r[1], r[2], r[3], r[4]) for r in chunk])
                self._mark_dirs({r[2] for r in chunk})
            done = []
            for r in chunk:
                self.replica.write_link(name, r[1], r[9] or b"", r[6])
                done.append((name, r[1], r[2], "l", r[4], r[5], r[6], r[7], r[8], r[9], 0))
            self._record_after_sync(done, [], 0)

    def _recheck_metadata(self, source: Source | None, listed: dict[bytes, tuple[int, int]] | None = None) -> None:
        """--final: stat the metadata files again after copying them; a change during the read marks them stale.

        Only --final needs this (for its verified statement): in other passes the
        recorded mtime is the one from before the read, so the next pass's stat of
        every cyrus.*/config file sees the change and copies the file again.
        With ``listed`` (path -> (size, mtime_ns) of every file a listing taken
        after the copy showed) no stat is made: a file missing there vanished.
        """
        conn, name, last = self.conn, self.tree.name, None
        while True:
            rows = conn.execute(
                "SELECT f.path, f.size, f.mtime_ns FROM todo t JOIN main.files f ON f.tree = ?1 AND f.path = t.path"
                " WHERE t.kind = 'f' AND t.cls = ?2 AND f.stale = 0 AND (?3 IS NULL OR t.path > ?3)"
                " ORDER BY t.path LIMIT ?4", (name, CLS_META, last, CHUNK)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            recorded = {p: (size, mtime) for p, size, mtime in rows}
            changed = []
            if listed is not None:
                now: Iterable[Entry | bytes] = [
                    Entry(path=p, kind="f", size=listed[p][0], mtime_ns=listed[p][1], mode=0) if p in listed else p
                    for p in recorded]
            else:
                assert source is not None
                now = source.stat(self.tree.root, list(recorded))
            for e in now:
                path = e if isinstance(e, bytes) else e.path
                size, mtime = recorded.get(path, (None, None))
                if size is None:
                    continue
                if isinstance(e, bytes) or e.size != size or not same_mtime(e.mtime_ns, mtime):
                    changed.append((name, path))
                    self.report.warn(f"{show_path(name, path)}: changed while it was copied; "
                                     "copied again next pass", count="files_changed_during")
            if changed:
                with st.write(conn):
                    conn.executemany("UPDATE main.files SET stale = 1 WHERE tree = ? AND path = ?", changed)

    def recheck_metadata_listed(self, listed: dict[bytes, tuple[int, int]]) -> None:
        """--final: :meth:`_recheck_metadata` against a listing taken after every tree was copied."""
        if self.final and self.recheck_from_listing and not self.skipped:
            self._recheck_metadata(None, listed)

    def _finish_dirs(self) -> list[tuple[Any, ...]]:
        """Give directories their source attributes (after their entries); return their rows to record."""
        assert self.replica is not None
        conn, name = self.conn, self.tree.name
        rows = conn.execute(
            "SELECT s.path, s.dir, s.size, s.mtime_ns, s.mode, s.inode FROM seen s LEFT JOIN main.files f"
            f" ON f.tree = ? AND f.path = s.path WHERE {_SEEN_DIRS_TO_COMPARE} AND (f.path IS NULL OR f.stale = 1"
            " OR f.kind <> 'd' OR f.mtime_ns <> s.mtime_ns OR f.mode <> s.mode)", (name,)).fetchall()
        changed = {r[0] for r in rows}
        touched = [p for p in self.touched if p not in changed]
        for i in range(0, len(touched), CHUNK):
            rows += conn.execute(
                f"SELECT path, dir, size, mtime_ns, mode, inode FROM seen WHERE kind = 'd' AND path IN"
                f" ({','.join('?' * len(touched[i:i + CHUNK]))})", touched[i:i + CHUNK]).fetchall()
        rows.sort(key=lambda r: r[0], reverse=True)  # children before parents
        for path, _parent, _size, mtime_ns, mode, _inode in rows:
            self.replica.set_dir_attrs(name, path, mode, mtime_ns)
        # A directory too fresh to trust is recorded without its mtime (-1 never matches a listing),
        # so the next pass lists it again; not stale, which would also mean "written into when a
        # pass died" and send it through recover_interrupted's local scan.
        fresh = self._fresh_from
        return [(name, p, d, "d", CLS_DIR, s, -1 if fresh is not None and m >= fresh else m, mode, ino, None, 0)
                for p, d, s, m, mode, ino in rows if p in changed]

    # ---------------------------------------------------------------- verify

    def read_replica(self) -> None:
        """--final, once every tree is copied: the replica as it is on disk now, for :meth:`verify`.

        Local work: the engine does it while the source's closing listing runs
        (nothing writes the replica any more, only the state's marks change).
        """
        if self.skipped or self._replica_read:
            return
        assert self.replica is not None
        t0 = time.monotonic()
        self.conn.execute("DELETE FROM disk")
        self._load_disk()
        self._replica_read = True
        self.report.add(verify_seconds=time.monotonic() - t0)

    def verify(self) -> tuple[int, int]:
        """--final: compare the replica on disk (:meth:`read_replica`) with this pass's listing; return (files, bytes)."""
        assert self.replica is not None
        conn, name, report = self.conn, self.tree.name, self.report
        if self.skipped:
            report.differ(f"{name}: not compared (source directory missing)")
            return 0, 0
        self.read_replica()
        t0 = time.monotonic()
        for (path,) in conn.execute(
                "SELECT s.path FROM seen s WHERE NOT EXISTS (SELECT 1 FROM disk d WHERE d.path = s.path"
                " AND d.kind = s.kind) ORDER BY s.path"):
            report.differ(f"{show_path(name, path)}: missing in the replica")
        for path, what in conn.execute(
                "SELECT s.path, CASE WHEN s.kind = 'l' THEN 'symlink target' WHEN d.size <> s.size THEN 'size'"
                " WHEN d.mtime_ns <> s.mtime_ns THEN 'mtime' ELSE 'mode' END FROM seen s JOIN disk d"
                " ON d.path = s.path AND d.kind = s.kind WHERE (s.kind = 'f' AND (d.size <> s.size OR"
                " d.mtime_ns <> s.mtime_ns OR d.mode <> s.mode)) OR (s.kind = 'l' AND d.link IS NOT s.link)"
                " ORDER BY s.path"):
            report.differ(f"{show_path(name, path)}: {what} differs from the source")
        extra = conn.execute("SELECT d.path, d.kind FROM disk d WHERE NOT EXISTS"
                             " (SELECT 1 FROM seen s WHERE s.path = d.path) ORDER BY d.path").fetchall()
        for path, kind in extra:
            below = conn.execute("SELECT 1 FROM seen WHERE path > ? AND substr(path, 1, ?) = ? LIMIT 1",
                                 (path, len(path) + 1, path + b"/")).fetchone()
            if kind == "d" and below:
                continue  # a parent spoolmig made for an included file
            report.differ(f"{show_path(name, path)}: in the replica but not on the source")
        for (path,) in conn.execute("SELECT path FROM main.files WHERE tree = ? AND stale = 1 AND kind <> 'd'"
                                    " ORDER BY path", (name,)):
            report.differ(f"{show_path(name, path)}: changed during the pass")
        files, size = conn.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN kind = 'f' THEN size ELSE 0 END), 0) FROM seen"
            " WHERE kind IN ('f', 'l')").fetchone()
        report.add(verify_seconds=time.monotonic() - t0)
        return int(files), int(size)


class ListingDigest:
    """What a cheap listing of a tree shows, as one order-independent value (--final's quiet check).

    The sum of per-entry hashes does not depend on the order entries come in,
    so the same value can be computed from a cheap listing (directories and
    ``cyrus.*`` files) and from a full walk filtered the same way.
    """

    def __init__(self, tree: Tree) -> None:
        self.tree, self.total, self.count = tree, 0, 0
        #: The cheap listing of this tree is all of it (decided once: :meth:`wants` runs per entry).
        self._whole = not _digest_globs(tree)

    def wants(self, e: Entry) -> bool:
        """Would the cheap listing of this tree show ``e``?"""
        return self._whole or e.kind == "d" or META_RE.match(e.path.rpartition(b"/")[2]) is not None

    def add(self, e: Entry) -> None:
        h = hashlib.sha256(b"%s\0%s\0%d\0%d\0%d\0%s" % (e.path, e.kind.encode(), e.size, e.mtime_ns, e.inode,
                                                        e.link or b"")).digest()
        self.total = (self.total + int.from_bytes(h, "big")) % (1 << 256)
        self.count += 1

    def value(self) -> tuple[int, int]:
        return self.total, self.count


def digest_spec(tree: Tree) -> Walk:
    """The walk :func:`source_digest` makes."""
    return Walk(tree.root, _digest_globs(tree), tuple(tree.prune))


def _digest_globs(tree: Tree) -> tuple[bytes, ...]:
    """``only_dirs_and`` of the digest's walk: () walks everything (a tree whose every file is metadata)."""
    return tuple(tree.stat_globs or ())


def _clock(source: Source, root: str) -> int | None:
    """The source's clock before its last listing of ``root`` (None: unknown; optional in a Source)."""
    clock = getattr(source, "listing_clock", None)
    return clock(root) if clock is not None else None


def _set_aside(listing: Iterable[Entry | Names], blocks: list[Names]) -> Iterator[Entry]:
    """The Entries of a listing; its Names blocks go to ``blocks``."""
    for value in listing:
        if isinstance(value, Names):
            blocks.append(value)
        else:
            yield value


def prepare_walks(source: Source, walks: list[Walk | KnownPaths]) -> None:
    """Let a source start these walks together (an SSH source overlaps their start-up costs)."""
    prepare = getattr(source, "prepare_walks", None)
    if prepare is not None:
        prepare(walks)


def source_digest(source: Source, tree: Tree, files: dict[bytes, tuple[int, int]] | None = None) -> tuple[int, int]:
    """A cheap listing of a tree as one digest (for --final's quiet check).

    ``files``, if given, receives (size, mtime_ns) of every regular file listed
    (the cheap listing's files are the ``cyrus.*`` ones; few).
    """
    digest = ListingDigest(tree)
    entries = source.walk(tree.root, only_dirs_and=_digest_globs(tree), prune=tree.prune)
    for e in entries:
        digest.add(e)
        if files is not None and e.kind == "f":
            files[e.path] = (e.size, e.mtime_ns)
    return digest.value()
