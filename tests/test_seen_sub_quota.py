"""Seen values and sequence sets, subscription files, quota files — against Cyrus 3.6's own output."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.errors import FormatError
from spoolmig.formats import cyrusdb, quota, seen, subs
from spoolmig.formats import index as ix

from cyrus_tools import CyrusTools

META = Path(__file__).parent / "fixtures" / "meta"


def show_lines(path: Path) -> list[tuple[bytes, bytes]]:
    """`cyr_dbtool show` output → (key, value) pairs."""
    return [tuple(line.split(b"\t", 1)) for line in path.read_bytes().splitlines()]  # type: ignore[misc]


# ------------------------------------------------------------------ seen


@pytest.mark.parametrize("stem", ["bob", "bob-exported"])
def test_seen_values_round_trip_as_cyrus_shows_them(stem: str) -> None:
    with cyrusdb.open_file(META / "seen" / f"{stem}.seen") as db:
        records = list(db.records())
    assert records == show_lines(META / "seen" / f"{stem}.show")
    for key, value in records:
        parsed = seen.parse_value(value, key=key)
        assert seen.format_value(parsed) == value


def test_seen_sequence_is_what_cyrus_imported_as_seen_flags() -> None:
    """reconstruct -V 17 turned bob.seen's sequence into \\Seen flags: same UIDs."""
    with cyrusdb.open_file(META / "seen" / "bob.seen") as db:
        (key, value), = db.records()
    value_ = seen.parse_value(value)
    buf = (META / "index" / "flags-v17.index").read_bytes()
    header = ix.parse_header(buf)
    flagged = [r.uid for r in ix.records(buf) if "\\Seen" in r.flag_names]
    assert list(seen.seqset_uids(value_.ranges, limit=header.last_uid)) == flagged == [1, 2, 4]
    assert key == b"0f1e2d3c4b5a6978"


def test_seen_value_fields() -> None:
    v = seen.parse_value(b"1 1167609700 2 1167609701 1:2")
    assert (v.lastread, v.lastuid, v.lastchange, v.seenuids) == (1167609700, 2, 1167609701, b"1:2")
    assert seen.parse_value(b"1 5 3 0 ").seenuids == b""


@pytest.mark.parametrize("bad", [b"", b"2 1 2 3 1:2", b"1 x 2 3", b"1 1 2 3 1:2,a", b"1 1 2"])
def test_bad_seen_value(bad: bytes) -> None:
    with pytest.raises(FormatError) as err:
        seen.parse_value(bad, file="user/b/bob.seen", key=b"abc")
    assert "user/b/bob.seen" in str(err.value) and "abc" in str(err.value)


_ranges = st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 1000)).map(lambda t: (t[0], t[0] + t[1])),
                   max_size=12)


@settings(max_examples=300, deadline=None)
@given(_ranges)
def test_seqset_round_trip(ranges: list[tuple[int, int]]) -> None:
    text = seen.format_seqset(ranges)
    back = seen.parse_seqset(text)
    assert back == seen.normalise(ranges)
    assert seen.format_seqset(back) == text
    uids = {u for lo, hi in ranges for u in range(lo, hi + 1)}
    assert {u for lo, hi in back for u in range(lo, hi + 1)} == uids


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_seen_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        v = seen.parse_value(data)
    except FormatError:
        return
    assert seen.parse_value(seen.format_value(v)) == v


# ------------------------------------------------------------------ subscriptions


def test_subscriptions_v1_match_cyr_dbtool() -> None:
    with cyrusdb.open_file(META / "sub" / "bob.sub") as db:
        s = subs.read(db.records(), file="bob.sub")
    assert s.version == 1
    assert [n.encode() for n in s.names] == [k for k, _ in show_lines(META / "sub" / "bob.show")]
    assert "user.bob.a b" in s.names


def test_subscriptions_v2_resolve_inbox_keys() -> None:
    with cyrusdb.open_file(META / "sub" / "bob-v2.sub") as db:
        v2 = subs.read(db.records(), userid="bob")
    with cyrusdb.open_file(META / "sub" / "bob.sub") as db:
        v1 = subs.read(db.records())
    assert v2.version == 2
    assert sorted(v2.names) == sorted(v1.names)
    # and back: the records we would write are the ones in the file
    with cyrusdb.open_file(META / "sub" / "bob-v2.sub") as db:
        stored = sorted(db.records())
    assert sorted(subs.build_records(v2, userid="bob")) == stored


def test_subscriptions_v2_need_the_owner() -> None:
    with cyrusdb.open_file(META / "sub" / "bob-v2.sub") as db, pytest.raises(FormatError):
        subs.read(db.records(), file="bob-v2.sub")


def test_relocated_sub_db_kept_the_old_keys() -> None:
    """relocate_by_id moved bob's .sub to user/uuid/.../sub.db without upgrading it."""
    path = next((META / "layout" / "relocated").rglob("sub.db"))
    with cyrusdb.open_file(path) as db:
        assert subs.read(db.records()).version == 1


# ------------------------------------------------------------------ quota


def test_legacy_quota_file() -> None:
    buf = (META / "quota" / "legacy.quota").read_bytes()
    q = quota.parse(buf)
    assert (q.form, q.used, q.limit) == ("legacy", {"S": 12345}, {"S": 1000})
    assert quota.build(q) == buf


def test_dlist_quota_file_matches_cyrus_quota_report() -> None:
    buf = (META / "quota" / "dlist.quota").read_bytes()
    q = quota.parse(buf)
    assert quota.build(q) == buf
    assert (q.used, q.limit, q.modseq) == ({"S": 830, "M": 5, "AS": 0, "NF": 1},
                                           {"S": 1000, "M": None, "AS": None, "NF": None}, 2)
    # `quota` prints the limit in KiB and usage in KiB (830 bytes -> 0)
    report = (META / "quota" / "dlist.quota-report").read_text().splitlines()
    storage = report[1].split()
    assert (int(storage[0]), int(storage[2])) == (q.limit["S"], q.used["S"] // 1024)
    assert int(report[2].split()[0]) == q.used["M"]
    assert show_lines(META / "quota" / "dlist.show") == [(b"user.bob", buf[:-1])]


@pytest.mark.parametrize("bad, words", [(b"12\n", "used limit"), (b"12 x\n", "non-numeric"), (b"1\n2", "line feed"),
                                        (b"%(S (x))\n", "not a number"), (b"%(S\n", "dlist")])
def test_bad_quota_file(bad: bytes, words: str) -> None:
    with pytest.raises(FormatError) as err:
        quota.parse(bad, file="quota/b/user.bob")
    assert words in str(err.value) and "quota/b/user.bob" in str(err.value)


def test_quota_intermediate_form_and_unlimited() -> None:
    q = quota.parse(b"100 -1 7 m 3 10\n")  # names compared case-insensitively
    assert (q.used, q.limit) == ({"S": 100, "M": 3}, {"S": None, "M": 10})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_quota_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        quota.parse(data)
    except FormatError:
        pass


@pytest.mark.cyrus
def test_cyrus_reads_the_dlist_quota_we_convert(tmp_path: Path) -> None:
    cyrus = CyrusTools(tmp_path)
    qdir = cyrus.configdir / "quota"
    (qdir / "b").mkdir(parents=True)
    q = quota.parse((META / "quota" / "legacy.quota").read_bytes())
    (qdir / "b" / "user.bob").write_bytes(quota.build(q, form="dlist"))
    out = cyrus.dbtool(qdir, "quotalegacy", "show").stdout
    assert out == b"user.bob\t%(S (12345 1000) M (0) AS (0) NF (0))\n"
