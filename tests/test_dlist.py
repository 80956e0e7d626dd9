"""dlist text: parse, serialise, Cyrus's own spelling, damaged input."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.errors import FormatError
from spoolmig.formats import dlist
from spoolmig.formats.dlist import KvList, dumps, encode_string, loads, plain

sys.path.insert(0, str(Path(__file__).parent))
from cyrus_tools import CyrusTools  # noqa: E402


def test_parse_mailbox_value() -> None:
    v = loads(b"%(T el I 74b516a545984f00 P default M 1795397083 A %(bob lrswipcda anyone p) H ())")
    assert isinstance(v, KvList)
    assert v.keys() == [b"T", b"I", b"P", b"M", b"A", b"H"]
    assert v.get("P") == b"default"
    assert v.get(b"A") == [(b"bob", b"lrswipcda"), (b"anyone", b"p")]
    assert v.get("H") == []
    assert v.get("missing") is None


def test_nil_versus_quoted_nil() -> None:
    assert loads(b"(NIL \"NIL\" \"\")") == [None, b"NIL", b""]
    assert dumps([None, b"NIL", b""]) == b'(NIL "NIL" "")'


@pytest.mark.parametrize(
    "value, spelled",
    [
        (b"default", b"default"),
        (b"user\x1fbob", b"user\x1fbob"),  # 0x1F is an atom byte (3.6 dbnames)
        (b"user\x1ebob", b'"user\x1ebob"'),  # below 0x1F is not
        (b"a b", b'"a b"'),
        (b"a(b", b'"a(b"'),
        (b"a*", b'"a*"'),
        (b"50%", b"{3+}\r\n50%"),
        (b'say "hi"', b'{8+}\r\nsay "hi"'),
        (b"back\\slash", b"{10+}\r\nback\\slash"),
        (b"caf\xc3\xa9", b"{5+}\r\ncaf\xc3\xa9"),
        (b"a\x00b", b"{3+}\r\na\x00b"),
        (b"x" * 1023, b"x" * 1023),
        (b"x" * 1024, b"{1024+}\r\n" + b"x" * 1024),
        (b"y " * 600, b"{1200+}\r\n" + b"y " * 600),
    ],
)
def test_cyrus_spelling(value: bytes, spelled: bytes) -> None:
    assert encode_string(value) == spelled
    assert loads(spelled) == value


def test_cyrus_2_5_literal_has_no_plus() -> None:
    assert dumps(KvList([(b"N", b"caf\xc3\xa9")]), literal_plus=False) == b"%(N {5}\r\ncaf\xc3\xa9)"


def test_numbers_are_unsigned_decimal() -> None:
    assert dumps(KvList([(b"V", 1167609600), (b"M", 0)])) == b"%(V 1167609600 M 0)"
    with pytest.raises(ValueError):
        dumps(-1)


def test_nonstandard_spellings_round_trip_byte_exact() -> None:
    text = b'%(A {3}\r\nabc B "a\\"b" C "x" D {2+}\r\nzz E (a (b c) %(k v)))'
    value = loads(text)
    assert value.get("A") == b"abc"
    assert value.get("B") == b'a"b'
    assert value.get("C") == b"x"
    assert dumps(value) == text
    # Without the remembered spelling Cyrus's own choice is used.
    assert dumps(plain(value)) == b'%(A abc B {3+}\r\na"b C x D zz E (a (b c) %(k v)))'


def test_parsekey() -> None:
    assert loads(b"Q user.bob", parsekey=True) == [(b"Q", b"user.bob")]


@pytest.mark.parametrize(
    "text, offset",
    [
        (b"%(A", 3),
        (b"%(A b", 5),
        (b"(a b", 4),
        (b"%x", 0),
        (b'"abc', 0),
        (b"{5}\r\nab", 0),
        (b"{5\r\nabcde", 0),
        (b"{}\r\n", 0),
        (b"(a  b)", 3),
        (b"a b", 1),
        (b"", 0),
        (b"(a b))", 5),
        (b"%(k)", 3),
    ],
)
def test_damaged_text_names_offset(text: bytes, offset: int) -> None:
    with pytest.raises(FormatError) as exc:
        loads(text, file="mailboxes.db", offset=1000)
    assert exc.value.file == "mailboxes.db"
    assert exc.value.offset == 1000 + offset
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ properties

_strings = st.binary(max_size=40) | st.sampled_from([b"NIL", b"", b"a b", b"x" * 1100, b"\x1f", b")"])
_values = st.recursive(
    st.none() | _strings,
    lambda inner: st.lists(inner, max_size=5)
    | st.lists(st.tuples(_strings, inner), max_size=5).map(KvList),
    max_leaves=25,
)


@given(_values)
@settings(max_examples=400, deadline=None)
def test_round_trip(value: dlist.Value) -> None:
    text = dumps(value)
    parsed = loads(text)
    assert parsed == value
    assert dumps(parsed) == text
    assert dumps(plain(parsed)) == text


@given(st.binary(max_size=60))
@settings(max_examples=600, deadline=None)
def test_arbitrary_bytes_only_format_errors(data: bytes) -> None:
    try:
        value = loads(data)
    except FormatError:
        return
    assert dumps(value) == data


# ------------------------------------------------------------- against Cyrus


def test_cyrus_3_6_spelling_matches_ours(tmp_path: Path) -> None:
    """Cyrus writes mailboxes.db values with dlist_printbuf: our spelling must be byte-identical."""
    tools = CyrusTools(tmp_path)
    names = ["user.bob", "user.bob.a b", "user.bob.caf\u00e9", "user.bob.50%", 'user.bob.say "x"', "shared.a*b"]
    doc = {
        name: {
            "mbtype": "e",
            "partition": "default",
            "acl": {"bob": "lrswipkxtecdan", "group:a b": "lrs", "-anyone": "p"},
            "uniqueid": f"0f1e2d3c-aaaa-bbbb-cccc-{i:012d}",
        }
        for i, name in enumerate(names)
    }
    tools.run("ctl_mboxlist", "-u", input=json.dumps(doc).encode())
    shown = tools.show(tools.configdir / "mailboxes.db", "twoskip")
    # A literal's CRLF is inside a value; records end with a bare LF.
    values = [line.split(b"\t", 1)[1] for line in re.split(rb"(?<!\r)\n", shown) if line]
    assert len(values) == 2 * len(names)
    assert any(b"{" in v for v in values) and any(b'"' in v for v in values)
    for value in values:
        parsed = loads(value)
        assert dumps(parsed) == value
        assert dumps(plain(parsed)) == value


@given(_values.map(dumps) | st.binary(max_size=60))
@settings(max_examples=800, deadline=None)
def test_fast_and_exact_parsers_agree(text: bytes) -> None:
    """The iterative parser and the exact recursive one agree on any text, errors included."""
    try:
        exact = dlist._Parser.slow(text, "f", 0)
    except FormatError as error:
        with pytest.raises(FormatError) as again:
            loads(text, file="f")
        assert again.value.offset == error.offset
        return
    fast = loads(text, file="f")
    assert fast == exact
    assert dumps(fast) == dumps(exact) == text
