"""cyrus.header: byte-exact round trips, rewrites, and agreement with Cyrus 3.6."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spoolmig.errors import FormatError
from spoolmig.formats import header as hdr

META = Path(__file__).parent / "fixtures" / "meta"
HEADERS = sorted((META / "header").glob("*.header")) + sorted((META / "layout").rglob("cyrus.header"))
RELOCATED = META / "layout" / "relocated" / "spool" / "uuid" / "0" / "f" / "0f1e2d3c4b5a6978" / "cyrus.header"


@pytest.mark.parametrize("path", HEADERS, ids=lambda p: p.name if p.parent.name == "header" else "relocated")
def test_fixture_round_trips_byte_for_byte(path: Path) -> None:
    buf = path.read_bytes()
    assert hdr.build(hdr.parse(buf, file=str(path))) == buf


def test_dlist_header_written_by_reconstruct() -> None:
    h = hdr.parse((META / "header" / "dlist-3.6.header").read_bytes())
    assert h.form == "dlist"
    assert (h.mbtype, h.name, h.uniqueid, h.quotaroot) == (b"el", b"user.bob", b"0f1e2d3c4b5a6978", None)
    assert h.acl_pairs == [(b"bob", b"lrswipkxtecda"), (b"anyone", b"lrs")]


def _mbexamine_user_flags(path: Path) -> list[str]:
    line = re.search(r"User Flags: (.*)\n", path.read_text()).group(1)
    return [] if line == "[none]" else line.split()


@pytest.mark.parametrize("stem", ["lines-2x", "old-noid"])
def test_user_flags_agree_with_mbexamine(stem: str) -> None:
    h = hdr.parse((META / "header" / f"{stem}.header").read_bytes())
    assert [f.decode() for f in h.flags if f] == _mbexamine_user_flags(META / "header" / f"{stem}.mbexamine")


def test_lines_header_fields() -> None:
    h = hdr.parse((META / "header" / "lines-2x.header").read_bytes())
    assert h.form == "lines"
    assert h.quotaroot == b"user.bob" and h.uniqueid == b"0f1e2d3c4b5a6978"
    assert h.flags == (b"$Label1", b"Junk")
    assert h.acl == b"bob\tlrswipkxtecda\tanyone\tlrs\t"


def test_old_header_has_no_uniqueid() -> None:
    h = hdr.parse((META / "header" / "old-noid.header").read_bytes())
    assert (h.form, h.quotaroot, h.uniqueid, h.flags) == ("old", b"user.bob", None, ())


def test_conversion_to_dlist_equals_what_cyrus_wrote() -> None:
    """relocate_by_id made Cyrus read lines-2x.header and write it as a dlist:
    our conversion of the same header must give the same bytes."""
    h = hdr.parse((META / "header" / "lines-2x.header").read_bytes())
    assert hdr.build(h.as_form("dlist", mbtype=b"e")) == RELOCATED.read_bytes()


def test_rewrite_quotaroot_and_acl_touches_only_those() -> None:
    buf = (META / "header" / "lines-2x.header").read_bytes()
    h = hdr.parse(buf)
    new = hdr.build(h.with_quotaroot(b"example.com!user.bob").with_acl(b"bob@example.com\tlrswipkxtea\t"))
    assert new == buf.replace(b"user.bob\t", b"example.com!user.bob\t").replace(
        b"bob\tlrswipkxtecda\tanyone\tlrs\t", b"bob@example.com\tlrswipkxtea\t")
    d = hdr.parse(RELOCATED.read_bytes())
    new = hdr.build(d.with_quotaroot(None))
    assert new == RELOCATED.read_bytes().replace(b" Q user.bob", b"")


def test_dlist_rewrite_keeps_unknown_keys_and_spellings() -> None:
    body = b'%(T e N "user.bob" I 0f1e X "a b" A %(bob lrs))\n'
    h = hdr.parse(hdr.MAGIC + body)
    out = hdr.build(h.with_acl(b"bob\tlrswipkxtea\t"))
    assert out == hdr.MAGIC + b'%(T e N "user.bob" I 0f1e A %(bob lrswipkxtea) X "a b")\n'


def test_dlist_header_cannot_hold_a_literal() -> None:
    """Cyrus reads the dlist body up to the first LF, so a value that needs a
    literal (CR/LF, 8-bit, > 1024 bytes) would make the header unreadable."""
    h = hdr.Header(form="dlist", quotaroot=None, uniqueid=b"x", name=b"user.b\xc3\xb6b", mbtype=b"e")
    with pytest.raises(ValueError):
        hdr.build(h)


def test_empty_flag_slot_keeps_positions() -> None:
    h = hdr.parse(hdr.MAGIC + b"\tabc\na  c \n\n")
    assert h.flags == (b"a", None, b"c")
    again = hdr.parse(hdr.build(h.with_acl(b"x\tl\t")))
    assert again.flags == (b"a", None, b"c")


# ------------------------------------------------------------------ damage


@pytest.mark.parametrize(
    "body, offset, words",
    [
        (b"", 115, "no line end"),
        (b"root\tid\nflags\n", 115 + 14, "ACL line"),
        (b"root\t\n\n\n", 120, "empty uniqueid"),
        (b"%(T e N\n", 122, "dlist"),
    ],
)
def test_damaged_header(body: bytes, offset: int, words: str) -> None:
    with pytest.raises(FormatError) as err:
        hdr.parse(hdr.MAGIC + body, file="m/cyrus.header")
    assert err.value.offset == offset and words in str(err.value)
    assert str(err.value).startswith("m/cyrus.header: offset")


def test_bad_magic() -> None:
    buf = bytearray((META / "header" / "lines-2x.header").read_bytes())
    buf[30] ^= 0x20
    with pytest.raises(FormatError) as err:
        hdr.parse(bytes(buf))
    assert err.value.offset == 30


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_magic_raises_only_format_error(data: bytes) -> None:
    try:
        h = hdr.parse(hdr.MAGIC + data)
    except FormatError:
        return
    assert hdr.build(h) == hdr.MAGIC + data


# ------------------------------------------------------------------ properties

_NEEDS_LITERAL = {0x0D, 0x0A, 0x22, 0x25, 0x5C, 0x00} | set(range(0x80, 0x100))
_token = st.binary(min_size=1, max_size=12).filter(lambda b: not set(b) & {0x0A, 0x09, 0x20})
_flag = st.one_of(st.none(), _token)


@settings(max_examples=300, deadline=None)
@given(
    form=st.sampled_from(["lines", "dlist"]),
    quotaroot=st.one_of(st.none(), _token),
    uniqueid=_token,
    flags=st.lists(_flag, max_size=8).map(lambda fs: tuple(fs[: max((i + 1 for i, f in enumerate(fs) if f), default=0)])),
    acl=st.lists(st.tuples(_token, st.binary(max_size=6).filter(lambda b: not set(b) & {9, 10})), max_size=4),
)
def test_round_trip_of_built_headers(form: str, quotaroot, uniqueid, flags, acl) -> None:
    if form == "dlist":  # values a one-line dlist can spell (no literal)
        tokens = [quotaroot or b"", uniqueid, *(f or b"" for f in flags), *(b for pair in acl for b in pair)]
        assume(not any(set(t) & _NEEDS_LITERAL for t in tokens))
    assume(not (quotaroot or b"").startswith(b"%"))  # Cyrus would read that line as a dlist
    h = hdr.Header(form=form, quotaroot=quotaroot, uniqueid=uniqueid, flags=flags,
                   acl=hdr.acl_string(acl), mbtype=b"e" if form == "dlist" else None)
    raw = hdr.build(h)
    back = hdr.parse(raw)
    assert (back.quotaroot, back.uniqueid, back.flags, back.acl_pairs) == (quotaroot, uniqueid, flags, acl)
    assert hdr.build(back) == raw
