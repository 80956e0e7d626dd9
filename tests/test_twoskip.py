"""twoskip specifics: construct layout, the two level-0 pointers, dirty files, BLANKs, loops, salvage."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from spoolmig.errors import FormatError
from spoolmig.formats import _binary, twoskip

FIXTURES = Path(__file__).parent / "fixtures" / "db"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
GOOD = sorted(n for n, e in MANIFEST.items() if e["backend"] == "twoskip" and e["kind"] in ("good", "crash"))


def data(name: str) -> bytes:
    return (FIXTURES / f"{name}.db").read_bytes()


def linear(buf: bytes) -> list[twoskip.Record]:
    """Every record up to current_size, skipping BLANK padding."""
    end = twoskip.read_header(buf, "x").current_size
    out, off = [], twoskip.DUMMY_OFFSET
    while off < end:
        if buf[off:off + 8] == twoskip.BLANK:
            off += 8
            continue
        rec = twoskip.read_record(buf, off, "x")
        out.append(rec)
        off += rec.length
    return out


@pytest.mark.parametrize("name", GOOD)
def test_fast_reader_agrees_with_construct_layout(name: str) -> None:
    buf = data(name)
    layout = _binary.layouts()
    head = layout.twoskip_header.parse(buf)
    ours = twoskip.read_header(buf, name)
    assert (head.generation, head.num_records, head.current_size, head.flags, head.crc32) == (
        ours.generation, ours.num_records, ours.current_size, ours.flags, ours.crc32)
    assert head.crc32 == zlib.crc32(buf[:60])
    for rec in linear(buf):
        parsed = layout.twoskip_record_head.parse(buf[rec.offset:])
        assert (parsed.type[0], parsed.level, list(parsed.nextloc), parsed.crc32_head, parsed.crc32_tail) == (
            rec.type, rec.level, list(rec.nextloc), rec.crc32_head, rec.crc32_tail)
        assert len(layout.twoskip_record_head.build(parsed)) == rec.keyoffset - rec.offset


def test_cyrus_writes_blank_padding_and_we_read_past_it() -> None:
    buf = data("twoskip-history")
    assert twoskip.BLANK in buf  # 3.2+ pads so record heads never straddle 512-byte blocks
    assert twoskip.check(buf, file="h").sound


def test_level0_takes_the_larger_committed_pointer() -> None:
    assert twoskip.level0((100, 200), end=1000) == 200
    assert twoskip.level0((300, 200), end=1000) == 300
    assert twoskip.level0((1200, 200), end=1000) == 200  # 1200 belongs to an uncommitted transaction
    assert twoskip.level0((100, 1500), end=1000) == 100
    assert twoskip.level0((0, 0), end=1000) == 0
    assert twoskip.level0((500,), end=1000) == 500  # DELETE and COMMIT records have one pointer


def test_crash_tail_is_rolled_back() -> None:
    buf = data("twoskip-crash")
    header = twoskip.read_header(buf, "c")
    assert header.dirty and header.current_size < len(buf)
    got = b"".join(k + b"\t" + v + b"\n" for k, v in twoskip.records(buf, file="c"))
    assert got == (FIXTURES / "twoskip-crash.show").read_bytes() and b"INVALID" not in got
    notes = " ".join(n for _, n in twoskip.check(buf, file="c").notes)
    assert "DIRTY" in notes and "uncommitted tail" in notes


def test_pointer_loop_ends_with_an_error_before_any_repeat() -> None:
    seen = []
    with pytest.raises(FormatError, match="earlier key"):
        for key, _ in twoskip.records(data("twoskip-damaged-pointer-loop"), file="l"):
            assert key not in seen
            seen.append(key)
    assert seen  # the records before the loop were served


@pytest.mark.parametrize("case,match", [("bad-header-crc", "header CRC"), ("bad-head-crc", "head CRC"),
                                        ("bad-tail-crc", "tail CRC"), ("bad-length", "runs past the end"),
                                        ("truncated", "truncated")])
def test_damage_is_named(case: str, match: str) -> None:
    buf = data(f"twoskip-damaged-{case}")
    with pytest.raises(FormatError, match=match) as info:
        list(twoskip.records(buf, file="d"))
    assert info.value.offset is not None
    report = twoskip.check(buf, file="d")
    assert not report.sound and match.split()[0] in report.problems[0][1]


def test_salvage_skips_the_damaged_record_only() -> None:
    good = data("twoskip-history")
    damaged = data("twoskip-damaged-bad-tail-crc")
    bad = next(r for r in linear(good) if good[r.offset:r.offset + r.length] != damaged[r.offset:r.offset + r.length])
    items, report = twoskip.salvage(damaged, file="d")
    assert report.problems and report.problems[0][0] == bad.offset
    lost = good[bad.keyoffset:bad.keyoffset + bad.keylen]
    intact = dict(twoskip.records(good, file="h"))
    salvaged = dict(items)
    assert {k: v for k, v in intact.items() if k != lost} == {k: v for k, v in salvaged.items() if k != lost}


def test_salvage_replays_deletes_onto_the_right_keys() -> None:
    """history has DELETEs (k05, k06, k10, k11) and a re-insert: a clean salvage equals what Cyrus serves."""
    buf = data("twoskip-history")
    items, report = twoskip.salvage(buf, file="h")
    assert report.sound and items == list(twoskip.records(buf, file="h"))
    assert b"k06" not in dict(items) and dict(items)[b"k05"] == b"re-inserted"


def test_writer_layout_and_empty_database() -> None:
    buf = twoskip.build([(b"b", b"2"), (b"a", b"1")])
    header = twoskip.read_header(buf, "w")
    assert (header.generation, header.num_records, header.current_size, header.repack_size) == (1, 2, len(buf), len(buf))
    kinds = [chr(r.type) for r in linear(buf)]
    assert kinds == ["=", "+", "+", "$"]
    assert linear(buf)[-1].nextloc[0] == 64 + 272  # the COMMIT names the start of its transaction
    empty = twoskip.build([])
    assert len(empty) == 64 + 272 and list(twoskip.records(empty, file="e")) == []
    assert empty[64:] == data("twoskip-empty")[64:]  # the DUMMY Cyrus writes for a new database


def test_spec_hexdump_is_the_committed_fixture() -> None:
    from test_skiplist import spec_hexdump_lines

    buf = data("twoskip-tiny")
    lines = spec_hexdump_lines("twoskip.md")
    assert len(lines) >= 20
    for offset, chunk in lines:
        assert buf[offset:offset + len(chunk)] == chunk, hex(offset)
