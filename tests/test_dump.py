"""ctl_mboxlist -d dialects of every version, and -u input that real Cyrus 3.6 accepts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.errors import FormatError, UsageError
from spoolmig.formats import cyrusdb
from spoolmig.formats import mailboxes_db as m
from spoolmig.formats.mailboxes_db import MailboxEntry, MbType
from spoolmig.write import dump

sys.path.insert(0, str(Path(__file__).parent))
from cyrus_tools import CyrusTools  # noqa: E402
from mboxlist_fixtures import oracle, read  # noqa: E402


def _lines(case: str, version: str, *names: str) -> list[bytes]:
    text = dump.render_dump(read(case).entries, version).text
    wanted = {n.encode() for n in names}
    return [line for line in text.split(b"\n") if line.split(b"\t", 1)[0] in wanted]


# Expected lines spelled out from each release's dump_cb printf (imap/ctl_mboxlist.c):
#   2.2.13 / 2.3.3  "%s\t%s\t%s\n"           name, partition, acl
#   2.3.9           "%s\t%d %s\t%s\n"        name, mbtype, partition, acl
#   2.3.16 / 2.4.17 "%s\t%d %s %s\n"
#   2.5.17          "%s\t%d %s %s\n"         partition without the server
#   3.0.18 – 3.4.0  "%s\t%d " ["%s!"] "%s %s\n"
@pytest.mark.parametrize("version, carol, folder", [
    ("2.2", b"user.carol\tbackend1!default\tcarol\tlrswipcda\t", b"shared.folder\t2disk\tanyone\tlrs\t"),
    ("2.3.3", b"user.carol\tbackend1!default\tcarol\tlrswipcda\t", b"shared.folder\t2disk\tanyone\tlrs\t"),
    ("2.3.4", b"user.carol\t1 backend1!default\tcarol\tlrswipcda\t", b"shared.folder\t0 2disk\tanyone\tlrs\t"),
    ("2.3.9", b"user.carol\t1 backend1!default\tcarol\tlrswipcda\t", b"shared.folder\t0 2disk\tanyone\tlrs\t"),
    ("2.3", b"user.carol\t1 backend1!default carol\tlrswipcda\t", b"shared.folder\t0 2disk anyone\tlrs\t"),
    ("2.4", b"user.carol\t1 backend1!default carol\tlrswipcda\t", b"shared.folder\t0 2disk anyone\tlrs\t"),
    ("2.5", b"user.carol\t1 default carol\tlrswipcda\t", b"shared.folder\t0 2disk anyone\tlrs\t"),
    ("3.0", b"user.carol\t1 backend1!default carol\tlrswipcda\t", b"shared.folder\t0 2disk anyone\tlrs\t"),
    ("3.4", b"user.carol\t1 backend1!default carol\tlrswipcda\t", b"shared.folder\t0 2disk anyone\tlrs\t"),
])
def test_line_dialects(version: str, carol: bytes, folder: bytes) -> None:
    carol_line, = _lines("legacy-2.2", version, "user.carol")
    folder_line, = _lines("legacy-2.2", version, "shared.folder")
    assert carol_line == carol
    assert folder_line.startswith(folder)


def test_line_dump_keeps_database_order_and_every_entry() -> None:
    listing = read("legacy-2.2")
    text = dump.render_dump(listing.entries, "2.3").text
    assert [line.split(b"\t", 1)[0] for line in text.splitlines()] == [e.name.encode() for e in listing.entries]
    assert b"user.frank\t0 default \n" in text  # empty ACL: the line ends after the separator


def test_2_4_deleted_and_moving() -> None:
    text = dump.render_dump(read("legacy-2.4").entries, "2.4").text
    assert b"user.bob.Gone\t16 default bob\tlrswipkxtecda\t\n" in text
    assert b"user.bob.Moving\t8 newhost!default bob\tlrswipkxtecda\t\n" in text


def test_3_2_and_later_leave_out_intermediates() -> None:
    entries = read("dlist-3.4").entries
    assert b"user.bob.a\t" not in dump.render_dump(entries, "3.4").text
    old = dump.render_dump(entries, "3.0")  # 3.0 has no intermediate type: the letter reads as 0
    assert b"user.bob.a\t0 default \n" in old.text
    assert any("user.bob.a" in w and "does not exist in 3.0" in w for w in old.warnings)
    assert b"user.bob.#jmap\t128 default bob\tlrswipkxtecdan\t\n" in dump.render_dump(entries, "3.4").text


def test_2_5_remote_without_partition_prints_null() -> None:
    e = MailboxEntry("user.x", mbtype=MbType("e", "r"), server="b1", partition=None, acl="")
    assert dump.render_dump([e], "2.5").text == b"user.x\t1 (null) \n"
    assert dump.render_dump([e], "3.4").text == b"user.x\t1 b1!(null) \n"


@pytest.mark.parametrize("text, dialect", [
    ("2.2", "2.2"), ("2.3.0", "2.2"), ("2.3.3", "2.2"), ("2.3.4", "2.3.4"), ("2.3.9", "2.3.4"),
    ("2.3", "2.3.10"), ("2.3.10", "2.3.10"), ("2.4", "2.3.10"), ("2.5", "2.5"), ("3.0", "3.0"),
    ("3.2", "3.2"), ("3.4", "3.2"), ("3.6", "3.6"), ("3.8", "3.6"),
])
def test_version_strings(text: str, dialect: str) -> None:
    assert dump.dialect_for(text).name == dialect


@pytest.mark.parametrize("bad", ["", "3", "two.three", "1.9", "4.0", "2.3.x"])
def test_bad_version_strings(bad: str) -> None:
    with pytest.raises(UsageError):
        dump.dialect_for(bad)


# ---------------------------------------------------------------- 3.6 JSON


@pytest.mark.parametrize("case", ["v2-3.6", "v2-upgraded-3.4"])
def test_json_equals_cyrus_byte_for_byte(case: str) -> None:
    ours = dump.render_dump(read(case).entries, "3.6").text
    assert json.loads(ours) == json.loads(oracle(case))
    assert ours == oracle(case)


@pytest.mark.parametrize("case", ["dlist-2.5", "dlist-3.4"])
def test_json_of_name_keyed_file_equals_cyrus_after_its_upgrade(case: str) -> None:
    """For every mailbox 3.6 keeps when it upgrades the file, we print what it prints (mtime aside)."""
    ours = json.loads(dump.render_dump(read(case).entries, "3.6").text)
    cyrus = json.loads(oracle(case, "upgraded.ctl_mboxlist-d"))
    assert cyrus
    for name, entry in cyrus.items():
        entry["mtime"] = ours[name]["mtime"] = "x"
        assert ours[name] == entry


def test_cyrus_3_6_upgrade_misreads_legacy_types() -> None:
    """3.6's upgrade reads a 2.x numeric mbtype with 3.6 numbering (mboxlist_parse_entry: strtol).

    We convert the 2.x meaning instead; everything else about the entries agrees
    with Cyrus. The plan must therefore never let 3.6 upgrade a name-keyed file
    holding non-zero types: it writes the 3.6 list itself.
    """
    ours = json.loads(dump.render_dump(read("legacy-extended").entries, "3.6").text)
    cyrus = json.loads(oracle("legacy-extended", "upgraded.ctl_mboxlist-d"))
    assert {n: e["mbtype"] for n, e in cyrus.items()} == {
        "user.a": "el", "user.b": "nl", "user.c": "sl", "user.d": "bl", "user.e": "erl"}
    assert {n: e["mbtype"] for n, e in ours.items()} == {
        "user.a": "el", "user.b": "erl", "user.c": "ezl", "user.d": "eml", "user.e": "edl"}
    for name, entry in cyrus.items():
        for key in ("mtime", "mbtype"):
            entry.pop(key), ours[name].pop(key)
        assert ours[name] == entry


def test_json_escapes_like_jansson() -> None:
    e = MailboxEntry("user.a", partition="p", acl="x\x1by\t\"q\\\t", uniqueid="u")
    text = dump.render_dump([e], "3.6").text
    assert b'"acl": {"x\\u001By": "\\"q\\\\"}' in text
    assert json.loads(text)["user.a"]["acl"] == {"x\x1by": '"q\\'}


def test_bad_utf8_like_cyrus(tmp_path: Path) -> None:
    """jansson refuses strings that are not UTF-8: Cyrus drops the key, or the whole entry for a bad name."""
    entries = [
        MailboxEntry("user.a", partition="default", acl="a\tlrs\t", uniqueid="u1", mtime=5),
        MailboxEntry(m.to_str(b"user.caf\xe9"), partition="default", acl="b\tl\t", uniqueid="u2", mtime=5),
        MailboxEntry("user.z", partition="default", acl=m.to_str(b"x\tlr\xe9\tok\tl\t"), uniqueid="u3", mtime=5),
    ]
    tools = CyrusTools(tmp_path)
    (tools.configdir / "mailboxes.db").write_bytes(cyrusdb.build("twoskip", m.build_records(entries, (3, 6, 1))))
    result = dump.render_dump(entries, "3.6")
    assert result.text == tools.run("ctl_mboxlist", "-d").stdout
    assert b"},\n,\n" in result.text and b'{"ok": "l"}' in result.text
    assert any("not UTF-8" in w for w in result.warnings)


def test_empty_database() -> None:
    assert dump.render_dump([], "3.6").text == b"{\n\n}\n"
    assert dump.render_dump([], "2.3").text == b""


# ---------------------------------------------------------------- -u input


def test_pitfall_2_2_dump_into_2_3_4() -> None:
    """A 2.2 line whose partition starts with a digit gets the explicit mbtype 0 for 2.3.4+."""
    text22 = b"shared.folder\t2disk\tanyone\tlrs\t\nuser.bob\tdefault\tbob\tlrswipcda\t\n"
    entries = dump.parse_dump(text22, "2.2")
    assert entries[0].partition == "2disk" and entries[0].mbtype.legacy_number() == 0
    assert dump.render_undump(entries, "2.3.9").text == (
        b"shared.folder\t0 2disk\tanyone\tlrs\t\nuser.bob\t0 default\tbob\tlrswipcda\t\n")
    assert dump.render_undump(entries, "2.3").text.startswith(b"shared.folder\t0 2disk anyone\tlrs\t\n")
    # Read the 2.3.4+ way (the heuristic), the bare 2.2 line would be mbtype 2, partition "disk":
    misread = dump.parse_dump(b"shared.folder\t2disk\tanyone\tlrs\t\n", "2.3.4")[0]
    assert (misread.raw_mbtype, misread.partition) == (2, "disk")


@pytest.mark.parametrize("version", ["2.2", "2.3.9", "2.3", "2.5", "3.0", "3.4"])
def test_dump_parses_back(version: str) -> None:
    for case in ("legacy-2.2", "legacy-2.4", "dlist-3.4"):
        entries = read(case).entries
        text = dump.render_dump(entries, version).text
        again = dump.render_dump(dump.parse_dump(text, version), version).text
        assert again == text


def test_undump_to_2_2_reports_lost_types() -> None:
    result = dump.render_undump(read("legacy-2.2").entries, "2.2")
    assert any("user.carol" in w and "lost" in w for w in result.warnings)


def _cyrus_list(tools: CyrusTools) -> dict:
    return json.loads(tools.run("ctl_mboxlist", "-d").stdout)


def _comparable(doc: dict) -> dict:
    for v in doc.values():
        v.pop("mtime", None)
    return doc


@pytest.mark.parametrize("case", ["v2-3.6", "dlist-3.4", "dlist-2.5"])
def test_json_undump_accepted_by_cyrus(tmp_path: Path, case: str) -> None:
    """Real ctl_mboxlist -u loads our document and lists exactly our entries (except those without uniqueid)."""
    entries = read(case).entries
    result = dump.render_undump(entries, "3.6")
    tools = CyrusTools(tmp_path, virtdomains="userid")
    run = tools.run("ctl_mboxlist", "-u", input=result.text)
    assert b"missing" not in run.stderr or case == "dlist-2.5"
    listed = _comparable(_cyrus_list(tools))
    ours = _comparable(json.loads(dump.render_dump([e for e in entries if e.uniqueid], "3.6").text))
    assert listed == ours
    skipped = {e.name for e in entries if not e.uniqueid}
    assert skipped == {w.split("'")[1] for w in result.warnings}


def test_json_undump_keeps_name_history(tmp_path: Path) -> None:
    entries = read("v2-3.6").entries
    tools = CyrusTools(tmp_path, virtdomains="userid")
    tools.run("ctl_mboxlist", "-u", input=dump.render_undump(entries, "3.6").text)
    with cyrusdb.open_file(tools.configdir / "mailboxes.db") as db:
        again = {e.name: e for e in m.read(db.records()).entries}
    assert again["user.bob"].history == {e.name: e for e in entries}["user.bob"].history


@pytest.mark.parametrize("case", ["v2-3.6", "legacy-2.2"])
def test_legacy_lines_accepted_by_cyrus(tmp_path: Path, case: str) -> None:
    """ctl_mboxlist -u -L reads our lines back into the same entries (3.6 numbering of mbtype)."""
    entries = [e for e in read(case).entries if not e.mbtype.has("i")]
    result = dump.render_undump(entries, "3.6", legacy_lines=True)
    tools = CyrusTools(tmp_path, virtdomains="userid")
    run = tools.run("ctl_mboxlist", "-u", "-L", input=result.text)
    assert not run.stderr
    listed = _cyrus_list(tools)
    assert set(listed) == {e.name for e in entries}
    for e in entries:
        got = listed[e.name]
        assert got["mbtype"] == dump._mbtype36(e).letters()
        assert got["partition"] == e.partition and got.get("server") == e.server
        assert got["acl"] == dict(m.iter_acl_pairs(e.acl or ""))
        assert got.get("uniqueid") == e.uniqueid
        if e.uniqueid:
            assert (got["uidvalidity"], got["createdmodseq"], got["foldermodseq"]) == (
                str(e.uidvalidity), str(e.createdmodseq), str(e.foldermodseq))


def test_parse_dump_errors() -> None:
    with pytest.raises(FormatError, match="line 2"):
        dump.parse_dump(b"a\t0 default x\t\nbroken\n", "2.3")
    with pytest.raises(FormatError, match="line 1"):
        dump.parse_dump(b"a\tdefault\n", "2.2")
    with pytest.raises(FormatError):
        dump.parse_dump(b"{nope", "3.6")


_names = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="\t"), min_size=1,
                 max_size=20)
_entries = st.builds(
    MailboxEntry, name=_names,
    mbtype=st.sampled_from([MbType(), MbType("e", "r"), MbType("e", "dm"), MbType("c")]),
    partition=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    acl=st.lists(st.tuples(st.from_regex(r"[-a-z@.:]{1,10}", fullmatch=True),
                           st.from_regex(r"[lrswipkxtecdan]{0,6}", fullmatch=True)), max_size=3,
                 unique_by=lambda pair: pair[0])  # JSON objects (3.6) hold an identifier once
    .map(lambda pairs: "".join(f"{a}\t{b}\t" for a, b in pairs)),
)


@given(st.lists(_entries, max_size=5, unique_by=lambda e: e.name), st.sampled_from(["2.2", "2.3.9", "2.3", "3.4", "3.6"]))
@settings(max_examples=100, deadline=None)
def test_undump_parses_back(entries: list[MailboxEntry], version: str) -> None:
    text = dump.render_undump(entries, version).text
    back = dump.parse_dump(text, version)
    assert [e.name for e in back] == [e.name for e in entries]
    assert [e.acl for e in back] == [e.acl for e in entries]
    assert [e.partition for e in back] == [e.partition for e in entries]
