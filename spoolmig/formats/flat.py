"""Cyrus flat databases: one ``key TAB value LF`` line per record, in mailbox order.

Implements formats/flat.md. Cyrus 2.0-2.4 write keys and values verbatim;
2.5+ (lib/cyrusdb_flat.c ``encode``/``decode``) escape NUL, TAB, CR and LF
as ``0xFF, byte|0x80`` and 0xFF as ``0xFF 0xFF``. A 3.x Cyrus decodes every
file that way, so ``escaped=True`` (the default) is what ``cyr_dbtool`` shows.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterable, Iterator
from typing import Any

from spoolmig.errors import FormatError

from ._binary import Order, Report, sort_key

ESCAPE = 0xFF
_ESCAPES = re.compile(rb"\xff(.)?", re.S)
_ENCODE = {0x00: b"\xff\x80", 0x09: b"\xff\x89", 0x0D: b"\xff\x8d", 0x0A: b"\xff\x8a", 0xFF: b"\xff\xff"}
_NEEDS_ESCAPE = re.compile(rb"[\x00\t\r\n\xff]")


def _unescape(match: re.Match[bytes]) -> bytes:
    ch = match.group(1)
    if ch is None:
        return b""  # a lone trailing 0xFF is dropped
    return ch if ch == b"\xff" else bytes((ch[0] & 0x7F,))


def decode(field: bytes) -> bytes:
    """Undo 2.5+ escaping (Cyrus's ``decode``)."""
    return _ESCAPES.sub(_unescape, field) if b"\xff" in field else field


def encode(field: bytes) -> bytes:
    """2.5+ escaping (Cyrus's ``encode``)."""
    return _NEEDS_ESCAPE.sub(lambda m: _ENCODE[m.group()[0]], field)


def lines(buf: Any, file: str) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, raw key, raw value) of each line; a line without TAB or LF is damage."""
    data = buf if isinstance(buf, (bytes, mmap.mmap)) else bytes(buf)  # both have find(): no copy of a map
    size = len(data)
    pos = 0
    while pos < size:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise FormatError(file, pos, "last line has no LF (truncated file)")
        tab = data.find(b"\t", pos, nl)
        if tab < 0:
            raise FormatError(file, pos, "line has no TAB between key and value")
        nul = data.find(b"\x00", pos, nl)
        if nul >= 0:
            raise FormatError(file, nul, "NUL byte inside a line (Cyrus stops reading there)")
        yield pos, data[pos:tab], data[tab + 1:nl]
        pos = nl + 1


def records(buf: Any, *, file: str, escaped: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs in file order, which is the order Cyrus iterates."""
    for _, key, value in lines(buf, file):
        yield (decode(key), decode(value)) if escaped else (key, value)


def build(records: Iterable[tuple[bytes, bytes]], *, escape: bool = True, order: str = "mbox") -> bytes:
    """A flat file Cyrus reads: lines sorted in ``order`` of their stored keys.

    Cyrus finds keys with a binary search in mailbox order over the *stored*
    (escaped) key, so the lines are sorted by that. Without ``escape`` (2.0-2.4)
    keys must not contain NUL, TAB or LF, values no NUL or LF.
    """
    sk = sort_key(order)  # type: ignore[arg-type]
    out: dict[bytes, bytes] = {}
    for key, value in records:
        if not key:
            raise ValueError("a flat database cannot hold an empty key (Cyrus's binary search cannot find it)")
        if escape:
            k, v = encode(bytes(key)), encode(bytes(value))
        else:
            if re.search(rb"[\x00\t\n]", key) or re.search(rb"[\x00\n]", value):
                raise ValueError(f"unescaped flat record {bytes(key)!r} has NUL or LF, or TAB in its key")
            k, v = bytes(key), bytes(value)
        out[k] = v
    return b"".join(k + b"\t" + out[k] + b"\n" for k in sorted(out, key=sk))


def check(buf: Any, *, file: str) -> Report:
    """Every line is ``key TAB value LF``, lines strictly in mailbox order of the stored keys."""
    report = Report()
    sk = sort_key("mbox")
    previous: bytes | None = None
    try:
        for offset, key, value in lines(buf, file):
            k = sk(key)
            if previous is not None and k <= previous:
                report.problem(offset, "line out of mailbox order (or a duplicate key): Cyrus's binary search "
                               "will miss records")
            previous = k
            for field in (key, value):
                if b"\xff" in field and any(m.group(1) is None for m in _ESCAPES.finditer(field)):
                    report.note(offset, "field ends in a lone 0xFF escape byte (Cyrus drops it)")
            report.records += 1
    except FormatError as error:
        report.problem(error.offset, error.problem)
    return report


def salvage(buf: Any, *, file: str, order: Order | None = None) -> tuple[list[tuple[bytes, bytes]], Report]:
    """Every well-formed line of a damaged flat file; the others are reported."""
    report = Report()
    data = buf if isinstance(buf, bytes) else bytes(buf)
    result: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line_end = len(data) if nl < 0 else nl
        line = data[pos:line_end]
        tab = line.find(b"\t")
        if nl < 0:
            report.problem(pos, "last line has no LF (truncated): dropped")
        elif tab < 0 or b"\0" in line:
            report.problem(pos, "line without TAB or with a NUL byte: dropped")
        else:
            result[decode(line[:tab])] = decode(line[tab + 1:])
        pos = line_end + 1
    sk = sort_key(order or "mbox")
    items = sorted(result.items(), key=lambda kv: sk(kv[0]))
    report.records = len(items)
    return items, report
