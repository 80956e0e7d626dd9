"""The state's many-row INSERT gives what one statement per row gives, at every chunk boundary."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from spoolmig.errors import MirrorError
from spoolmig.mirror import state as st

TABLE = "CREATE TABLE t(k BLOB PRIMARY KEY, a INTEGER, b TEXT, c INTEGER) WITHOUT ROWID"
UPSERT = st.Insert("INSERT INTO t(k, a, b, c)", "(?,?,?,7)",
                   "ON CONFLICT(k) DO UPDATE SET a = excluded.a + t.a, b = excluded.b")
REPLACE = st.Insert("INSERT OR REPLACE INTO t(k, a, b, c)", "(?,?,?,?)")

rows3 = s.lists(s.tuples(s.binary(max_size=3), s.integers(-5, 5), s.text(max_size=3)), max_size=40)


def _table(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT * FROM t ORDER BY k").fetchall()


def _pair(limit: int | None) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    many, one = (sqlite3.connect(":memory:", isolation_level=None) for _ in range(2))
    for conn in (many, one):
        conn.execute(TABLE)
    if limit is not None:
        many.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    return many, one


@settings(max_examples=200, deadline=None)
@given(rows=rows3, limit=s.sampled_from([None, 3, 7, 20]), per=s.sampled_from([1, 2, 5, 256]))
def test_an_upsert_of_many_rows_equals_one_statement_per_row(rows: list[tuple[bytes, int, str]], limit: int | None,
                                                             per: int) -> None:
    """Duplicate keys inside one statement resolve in order, as row after row would."""
    many, one = _pair(limit)
    old = st.ROWS_PER_STATEMENT
    st.ROWS_PER_STATEMENT = per
    try:
        UPSERT.many(many, rows)
    finally:
        st.ROWS_PER_STATEMENT = old
    one.executemany(UPSERT.one(), rows)
    assert _table(many) == _table(one)


@settings(max_examples=100, deadline=None)
@given(rows=s.lists(s.tuples(s.binary(max_size=2), s.integers(-2**63, 2**63 - 1), s.text(max_size=2), s.integers(0, 9)), max_size=600))
def test_a_replace_of_many_rows_equals_one_statement_per_row(rows: list[tuple[bytes, int, str, int]]) -> None:
    many, one = _pair(None)
    REPLACE.many(many, rows)
    one.executemany(REPLACE.one(), rows)
    assert _table(many) == _table(one)


def test_statements_hold_as_many_rows_as_the_variable_limit_allows() -> None:
    """A build with a small limit (999 before SQLite 3.32) gets more, smaller statements, never an error."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(TABLE)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 10)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    REPLACE.many(conn, [(bytes([i]), i, "x", i) for i in range(7)])
    conn.set_trace_callback(None)
    assert len(_table(conn)) == 7
    # 10 // 4 = 2 rows a statement: 2, 2, 2, 1 (and the column list's parenthesis)
    assert [sql.count("(") for sql in statements] == [3, 3, 3, 2]


def test_any_number_of_rows_takes_few_distinct_statements() -> None:
    """Statements come in power-of-two sizes: a connection caches a handful, not one per length."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(TABLE)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for n in range(1, 300):
        conn.execute("DELETE FROM t")
        REPLACE.many(conn, [(i.to_bytes(2, "big"), i, "x", n) for i in range(n)])
    inserts = {sql.count("),(") + 1 for sql in statements if sql.startswith("INSERT")}
    assert inserts == {1 << k for k in range(st.ROWS_PER_STATEMENT.bit_length())}
    conn.set_trace_callback(None)
    assert conn.execute("SELECT count(*), min(c) FROM t").fetchone() == (299, 299)


def test_no_rows_is_no_statement() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    UPSERT.many(conn, [])
    assert statements == []


def _state_with_a_mark(path: str) -> None:
    """A state as a pass killed while writing leaves it: a directory row marked, not stale."""
    conn = st.open_state(path)
    conn.execute("INSERT INTO files(tree, path, dir, kind, cls, size, mtime_ns, mode, inode)"
                 " VALUES('t', x'61', x'', 'd', 2, 4096, 5, 493, 9), ('t', x'62', x'', 'd', 2, 4096, 5, 493, 10)")
    conn.execute("INSERT INTO marks VALUES('t', x'61')")
    conn.close()  # no close_state: a killed pass checkpoints nothing


def _stale(path: str) -> list[tuple[bytes, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT path, stale FROM files ORDER BY path").fetchall()
    finally:
        conn.close()


def test_opening_the_state_turns_a_dead_pass_s_marks_into_stale_rows(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / st.STATE_FILE)
    _state_with_a_mark(path)
    assert _stale(path) == [(b"a", 0), (b"b", 0)]
    conn = st.open_state(path)
    assert conn.execute("SELECT count(*) FROM marks").fetchone() == (0,)
    conn.close()
    assert _stale(path) == [(b"a", 1), (b"b", 0)]


def test_a_dry_run_s_copy_of_the_state_sees_the_marks_and_leaves_them(tmp_path) -> None:  # noqa: ANN001
    mirror = tmp_path / "mirror"
    (mirror / st.STATE_DIR).mkdir(parents=True)
    path = st.state_path(str(mirror))
    _state_with_a_mark(path)
    with st.scratch_copy(str(mirror)) as conn:
        assert conn.execute("SELECT path, stale FROM files ORDER BY path").fetchall() == [(b"a", 1), (b"b", 0)]
    assert _stale(path) == [(b"a", 0), (b"b", 0)]  # the real state is only read
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM marks").fetchone() == (1,)
    conn.close()


def test_a_state_of_schema_1_is_upgraded_and_a_newer_one_refused(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / st.STATE_FILE)
    st.open_state(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE marks; UPDATE meta SET value = '1' WHERE key = 'schema';")
    conn.close()
    conn = st.open_state(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(st.SCHEMA_VERSION),)
    assert conn.execute("SELECT count(*) FROM marks").fetchone() == (0,)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.execute("DROP TABLE marks")
    conn.close()
    with pytest.raises(MirrorError, match=r"state\.sqlite: state schema 99, this spoolmig reads 2"):
        st.open_state(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'marks'").fetchone() is None  # untouched
    conn.close()
