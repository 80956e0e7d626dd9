"""skiplist specifics: the documented construct layout, recovery emulation, quirks, check and salvage."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from spoolmig.errors import FormatError
from spoolmig.formats import _binary, skiplist

FIXTURES = Path(__file__).parent / "fixtures" / "db"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
GOOD = sorted(n for n, e in MANIFEST.items() if e["backend"] == "skiplist" and e["kind"] in ("good", "crash", "quirk"))


def data(name: str) -> bytes:
    return (FIXTURES / f"{name}.db").read_bytes()


def shown(items) -> bytes:
    return b"".join(k + b"\t" + v + b"\n" for k, v in items)


@pytest.mark.parametrize("name", GOOD)
def test_fast_reader_agrees_with_construct_layout(name: str) -> None:
    """The struct-based hot path and the documented construct layout read the same bytes the same way."""
    buf = data(name)
    layout = _binary.layouts()
    head = layout.skiplist_header.parse(buf)
    ours = skiplist.read_header(buf, name)
    assert (head.version, head.maxlevel, head.curlevel, head.logstart) == (
        ours.version, ours.maxlevel, ours.curlevel, ours.logstart)
    offsets, _ = skiplist.scan_inorder(buf, ours, name)
    for off in [skiplist.DUMMY_OFFSET, *offsets]:
        node = skiplist.node_at(buf, off, name)
        parsed = layout.skiplist_node.parse(buf[off:], level=node.level)
        assert (parsed.type, parsed.key, parsed.data) == (node.type, node.key, node.value)
        assert len(layout.skiplist_node.build(parsed, level=node.level)) == node.end - off


@pytest.mark.parametrize("name", GOOD)
def test_merge_equals_recovery_emulation(name: str) -> None:
    """Two algorithms for what recovery serves: streaming merge and the in-memory skiplist emulation."""
    buf = data(name)
    if name == "skiplist-mbox":
        order = "mbox"
    else:
        order = "signed"
    header = skiplist.read_header(buf, name)
    inorder, unsorted = skiplist.scan_inorder(buf, header, name, order)
    assert unsorted is None
    start = skiplist._node_end(buf, inorder[-1], len(buf), name) if inorder else 144
    log = skiplist.scan_log(buf, start, name)
    emulated = skiplist._emulate(buf, header, inorder, log, _binary.sort_key(order), name)
    assert list(skiplist.records(buf, file=name, order=order)) == emulated


def test_mbox_sorted_file() -> None:
    buf = data("skiplist-mbox")
    with pytest.raises(FormatError, match="cyr_dbtool -M"):
        list(skiplist.records(buf, file="m", order="signed"))
    expected = (FIXTURES / "skiplist-mbox.M.show").read_bytes()
    assert shown(skiplist.records(buf, file="m", order="mbox")) == expected
    assert shown(skiplist.records(buf, file="m", order=None)) == expected
    report = skiplist.check(buf, file="m")
    assert report.sound and any("mailbox order" in n for _, n in report.notes)


def test_22_quirks_are_skipped_like_cyrus() -> None:
    buf = data("skiplist-22-quirks")
    assert shown(skiplist.records(buf, file="q")) == (FIXTURES / "skiplist-22-quirks.show").read_bytes()
    assert b"zzzz\tnew\n" in (FIXTURES / "skiplist-22-quirks.show").read_bytes()
    notes = " ".join(n for _, n in skiplist.check(buf, file="q").notes)
    assert "zero bytes between transactions" in notes and "target 0" in notes


def test_wrong_logstart_is_corrected_like_cyrus() -> None:
    buf = data("skiplist-22-logstart")
    assert shown(skiplist.records(buf, file="q")) == (FIXTURES / "skiplist-history.show").read_bytes()
    assert any("logstart" in n for _, n in skiplist.check(buf, file="q").notes)


def test_uncommitted_tail_is_a_note_not_a_problem() -> None:
    report = skiplist.check(data("skiplist-crash"), file="c")
    assert report.sound and any("uncommitted tail" in n for _, n in report.notes)
    assert report.records == len((FIXTURES / "skiplist-crash.show").read_bytes().split(b"\n")) - 1


@pytest.mark.parametrize("case", ["bad-keylen", "bad-type-log", "bad-pointer", "truncated-inorder",
                                  "bad-datalen-log", "bad-magic"])
def test_check_reports_damage_with_offsets(case: str) -> None:
    report = skiplist.check(data(f"skiplist-damaged-{case}"), file="d")
    assert not report.sound
    assert all(offset is not None and offset >= 0 for offset, _ in report.problems)


def test_salvage_recovers_around_a_damaged_inorder_record() -> None:
    good = data("skiplist-history")
    damaged = data("skiplist-damaged-bad-keylen")
    header = skiplist.read_header(good, "h")
    offsets, _ = skiplist.scan_inorder(good, header, "h")
    mid = offsets[len(offsets) // 2]
    lost = skiplist.node_at(good, mid, "h").key
    items, report = skiplist.salvage(damaged, file="d")
    expected = [(k, v) for k, v in skiplist.records(good, file="h") if k != lost]
    assert items == expected
    assert report.problems[0][0] == mid


def test_salvage_drops_only_the_damaged_transaction() -> None:
    damaged = data("skiplist-damaged-bad-type-log")  # the ADD re-setting k11 is unreadable
    items, report = skiplist.salvage(damaged, file="d")
    assert not report.sound
    assert dict(items) == {k: v for k, v in skiplist.records(data("skiplist-history"), file="h") if k != b"k11"}


def test_writer_layout() -> None:
    records = [(b"b", b"2"), (b"a", b"1"), (b"\xe9", b"high")]
    buf = skiplist.build(records)
    head = _binary.layouts().skiplist_header.parse(buf)
    assert (head.version, head.version_minor, head.maxlevel, head.listsize, head.logstart) == (1, 2, 20, 3, len(buf))
    assert list(skiplist.records(buf, file="w")) == [(b"\xe9", b"high"), (b"a", b"1"), (b"b", b"2")]
    assert skiplist.check(buf, file="w").sound
    assert struct.unpack_from(">I", buf, 48)[0] == skiplist.DUMMY
    with pytest.raises(ValueError):
        skiplist.build([(b"a\tb", b""), (b"a\nb", b"")], order="mbox")  # one key under the mailbox order


def spec_hexdump_lines(spec: str) -> list[tuple[int, bytes]]:
    """(offset, bytes) of every full hexdump line in a spec's annotated example."""
    import re

    out = []
    for line in (Path(__file__).parents[1] / "formats" / spec).read_text().splitlines():
        m = re.match(r"^([0-9a-f]{8}): ((?:[0-9a-f]{4} ?){1,8})", line)
        if m:
            out.append((int(m.group(1), 16), bytes.fromhex(m.group(2).replace(" ", ""))))
    return out


def test_spec_hexdump_is_the_committed_fixture() -> None:
    buf = data("skiplist-tiny")
    lines = spec_hexdump_lines("skiplist.md")
    assert len(lines) >= 10
    for offset, chunk in lines:
        assert buf[offset:offset + len(chunk)] == chunk, hex(offset)
