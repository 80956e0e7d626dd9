"""Shared helpers for the Cyrus database formats: comparators and documented layouts.

The readers walk hundreds of thousands of records, so their hot loops use
``struct`` directly; the ``construct`` definitions here are the documented
layouts (formats/skiplist.md, formats/twoskip.md), used by the writers and by
the tests that cross-check the fast readers. ``construct`` is imported only
when a layout is asked for, because it costs ~80 ms at start-up and
``spoolmig db show`` should start as fast as ``cyr_dbtool``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from spoolmig.errors import FormatError

Order = Literal["signed", "raw", "mbox"]

#: C's signed ``char`` comparison (skiplist's ``compare_signed``) equals an
#: unsigned comparison of every byte with its top bit flipped.
_SIGNED = bytes(b ^ 0x80 for b in range(256))

#: ``convert_to_compare`` of lib/bsearch.c (Cyrus 2.3.8-3.12): TAB and LF
#: sort as 1, '.' as 2, 0x01-0x08 move up to 3-10, the rest stay.
_MBOX = bytearray(range(256))
_MBOX[0x09] = 0x01
_MBOX[0x0A] = 0x01
_MBOX[0x2E] = 0x02
for _b in range(1, 9):
    _MBOX[_b] = _b + 2
_MBOX_TABLE = bytes(_MBOX)
del _MBOX, _b


def _raw(key: bytes) -> bytes:
    return bytes(key)


def _signed(key: bytes) -> bytes:
    return bytes(key).translate(_SIGNED)


def _mbox(key: bytes) -> bytes:
    return bytes(key).translate(_MBOX_TABLE)


def table(order: Order) -> bytes | None:
    """The ``bytes.translate`` table behind :func:`sort_key` (None: raw order, no translation)."""
    return {"signed": _SIGNED, "raw": None, "mbox": _MBOX_TABLE}[order]


def sort_key(order: Order) -> Callable[[bytes], bytes]:
    """A key function that sorts byte strings the way a Cyrus comparator does.

    * ``signed``: skiplist's default ``compare_signed`` (bytes >= 0x80 first,
      as C ``char`` is signed on x86);
    * ``raw``: ``memcmp`` order, twoskip's default (``bsearch_ncompare_raw``);
    * ``mbox``: the mailbox order (``bsearch_ncompare_mbox``) used with
      ``improved_mboxlist_sort`` and by every flat file.

    All three put a key before any longer key it is a prefix of, as Cyrus does.
    Under ``mbox`` distinct keys can compare equal (TAB and LF both map to 1).
    """
    try:
        return {"signed": _signed, "raw": _raw, "mbox": _mbox}[order]
    except KeyError:
        raise ValueError(f"unknown key order {order!r} (signed, raw or mbox)") from None


def roundup(n: int, to: int) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return (n + to - 1) // to * to


def truncated(file: str, offset: int, what: str, need: int, size: int) -> FormatError:
    """The error for a structure that runs past the end of the file."""
    return FormatError(file, offset, f"{what} needs {need} bytes but the file ends at {size}")


@functools.cache
def layouts() -> Any:
    """The construct definitions of skiplist and twoskip (imported on demand)."""
    import construct as c

    class L:
        """Namespace of the documented layouts."""

        skiplist_header = c.Struct(
            "magic" / c.Const(b"\xa1\x02\x8b\x0dskiplist file\x00\x00\x00"),
            "version" / c.Int32ub,
            "version_minor" / c.Int32ub,
            "maxlevel" / c.Int32ub,
            "curlevel" / c.Int32ub,
            "listsize" / c.Int32ub,
            "logstart" / c.Int32ub,
            "last_recovery" / c.Int32ub,
        )
        #: INORDER, ADD and DUMMY ("node") records; the level is the number of
        #: words before the 0xFFFFFFFF terminator, given here as ``level``.
        skiplist_node = c.Struct(
            "type" / c.Int32ub,
            "keylen" / c.Int32ub,
            "key" / c.Bytes(c.this.keylen),
            c.Padding(lambda ctx: -ctx.keylen % 4),
            "datalen" / c.Int32ub,
            "data" / c.Bytes(c.this.datalen),
            c.Padding(lambda ctx: -ctx.datalen % 4),
            "forward" / c.Array(c.this._.level, c.Int32ub),
            "terminator" / c.Const(0xFFFFFFFF, c.Int32ub),
        )
        skiplist_delete = c.Struct("type" / c.Const(4, c.Int32ub), "target" / c.Int32ub)
        skiplist_commit = c.Struct("type" / c.Const(255, c.Int32ub))

        twoskip_header = c.Struct(
            "magic" / c.Const(b"\xa1\x02\x8b\x0dtwoskip file\x00\x00\x00\x00"),
            "version" / c.Int32ub,
            "generation" / c.Int64ub,
            "num_records" / c.Int64ub,
            "repack_size" / c.Int64ub,
            "current_size" / c.Int64ub,
            "flags" / c.Int32ub,
            "crc32" / c.Int32ub,
        )
        #: Head of a twoskip record up to and including the CRCs; key, value and
        #: zero padding to a multiple of 8 follow.
        twoskip_record_head = c.Struct(
            "type" / c.Bytes(1),
            "level" / c.Int8ub,
            "keylen16" / c.Int16ub,
            "vallen32" / c.Int32ub,
            "keylen64" / c.If(c.this.keylen16 == 0xFFFF, c.Int64ub),
            "vallen64" / c.If(c.this.vallen32 == 0xFFFFFFFF, c.Int64ub),
            "nextloc" / c.Array(c.this.level + 1, c.Int64ub),
            "crc32_head" / c.Int32ub,
            "crc32_tail" / c.Int32ub,
        )

    return L


class Report:
    """What a structural check or a salvage found: problems (damage) and notes (not damage)."""

    def __init__(self) -> None:
        self.problems: list[tuple[int | None, str]] = []
        self.notes: list[tuple[int | None, str]] = []
        self.records = 0
        #: the key order the file's sorted runs show, when it is not the backend's default (salvage)
        self.order: Order | None = None

    def problem(self, offset: int | None, text: str) -> None:
        self.problems.append((offset, text))

    def note(self, offset: int | None, text: str) -> None:
        self.notes.append((offset, text))

    @property
    def sound(self) -> bool:
        return not self.problems


class SortedState:
    """Key -> value kept in comparator order (salvage needs "the key before X")."""

    def __init__(self, order: Order) -> None:
        self.sk = sort_key(order)
        self.keys: list[bytes] = []  # sort keys
        self.items: dict[bytes, tuple[bytes, bytes]] = {}  # sort key -> (key, value)

    def set(self, key: bytes, value: bytes) -> None:
        import bisect

        s = self.sk(key)
        if s not in self.items:
            bisect.insort(self.keys, s)
        self.items[s] = (key, value)

    def delete(self, key: bytes) -> bool:
        import bisect

        s = self.sk(key)
        if s not in self.items:
            return False
        del self.items[s]
        del self.keys[bisect.bisect_left(self.keys, s)]
        return True

    def before(self, key: bytes | None) -> bytes | None:
        """The greatest key sorting before ``key`` (None: the greatest key)."""
        import bisect

        i = len(self.keys) if key is None else bisect.bisect_left(self.keys, self.sk(key))
        return self.items[self.keys[i - 1]][0] if i else None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self.items[s] for s in self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class OrderWitness:
    """Watches keys that a file stores in sorted runs and tells which order they are in."""

    def __init__(self, default: Order) -> None:
        self.default = default
        self.sk = {o: sort_key(o) for o in (default, "mbox")}
        self.ok = {default: True, "mbox": True}
        self.previous: dict[str, bytes] = {}

    def see(self, key: bytes) -> None:
        for order, ok in self.ok.items():
            if ok:
                k = self.sk[order](key)  # type: ignore[index]
                if order in self.previous and k <= self.previous[order]:
                    self.ok[order] = False
                self.previous[order] = k

    def restart(self) -> None:
        """A new sorted run begins (keys before it are not compared with keys after)."""
        self.previous.clear()

    def mbox_only(self) -> bool:
        return self.ok["mbox"] and not self.ok[self.default] and bool(self.previous or not self.ok[self.default])
