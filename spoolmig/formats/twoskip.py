"""Cyrus twoskip databases (2.5+), read as a freshly restarted Cyrus serves them.

Implements formats/twoskip.md. Everything past the header's ``current_size``
is an uncommitted transaction; of the two level-0 pointers of a record the
larger one below ``current_size`` is the committed successor. A clean file is
served by walking that chain (lib/cyrusdb_twoskip.c ``myforeach``). A dirty
file is what ``recovery1`` would make of it: the same walk, which must then
be in comparator order; when that fails Cyrus falls back to ``recovery2``,
which we do not imitate for reading (it drops the wrong key for DELETE
records) — the file is reported as damaged and ``spoolmig db recover``
salvages it correctly.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from spoolmig.errors import FormatError

from ._binary import Order, OrderWitness, Report, SortedState, roundup, sort_key, table

MAGIC = b"\xa1\x02\x8b\x0dtwoskip file\x00\x00\x00\x00"
HEADER_SIZE = 64
DUMMY_OFFSET = 64
MAXLEVEL = 31
VERSION = 1
DIRTY = 1
BLANK = b" BLANK\x07\xa0"
BLOCKSIZE = 512

DUMMY = ord("=")
RECORD = ord("+")
DELETE = ord("-")
COMMIT = ord("$")
TYPE_NAMES = {DUMMY: "DUMMY", RECORD: "RECORD", DELETE: "DELETE", COMMIT: "COMMIT"}

_HEADER = struct.Struct(">20sIQQQQII")
_head = struct.Struct(">BBHI").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_u32x2 = struct.Struct(">II").unpack_from
_PTR_STRUCTS = [struct.Struct(f">{n}Q") for n in range(1, MAXLEVEL + 2)]
_PTRS = [s.unpack_from for s in _PTR_STRUCTS]


class Header(NamedTuple):
    """The 64-byte header."""

    version: int
    generation: int
    num_records: int
    repack_size: int
    current_size: int
    flags: int
    crc32: int

    @property
    def dirty(self) -> bool:
        return bool(self.flags & DIRTY)


class Record(NamedTuple):
    """One record located in the buffer (key/value as offsets, not copies)."""

    offset: int
    type: int
    level: int
    keylen: int
    vallen: int
    nextloc: tuple[int, ...]
    crc32_head: int
    crc32_tail: int
    keyoffset: int
    length: int

    @property
    def valoffset(self) -> int:
        return self.keyoffset + self.keylen


def read_header(buf: Any, file: str) -> Header:
    """Check magic, version and CRC as Cyrus's read_header() does."""
    if len(buf) < HEADER_SIZE:
        raise FormatError(file, 0, f"twoskip header needs {HEADER_SIZE} bytes, file has {len(buf)}")
    magic, *fields = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(file, 0, "not a twoskip file (bad magic)")
    header = Header(*fields)
    if header.version > VERSION:
        raise FormatError(file, 20, f"twoskip version {header.version}, only 1 exists")
    crc = zlib.crc32(memoryview(buf)[:60])
    if crc != header.crc32:
        raise FormatError(file, 60, f"header CRC 0x{header.crc32:08x} does not match 0x{crc:08x}")
    return header


def read_record(buf: Any, offset: int, file: str, *, mv: memoryview | None = None) -> Record:
    """Parse and head-CRC-check the record at ``offset`` (read_onerecord)."""
    size = len(buf)
    if offset + 24 > size:
        raise FormatError(file, offset, f"record at {offset} runs past the end of the file ({size} bytes)")
    rtype, level, keylen, vallen = _head(buf, offset)
    if level > MAXLEVEL:
        raise FormatError(file, offset, f"record level {level} above {MAXLEVEL}")
    pos = offset + 8
    if keylen == 0xFFFF:
        keylen = _u64(buf, pos)[0]
        pos += 8
    if vallen == 0xFFFFFFFF:
        vallen = _u64(buf, pos)[0]
        pos += 8
    length = pos - offset + 8 * (level + 1) + 8 + roundup(keylen + vallen, 8)
    if offset + length > size:
        raise FormatError(file, offset, f"record of {length} bytes runs past the end of the file ({size} bytes)")
    nextloc = _PTRS[level](buf, pos)
    pos += 8 * (level + 1)
    crc_head, crc_tail = _u32x2(buf, pos)
    view = mv if mv is not None else memoryview(buf)
    if zlib.crc32(view[offset:pos]) != crc_head:
        raise FormatError(file, offset, f"record head CRC mismatch ({TYPE_NAMES.get(rtype, hex(rtype))} record)")
    return Record(offset, rtype, level, keylen, vallen, nextloc, crc_head, crc_tail, pos + 8, length)


def check_tail(buf: Any, record: Record, file: str, mv: memoryview | None = None) -> None:
    """Check the CRC over key, value and padding."""
    view = mv if mv is not None else memoryview(buf)
    start = record.keyoffset
    if zlib.crc32(view[start:start + roundup(record.keylen + record.vallen, 8)]) != record.crc32_tail:
        raise FormatError(file, record.offset, "record tail CRC mismatch (key/value damaged)")


def level0(nextloc: tuple[int, ...], end: int) -> int:
    """The committed level-0 successor (_getloc): the larger pointer below ``end``."""
    n0 = nextloc[0]
    n1 = nextloc[1] if len(nextloc) > 1 else 0
    if n0 >= end:
        return n1
    if n1 >= end:
        return n0
    return n0 if n0 > n1 else n1


def getloc(nextloc: tuple[int, ...], level: int, end: int) -> int:
    """Successor at ``level`` (slot level+1 above level 0)."""
    return nextloc[level + 1] if level else level0(nextloc, end)


def walk(buf: Any, file: str, end: int, *, order: Order | None = None) -> Iterator[Record]:
    """Live records along the committed level-0 chain, checked like foreach does.

    With ``order`` set, each key must sort after the previous one (as
    recovery1 and myconsistent require). Without, the keys must still rise
    in raw or in mailbox order: a chain that revisits a key (a pointer loop)
    is reported before any record repeats, and the walk always ends.
    """
    mv = memoryview(buf)
    dummy = read_record(buf, DUMMY_OFFSET, file, mv=mv)
    if dummy.type != DUMMY:
        raise FormatError(file, DUMMY_OFFSET, f"first record is {TYPE_NAMES.get(dummy.type, hex(dummy.type))}, not DUMMY")
    mbox = sort_key("mbox")
    strict = sort_key(order) if order else None
    prev_raw: bytes | None = None
    prev_mbox: bytes | None = None
    raw_ok = mbox_ok = True
    budget = len(buf) // 24 + 2
    offset = level0(dummy.nextloc, end)
    while offset:
        budget -= 1
        if budget < 0:
            raise FormatError(file, offset, "level-0 pointers form a loop")
        rec = read_record(buf, offset, file, mv=mv)
        if rec.type == DELETE:
            offset = rec.nextloc[0]
            continue
        if rec.type != RECORD:
            raise FormatError(file, offset, f"level-0 chain reaches a {TYPE_NAMES.get(rec.type, hex(rec.type))} record")
        check_tail(buf, rec, file, mv)
        key = bytes(mv[rec.keyoffset:rec.keyoffset + rec.keylen])
        if strict is not None:
            k = strict(key)
            if prev_raw is not None and k <= prev_raw:
                raise FormatError(file, offset, f"key out of order ({order} order) in the level-0 chain")
            prev_raw = k
        else:
            if prev_raw is not None:
                raw_ok = raw_ok and key > prev_raw
                if mbox_ok:
                    k = mbox(key)
                    mbox_ok = k > prev_mbox  # type: ignore[operator]
                    prev_mbox = k
                if not (raw_ok or mbox_ok):
                    raise FormatError(file, offset, "level-0 chain goes back to an earlier key (pointer loop "
                                      "or records out of order)")
            else:
                prev_mbox = mbox(key)
            prev_raw = key
        yield rec
        offset = level0(rec.nextloc, end)


def _serve(buf: Any, file: str, end: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) along the committed level-0 chain: :func:`walk` written out flat.

    This loop touches every record of the file, so it avoids the Record
    objects and helper calls of :func:`walk`; any anomaly is handed to
    :func:`read_record`/:func:`walk`'s checks so the error is the same.
    """
    mv = memoryview(buf)
    size = len(buf)
    head, u64, u32x2, crc32 = _head, _u64, _u32x2, zlib.crc32
    two = struct.Struct(">QQ").unpack_from
    mbox_table = table("mbox")
    dummy = read_record(buf, DUMMY_OFFSET, file, mv=mv)
    if dummy.type != DUMMY:
        raise FormatError(file, DUMMY_OFFSET, "first record is not DUMMY")
    prev_raw = prev_mbox = b""
    first = True
    raw_ok = mbox_ok = True
    budget = size // 24 + 2
    off = level0(dummy.nextloc, end)
    while off:
        budget -= 1
        if budget < 0:
            raise FormatError(file, off, "level-0 pointers form a loop")
        if off + 24 > size:
            read_record(buf, off, file, mv=mv)
        rtype, level, keylen, vallen = head(buf, off)
        if level > MAXLEVEL or keylen == 0xFFFF or vallen == 0xFFFFFFFF:
            rec = read_record(buf, off, file, mv=mv)  # rare: long lengths, or raises
            if rec.type == DELETE:
                off = rec.nextloc[0]
                continue
            keylen, vallen, k = rec.keylen, rec.vallen, rec.keyoffset
            padded = roundup(keylen + vallen, 8)
            crc_tail = rec.crc32_tail
            n0, n1 = (rec.nextloc + (0,))[:2]
        else:
            ptr_end = off + 16 + 8 * level
            padded = (keylen + vallen + 7) & ~7
            if ptr_end + 8 + padded > size:
                read_record(buf, off, file, mv=mv)
            crc_head, crc_tail = u32x2(buf, ptr_end)
            if crc32(mv[off:ptr_end]) != crc_head:
                read_record(buf, off, file, mv=mv)
            if rtype == DELETE:
                off = u64(buf, off + 8)[0]
                continue
            n0, n1 = two(buf, off + 8) if level else (u64(buf, off + 8)[0], 0)
            k = ptr_end + 8
        if rtype != RECORD:
            raise FormatError(file, off, f"level-0 chain reaches a {TYPE_NAMES.get(rtype, hex(rtype))} record")
        if crc32(mv[k:k + padded]) != crc_tail:
            raise FormatError(file, off, "record tail CRC mismatch (key/value damaged)")
        key = buf[k:k + keylen]
        if first:
            first = False
            prev_mbox = key.translate(mbox_table)
        else:
            raw_ok = raw_ok and key > prev_raw
            if mbox_ok:
                mk = key.translate(mbox_table)
                mbox_ok = mk > prev_mbox
                prev_mbox = mk
            if not (raw_ok or mbox_ok):
                raise FormatError(file, off, "level-0 chain goes back to an earlier key (pointer loop "
                                  "or records out of order)")
        prev_raw = key
        yield key, buf[k + keylen:k + keylen + vallen]
        if n0 >= end:
            off = n1
        elif n1 >= end or n0 > n1:
            off = n0
        else:
            off = n1


def records(buf: Any, *, file: str, order: Order | None = "raw") -> Iterator[tuple[bytes, bytes]]:
    """Committed (key, value) pairs in the order a restarted Cyrus iterates them.

    ``order`` is the comparator the database is opened with (``raw``, Cyrus's
    default; ``mbox`` for ``improved_mboxlist_sort``; None for whichever of
    the two the file is in). It matters only for a dirty file, whose chain
    recovery checks before serving it; a clean file is served in chain order.
    """
    if len(buf) == 0:
        return
    header = read_header(buf, file)
    end = header.current_size
    if end == len(buf) and not header.dirty:
        yield from _serve(buf, file, end)
        return
    # What recovery1 does before anything is served: the walk must succeed.
    if end <= HEADER_SIZE:
        raise FormatError(file, 48, f"current_size {end} leaves no room for the DUMMY record")
    if end > len(buf):
        raise FormatError(file, 48, f"current_size {end} is beyond the end of the file ({len(buf)} bytes): truncated")
    candidates: tuple[Order, ...] = (order,) if order else ("raw", "mbox")
    problem: FormatError | None = None
    for candidate in candidates:
        try:
            for _ in walk(buf, file, end, order=candidate):
                pass
        except FormatError as error:
            problem = problem or error
            continue
        break
    else:
        assert problem is not None
        raise FormatError(file, problem.offset, "dirty file cannot be recovered by walking its pointers: "
                          f"{problem.problem}", hint="salvage it with: spoolmig db recover FILE OUT")
    yield from _serve(buf, file, end)


def _pack_record(rtype: int, level: int, key: bytes, value: bytes, nextloc: list[int]) -> bytes:
    head = bytearray(struct.pack(">BBHI", rtype, level, min(len(key), 0xFFFF), min(len(value), 0xFFFFFFFF)))
    if len(key) >= 0xFFFF:
        head += struct.pack(">Q", len(key))
    if len(value) >= 0xFFFFFFFF:
        head += struct.pack(">Q", len(value))
    head += _PTR_STRUCTS[level].pack(*nextloc)
    kv = key + value
    kv += b"\0" * (-len(kv) % 8)
    return bytes(head) + struct.pack(">II", zlib.crc32(head), zlib.crc32(kv) if kv else 0) + kv


def _head_len(key: bytes, value: bytes, level: int) -> int:
    return (8 + (8 if len(key) >= 0xFFFF else 0) + (8 if len(value) >= 0xFFFFFFFF else 0)
            + 8 * (level + 1) + 8 + roundup(len(key) + len(value), 8))


def build(items: Any, *, order: Order = "raw") -> bytes:
    """A freshly repacked twoskip: header, DUMMY, sorted records, one COMMIT.

    That is what Cyrus's checkpoint writes (generation 1 here); BLANK padding
    is left out so 2.5 and 3.0 read it as well as 3.2+.
    """
    from .skiplist import _unique_sorted, node_level

    ordered = _unique_sorted(items, order)
    if any(not k for k, _ in ordered):
        raise ValueError("twoskip cannot hold an empty key: Cyrus's foreach never gets past it")
    levels = [node_level(i, MAXLEVEL) for i in range(len(ordered))]
    dummy_len = _head_len(b"", b"", MAXLEVEL)
    offsets = []
    off = DUMMY_OFFSET + dummy_len
    for (key, value), level in zip(ordered, levels):
        offsets.append(off)
        off += _head_len(key, value, level)
    first = DUMMY_OFFSET + dummy_len
    nxt = [0] * MAXLEVEL
    bodies: list[bytes] = [b""] * len(ordered)
    for i in range(len(ordered) - 1, -1, -1):
        key, value = ordered[i]
        level = levels[i]
        bodies[i] = _pack_record(RECORD, level, key, value, [nxt[0], 0, *nxt[1:level]])
        for lv in range(level):
            nxt[lv] = offsets[i]
    dummy = _pack_record(DUMMY, MAXLEVEL, b"", b"", [nxt[0], 0, *nxt[1:]])
    commit = _pack_record(COMMIT, 0, b"", b"", [first]) if ordered else b""
    size = off + len(commit)
    fields = (MAGIC, VERSION, 1, len(ordered), size, size, 0)
    head = _HEADER.pack(*fields, 0)[:60]
    return head + struct.pack(">I", zlib.crc32(head)) + dummy + b"".join(bodies) + commit


def check(buf: Any, *, file: str) -> Report:
    """Structural check: header CRC, every record's CRCs, commits, chains, order, count."""
    report = Report()
    size = len(buf)
    if size == 0:
        report.note(None, "empty file: an empty database")
        return report
    try:
        header = read_header(buf, file)
    except FormatError as error:
        report.problem(error.offset, error.problem)
        return report
    end = header.current_size
    if header.dirty:
        report.note(56, "DIRTY flag set: a transaction was interrupted; Cyrus recovers on open")
    if end > size:
        report.problem(48, f"current_size {end} beyond the end of the file ({size} bytes): truncated")
        return report
    if end < size:
        report.note(end, f"uncommitted tail of {size - end} bytes: rolled back, as Cyrus does")
    mv = memoryview(buf)
    off = DUMMY_OFFSET
    txn_start = None
    last_commit_end = None
    while off < end:
        if bytes(buf[off:off + 8]) == BLANK:
            off += 8
            continue
        try:
            rec = read_record(buf, off, file, mv=mv)
            if rec.type == RECORD:
                check_tail(buf, rec, file, mv)
        except FormatError as error:
            report.problem(error.offset, error.problem)
            return report
        if off == DUMMY_OFFSET:
            if rec.type != DUMMY or rec.level != MAXLEVEL or rec.keylen or rec.vallen:
                report.problem(off, "record at 64 is not a level-31 DUMMY")
                return report
            last_commit_end = rec.offset + rec.length
        elif rec.type == COMMIT:
            if rec.nextloc[0] != last_commit_end and not _blanks(buf, last_commit_end, rec.nextloc[0]):
                report.problem(off, f"COMMIT points at {rec.nextloc[0]}, the transaction began at {last_commit_end}")
            last_commit_end = rec.offset + rec.length
            txn_start = None
        elif rec.type in (RECORD, DELETE):
            txn_start = txn_start or off
        else:
            report.problem(off, f"unexpected {TYPE_NAMES.get(rec.type, hex(rec.type))} record")
            return report
        off += rec.length
    if off != end:
        report.problem(end, f"current_size {end} is not at a record boundary (last record ends at {off})")
    if txn_start is not None:
        report.problem(txn_start, "records before current_size are not followed by a COMMIT")
    order = None
    for candidate in ("raw", "mbox"):
        try:
            walked = sum(1 for _ in walk(buf, file, end, order=candidate))  # type: ignore[arg-type]
        except FormatError as error:
            if "out of order" not in error.problem:
                report.problem(error.offset, error.problem)
                return report
            continue
        order = candidate
        break
    if order is None:
        report.problem(None, "level-0 chain is in neither raw nor mailbox order")
        return report
    if order == "mbox":
        report.note(None, "keys are in mailbox order (improved_mboxlist_sort; cyr_dbtool needs -M)")
    if header.dirty or end < size:
        # recovery1 rewrites the higher-level pointers and the record count of an interrupted file
        levels = type(report)()
        _check_levels(buf, end, header, levels, file, mv)
        for offset, text in levels.problems:
            report.note(offset, f"{text} (interrupted transaction: Cyrus's recovery repairs this)")
        report.records = walked
    else:
        _check_levels(buf, end, header, report, file, mv)
    return report


def _blanks(buf: Any, start: int | None, stop: int) -> bool:
    """Is [start, stop) nothing but BLANK padding?"""
    if start is None or stop < start or (stop - start) % 8:
        return False
    return all(bytes(buf[p:p + 8]) == BLANK for p in range(start, stop, 8))


def _check_levels(buf: Any, end: int, header: Header, report: Report, file: str, mv: memoryview) -> None:
    """myconsistent: each level's pointers land on the next record of that level; count matches."""
    dummy = read_record(buf, DUMMY_OFFSET, file, mv=mv)
    fwd = [getloc(dummy.nextloc, i, end) for i in range(MAXLEVEL)]
    count = 0
    budget = len(buf) // 24 + 2
    while fwd[0]:
        budget -= 1
        if budget < 0:
            report.problem(fwd[0], "level-0 pointers form a loop")
            return
        rec = read_record(buf, fwd[0], file, mv=mv)
        if rec.type == DELETE:
            fwd[0] = rec.nextloc[0]
            continue
        for i in range(rec.level):
            if fwd[i] != rec.offset:
                report.problem(rec.offset, f"level {i} linkage broken: expected a pointer here, found {fwd[i]}")
                return
            fwd[i] = getloc(rec.nextloc, i, end)
        count += 1
    for i, f in enumerate(fwd):
        if f:
            report.problem(f, f"level {i} chain does not end after the last record")
            return
    report.records = count
    if count != header.num_records:
        report.problem(32, f"header num_records {header.num_records} but {count} records are linked")


def _chain_order(buf: Any, file: str, end: int) -> Order | None:
    """The order the readable part of the committed chain is in, if it is the mailbox order only."""
    witness = OrderWitness("raw")
    try:
        for rec in walk(buf, file, end, order=None):
            witness.see(bytes(buf[rec.keyoffset:rec.keyoffset + rec.keylen]))
    except FormatError:
        pass
    return "mbox" if witness.mbox_only() else None


def salvage(buf: Any, *, file: str, order: Order | None = None) -> tuple[list[tuple[bytes, bytes]], Report]:
    """Every intact committed record of a damaged file, and what was lost where.

    Like Cyrus's recovery2 it replays, in file order, the transactions that
    end in an intact COMMIT; unlike it, a DELETE removes the record it was
    written for (the one just before its successor), not the successor.
    """
    report = Report()
    size = len(buf)
    end = size
    try:
        end = min(size, read_header(buf, file).current_size)
    except FormatError as error:
        report.problem(error.offset, f"{error.problem}; reading records anyway")
    if end < DUMMY_OFFSET:
        end = size
    mv = memoryview(buf)
    if order is None:
        # a DELETE is replayed onto "the key before its successor": that needs the file's own order
        order = _chain_order(buf, file, end) or "raw"
        if order == "mbox":
            report.order = "mbox"
            report.note(None, "records are in mailbox order (improved_mboxlist_sort)")
    state = SortedState(order)
    pending: list[Record] = []
    dirty = False
    off = DUMMY_OFFSET
    bad_from: int | None = None
    while off + 8 <= end:
        if bytes(buf[off:off + 8]) == BLANK:
            off += 8
            continue
        try:
            rec = read_record(buf, off, file, mv=mv)
            if rec.offset + rec.length > end:
                raise FormatError(file, off, "record crosses current_size")
            if rec.type == RECORD:
                check_tail(buf, rec, file, mv)
        except FormatError as error:
            if bad_from is None:
                bad_from = off
                report.problem(off, error.problem)
            dirty = True
            off += 8
            continue
        if bad_from is not None:
            report.problem(bad_from, f"{off - bad_from} unreadable bytes skipped")
            bad_from = None
        if rec.type in (RECORD, DELETE):
            pending.append(rec)
        elif rec.type == COMMIT:
            if dirty:
                report.problem(off, f"transaction of {len(pending)} readable records dropped: it was damaged")
            else:
                _apply(buf, pending, state, file, mv)
            pending.clear()
            dirty = False
        off += rec.length
    if bad_from is not None:
        report.problem(bad_from, f"{end - bad_from} unreadable bytes at the end")
    if pending:
        report.note(pending[0].offset, f"uncommitted transaction of {len(pending)} records rolled back")
    if end < size:
        report.note(end, f"{size - end} bytes past current_size rolled back")
    result = list(state)
    report.records = len(result)
    return result, report


def _apply(buf: Any, txn: list[Record], state: SortedState, file: str, mv: memoryview) -> None:
    for rec in txn:
        if rec.type == RECORD:
            k = rec.keyoffset
            state.set(bytes(buf[k:k + rec.keylen]), bytes(buf[k + rec.keylen:k + rec.keylen + rec.vallen]))
            continue
        successor = rec.nextloc[0]
        if successor:
            try:
                nxt = read_record(buf, successor, file, mv=mv)
            except FormatError:
                continue
            victim = state.before(bytes(buf[nxt.keyoffset:nxt.keyoffset + nxt.keylen]))
        else:
            victim = state.before(None)
        if victim is not None:
            state.delete(victim)
