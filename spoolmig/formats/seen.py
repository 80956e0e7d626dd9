"""Seen state: the values of a user's seen database and IMAP sequence sets.

Implements formats/seen-sub-quota.md §1. Authority: imap/seen_db.c
(``seen_readit`` 2.2.13, ``parse_data``/``seen_write`` 3.6.1) and lib/seqset.c.
The database itself (skiplist, twoskip) is read by :mod:`spoolmig.formats.cyrusdb`;
its keys are mailbox uniqueids (from cyrus.header), its values
``"%d %ld %u %ld %s"`` = ``1 lastread lastuid lastchange seenuids`` —
unchanged from 2.2 to 3.12 (SEEN_VERSION 1). With an empty set Cyrus still
writes the separating space: ``1 1795402796 3 0 ``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from spoolmig.errors import FormatError

__all__ = ["SeenValue", "parse_value", "format_value", "parse_seqset", "format_seqset", "seqset_uids",
           "seqset_contains"]

SEEN_VERSION = 1

_VALUE = re.compile(rb"(-?\d+) (-?\d+) (\d+) (-?\d+)(?: (.*))?", re.S)
_RANGE = re.compile(rb"(\d+)(?::(\d+|\*))?")


@dataclass(frozen=True)
class SeenValue:
    """One mailbox's seen state for one user."""

    lastread: int
    lastuid: int
    lastchange: int
    seenuids: bytes          # the sequence set exactly as stored

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return parse_seqset(self.seenuids)


def parse_value(value: bytes, *, file: str = "seen", key: bytes = b"") -> SeenValue:
    """``1 lastread lastuid lastchange seqset`` → :class:`SeenValue`.

    Cyrus asserts the version is 1 (and aborts otherwise): we refuse instead.
    """
    m = _VALUE.fullmatch(value)
    where = f"seen record {key.decode('utf-8', 'replace')!r}" if key else "seen record"
    if not m:
        raise FormatError(file, None, f"{where}: value {value[:60]!r} is not '1 lastread lastuid lastchange seqset'")
    if int(m.group(1)) != SEEN_VERSION:
        raise FormatError(file, None, f"{where}: seen version {int(m.group(1))}, only {SEEN_VERSION} exists")
    seen = (m.group(5) or b"").lstrip(b" \t\r\n\v\f")
    try:
        parse_seqset(seen)
    except ValueError as error:
        raise FormatError(file, None, f"{where}: {error}") from None
    return SeenValue(int(m.group(2)), int(m.group(3)), int(m.group(4)), seen)


def format_value(seen: SeenValue) -> bytes:
    """The value as Cyrus writes it (``seen_write``), trailing space included."""
    return b"%d %d %d %d %s" % (SEEN_VERSION, seen.lastread, seen.lastuid, seen.lastchange, seen.seenuids)


def parse_seqset(text: bytes) -> list[tuple[int, int]]:
    """``1:5,7,9:12`` → [(1, 5), (7, 7), (9, 12)] in stored order; ``a:b`` with b < a is swapped.

    ``*`` (only meaningful with a maxval in IMAP) is kept as 2**32-1.
    """
    if not text:
        return []
    ranges = []
    for part in text.split(b","):
        m = _RANGE.fullmatch(part)
        if not m:
            raise ValueError(f"bad sequence set element {part[:20]!r}")
        low = int(m.group(1))
        high = low if m.group(2) is None else (0xFFFFFFFF if m.group(2) == b"*" else int(m.group(2)))
        ranges.append((min(low, high), max(low, high)))
    return ranges


def normalise(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged ranges (adjacent ones joined), as seqset_cstring prints them."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def format_seqset(ranges: Iterable[tuple[int, int]]) -> bytes:
    """Ranges → Cyrus's canonical text (sorted, merged, ``n`` or ``a:b``)."""
    return b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in normalise(ranges))


def seqset_uids(ranges: Sequence[tuple[int, int]], *, limit: int) -> Iterator[int]:
    """The UIDs of the ranges up to ``limit`` (e.g. the mailbox's last_uid)."""
    for lo, hi in normalise(ranges):
        yield from range(lo, min(hi, limit) + 1)


def seqset_contains(ranges: Sequence[tuple[int, int]], uid: int) -> bool:
    return any(lo <= uid <= hi for lo, hi in ranges)
