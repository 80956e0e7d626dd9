"""The mirror's state: one SQLite file describing what the replica durably holds.

The state is the only thing a pass trusts about the replica. A row says "this
path is on disk with these source attributes, synced"; a row with
``stale = 1`` says "what is on disk here is not trusted": it is written
*before* a batch touches the path and cleared in the transaction that follows
the batch's sync. A directory a pass writes into is marked in ``marks``
first, and unmarked once everything written into it is recorded; a pass that
finds marks left (:func:`open_state`) makes those directories' rows stale. So
a pass killed anywhere leaves rows that the next pass compares with the source
again, never a wrong file taken for a good one.

Tables (schema version 2):

``files``   one row per replica entry: tree, path (bytes, relative), dir (its
            parent, NULL for the tree root), kind (f/d/l), cls (0 message-like,
            1 metadata, 2 directory), size, mtime_ns, mode, inode, link
            target, stale. For a directory, mtime_ns is the mtime observed
            *before* its entries were listed; -1 when it was too fresh to trust
            (listed again next pass).
``marks``   (tree, path) of the directories the running pass writes into. Their rows
            keep their attributes (marking them stale row by row cost a small pass
            a fifth of its state writes: each row sits in three indexes); a mark
            outliving its pass is what a crash leaves (version 1 kept these
            marks as ``stale`` on the rows).
``totals``  one row: the regular files recorded with a size, and their bytes,
            kept by triggers on ``files`` (so rows are never REPLACEd).
``passes``  one row per pass with its figures (see :data:`PASS_FIGURES`).
``meta``    key/value: schema version; per tree, the source's clock before the listing of the
            last clean pass (``listed:<tree>``: what an incremental pass asks to hear only
            changes since).

The file is in WAL mode while a pass runs and switched back to a plain
rollback journal at the end, so at rest it is one self-contained file that
``status`` and ``--dry-run`` can read without writing anything.

Commits are not fsync'ed one by one (WAL with ``synchronous = NORMAL``): each
cost a disk flush, 10-20 ms here, and a small pass makes dozens. A killed
process loses no commit (the WAL is in the kernel's cache); an OS crash may
lose the last ones, which at worst makes the next pass compare and fetch
again what they recorded. The state lives in the replica's filesystem, so
every ``syncfs`` of a batch makes the WAL durable with the files, and the
checkpoint that ends a pass makes the whole state durable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from spoolmig.errors import MirrorError

SCHEMA_VERSION = 2
#: Versions this one opens, upgrading them (1: no ``marks`` table; created as the schema's).
UPGRADES_FROM = {"1"}
STATE_DIR = ".spoolmig"
STATE_FILE = "state.sqlite"

#: Integer figures recorded per pass (all default 0).
PASS_FIGURES = (
    "files_new", "bytes_new", "files_changed", "bytes_changed", "files_deleted", "bytes_deleted",
    "files_recopied", "bytes_recopied", "files_kept", "entries_listed", "dirs_total", "dirs_relisted",
    "files_vanished", "files_changed_during", "checksum_mismatches", "errors", "skipped",
    "bytes_fetched", "replica_files", "replica_bytes", "files_linked",
)
#: Float figures (seconds).
PASS_TIMES = ("list_seconds", "fetch_seconds", "verify_seconds")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    tree TEXT NOT NULL, path BLOB NOT NULL, dir BLOB, kind TEXT NOT NULL, cls INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL,
    inode INTEGER NOT NULL, link BLOB, stale INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(tree, path)) WITHOUT ROWID;
-- a directory's files with what the relisting compares (its path is the key, in every entry):
-- no lookup of the row per file (half the time of reading 20k known names of 200 directories)
CREATE INDEX IF NOT EXISTS files_by_dir ON files(tree, dir, kind, cls, stale, size);
-- what an incremental pass stats every time (directories, metadata files), in path order and with
-- every column it compares or puts into ``seen`` (dir too: the recorded directories go there in one
-- statement): message files, most rows and most new rows of a pass, are not in it (queries say
-- "cls > 0" to use it)
CREATE INDEX IF NOT EXISTS files_known ON files(tree, path, kind, cls, size, mtime_ns, mode, inode, stale, link, dir)
    WHERE cls > 0;
CREATE INDEX IF NOT EXISTS files_stale ON files(tree, path) WHERE stale = 1;
CREATE INDEX IF NOT EXISTS files_inode ON files(tree, inode) WHERE kind = 'f';
-- indexes of earlier versions (replaced by files_known, files_by_dir and the totals table)
DROP INDEX IF EXISTS files_cheap;
DROP INDEX IF EXISTS files_dir;
DROP INDEX IF EXISTS files_listed;
DROP INDEX IF EXISTS files_cls;
DROP INDEX IF EXISTS files_size;
CREATE TABLE IF NOT EXISTS marks(tree TEXT NOT NULL, path BLOB NOT NULL, PRIMARY KEY(tree, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS passes(
    id INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, mode TEXT NOT NULL,
    outcome TEXT NOT NULL, source TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    {", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in PASS_FIGURES)},
    {", ".join(f"{name} REAL NOT NULL DEFAULT 0" for name in PASS_TIMES)});
"""

#: One writer at a time across this process's threads (SQLite serialises
#: writers anyway; taking a Python lock first avoids busy-wait polling).
WRITE_LOCK = threading.Lock()
#: WAL pages before a commit checkpoints (SQLite's default is 1,000 = 4 MiB): a checkpoint flushes the
#: WAL and the database (two fdatasyncs, 20-40 ms here), and a small pass wrote past 4 MiB mid-pass.
#: The pass's end checkpoints anyway (:func:`close_state`); a first copy checkpoints every 64 MiB.
WAL_CHECKPOINT_PAGES = 16384


def state_path(mirror_path: str) -> str:
    return os.path.join(mirror_path, STATE_DIR, STATE_FILE)


def connect(path: str, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode; transactions are explicit (:func:`write`)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, uri=uri, timeout=300)
        conn.execute("PRAGMA busy_timeout = 300000")
        conn.execute("PRAGMA cache_size = -4096")
    except sqlite3.Error as error:
        raise MirrorError(f"{path}: cannot open the mirror state: {error}") from None
    return conn


#: The replica's totals (regular files recorded with a size), kept by triggers: every pass reports
#: them, and counting read an index entry per file (35 ms at 209k files) while maintaining that
#: index touched a page per recorded file. Rows are never REPLACEd (that would skip the triggers).
_TOTALS = """
CREATE TABLE totals(id INTEGER PRIMARY KEY CHECK (id = 1), files INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO totals SELECT 1, count(*), coalesce(sum(size), 0) FROM files WHERE kind = 'f' AND size >= 0;
CREATE TRIGGER totals_insert AFTER INSERT ON files WHEN NEW.kind = 'f' AND NEW.size >= 0 BEGIN
    UPDATE totals SET files = files + 1, bytes = bytes + NEW.size WHERE id = 1; END;
CREATE TRIGGER totals_delete AFTER DELETE ON files WHEN OLD.kind = 'f' AND OLD.size >= 0 BEGIN
    UPDATE totals SET files = files - 1, bytes = bytes - OLD.size WHERE id = 1; END;
CREATE TRIGGER totals_update AFTER UPDATE OF kind, size ON files BEGIN
    UPDATE totals SET
        files = files - (OLD.kind = 'f' AND OLD.size >= 0) + (NEW.kind = 'f' AND NEW.size >= 0),
        bytes = bytes - CASE WHEN OLD.kind = 'f' AND OLD.size >= 0 THEN OLD.size ELSE 0 END
                      + CASE WHEN NEW.kind = 'f' AND NEW.size >= 0 THEN NEW.size ELSE 0 END
    WHERE id = 1; END;
"""


def open_state(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the state for a pass, in WAL mode."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] != str(SCHEMA_VERSION) and row[0] not in UPGRADES_FROM:
            raise MirrorError(f"{path}: state schema {row[0]}, this spoolmig reads {SCHEMA_VERSION}",
                              hint="run the spoolmig that wrote it, or move the state away and run"
                                   " `spoolmig mirror --full` to rebuild it")
        conn.executescript(_SCHEMA)  # (a newer spoolmig's state is refused before anything changes)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'totals'").fetchone() is None:
            conn.executescript("BEGIN IMMEDIATE;" + _TOTALS + "COMMIT;")
        have = {r[1] for r in conn.execute("PRAGMA table_info(passes)")}
        for name in PASS_FIGURES + PASS_TIMES:  # figures added since the state was created
            if name not in have:
                kind = "REAL" if name in PASS_TIMES else "INTEGER"
                conn.execute(f"ALTER TABLE passes ADD COLUMN {name} {kind} NOT NULL DEFAULT 0")
        if row is None or row[0] != str(SCHEMA_VERSION):
            conn.execute("INSERT OR REPLACE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
        _fold_marks(conn)
    except MirrorError:
        conn.close()
        raise
    except sqlite3.DatabaseError as error:
        conn.close()
        raise MirrorError(f"{path}: the mirror state is damaged: {error}",
                          hint="move it away and run `spoolmig mirror --full` to rebuild it") from None
    return conn


def _fold_marks(conn: sqlite3.Connection) -> None:
    """Marks a pass left (it died while writing): their directories' rows become stale.

    What every pass already distrusts: a stale directory is listed again and
    looked into for temporaries and unrecorded files
    (:func:`spoolmig.mirror.engine.recover_interrupted`).
    """
    marks = conn.execute("SELECT tree, path FROM marks").fetchall()  # one pass's directories at most
    if marks:
        with write(conn):
            conn.executemany("UPDATE files SET stale = 1 WHERE tree = ? AND path = ? AND stale = 0", marks)
            conn.execute("DELETE FROM marks")


def open_worker(path: str) -> sqlite3.Connection:
    """Another connection to an open state (one per tree worker, for its temp tables)."""
    conn = connect(path)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    return conn


def close_state(conn: sqlite3.Connection) -> None:
    """Leave the state as one self-contained file (no -wal) when possible."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


#: Most rows per statement of :class:`Insert` (a power of two; bounded again by the build's limit on
#: bound variables). A prepared statement of 256 rows of 11 values holds ~290 KB, and sqlite3 caches up
#: to 128 statements per connection; 16, 32 and 64 rows insert equally fast (~2 us a row).
ROWS_PER_STATEMENT = 32


class Insert(NamedTuple):
    """An INSERT of many rows a few dozen at a time: ``head VALUES group,group,… tail``.

    ``executemany`` steps its statement once per row, and Python's sqlite3
    lets go of the GIL around every step: while another thread is busy (the
    SSH transport's, in a copy) each row then waits for the GIL to come back.
    Recording a first copy took four times as long as it does alone; one
    statement of many rows is stepped once. The rows are cut in statements of
    power-of-two sizes, so a connection prepares (and caches) only a few.
    """

    head: str  # "INSERT ... INTO table(columns)"
    group: str  # one row's values: "(?,?,-1)", a "?" per bound value
    tail: str = ""  # "ON CONFLICT ..."

    def one(self) -> str:
        """The statement for one row: what ``executemany`` would run (the tests compare with it)."""
        return f"{self.head} VALUES{self.group} {self.tail}"

    def many(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` in order (a key given twice ends as a statement per row would leave it)."""
        most = min(ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // self.group.count("?"))
        size = 1 << max(0, most.bit_length() - 1)  # the largest power of two not above it
        at = 0
        while at < len(rows):
            while at + size > len(rows):
                size >>= 1
            chunk = rows[at:at + size]
            conn.execute(f"{self.head} VALUES{','.join([self.group] * size)} {self.tail}",
                         [v for row in chunk for v in row])
            at += size


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on the main database, serialised across threads."""
    with WRITE_LOCK:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@contextlib.contextmanager
def scratch_copy(mirror_path: str) -> Iterator[sqlite3.Connection]:
    """A private copy of the state for ``--dry-run``: the mirror is only read.

    With no state yet (or no mirror directory) the copy starts empty.
    """
    src = state_path(mirror_path)
    with tempfile.TemporaryDirectory(prefix="spoolmig-dry-run-") as tmp:
        dst = os.path.join(tmp, STATE_FILE)
        for suffix in ("", "-wal"):
            if os.path.exists(src + suffix):
                shutil.copyfile(src + suffix, dst + suffix)
        conn = open_state(dst)
        try:
            yield conn
        finally:
            conn.close()


def open_readonly(mirror_path: str) -> sqlite3.Connection | None:
    """Read the state without writing anything (``status``); None when there is none.

    ``immutable=1`` creates no -shm/-wal files and takes no locks; a pass running
    at the same time may make a read fail, which the caller retries.
    """
    path = state_path(mirror_path)
    if not os.path.exists(path):
        return None
    from urllib.parse import quote

    return connect(f"file:{quote(os.path.abspath(path))}?immutable=1", uri=True)


def begin_pass(conn: sqlite3.Connection, mode: str, source: str) -> int:
    with write(conn):
        cur = conn.execute("INSERT INTO passes(started, mode, outcome, source) VALUES(?, ?, 'running', ?)",
                           (time.time(), mode, source))
    return int(cur.lastrowid or 0)


def listed_clock(conn: sqlite3.Connection, tree: str, identity: str) -> int | None:
    """The source's clock (ns) before the listing of the last clean pass over ``tree``; None: none known.

    Only for the same ``identity`` (source, root and filters): a pass from
    elsewhere says nothing about what is there now.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"listed:{tree}",)).fetchone()
    if row is None:
        return None
    clock, _, of = row[0].partition(" ")
    return int(clock) if of == identity and clock.lstrip("-").isdigit() else None


def put_listed_clock(conn: sqlite3.Connection, tree: str, identity: str, clock_ns: int | None) -> None:
    """Record (None: forget) the clock of this pass's listing of ``tree``, once it ended cleanly
    (in the caller's write transaction)."""
    if clock_ns is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (f"listed:{tree}",))
    else:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                     (f"listed:{tree}", f"{int(clock_ns)} {identity}"))


def replica_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """Files and bytes the replica holds, for the pass's report (kept by the ``totals`` triggers)."""
    files, size = conn.execute("SELECT files, bytes FROM main.totals").fetchone()
    return int(files), int(size)


def end_pass(conn: sqlite3.Connection, pass_id: int, outcome: str, figures: dict[str, Any],
             message: str = "") -> None:
    names = [n for n in PASS_FIGURES + PASS_TIMES if n in figures]
    sets = ", ".join(f"{n} = ?" for n in names)
    with write(conn):
        conn.execute(f"UPDATE passes SET ended = ?, outcome = ?, message = ?, {sets} WHERE id = ?",
                     (time.time(), outcome, message, *[figures[n] for n in names], pass_id))
