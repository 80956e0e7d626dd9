"""Cyrus dlist text: the value syntax of 2.5+ mailboxes.db, 3.6 cyrus.header and 2.5+ quota.

Implements ``formats/dlist.md``. Cyrus writes these with ``dlist_printbuf``
(imap/dlist.c) and reads them with ``dlist_parsesax``/``dlist_parsemap``.

The Python shape of a parsed dlist is deliberately plain:

* ``NIL`` is ``None``;
* an atom, a quoted string or a literal is ``bytes`` — a :class:`Str` (a
  ``bytes`` subclass that remembers its spelling) when it was not spelled the
  way Cyrus spells it (``{3}``, ``"a"``, ``a*``), so a round trip is
  byte-exact for any input;
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

import re
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
    data = bytes(data)
    if parsekey:
        parser = _Parser(data, file, offset)
        key = parser.string_token()
        parser.expect(b" ")
        value: Value = KvList([(key, parser.value())])
        if parser.pos != len(parser.data):
            parser.fail("trailing bytes after the dlist value")
        return value
    return _fast_loads(data, file, offset)


# One token per match: kvlist open, list open, close, separator, simple quoted
# string, literal header, canonical atom. Anything else falls back to _Parser,
# which gives the exact error or the unusual spelling.
_TOKEN = re.compile(
    rb'(%\()|(\()|(\))|( )|"([^"\\\r\n%\x80-\xff]*)"(?=[ )]|$)|\{([0-9]{1,12})\+?\}\r\n'
    rb'|([^\x00-\x1e\x7f-\xff (){"%*\\]{1,1023})(?=[ )]|$)'
)


def _fast_loads(data: bytes, file: str, offset: int) -> Value:
    """An iterative parser for the common case; defers to :class:`_Parser` on anything unusual."""
    match = _TOKEN.match
    n = len(data)
    pos = 0
    stack: list[list[Value] | KvList] = []
    kinds: list[int] = []  # per open container: 0 list, 1 kvlist expecting key, 2 kvlist expecting value
    keys: list[bytes] = []
    fresh = True  # no item yet in the innermost container (no separator expected)
    result: Value = None
    done = False
    while pos < n:
        if done:
            return _Parser.slow(data, file, offset)
        m = match(data, pos)
        if m is None:
            return _Parser.slow(data, file, offset)
        group = m.lastindex
        pos = m.end()
        if group == 4:  # separator
            if fresh or not stack:
                return _Parser.slow(data, file, offset)
            fresh = True
            continue
        if group == 3:  # )
            # refused: a ')' with nothing open, after a separator, or after a key without its value
            if not stack or kinds[-1] == 2 or (fresh and len(stack[-1])):
                return _Parser.slow(data, file, offset)
            done_value: Value = stack.pop()
            kinds.pop()
            fresh = False
            if not stack:
                result, done = done_value, True
                continue
            value = done_value
        else:
            if not fresh:
                return _Parser.slow(data, file, offset)
            if group == 1 or group == 2:
                if kinds and kinds[-1] == 1:
                    return _Parser.slow(data, file, offset)  # a list as a kvlist key
                if len(stack) >= 64:
                    return _Parser.slow(data, file, offset)
                stack.append(KvList() if group == 1 else [])
                kinds.append(1 if group == 1 else 0)
                fresh = True
                continue
            if group == 6:
                length = int(m.group(6))
                end = pos + length
                if end > n:
                    return _Parser.slow(data, file, offset)
                raw = data[m.start():end]
                text = data[pos:end]
                pos = end
                value = text if encode_string(text) == raw else Str.parsed(text, raw)
                if pos < n and data[pos] not in (0x20, 0x29):
                    return _Parser.slow(data, file, offset)
            elif group == 5:
                text = m.group(5)
                raw = m.group(0)
                value = text if encode_string(text) == raw else Str.parsed(text, raw)
            else:
                text = m.group(7)
                if text == b"NIL":
                    value = None if not (kinds and kinds[-1] == 1) else Str.parsed(text, text)
                else:
                    value = text
            fresh = False
            if not stack:
                result, done = value, True
                continue
        # place ``value`` in the innermost container
        top = stack[-1]
        kind = kinds[-1]
        if kind == 0:
            top.append(value)  # type: ignore[arg-type]
        elif kind == 1:
            if not isinstance(value, bytes):
                return _Parser.slow(data, file, offset)
            keys.append(value)
            kinds[-1] = 2
            fresh = False
            # the key must be followed by exactly one space and a value
            continue
        else:
            top.append((keys.pop(), value))  # type: ignore[arg-type]
            kinds[-1] = 1
    if not done:
        return _Parser.slow(data, file, offset)
    return result


_ATOM_RUN = re.compile(rb'[^ ()"{%]+')
#: An atom Cyrus itself would print (imparse_isatom), so no spelling needs remembering.
_CANONICAL_ATOM = re.compile(rb'[^\x00-\x1e\x7f-\xff (){"%*\\]{1,1023}')


class _Parser:
    """Recursive descent over the grammar of dlist_parsesax (single spaces only).

    Strings come back as plain ``bytes`` when spelled the way Cyrus spells
    them, and as :class:`Str` remembering the spelling otherwise.
    """

    @classmethod
    def slow(cls, data: bytes, file: str, base: int) -> Value:
        """Parse ``data`` completely with exact error positions."""
        parser = cls(data, file, base)
        value = parser.value()
        if parser.pos != len(parser.data):
            parser.fail("trailing bytes after the dlist value")
        return value

    def __init__(self, data: bytes, file: str, base: int) -> None:
        self.data = data
        self.n = len(data)
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
        if self.pos >= self.n:
            return "end of data"
        return repr(self.data[self.pos : self.pos + 8])

    def value(self) -> Value:
        if self.pos >= self.n:
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
        return None if type(s) is Str and s.raw == b"NIL" else s

    def _sequence(self, *, kv: bool) -> list[Value] | KvList:
        self.depth += 1
        if self.depth > 64:
            self.fail("lists nested too deeply")
        self.pos += 1  # the '('
        data = self.data
        items: list[Value] = []
        pairs = KvList()
        first = True
        while True:
            if self.pos >= self.n:
                self.fail("unterminated list")
            c = data[self.pos]
            if c == 0x29:  # )
                self.pos += 1
                break
            if not first:
                if c != 0x20:
                    self.fail(f"expected ' ', found {self._peek_text()}")
                self.pos += 1
            first = False
            if kv:
                key = self.string_token()
                if self.pos >= self.n or data[self.pos] != 0x20:
                    self.fail(f"expected ' ', found {self._peek_text()}")
                self.pos += 1
                pairs.append((key, self.value()))
            else:
                items.append(self.value())
        self.depth -= 1
        return pairs if kv else items

    def string_token(self) -> bytes:
        """An atom, quoted string or literal at the current position."""
        if self.pos >= self.n:
            self.fail("string expected, found end of data")
        data = self.data
        start = self.pos
        c = data[start]
        if c == 0x22:  # "
            return self._quoted(start)
        if c == 0x7B:  # {
            return self._literal(start)
        m = _ATOM_RUN.match(data, start)
        if m is None:
            self.fail("empty atom")
        end = m.end()
        if end < self.n and data[end] not in (0x20, 0x29):
            self.fail(f"bad character in atom {data[start:end + 1][:20]!r}")
        self.pos = end
        atom = data[start:end]
        if _CANONICAL_ATOM.fullmatch(atom) and atom != b"NIL":
            return atom
        return Str.parsed(atom, atom)

    def _spelled(self, value: bytes, raw: bytes) -> bytes:
        return value if encode_string(value) == raw else Str.parsed(value, raw)

    def _quoted(self, start: int) -> bytes:
        data = self.data
        close = data.find(b'"', start + 1)
        if close >= 0 and data.find(b"\\", start + 1, close) < 0:
            self.pos = close + 1
            return self._spelled(data[start + 1 : close], data[start : close + 1])
        out = bytearray()
        i = start + 1
        while i < self.n:
            c = data[i]
            if c == 0x22:
                self.pos = i + 1
                return Str.parsed(bytes(out), data[start : self.pos])
            if c == 0x5C:  # backslash quotes the next byte
                i += 1
                if i >= self.n:
                    break
                c = data[i]
            out.append(c)
            i += 1
        self.fail("unterminated quoted string", start)
        raise AssertionError  # unreachable

    def _literal(self, start: int) -> bytes:
        data = self.data
        i = start + 1
        n = self.n
        digits = start + 1
        while i < n and 0x30 <= data[i] <= 0x39:
            i += 1
        if i == digits or i - digits > 12:
            self.fail("bad literal length", start)
        length = int(data[digits:i])
        if i < n and data[i] == 0x2B:  # '+': non-synchronising literal
            i += 1
        if not data.startswith(b"}\r\n", i):
            self.fail("literal length not followed by '}' CRLF", start)
        body = i + 3
        if body + length > n:
            self.fail(f"literal of {length} bytes runs past the end of the data", start)
        self.pos = body + length
        return self._spelled(data[body : self.pos], data[start : self.pos])


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
