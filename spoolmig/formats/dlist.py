"""Cyrus dlist text: the value syntax of 2.5+ mailboxes.db, 3.6 cyrus.header and 2.5+ quota.

Implements ``formats/dlist.md``. Cyrus writes these with ``dlist_printbuf``
(imap/dlist.c) and reads them with ``dlist_parsesax``/``dlist_parsemap``.

The Python shape of a parsed dlist is deliberately plain:

* ``NIL`` is ``None``;
* an atom, a quoted string or a literal is :class:`Str` (a ``bytes``
  subclass that remembers how it was spelled, so a round trip is byte-exact
  even for spellings Cyrus would not choose, such as ``{3+}`` or ``"a"``);
* ``( … )`` is a Python ``list``;
* ``%( key value … )`` is a :class:`KvList`: an ordered list of
  ``(key, value)`` pairs (duplicates kept) with a dict-like :meth:`KvList.get`.

API::

    value = loads(b'%(A %(bob lrs) P default)')     # -> KvList
    value.get(b"P")                                  # -> b"default"
    dumps(value) == b'%(A %(bob lrs) P default)'     # byte-exact
    dumps(KvList([(b"N", b"user\\x1fbob")]))          # Cyrus's own spelling

Plain ``bytes``, ``str`` (encoded as UTF-8) and ``int`` (printed as unsigned
decimal, as Cyrus prints numbers and dates) are accepted by :func:`dumps`;
they are spelled the way ``prot_printastring`` (lib/prot.c) chooses: an atom
when possible, else a quoted string, else a ``{N+}`` CRLF literal (``{N}``
with ``literal_plus=False``, as 2.5 wrote).

Damaged text raises :class:`~spoolmig.errors.FormatError` naming the file and
the absolute offset (``offset`` argument + position in ``data``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Union

from spoolmig.errors import FormatError

__all__ = ["KvList", "Str", "Value", "dumps", "encode_string", "is_atom", "loads", "plain", "walk_strings"]

#: Longest string Cyrus prints as an atom or quoted string (lib/prot.c MAXQSTRING).
MAXQSTRING = 1024

# Bytes that stop an atom (lib/imparse.c imparse_isnatom): controls below 0x1F
# (0x1F itself is allowed: 3.6 dbnames print as atoms), DEL, 8-bit, and specials.
_NOT_ATOM = frozenset(range(0x1F)) | {0x7F} | set(range(0x80, 0x100)) | set(b' {()"%*\\')
# Bytes that force a literal instead of a quoted string (lib/prot.c isQCHAR).
_NOT_QCHAR = frozenset({0x00, 0x0D, 0x0A, 0x22, 0x25, 0x5C}) | set(range(0x80, 0x100))


class Str(bytes):
    """A dlist string that remembers its original spelling (``raw``) when parsed."""

    raw: bytes | None = None

    @classmethod
    def parsed(cls, value: bytes, raw: bytes) -> Str:
        s = cls(value)
        s.raw = raw
        return s


class KvList(list[tuple[bytes, "Value"]]):
    """``%(key value …)``: ordered pairs; Cyrus looks keys up by first match."""

    def get(self, key: bytes | str, default: Value = None) -> Value:
        """The value of the first pair whose key is ``key``."""
        k = key.encode() if isinstance(key, str) else key
        for name, value in self:
            if name == k:
                return value
        return default

    def __contains__(self, key: object) -> bool:
        k = key.encode() if isinstance(key, str) else key
        return any(name == k for name, _ in self)

    def keys(self) -> list[bytes]:
        return [name for name, _ in self]


Value = Union[None, bytes, int, str, list["Value"], KvList]


# --------------------------------------------------------------------- output


def is_atom(s: bytes) -> bool:
    """Would Cyrus print ``s`` as a bare atom (imparse_isatom and not ``NIL``)?"""
    return 0 < len(s) < MAXQSTRING and s != b"NIL" and not any(b in _NOT_ATOM for b in s)


def encode_string(s: bytes, *, literal_plus: bool = True) -> bytes:
    """Spell one string as Cyrus does (prot_printastring / DL_BUF in dlist_print).

    Cyrus 3.0+ writes literals as ``{N+}`` (its buffer stream counts as a
    client since 3.0.0); 2.5 wrote ``{N}``: pass ``literal_plus=False`` for 2.5.
    """
    if not s:
        return b'""'
    if is_atom(s):
        return s
    if len(s) < MAXQSTRING and not any(b in _NOT_QCHAR for b in s):
        return b'"' + s + b'"'
    return (b"{%d+}\r\n" if literal_plus else b"{%d}\r\n") % len(s) + s


def dumps(value: Value, *, literal_plus: bool = True) -> bytes:
    """Serialise a value; parsed strings keep their original spelling.

    New strings are spelled as Cyrus spells them (see :func:`encode_string`).
    """
    out: list[bytes] = []
    _dump(value, out, literal_plus)
    return b"".join(out)


def _dump(value: Value, out: list[bytes], plus: bool) -> None:
    if value is None:
        out.append(b"NIL")
    elif isinstance(value, KvList):
        out.append(b"%(")
        for i, (key, item) in enumerate(value):
            if i:
                out.append(b" ")
            _dump_string(key, out, plus)
            out.append(b" ")
            _dump(item, out, plus)
        out.append(b")")
    elif isinstance(value, list):
        out.append(b"(")
        for i, item in enumerate(value):
            if i:
                out.append(b" ")
            _dump(item, out, plus)
        out.append(b")")
    elif isinstance(value, bool):
        raise TypeError("dlist has no booleans")
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"dlist numbers are unsigned: {value}")
        out.append(b"%d" % value)
    elif isinstance(value, (bytes, str)):
        _dump_string(value, out, plus)
    else:
        raise TypeError(f"cannot serialise {type(value).__name__} as dlist")


def _dump_string(s: bytes | str, out: list[bytes], plus: bool) -> None:
    if isinstance(s, str):
        s = s.encode()
    raw = getattr(s, "raw", None)
    out.append(raw if raw is not None else encode_string(s, literal_plus=plus))


# ---------------------------------------------------------------------- input


def loads(data: bytes, *, file: str = "<dlist>", offset: int = 0, parsekey: bool = False) -> Value:
    """Parse one dlist value that fills ``data`` completely.

    Args:
        data: the text (no trailing newline: callers strip the LF of a header line).
        file: named in errors.
        offset: absolute offset of ``data`` in ``file``, added to error offsets.
        parsekey: the text starts with a key (``key SP value``); the result is
            then a one-pair :class:`KvList`.

    Raises:
        FormatError: the text is not a complete, well-formed dlist.
    """
    parser = _Parser(bytes(data), file, offset)
    if parsekey:
        key = parser.string_token()
        parser.expect(b" ")
        value: Value = KvList([(key, parser.value())])
    else:
        value = parser.value()
    if parser.pos != len(parser.data):
        parser.fail("trailing bytes after the dlist value")
    return value


class _Parser:
    """Recursive descent over the grammar of dlist_parsesax (single spaces only)."""

    def __init__(self, data: bytes, file: str, base: int) -> None:
        self.data = data
        self.file = file
        self.base = base
        self.pos = 0
        self.depth = 0

    def fail(self, problem: str, at: int | None = None) -> FormatError:
        raise FormatError(self.file, self.base + (self.pos if at is None else at), f"dlist: {problem}")

    def expect(self, token: bytes) -> None:
        if not self.data.startswith(token, self.pos):
            self.fail(f"expected {token.decode()!r}, found {self._peek_text()}")
        self.pos += len(token)

    def _peek_text(self) -> str:
        if self.pos >= len(self.data):
            return "end of data"
        return repr(self.data[self.pos : self.pos + 8])

    def value(self) -> Value:
        if self.pos >= len(self.data):
            self.fail("value expected, found end of data")
        c = self.data[self.pos]
        if c == 0x28:  # (
            return self._sequence(kv=False)
        if c == 0x25:  # %
            if not self.data.startswith(b"%(", self.pos):
                self.fail("'%' not followed by '(' (file literals are not supported)")
            self.pos += 1
            return self._sequence(kv=True)
        s = self.string_token()
        return None if s.raw == b"NIL" else s

    def _sequence(self, *, kv: bool) -> list[Value] | KvList:
        self.depth += 1
        if self.depth > 64:
            self.fail("lists nested too deeply")
        self.pos += 1  # the '('
        items: list[Value] = []
        pairs = KvList()
        first = True
        while True:
            if self.pos >= len(self.data):
                self.fail("unterminated list")
            if self.data[self.pos] == 0x29:  # )
                self.pos += 1
                break
            if not first:
                self.expect(b" ")
            first = False
            if kv:
                key = self.string_token()
                self.expect(b" ")
                pairs.append((key, self.value()))
            else:
                items.append(self.value())
        self.depth -= 1
        return pairs if kv else items

    def string_token(self) -> Str:
        """An atom, quoted string or literal at the current position."""
        if self.pos >= len(self.data):
            self.fail("string expected, found end of data")
        c = self.data[self.pos]
        start = self.pos
        if c == 0x22:  # "
            return self._quoted(start)
        if c == 0x7B:  # {
            return self._literal(start)
        end = self.pos
        n = len(self.data)
        while end < n and self.data[end] not in (0x20, 0x29):
            end += 1
        if end == start:
            self.fail("empty atom")
        atom = self.data[start:end]
        if any(b in (0x28, 0x22, 0x7B, 0x25) for b in atom):
            self.fail(f"bad character in atom {atom[:20]!r}")
        self.pos = end
        return Str.parsed(atom, atom)

    def _quoted(self, start: int) -> Str:
        out = bytearray()
        i = start + 1
        n = len(self.data)
        while i < n:
            c = self.data[i]
            if c == 0x22:
                self.pos = i + 1
                return Str.parsed(bytes(out), self.data[start : self.pos])
            if c == 0x5C:  # backslash quotes the next byte
                i += 1
                if i >= n:
                    break
                c = self.data[i]
            out.append(c)
            i += 1
        self.fail("unterminated quoted string", start)
        raise AssertionError  # unreachable

    def _literal(self, start: int) -> Str:
        i = start + 1
        n = len(self.data)
        digits = start + 1
        while i < n and 0x30 <= self.data[i] <= 0x39:
            i += 1
        if i == digits or i - digits > 12:
            self.fail("bad literal length", start)
        length = int(self.data[digits:i])
        if i < n and self.data[i] == 0x2B:  # '+': non-synchronising literal
            i += 1
        if not self.data.startswith(b"}\r\n", i):
            self.fail("literal length not followed by '}' CRLF", start)
        body = i + 3
        if body + length > n:
            self.fail(f"literal of {length} bytes runs past the end of the data", start)
        self.pos = body + length
        return Str.parsed(self.data[body : self.pos], self.data[start : self.pos])


def walk_strings(value: Value) -> Iterator[bytes]:
    """Every string in ``value`` (keys included), depth first: for checks and tests."""
    if isinstance(value, KvList):
        for key, item in value:
            yield key
            yield from walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_strings(item)
    elif isinstance(value, bytes):
        yield value


def plain(value: Value) -> Value:
    """A copy without remembered spellings: :func:`dumps` then spells it as Cyrus would."""
    if isinstance(value, KvList):
        return KvList((bytes(k), plain(v)) for k, v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return bytes(value)
    return value
