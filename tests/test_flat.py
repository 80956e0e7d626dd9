"""flat: Cyrus's escaping and line order, byte for byte against files Cyrus wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spoolmig.errors import FormatError
from spoolmig.formats import flat

FIXTURES = Path(__file__).parent / "fixtures" / "db"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())


def data(name: str) -> bytes:
    return (FIXTURES / f"{name}.db").read_bytes()


def test_escapes_are_cyrus_own() -> None:
    raw = data("flat-binary")
    assert b"tab\xff\x89key\t" in raw and b"lf\xff\x8akey\t" in raw and b"nul\xff\x80key\t" in raw
    assert b"cr\xff\x8dkey\t" in raw and b"high\x80\xff\xff\t" in raw
    assert flat.encode(b"\x00\t\r\n\xffa") == b"\xff\x80\xff\x89\xff\x8d\xff\x8a\xff\xffa"
    assert flat.decode(flat.encode(bytes(range(256)))) == bytes(range(256))
    assert flat.decode(b"abc\xff") == b"abc"  # a lone trailing escape is dropped, as Cyrus's decode does


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["backend"] == "flat" and e["kind"] != "damaged"))
def test_writer_reproduces_cyrus_files_byte_for_byte(name: str) -> None:
    """Same records in, the very bytes Cyrus wrote out: escaping and mailbox line order."""
    raw = data(name)
    assert flat.build(flat.records(raw, file=name)) == raw


def test_mailbox_order_of_stored_keys() -> None:
    keys = [line.split(b"\t")[0] for line in data("flat-mbox").splitlines()]
    assert keys.index(b"user.bob.Sent") < keys.index(b"user.bob two") < keys.index(b"user.bob-x")


def test_unescaped_files_of_old_cyrus() -> None:
    old = b"user.bob\t\nuser.bob.Sent\t0 1\n"
    assert list(flat.records(old, file="o", escaped=False)) == [(b"user.bob", b""), (b"user.bob.Sent", b"0 1")]
    assert flat.build([(b"user.bob.Sent", b"0 1"), (b"user.bob", b"")], escape=False) == old
    with pytest.raises(ValueError):
        flat.build([(b"k", b"line\nbreak")], escape=False)


@pytest.mark.parametrize("case,match", [("truncated", "no LF"), ("no-tab", "no TAB"), ("nul", "NUL")])
def test_damage_is_an_error_with_offset(case: str, match: str) -> None:
    buf = data(f"flat-damaged-{case}")
    with pytest.raises(FormatError, match=match) as info:
        list(flat.records(buf, file="d"))
    assert info.value.offset is not None
    items, report = flat.salvage(buf, file="d")
    assert report.problems and len(items) >= len(list(flat.records(data("flat-history"), file="h"))) - 1


def test_check_flags_out_of_order_lines_that_cyrus_serves_anyway() -> None:
    buf = data("flat-damaged-unsorted")
    assert list(flat.records(buf, file="u"))  # served in file order, like cyr_dbtool does
    report = flat.check(buf, file="u")
    assert not report.sound and "order" in report.problems[0][1]
