"""cyrus.header: a mailbox's quota root, uniqueid, user flag names and ACL.

Implements formats/header.md. Authority: ``mailbox_read_header`` and
``mailbox_write_header``/``mailbox_commit_header`` in imap/mailbox.c (2.2.13,
2.5.17, 3.6.1). After a fixed 115-byte magic the body is one of

* ``lines`` (2.0–3.4): ``quotaroot TAB uniqueid LF`` / user flags, each
  followed by a space, ``LF`` / ACL (``id TAB rights TAB …``) ``LF``;
* ``old`` (pre-2.0): the first line holds only the quota root, no uniqueid;
* ``dlist`` (3.6+): one line ``%(T … N … I … [Q …] [A %(…)] [U (…)]) LF``.

:func:`parse` keeps what it read (the raw lines or the parsed dlist), so
:func:`build` of an unchanged :class:`Header` gives back the same bytes, and a
rewrite (:meth:`Header.with_quotaroot`, :meth:`Header.with_acl`) changes
only the part it touches. ACLs stay raw TAB strings here; their meaning is
:mod:`spoolmig.model.acl`'s business.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from spoolmig.errors import FormatError
from spoolmig.formats import dlist

__all__ = [
    "MAGIC",
    "MAX_USER_FLAGS",
    "Header",
    "parse",
    "build",
    "acl_pairs",
    "acl_string",
    "looks_like_header",
    "file_crc",
]

#: imap/mailbox.h MAILBOX_HEADER_MAGIC without its C terminator (115 bytes).
MAGIC = (
    b"\xa1\x02\x8b\x0dCyrus mailbox header\n"
    b'"The best thing about this system was that it had lots of goals."\n'
    b"\t--Jim Morris on Andrew\n"
)
assert len(MAGIC) == 115

#: imap/mailbox.h: 16*8 user flags; a flag's position is its bit in index records.
MAX_USER_FLAGS = 128

Form = Literal["lines", "old", "dlist"]


def looks_like_header(buf: bytes) -> bool:
    """Does ``buf`` start with the cyrus.header magic?"""
    return buf[: len(MAGIC)] == MAGIC


def file_crc(buf: bytes) -> int:
    """CRC-32 of the whole file: what index v12+ stores as header_file_crc."""
    return zlib.crc32(buf) & 0xFFFFFFFF


def acl_pairs(acl: bytes) -> list[tuple[bytes, bytes]]:
    """``id TAB rights TAB …`` → pairs; stops, as Cyrus does, at an unpaired tail."""
    parts = acl.split(b"\t")
    pairs = []
    for i in range(0, len(parts) - 2, 2):
        pairs.append((parts[i], parts[i + 1]))
    return pairs


def acl_string(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Pairs → the TAB form, every pair followed by a TAB (as cyrus_acl_set writes)."""
    return b"".join(ident + b"\t" + rights + b"\t" for ident, rights in pairs)


@dataclass(frozen=True)
class _Lines:
    """The raw lines a ``lines``/``old`` header was read from, for byte-exact rebuilds."""

    first: bytes
    flags: bytes
    acl: bytes
    trailer: bytes


@dataclass(frozen=True)
class Header:
    """The content of one cyrus.header.

    ``flags[i]`` is the name of user flag ``i`` (``None`` for an empty slot).
    ``acl`` is the TAB form even for a dlist header (``None`` when a dlist
    header has no ``A``). ``mbtype``/``name`` exist only in the dlist form.
    """

    form: Form
    quotaroot: bytes | None
    uniqueid: bytes | None
    flags: tuple[bytes | None, ...] = ()
    acl: bytes | None = b""
    mbtype: bytes | None = None
    name: bytes | None = None
    _lines: _Lines | None = field(default=None, repr=False, compare=False)
    _dlist: dlist.KvList | None = field(default=None, repr=False, compare=False)

    def with_quotaroot(self, quotaroot: bytes | None) -> Header:
        """The same header with another quota root (None = no quota)."""
        return replace(self, quotaroot=quotaroot)

    def with_acl(self, acl: bytes) -> Header:
        """The same header with another ACL (TAB form)."""
        return replace(self, acl=acl)

    def as_form(self, form: Form, *, mbtype: bytes = b"e", name: bytes | None = None) -> Header:
        """This header re-expressed in another body form (nothing raw kept)."""
        if form == "old":
            raise ValueError("spoolmig never writes the pre-2.0 header form")
        if form == "lines" and self.uniqueid is None:
            raise ValueError("a lines header needs a uniqueid")
        return Header(
            form=form,
            quotaroot=self.quotaroot,
            uniqueid=self.uniqueid,
            flags=self.flags,
            acl=self.acl if self.acl is not None or form == "dlist" else b"",
            mbtype=(self.mbtype or mbtype) if form == "dlist" else None,
            name=(self.name if self.name is not None else name) if form == "dlist" else None,
        )

    @property
    def acl_pairs(self) -> list[tuple[bytes, bytes]]:
        return acl_pairs(self.acl or b"")

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly fields (bytes decoded as UTF-8, undecodable bytes replaced)."""

        def text(b: bytes | None) -> str | None:
            return None if b is None else b.decode("utf-8", "replace")

        return {
            "form": self.form,
            "quotaroot": text(self.quotaroot),
            "uniqueid": text(self.uniqueid),
            "flags": [text(f) for f in self.flags],
            "acl": [[text(i), text(r)] for i, r in self.acl_pairs],
            "mbtype": text(self.mbtype),
            "name": text(self.name),
        }


# ---------------------------------------------------------------------- parse


def parse(buf: bytes, *, file: str = "cyrus.header") -> Header:
    """Read a cyrus.header as Cyrus 3.6's ``mailbox_read_header`` does.

    Raises:
        FormatError: bad magic, a missing line end, an empty uniqueid, or a
            damaged dlist body — where Cyrus returns IMAP_MAILBOX_BADFORMAT.
    """
    buf = bytes(buf)
    if len(buf) < len(MAGIC) or not looks_like_header(buf):
        at = next((i for i, (a, b) in enumerate(zip(buf, MAGIC)) if a != b), min(len(buf), len(MAGIC)))
        raise FormatError(file, at, "not a cyrus.header (magic text differs)")
    p = len(MAGIC)
    eol = buf.find(b"\n", p)
    if eol < 0:
        raise FormatError(file, p, "first line of the header body has no line end")
    if buf[p : p + 1] == b"%":
        return _parse_dlist(buf, p, eol, file)
    first = buf[p:eol]
    tab = first.find(b"\t")
    if tab < 0:
        form: Form = "old"
        quotaroot = first or None
        uniqueid = None
    else:
        form = "lines"
        quotaroot = first[:tab] or None
        rest = first[tab + 1 :]
        if not rest:
            raise FormatError(file, p + tab + 1, "empty uniqueid after the quota root")
        uniqueid = rest.split(b"\t", 1)[0]
    p2 = eol + 1
    eol2 = buf.find(b"\n", p2)
    if eol2 < 0:
        raise FormatError(file, p2, "user flags line has no line end")
    flags_line = buf[p2:eol2]
    p3 = eol2 + 1
    eol3 = buf.find(b"\n", p3)
    if eol3 < 0:
        raise FormatError(file, p3, "ACL line has no line end")
    acl = buf[p3:eol3]
    return Header(
        form=form,
        quotaroot=quotaroot,
        uniqueid=uniqueid,
        flags=_split_flags(flags_line),
        acl=acl,
        _lines=_Lines(first=first, flags=flags_line, acl=acl, trailer=buf[eol3 + 1 :]),
    )


def _split_flags(line: bytes) -> tuple[bytes | None, ...]:
    """The flag names of the second line, slot by slot (empty token = empty slot)."""
    flags: list[bytes | None] = []
    pos = 0
    # Cyrus loops `name <= eol`: a final token after the last space counts too.
    while pos <= len(line) and len(flags) < MAX_USER_FLAGS:
        sp = line.find(b" ", pos)
        end = len(line) if sp < 0 else sp
        flags.append(line[pos:end] or None)
        pos = end + 1
    while flags and flags[-1] is None:
        flags.pop()
    return tuple(flags)


def _parse_dlist(buf: bytes, p: int, eol: int, file: str) -> Header:
    if eol == p:
        raise FormatError(file, p, "empty dlist body")
    value = dlist.loads(buf[p:eol], file=file, offset=p)
    if not isinstance(value, dlist.KvList):
        raise FormatError(file, p, "dlist body is not a %(...) key/value list")

    def string(key: str) -> bytes | None:
        v = value.get(key)
        if v is None:
            return None
        if not isinstance(v, bytes):
            raise FormatError(file, p, f"dlist key {key} is not a string")
        return bytes(v)

    acl: bytes | None = None
    if "A" in value:
        a = value.get("A")
        if not isinstance(a, dlist.KvList):
            raise FormatError(file, p, "dlist key A (ACL) is not a %(...) list")
        acl = acl_string([(bytes(k), bytes(v) if isinstance(v, bytes) else b"") for k, v in a])
    flags: tuple[bytes | None, ...] = ()
    if "U" in value:
        u = value.get("U")
        if not isinstance(u, list) or isinstance(u, dlist.KvList):
            raise FormatError(file, p, "dlist key U (user flags) is not a (...) list")
        flags = tuple(bytes(f) if isinstance(f, bytes) else None for f in u[:MAX_USER_FLAGS])
    return Header(
        form="dlist",
        quotaroot=string("Q"),
        uniqueid=string("I"),
        flags=flags,
        acl=acl,
        mbtype=string("T"),
        name=string("N"),
        _lines=_Lines(first=b"", flags=b"", acl=b"", trailer=buf[eol + 1 :]),
        _dlist=value,
    )


# ---------------------------------------------------------------------- build


def build(header: Header) -> bytes:
    """The bytes of a cyrus.header; identical to the input for an unchanged parse."""
    if header.form == "dlist":
        body = _build_dlist(header)
        if b"\n" in body:
            # mailbox_read_header takes the body up to the first LF: a literal
            # ({N+} CRLF ...) would cut it. Cyrus 3.6 has the same limit.
            raise ValueError("a dlist cyrus.header cannot hold a value that needs a literal")
        return MAGIC + body + b"\n" + (header._lines.trailer if header._lines else b"")
    lines = header._lines
    if header.form == "old":
        first = header.quotaroot or b""
    else:
        if not header.uniqueid:
            raise ValueError("a lines header needs a uniqueid")
        first = (header.quotaroot or b"") + b"\t" + header.uniqueid
    if lines is not None and _first_line_fields(lines.first, header.form) == (header.quotaroot, header.uniqueid):
        first = lines.first
    if first[:1] == b"%":
        raise ValueError("a first line starting with '%' would be read as a dlist body")
    # Cyrus's writer skips empty slots (renumbering later flags); an empty
    # token keeps every flag at its bit position and every reader accepts it.
    last = max((i + 1 for i, f in enumerate(header.flags) if f is not None), default=0)
    flags_line = b"".join((f or b"") + b" " for f in header.flags[:last])
    if lines is not None and _split_flags(lines.flags) == tuple(header.flags):
        flags_line = lines.flags
    acl = header.acl or b""
    for part, what in ((first, "first line"), (flags_line, "flags"), (acl, "ACL")):
        if b"\n" in part:
            raise ValueError(f"line end inside the header's {what}")
    trailer = lines.trailer if lines is not None else b""
    return MAGIC + first + b"\n" + flags_line + b"\n" + acl + b"\n" + trailer


def _first_line_fields(first: bytes, form: Form) -> tuple[bytes | None, bytes | None]:
    tab = first.find(b"\t")
    if form == "old" or tab < 0:
        return (first or None, None)
    return (first[:tab] or None, first[tab + 1 :].split(b"\t", 1)[0])


def _build_dlist(header: Header) -> bytes:
    """Print the dlist body; keys Cyrus writes are updated in place, others kept."""
    old = header._dlist
    original = _parse_dlist_fields(old) if old is not None else None
    current = (header.mbtype, header.name, header.uniqueid, header.quotaroot, header.acl, tuple(header.flags))
    if old is not None and original == current:
        return dlist.dumps(old)
    # mailbox_header_data_cstring (3.6.1): T, N, I, [Q], [A], [U]; keep any
    # spelling of an unchanged value by reusing the parsed one.
    def keep(key: str, new: dlist.Value) -> dlist.Value:
        if old is not None and key in old:
            prev = old.get(key)
            if dlist.plain(prev) == dlist.plain(new):
                return prev
        return new

    kv = dlist.KvList()
    kv.append((b"T", keep("T", header.mbtype or b"e")))
    kv.append((b"N", keep("N", header.name)))
    kv.append((b"I", keep("I", header.uniqueid)))
    if header.quotaroot is not None:
        kv.append((b"Q", keep("Q", header.quotaroot)))
    if header.acl is not None:
        kv.append((b"A", keep("A", dlist.KvList(acl_pairs(header.acl)))))
    last = max((i + 1 for i, f in enumerate(header.flags) if f is not None), default=0)
    if last:
        kv.append((b"U", keep("U", list(header.flags[:last]))))
    if old is not None:  # keys Cyrus does not write but an input had: keep them
        known = {b"T", b"N", b"I", b"Q", b"A", b"U"}
        kv.extend((k, v) for k, v in old if k not in known)
    return dlist.dumps(kv)


def _parse_dlist_fields(kv: dlist.KvList) -> tuple[object, ...]:
    body = dlist.dumps(kv)
    h = _parse_dlist(MAGIC + body + b"\n", len(MAGIC), len(MAGIC) + len(body), "<rebuild>")
    return (h.mbtype, h.name, h.uniqueid, h.quotaroot, h.acl, tuple(h.flags))
