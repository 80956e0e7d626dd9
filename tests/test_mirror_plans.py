"""An incremental pass never reads all of a tree's files from the state: its cost follows the changes.

Every statement a pass runs is captured and explained (EXPLAIN QUERY PLAN); a
plan that walks the ``files`` table by tree alone (or scans it) reads every
row of the tree, which at 200,000 files cost a no-change pass a third of its
time before the statements were pinned to their indexes.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_mirror_support import load_config, local_factory, make_server, no_freshness  # noqa: F401

from spoolmig.mirror import state as st
from spoolmig.mirror import worker
from spoolmig.mirror.engine import run_pass

#: Plan lines that read a whole tree of ``files`` (only ``tree`` constrained: no other table has that
#: column) or scan the table (aliased ``f`` in the worker's SQL) other than through the small indexes
#: meant for it: stale rows, and the directories and ``cyrus.*`` files an incremental pass stats.
WHOLE = re.compile(r"^(?!.*INDEX files_(stale|known) ).*\(tree=\?\)$"
                   r"|^SCAN (main\.)?(files|f)\b(?! USING (COVERING )?INDEX files_(stale|known)\b)")


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    statements: list[str] = []
    connect = st.connect

    def tracing(path: str, **kw: object) -> sqlite3.Connection:
        conn = connect(path, **kw)  # type: ignore[arg-type]
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(st, "connect", tracing)
    return statements


def _whole_tree_reads(state: Path, statements: list[str]) -> list[tuple[str, str]]:
    """Statements on a partition tree whose plan reads all its files (EXISTS stops at the first row)."""
    found = []
    for plan, sql in _plans(state, statements, "files"):
        if sql.startswith("SELECT EXISTS(") or ("tree = '" in sql and "tree = 'partition-" not in sql):
            continue  # config and sieve are listed in full every pass: reading them whole is the plan
        if WHOLE.search(plan):
            found.append((plan, sql[:200]))
    return found


def _plans(state: Path, statements: list[str], mentioning: str) -> list[tuple[str, str]]:
    """(plan line, statement) of every captured query or change whose text mentions ``mentioning``,
    in the state and in each of its index orders (:func:`_index_orders`)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for db in _index_orders(state, Path(tmp)):
            conn = sqlite3.connect(db)
            conn.executescript(worker._TEMP_TABLES + "CREATE TEMP TABLE dup(inode, size, mtime_ns, first);")
            for sql in statements:
                head = sql.lstrip().split(None, 1)[0].upper()
                if head in ("SELECT", "INSERT", "UPDATE", "DELETE") and mentioning in sql:
                    out += [(row[3], " ".join(sql.split())) for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            conn.close()
    return out


def _index_orders(state: Path, tmp: Path) -> Iterator[Path]:
    """The state, then for each index of ``files`` a copy in which that index was created last.

    Without statistics SQLite settles a tie between two covering indexes by
    their order in the schema, and a state upgraded to a new index has it last,
    where a new state has it in the schema's order: a plan must hold in both.
    """
    yield state
    conn = sqlite3.connect(state)
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'files'"
                           " AND sql IS NOT NULL").fetchall()
    conn.close()
    assert len(indexes) >= 4, indexes
    for name, sql in indexes:
        copy = tmp / f"{name}-last.sqlite"
        shutil.copyfile(state, copy)
        conn = sqlite3.connect(copy)
        conn.executescript(f"DROP INDEX {name}; {sql};")
        conn.close()
        yield copy


@pytest.mark.usefixtures("no_freshness")
def test_incremental_passes_read_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server(tmp_path / "old", users=4, messages=60)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0
    statements = _capture(monkeypatch)
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0  # no change
    server.deliver(5)
    server.expunge(2)
    server.flag_change(2)
    mbox = next(iter(server.mailboxes))
    server.delete_mailbox(mbox)
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0  # new, expunged, changed, a mailbox gone
    assert len(statements) > 50
    state = Path(st.state_path(cfg.mirror.path))
    assert _whole_tree_reads(state, statements) == []
    # what relisted directories hold is read from the index alone, never row by row
    by_dir = _plans_using(state, statements, "files_by_dir")
    assert len(by_dir) >= 2, by_dir  # the known names, the deletions
    assert all("USING COVERING INDEX files_by_dir" in plan for plan, _ in by_dir), by_dir


def _plans_using(state: Path, statements: list[str], index: str) -> list[tuple[str, str]]:
    return [(plan, sql[:200]) for plan, sql in _plans(state, statements, index) if index in plan]


def test_a_state_of_an_earlier_version_gets_the_covering_index(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite")
    st.open_state(path).close()
    old = sqlite3.connect(path)
    old.executescript("DROP INDEX files_by_dir; CREATE INDEX files_dir ON files(tree, dir);")
    old.close()
    conn = st.open_state(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "files_by_dir" in names and "files_dir" not in names


def test_the_check_finds_a_whole_tree_read(tmp_path: Path) -> None:
    """The detector itself: a statement filtered on the tree alone is caught."""
    server = make_server(tmp_path / "old", users=2, messages=10)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0
    state = Path(st.state_path(cfg.mirror.path))
    found = _whole_tree_reads(state, ["SELECT count(*) FROM main.files WHERE tree = 'partition-default'"])
    assert found and found[0][0].startswith("SEARCH")
