"""The state's many-row INSERT gives what one statement per row gives, at every chunk boundary."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as s

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
