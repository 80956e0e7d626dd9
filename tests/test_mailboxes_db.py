"""mailboxes.db entries of every version: reading real fixtures, writing each value format, damage."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.errors import FormatError
from spoolmig.formats import cyrusdb
from spoolmig.formats import mailboxes_db as m
from spoolmig.formats.mailboxes_db import MailboxEntry, MbType

sys.path.insert(0, str(Path(__file__).parent))
from cyrus_tools import CyrusTools  # noqa: E402
from mboxlist_fixtures import CASES, NAME_KEYED, db_path, oracle, read, shown_records  # noqa: E402


@pytest.mark.parametrize("case", CASES)
def test_reads_what_cyrus_shows(case: str) -> None:
    """Every record cyr_dbtool shows is a mailbox we list, a skipped key, or (3.6) an I record."""
    listing = read(case)
    shown = shown_records(case)
    skipped = {s.key for s in listing.skipped}
    if listing.layout == "v2":
        names = [m.intname_to_dbname(e.name).encode() for e in listing.entries]
        assert [b"N" + n for n in names] == [k for k, _ in shown if k[:1] == b"N"]
        ids = {k[1:].decode() for k, _ in shown if k[:1] == b"I"}
        assert {e.uniqueid for e in listing.entries} | set(listing.id_only) == ids
    else:
        assert [e.name.encode() for e in listing.entries] == [k for k, _ in shown if k not in skipped]
    assert skipped == {k for k, _ in shown if k.startswith(b"$")}


@pytest.mark.parametrize("case, version", [("dlist-2.5", (2, 5, 0)), ("dlist-3.4", (3, 4, 0))])
def test_dlist_values_rewrite_byte_exact(case: str, version: m.CyrusVersion) -> None:
    listing = read(case)
    stored = dict(shown_records(case))
    for e in listing.entries:
        value = stored[e.name.encode()]
        if e.source_format == "legacy":
            assert m.encode_legacy_value(e) == value
        else:
            assert m.encode_dlist_value(e, version, mtime=e.mtime) == value


@pytest.mark.parametrize("case", ["legacy-2.2", "legacy-2.3-mboxsort", "legacy-2.4"])
def test_legacy_values_rewrite_byte_exact(case: str) -> None:
    stored = dict(shown_records(case))
    for e in read(case).entries:
        assert e.source_format == "legacy"
        assert m.encode_legacy_value(e) == stored[e.name.encode()]


def test_extended_values() -> None:
    entries = {e.name: e for e in read("legacy-extended").entries}
    assert all(e.source_format == "extended" for e in entries.values())
    assert entries["user.b"].uniqueid == "ub1" and entries["user.b"].server == "backend1"
    assert entries["user.e"].mbtype.letters() == "ed"


@pytest.mark.parametrize("case", ["v2-3.6", "v2-upgraded-3.4"])
def test_v2_records_rewrite_byte_exact(case: str) -> None:
    """Our N and I records equal what Cyrus 3.6 wrote, byte for byte."""
    listing = read(case)
    ours = []
    for e in listing.entries:
        ours += m.encode_v2_records(e, mtime=e.mtime)
    assert sorted(ours) == sorted(shown_records(case))


def test_legacy_2_2_fields() -> None:
    entries = {e.name: e for e in read("legacy-2.2").entries}
    carol = entries["user.carol"]
    assert (carol.server, carol.partition, carol.mbtype.letters(), carol.raw_mbtype) == ("backend1", "default", "er", 1)
    erin = entries["user.erin"]
    assert (erin.server, erin.partition, erin.mbtype.letters()) == ("otherhost", "default", "em")
    assert entries["user.dan"].mbtype.letters() == "ez"
    assert entries["shared.folder"].partition == "2disk"
    assert entries["shared.folder"].acl == "anyone\tlrs\t-group:interns\tw\tgroup:staff\tlrswipcd\t"
    assert entries["user.frank"].acl == ""
    assert "user.bob.&AMk-t&AOk-" in entries and "user.bob^smith.a^b" in entries
    assert entries["example.com!user.alice"].acl == "alice@example.com\tlrswipcda\t"


def test_dlist_3_4_fields_and_skips() -> None:
    listing = read("dlist-3.4")
    entries = {e.name: e for e in listing.entries}
    bob = entries["user.bob"]
    assert (bob.uniqueid, bob.uidvalidity, bob.createdmodseq, bob.foldermodseq, bob.mtime) == (
        "6b1bd4b4-6b4e-4f9f-9b5a-000000000001", 1600000001, 1, 7, 1600000101)
    assert entries["user.bob.a"].mbtype.has("i")
    assert entries["user.bob.#jmap"].mbtype.kind == "b"
    assert entries["shared.café"].acl == "anyone\tlrs\tcafé\tlr\t"
    assert sorted(s.key[:5] for s in listing.skipped) == [b"$RACL", b"$RUNQ"]
    assert listing.layout == "dlist"
    assert listing.versions[0] == (3, 2, 0)


def test_v2_history_and_types() -> None:
    entries = {e.name: e for e in read("v2-3.6").entries}
    (h,) = entries["user.bob"].history
    assert (h.name, h.mtime, h.uidvalidity, h.createdmodseq, h.foldermodseq, h.partition) == (
        "user.robert", 1690000000, 1690000001, 1, 5, "default")
    assert entries["user.carol"].server == "backend1" and entries["user.carol"].mbtype.letters() == "er"
    assert entries["DELETED.user.bob.Trash.65A0BC00"].mbtype.letters() == "ed"
    assert entries["user.bob^smith"].mbtype.letters() == "el"
    assert entries["user.bob.#calendars"].mbtype.letters() == "c"
    assert entries["user.bob.x"].mbtype.letters() == "ei"


@pytest.mark.parametrize("case, lo", [
    ("legacy-2.2", (2, 0, 0)), ("legacy-2.3-mboxsort", (2, 3, 0)), ("legacy-2.4", (2, 4, 0)),
    ("dlist-2.5", (2, 5, 0)), ("dlist-3.4", (3, 2, 0)), ("v2-3.6", (3, 5, 0)),
])
def test_version_evidence(case: str, lo: m.CyrusVersion) -> None:
    listing = read(case)
    assert listing.versions[0] == lo
    assert listing.versions[0] <= listing.versions[1]


def test_first_key_starting_with_n_is_not_taken_for_3_6() -> None:
    """Cyrus's own test would call this legacy file 'already v2'; we must not."""
    listing = m.read([(b"News", b"0 default anyone\tlrs\t"), (b"user.bob", b"0 default bob\tlrs\t")])
    assert listing.layout == "legacy" and [e.name for e in listing.entries] == ["News", "user.bob"]


# ------------------------------------------------------------------ mbtypes


@pytest.mark.parametrize("number, letters36, letters_v1", [
    (0, "e", ""), (1, "er", "r"), (2, "ez", "z"), (4, "n", "n"), (8, "em", "m"), (16, "ed", "d"),
    (32, "c", "c"), (64, "a", "a"), (128, "b", "b"), (256, "ei", "i"), (512, "s", "s"), (1024, "p", "p"),
    (16 | 32, "cd", "dc"), (1 | 8, "emr", "mr"),
])
def test_mbtype_numbering(number: int, letters36: str, letters_v1: str) -> None:
    """2.x-3.4 bits (mboxlist.h) ⇄ 2.5-3.4 letters (mbtype_to_string 3.4.0) ⇄ 3.6 letters."""
    t = MbType.from_legacy_number(number)
    assert t.letters() == letters36
    assert t.letters_v1() == letters_v1
    assert t.legacy_number() == number
    assert MbType.from_letters_v1(letters_v1) == t
    assert MbType.from_letters(letters36) == t


def test_mbtype_3_6_numbers() -> None:
    """imap/mboxlist.h 3.6.1: types in the low bits, flags from bit 4."""
    assert MbType.from_letters("e").number_v2() == 0
    assert MbType.from_letters("er").number_v2() == 0x10
    assert MbType.from_letters("ez").number_v2() == 0x20
    assert MbType.from_letters("em").number_v2() == 0x40
    assert MbType.from_letters("ed").number_v2() == 0x80
    assert MbType.from_letters("ei").number_v2() == 0x100
    assert MbType.from_letters("el").number_v2() == 0x200
    assert MbType.from_letters("cdl").number_v2() == 0x9 | 0x80 | 0x200
    assert MbType.from_letters("dl") == MbType("e", "dl")  # a legacy email entry with no 'e'


def test_unknown_legacy_bits_survive() -> None:
    e = m.parse_value("x", b"4096 default ")
    assert e.mbtype.unknown == 4096 and m.encode_legacy_value(e) == b"4096 default "


# ------------------------------------------------------------------ damage


@pytest.mark.parametrize("value, words", [
    (b"", "empty"),
    (b"default bob\tlrs\t", "neither"),
    (b"0 default", "neither"),
    (b"%(A %(bob lrs) P default", "dlist"),
    (b"%(T q P default)", "letter"),
    (b"%(V abc M 1)", "V is not a number"),
    (b"%(A bob M 1)", "kvlist"),
    (b"(uniqueid x 0 default ", "unterminated"),
    (b"(a b c)", "not a dlist kvlist") ,
])
def test_damaged_values_name_the_mailbox(value: bytes, words: str) -> None:
    with pytest.raises(FormatError) as exc:
        if value.startswith(b"(a"):
            m._parse_dlist("user.bob", value, "mailboxes.db", v2=False)
        else:
            m.parse_value("user.bob", value, file="mailboxes.db")
    text = str(exc.value)
    assert "mailboxes.db" in text and ("'user.bob'" in text or "empty" in text)
    assert words in text and "\n" not in text


@given(st.binary(max_size=80))
@settings(max_examples=500, deadline=None)
def test_arbitrary_values_only_format_errors(value: bytes) -> None:
    try:
        e = m.parse_value("user.x", value)
    except FormatError:
        return
    assert e.name == "user.x"


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=40)), max_size=6))
@settings(max_examples=300, deadline=None)
def test_arbitrary_databases_only_format_errors(records: list[tuple[bytes, bytes]]) -> None:
    try:
        m.read(records)
    except FormatError:
        pass


def test_extended_development_form() -> None:
    e = m.parse_value("user.bob", b"(uniqueid 0f1e specialuse \\Sent) 0 default bob\tlrs\t")
    assert (e.uniqueid, e.legacy_specialuse, e.partition, e.acl, e.source_format) == (
        "0f1e", "\\Sent", "default", "bob\tlrs\t", "extended")


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("intname, dbname", [
    ("user.bob", "user\x1fbob"),
    ("user.bob^smith.a^b", "user\x1fbob.smith\x1fa.b"),
    ("example.com!user.alice.Sent", "example.com\x1duser\x1falice\x1fSent"),
    ("DELETED.user.bob.Trash.4A2B3C4D", "DELETED\x1fuser\x1fbob\x1fTrash\x1f4A2B3C4D"),
    ("example.com!shared", "example.com\x1dshared"),
    ("shared.x y", "shared\x1fx y"),
])
def test_dbnames(intname: str, dbname: str) -> None:
    assert m.intname_to_dbname(intname) == dbname
    assert m.dbname_to_intname(dbname) == intname


def test_dbnames_match_cyrus() -> None:
    """Every name 3.6 stored from the JSON document maps back to the document's key."""
    doc = json.loads(oracle("v2-3.6", "undump.json"))
    stored = {k[1:].decode("utf-8", "surrogateescape") for k, _ in shown_records("v2-3.6") if k[:1] == b"N"}
    assert {m.intname_to_dbname(name) for name in doc} == stored
    assert {m.dbname_to_intname(d) for d in stored} == set(doc)


# ------------------------------------------------------ written files, read by Cyrus


def _cyrus_dump(tools: CyrusTools, records: list[tuple[bytes, bytes]], backend: str = "twoskip") -> dict:
    (tools.configdir / "mailboxes.db").write_bytes(cyrusdb.build(backend, records))
    return json.loads(tools.run("ctl_mboxlist", "-d").stdout)


def test_v2_file_we_build_is_what_cyrus_lists(tmp_path: Path) -> None:
    entries = read("v2-3.6").entries
    tools = CyrusTools(tmp_path, virtdomains="userid")
    dumped = _cyrus_dump(tools, m.build_records(entries, (3, 6, 1), mtime=1234))
    expected = json.loads(oracle("v2-3.6"))
    for doc in (dumped, expected):
        for v in doc.values():
            v["mtime"] = "x"
    assert dumped == expected


@pytest.mark.parametrize("case, version", [("dlist-3.4", (3, 4, 0)), ("dlist-2.5", (2, 5, 0))])
def test_dlist_file_we_build_is_upgraded_by_cyrus_like_the_original(tmp_path: Path, case: str,
                                                                      version: m.CyrusVersion) -> None:
    """3.6 upgrades our 2.5/3.4 file (ctl_cyrusdb -r) to the same list as the Cyrus-upgraded original."""
    listing = read(case)
    records = m.build_records(listing.entries, version) + [(s.key, b"") for s in listing.skipped]
    tools = CyrusTools(tmp_path, virtdomains="userid")
    (tools.configdir / "mailboxes.db").write_bytes(cyrusdb.build("twoskip", records))
    tools.run("ctl_cyrusdb", "-r")
    dumped = json.loads(tools.run("ctl_mboxlist", "-d").stdout)
    expected = json.loads(oracle(case, "upgraded.ctl_mboxlist-d"))
    for doc in (dumped, expected):
        for v in doc.values():
            v["mtime"] = "x"
    assert dumped == expected and dumped


def test_legacy_file_we_build_reads_back(tmp_path: Path) -> None:
    """A 2.x file written by us is byte-identical in content to the fixture (cyr_dbtool shows the same)."""
    listing = read("legacy-2.2")
    data = cyrusdb.build("skiplist", m.build_records(listing.entries, (2, 2, 13)))
    tools = CyrusTools(tmp_path)
    path = tmp_path / "ours.db"
    path.write_bytes(data)
    assert tools.show(path, "skiplist") == (db_path("legacy-2.2").with_suffix(".show")).read_bytes()


def test_name_keyed_cases_are_listed() -> None:
    for case in NAME_KEYED:
        assert read(case).layout in ("legacy", "dlist")


def test_copy_is_untouched(tmp_path: Path) -> None:
    copy = tmp_path / "m.db"
    shutil.copyfile(db_path("legacy-2.2"), copy)
    before = copy.read_bytes()
    with cyrusdb.open_file(copy) as db:
        m.read(db.records())
    assert copy.read_bytes() == before


def test_entry_defaults() -> None:
    e = MailboxEntry("user.bob", partition="default", acl="bob\tlrs\t")
    assert m.encode_legacy_value(e) == b"0 default bob\tlrs\t"
    assert m.encode_dlist_value(e, (3, 4, 0), mtime=5) == b"%(A %(bob lrs) P default M 5)"
    assert m.encode_v2_records(e, mtime=5) == [(b"Nuser\x1fbob", b"%(T e P default M 5 A %(bob lrs))")]
