"""cyrus.index: our reading of every version Cyrus 3.6 writes, compared with mbexamine."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.errors import FormatError, UnsupportedFormat
from spoolmig.formats import index as ix

from cyrus_tools import CyrusTools

META = Path(__file__).parent / "fixtures" / "meta"
INDEX = META / "index"
FIXTURES = sorted(p.stem for p in INDEX.glob("*.index"))


def mbexamine_facts(text: str) -> dict:
    """The numbers mbexamine printed: header fields and one dict per listed record."""
    def grab(pattern: str) -> int:
        return int(re.search(pattern, text).group(1))

    facts = {
        "minor_version": grab(r"Minor Version: (\d+)"),
        "start_offset": grab(r"Header Size: (\d+) bytes"),
        "record_size": grab(r"Record Size: (\d+) bytes"),
        "exists": grab(r"Number of Messages: (\d+)"),
        "quota_used": grab(r"Mailbox Size: (\d+) bytes"),
        "uidvalidity": grab(r"UIDValidity: (\d+)"),
        "last_uid": grab(r"Last UID: (\d+)"),
        "deleted": grab(r"Deleted: (\d+)"),
        "answered": grab(r"Answered: (\d+)"),
        "flagged": grab(r"Flagged: (\d+)"),
        "highestmodseq": grab(r"Highest Mod Sequence: (\d+)"),
        "generation": grab(r"Generation Number: (\d+)"),
    }
    recs = []
    for m in re.finditer(
        r"UID:(\d+)\s+INT_DATE:(\d+) SENTDATE:(\d+) SAVEDATE:(\d+) SIZE:(\d+)\s*\n"
        r"\s*> HDRSIZE:(\d+)\s+LASTUPD :(\d+) SYSFLAGS:([0-9A-Fa-f]{8})\s*> CACHEVER:(\d+)"
        r"(?: GUID:([0-9a-f]{40}) MODSEQ:(\d+))?.*\n.*\n\s*> USERFLAGS: ((?:[0-9A-F]{8} ?){4})",
        text,
    ):
        words = m.group(12).split()
        recs.append({
            "uid": int(m.group(1)), "internaldate": int(m.group(2)), "sentdate": int(m.group(3)),
            "size": int(m.group(5)), "header_size": int(m.group(6)), "last_updated": int(m.group(7)),
            "system_flags": int(m.group(8), 16), "cache_version": int(m.group(9)),
            "guid": m.group(10), "modseq": None if m.group(11) is None else int(m.group(11)),
            "user_flags": sum(int(w, 16) << (32 * (3 - i)) for i, w in enumerate(words)),
        })
    facts["records"] = recs
    return facts


@pytest.mark.parametrize("stem", FIXTURES)
def test_reading_agrees_with_mbexamine(stem: str) -> None:
    buf = (INDEX / f"{stem}.index").read_bytes()
    expected = mbexamine_facts((INDEX / f"{stem}.mbexamine").read_text(errors="replace"))
    header = ix.parse_header(buf, file=stem)
    for name in ("minor_version", "start_offset", "record_size", "exists", "quota_used", "uidvalidity",
                 "last_uid", "deleted", "answered", "flagged", "generation"):
        assert getattr(header, name) == expected[name], name
    # Cyrus reports highestmodseq 1 where the version has none (or it is 0).
    assert (header.highestmodseq or 1) == expected["highestmodseq"]
    listed = [r for r in ix.records(buf, file=stem, header=header) if not r.expunged]
    assert len(listed) == len(expected["records"]) == header.exists
    for ours, theirs in zip(listed, expected["records"]):
        assert ours.uid == theirs["uid"]
        assert ours.size == theirs["size"]
        assert ours.header_size == theirs["header_size"]
        assert ours.internaldate == theirs["internaldate"]
        assert ours.sentdate == theirs["sentdate"]
        assert ours.last_updated == theirs["last_updated"]
        assert ours.system_flags == theirs["system_flags"]
        assert ours.user_flags == theirs["user_flags"]
        assert (ours.cache_version or 0) & 0xFFFF == theirs["cache_version"]
        if header.minor_version >= 10:  # 3.6 ignores the 12-byte GUIDs of v7-9
            assert (ours.guid_hex or "0" * 40) == theirs["guid"]
        if theirs["modseq"] is not None:
            assert (ours.modseq or 0) == theirs["modseq"]
        if header.minor_version >= 12:
            assert ours.crc_ok is True


def test_every_version_cyrus_writes_is_present() -> None:
    versions = {ix.parse_header((INDEX / f"v{v}.index").read_bytes()).minor_version
                for v in (6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)}
    assert versions == {6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17}


def test_expunged_records_are_listed_and_marked() -> None:
    buf = (INDEX / "expunged-v17.index").read_bytes()
    header = ix.parse_header(buf)
    recs = list(ix.records(buf))
    assert header.num_records == 5 and header.exists == 4
    assert [r.uid for r in recs if r.expunged] == [2]
    assert "expunged" in recs[1].flag_names


def test_seen_imported_across_v12_matches_the_seen_sequence() -> None:
    # bob.seen says 1:2,4; reconstruct -V 17 turned that into \Seen flags.
    recs = list(ix.records((INDEX / "flags-v17.index").read_bytes()))
    assert [r.uid for r in recs if "\\Seen" in r.flag_names] == [1, 2, 4]


def test_check_accepts_every_fixture() -> None:
    for stem in FIXTURES:
        ix.check((INDEX / f"{stem}.index").read_bytes(), file=stem)


# ------------------------------------------------------------------ damage


def test_truncated_records_name_file_and_offset() -> None:
    buf = (INDEX / "v17.index").read_bytes()
    with pytest.raises(FormatError) as err:
        list(ix.records(buf[:-10], file="x/cyrus.index"))
    assert err.value.offset == 160 + 4 * 112
    assert "x/cyrus.index" in str(err.value) and "truncated" in str(err.value)


def test_truncated_header() -> None:
    buf = (INDEX / "v13.index").read_bytes()
    with pytest.raises(FormatError) as err:
        ix.parse_header(buf[:100])
    assert err.value.offset == 100


def test_bad_header_crc() -> None:
    buf = bytearray((INDEX / "v17.index").read_bytes())
    buf[44] ^= 0xFF  # uidvalidity
    with pytest.raises(FormatError) as err:
        ix.parse_header(bytes(buf), file="cyrus.index")
    assert err.value.offset == 156 and "CRC" in str(err.value)


def test_bad_record_crc_is_reported_and_fails_check() -> None:
    buf = bytearray((INDEX / "v12.index").read_bytes())
    buf[128 + 96 + 12] ^= 0x01  # size of record 2
    recs = list(ix.records(bytes(buf)))
    assert [r.crc_ok for r in recs] == [True, False, True, True, True]
    with pytest.raises(FormatError) as err:
        ix.check(bytes(buf))
    assert err.value.offset == 128 + 96 + 92


def test_unknown_version_is_unsupported() -> None:
    buf = bytearray((INDEX / "v10.index").read_bytes())
    buf[8:12] = (11).to_bytes(4, "big")
    with pytest.raises(UnsupportedFormat):
        ix.parse_header(bytes(buf))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        header = ix.parse_header(data)
        list(ix.records(data, header=header))
    except FormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIXTURES), st.integers(min_value=0, max_value=719), st.integers(1, 255))
def test_flipped_byte_raises_only_format_error(stem: str, pos: int, xor: int) -> None:
    buf = bytearray((INDEX / f"{stem}.index").read_bytes())
    if pos >= len(buf):
        return
    buf[pos] ^= xor
    try:
        ix.check(bytes(buf))
    except FormatError:
        pass


# ------------------------------------------------------------------ build


_u32 = st.integers(min_value=0, max_value=2**32 - 1)
_u64 = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([v for v in ix.KNOWN_VERSIONS if v >= 6]), st.data())
def test_header_build_parse_round_trip(minor: int, data: st.DataObject) -> None:
    layout = ix.LAYOUTS[minor]
    fields = {
        "minor_version": minor, "generation": data.draw(_u32), "format": data.draw(st.sampled_from([0, 1])),
        "start_offset": layout.header_size, "record_size": layout.record_size,
        "num_records": 0, "last_appenddate": data.draw(_u32), "last_uid": data.draw(_u32),
        "quota_used": data.draw(_u64 if minor >= 6 else _u32), "uidvalidity": data.draw(_u32),
        "deleted": data.draw(_u32), "options": data.draw(_u32),
    }
    for name, since in ix._SINCE.items():
        if minor >= since and name != "header_crc":
            big = name in ("highestmodseq", "deletedmodseq", "createdmodseq", "quota_deleted_used",
                           "quota_expunged_used")
            fields[name] = data.draw(_u64 if big else _u32)
    header = ix.IndexHeader(**fields)
    raw = ix.build_header(header)
    assert len(raw) == layout.header_size
    back = ix.parse_header(raw)
    for name, value in fields.items():
        assert getattr(back, name) == value, name


def test_build_header_reproduces_cyrus_bytes() -> None:
    for stem in ("v6", "v8", "v10", "v12", "v13", "v16", "v17"):
        buf = (INDEX / f"{stem}.index").read_bytes()
        header = ix.parse_header(buf)
        assert ix.build_header(header) == buf[: header.header_size], stem


@pytest.mark.cyrus
def test_cyrus_accepts_a_patched_uidvalidity(tmp_path: Path) -> None:
    """A header we rebuilt (new uidvalidity, new CRC) is read by Cyrus itself."""
    cyrus = CyrusTools(tmp_path, unixhierarchysep="no", altnamespace="no")
    import json

    cyrus.run("ctl_mboxlist", "-u", input=json.dumps(
        {"user.bob": {"mbtype": "el", "partition": "default", "acl": {}, "uniqueid": "0f1e2d3c4b5a6978"}}).encode())
    box = cyrus.spool / "user" / "bob"
    box.mkdir(parents=True)
    (box / "1.").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    cyrus.run("reconstruct", "user.bob")
    buf = (box / "cyrus.index").read_bytes()
    header = ix.parse_header(buf)
    new = ix.build_header(ix.with_fields(header, uidvalidity=1234567890)) + buf[header.header_size:]
    (box / "cyrus.index").write_bytes(new)
    out = cyrus.run("mbexamine", "user.bob").stdout.decode()
    assert "UIDValidity: 1234567890" in out
    assert zlib.crc32(new[:156]) == int.from_bytes(new[156:160], "big")


def test_pre_v6_headers_follow_the_23_upgrader_offsets() -> None:
    """v3-v5 cannot be made by any installed Cyrus: bytes laid out from 2.3.16
    mailbox_upgrade_index_work (32-bit quota at 32, later fields 4 bytes early)."""
    words = [7, 0, 5, 76, 56, 2, 100, 9, 4096, 1111, 123456, 1, 2, 3, 1, 0, 0, 0, 0]
    head = b"".join(w.to_bytes(4, "big") for w in words)
    rec = lambda uid: b"".join(w.to_bytes(4, "big") for w in [uid, 5, 6, 700, 80, 0, 0, 9, 0x5, 0, 0, 0, 1, 12])
    buf = head + rec(3) + rec(9)
    h = ix.parse_header(buf)
    assert (h.minor_version, h.quota_used, h.pop3_last_login, h.uidvalidity) == (5, 4096, 1111, 123456)
    assert (h.deleted, h.answered, h.flagged, h.options, h.exists) == (1, 2, 3, 1, 2)
    assert h.highestmodseq is None
    recs = list(ix.records(buf))
    assert [(r.uid, r.size, r.flag_names, r.content_lines, r.cache_version) for r in recs] == \
        [(3, 700, ["\\Answered", "\\Deleted"], 12, None), (9, 700, ["\\Answered", "\\Deleted"], 12, None)]
    # a v3 header that stops after uidvalidity (start_offset 44) has no counts
    short = b"".join(w.to_bytes(4, "big") for w in [1, 0, 3, 44, 52, 0, 0, 0, 10, 0, 77])
    h3 = ix.parse_header(short)
    assert (h3.uidvalidity, h3.deleted, h3.options) == (77, None, None)


@pytest.mark.parametrize("stem", FIXTURES)
def test_fast_record_path_equals_the_construct_layout(stem: str) -> None:
    buf = (INDEX / f"{stem}.index").read_bytes()
    header = ix.parse_header(buf)
    layout = ix.LAYOUTS[header.minor_version]
    for r in ix.records(buf, header=header):
        c = layout.record.parse(buf[r.offset : r.offset + layout.record_size])
        assert (r.uid, r.size, r.internaldate, r.modseq, r.guid) == (c.uid, c.size, c.internaldate,
                                                                    c.get("modseq"), c.get("guid"))
        assert r.system_flags | r.internal_flags == c.system_flags
        assert r.user_flags == int.from_bytes(c.user_flags[12:16] + c.user_flags[8:12] + c.user_flags[4:8]
                                              + c.user_flags[:4], "big")
