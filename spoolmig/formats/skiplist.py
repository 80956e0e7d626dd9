"""Cyrus skiplist databases (2.x-3.x), read as a freshly restarted Cyrus serves them.

Implements formats/skiplist.md. A restarted Cyrus runs ``recovery()`` of
lib/cyrusdb_skiplist.c before serving a file: it relinks the INORDER section
*by position*, replays every log record that a later COMMIT covers and
truncates the first transaction without one. We compute the same result
without writing anything: the INORDER section is streamed from the buffer,
only the (small) log is held in memory, and when the INORDER section is not
sorted under the comparator (a file written with the mailbox order, read with
the default order) the recovery is emulated on an in-memory skiplist so the
iteration order is exactly Cyrus's.
"""

from __future__ import annotations

import bisect
import heapq
import struct
from array import array
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from spoolmig.errors import FormatError

from ._binary import Order, OrderWitness, Report, SortedState, sort_key, table

MAGIC = b"\xa1\x02\x8b\x0dskiplist file\x00\x00\x00"
HEADER_SIZE = 48
DUMMY_OFFSET = 48
MAXLEVEL = 20
VERSION = 1
VERSION_MINOR = 2

INORDER = 1
ADD = 2
DELETE = 4
COMMIT = 255
DUMMY = 257

TERMINATOR = b"\xff\xff\xff\xff"
_u32 = struct.Struct(">I").unpack_from
_u32x2 = struct.Struct(">II").unpack_from
_TYPE_NAMES = {INORDER: "INORDER", ADD: "ADD", DELETE: "DELETE", COMMIT: "COMMIT", DUMMY: "DUMMY"}


class Header(NamedTuple):
    """The 48-byte header (all fields big-endian 32-bit)."""

    version: int
    version_minor: int
    maxlevel: int
    curlevel: int
    listsize: int
    logstart: int
    last_recovery: int


class Node(NamedTuple):
    """A DUMMY, INORDER or ADD record located in the buffer."""

    offset: int
    type: int
    key: bytes
    value: bytes
    level: int
    end: int  # offset just after the terminator
    forward_offset: int  # offset of forward[0]


class Log:
    """What the log section holds, as recovery would see it."""

    def __init__(self, start: int, committed_end: int) -> None:
        self.start = start  # end of the INORDER section = start of the log
        self.committed_end = committed_end  # where a restarted Cyrus truncates the file
        #: (ADD, offset, key, value, level) or (DELETE, offset, b"", b"", target), committed, in file order
        self.ops: list[tuple[int, int, bytes, bytes, int]] = []
        self.rolled_back = 0  # bytes of uncommitted tail
        self.zero_runs: list[tuple[int, int]] = []  # (offset, length) of zero words between transactions
        self.stopped: tuple[int, str] | None = None  # where and why replay stopped before the end


def read_header(buf: Any, file: str) -> Header:
    """Check magic, version, levels and the DUMMY as Cyrus's read_header() does."""
    size = len(buf)
    if size < HEADER_SIZE:
        raise FormatError(file, 0, f"skiplist header needs {HEADER_SIZE} bytes, file has {size}")
    if bytes(buf[0:20]) != MAGIC:
        raise FormatError(file, 0, "not a skiplist file (bad magic)")
    header = Header(*struct.unpack_from(">7I", buf, 20))
    if header.version != VERSION:
        raise FormatError(file, 20, f"skiplist version {header.version}.{header.version_minor}, only 1.x exists")
    if not 1 <= header.maxlevel <= MAXLEVEL:
        raise FormatError(file, 28, f"maxlevel {header.maxlevel} outside 1..{MAXLEVEL}")
    if header.curlevel > header.maxlevel:
        raise FormatError(file, 32, f"curlevel {header.curlevel} above maxlevel {header.maxlevel}")
    dummy = node_at(buf, DUMMY_OFFSET, file)
    if dummy.type != DUMMY:
        raise FormatError(file, DUMMY_OFFSET, f"first record is type {dummy.type}, not DUMMY (257)")
    if dummy.key or dummy.value:
        raise FormatError(file, DUMMY_OFFSET, "DUMMY record has a key or data")
    if dummy.level != header.maxlevel:
        raise FormatError(file, DUMMY_OFFSET, f"DUMMY has {dummy.level} pointers, maxlevel is {header.maxlevel}")
    return header


def _level(buf: Any, first: int, size: int, file: str, offset: int, most: int = MAXLEVEL) -> int:
    """Words between ``first`` and the 0xFFFFFFFF terminator (LEVEL_safe), at most ``most``."""
    limit = min(size, first + 4 * (most + 1))
    pos = buf.find(TERMINATOR, first, limit)
    while pos >= 0 and (pos - first) % 4:
        pos = buf.find(TERMINATOR, pos + 1, limit)
    if pos < 0:
        if limit == size:
            raise FormatError(file, offset, "record runs past the end of the file (no 0xFFFFFFFF terminator)")
        raise FormatError(file, offset, f"record has more than {most} forward pointers")
    level = (pos - first) // 4
    if level == 0:
        raise FormatError(file, offset, "record has no forward pointers")
    return level


def node_at(buf: Any, offset: int, file: str, most: int = MAXLEVEL) -> Node:
    """Parse the node record at ``offset``; FormatError if it is not one (or has over ``most`` levels)."""
    size = len(buf)
    if offset % 4 or offset + 12 > size:
        raise FormatError(file, offset, "record header runs past the end of the file")
    rtype, keylen = _u32x2(buf, offset)
    if rtype not in (INORDER, ADD, DUMMY):
        raise FormatError(file, offset, f"record type 0x{rtype:x} is not a node (INORDER, ADD, DUMMY)")
    kstart = offset + 8
    dlpos = kstart + ((keylen + 3) & ~3)
    if dlpos + 4 > size:
        raise FormatError(file, offset, f"key length {keylen} runs past the end of the file")
    (datalen,) = _u32(buf, dlpos)
    first = dlpos + 4 + ((datalen + 3) & ~3)
    if first + 4 > size:
        raise FormatError(file, offset, f"data length {datalen} runs past the end of the file")
    level = _level(buf, first, size, file, offset, most)
    return Node(offset, rtype, bytes(buf[kstart:kstart + keylen]), bytes(buf[dlpos + 4:dlpos + 4 + datalen]),
                level, first + 4 * level + 4, first)


def _node_end(buf: Any, offset: int, size: int, file: str) -> int:
    """End offset of the node at ``offset`` (fast path of :func:`node_at`)."""
    if offset + 12 > size:
        raise FormatError(file, offset, "record header runs past the end of the file")
    (keylen,) = _u32(buf, offset + 4)
    dlpos = offset + 8 + ((keylen + 3) & ~3)
    if dlpos + 4 > size:
        raise FormatError(file, offset, f"key length {keylen} runs past the end of the file")
    (datalen,) = _u32(buf, dlpos)
    first = dlpos + 4 + ((datalen + 3) & ~3)
    if first + 8 <= size and buf[first:first + 4] != TERMINATOR and buf[first + 4:first + 8] == TERMINATOR:
        return first + 8  # level 1, half of all nodes
    if first + 4 > size:
        raise FormatError(file, offset, f"data length {datalen} runs past the end of the file")
    return first + 4 * _level(buf, first, size, file, offset) + 4


def scan_inorder(buf: Any, header: Header, file: str, order: Order | None = None) -> tuple[array, int | None]:
    """Offsets of the INORDER records after the DUMMY (recovery's first loop).

    With an ``order``, also the offset of the first record whose key is not
    strictly after its predecessor's (None when the section is sorted).
    This loop reads every record of the file, so it is written out flat.
    """
    size = len(buf)
    offsets = array("I")  # skiplist offsets are 32-bit
    append = offsets.append
    u32 = _u32
    off = DUMMY_OFFSET + 4 * (header.maxlevel + 4)
    check = order is not None
    trans = table(order) if order is not None else None
    previous = b""
    first = True
    unsorted = None
    while off + 8 <= size and u32(buf, off)[0] == INORDER:
        keylen = u32(buf, off + 4)[0]
        dlpos = off + 8 + ((keylen + 3) & ~3)
        if dlpos + 4 > size:
            raise FormatError(file, off, f"key length {keylen} runs past the end of the file")
        fp = dlpos + 4 + ((u32(buf, dlpos)[0] + 3) & ~3)
        if fp + 8 <= size and buf[fp + 4:fp + 8] == TERMINATOR and buf[fp:fp + 4] != TERMINATOR:
            end = fp + 8  # level 1: half of all nodes
        else:
            end = _node_end(buf, off, size, file)
        append(off)
        if check:
            key = buf[off + 8:off + 8 + keylen]
            if trans is not None:
                key = key.translate(trans)
            if key <= previous and not first:
                unsorted = off
                check = False
            previous = key
            first = False
        off = end
    if off + 4 <= size and off + 8 > size and u32(buf, off)[0] == INORDER:
        raise FormatError(file, off, "record header runs past the end of the file")
    return offsets, unsorted


def scan_log(buf: Any, start: int, file: str) -> Log:
    """Walk the log as recovery does: committed ops, and where the file ends for Cyrus."""
    size = len(buf)
    log = Log(start=start, committed_end=start)
    pending: list[tuple[int, int, bytes, bytes, int]] = []
    txn_start = off = start
    while off < size:
        if off + 4 > size:
            break  # a torn word: partial transaction
        (rtype,) = _u32(buf, off)
        if rtype == 0 and not pending:
            zero = off
            while off + 4 <= size and _u32(buf, off)[0] == 0:
                off += 4
            log.zero_runs.append((zero, off - zero))
            txn_start = off
            continue
        if rtype == COMMIT:
            log.ops.extend(pending)
            pending.clear()
            off += 4
            log.committed_end = txn_start = off
            continue
        if rtype == ADD:
            try:
                # Cyrus sizes a node of any level here; only replaying one above 20 fails
                node = node_at(buf, off, file, most=size // 4)
            except FormatError as error:
                log.stopped = (off, error.problem)
                break  # recovery: "RECSIZE of 0", the transaction is not replayed
            pending.append((ADD, off, node.key, node.value, node.level))
            off = node.end
            continue
        if rtype == DELETE:
            if off + 8 > size:
                break
            pending.append((DELETE, off, b"", b"", _u32(buf, off + 4)[0]))
            off += 8
            continue
        if pending or rtype == 0:
            log.stopped = (off, f"record type 0x{rtype:x} inside a transaction")
            break  # garbage inside a transaction: never committed
        raise FormatError(file, off, f"log record type 0x{rtype:x} is not ADD, DELETE or COMMIT (Cyrus would "
                          "truncate the file here and lose what follows)")
    if pending or off < size:
        log.rolled_back = size - txn_start
    log.committed_end = txn_start
    for op in log.ops:
        if op[0] == ADD and op[4] > MAXLEVEL:
            raise FormatError(file, op[1], f"ADD record claims level {op[4]} above {MAXLEVEL}")
    return log


def _key_at(buf: Any, offset: int, file: str) -> bytes | None:
    """Key of the node a DELETE names, or None when it names none (2.2's target 0)."""
    if offset < DUMMY_OFFSET:
        return None
    try:
        node = node_at(buf, offset, file)
    except FormatError:
        return None
    return node.key if node.type in (INORDER, ADD) else None


def records(buf: Any, *, file: str, order: Order | None = "signed") -> Iterator[tuple[bytes, bytes]]:
    """Committed (key, value) pairs in the order a restarted Cyrus iterates them.

    ``order`` is the comparator the database is opened with: ``signed`` (the
    default of every Cyrus, and what ``cyr_dbtool FILE skiplist show`` uses),
    ``mbox`` (``improved_mboxlist_sort``, ``cyr_dbtool -M``), or None to take
    whichever of the two the file is sorted in. Cyrus 3.x refuses a file that
    is not sorted in its comparator (recovery checkpoints it and the
    consistency check fails); so do we, with a FormatError.
    """
    if len(buf) == 0:
        return
    header = read_header(buf, file)
    chosen: Order = order or "signed"
    sk = sort_key(chosen)
    inorder, unsorted = scan_inorder(buf, header, file, chosen)
    if unsorted is not None and order is None and _first_unsorted(buf, inorder, sort_key("mbox")) is None:
        chosen, sk, unsorted = "mbox", sort_key("mbox"), None
    start = _node_end(buf, inorder[-1], len(buf), file) if inorder else DUMMY_OFFSET + 4 * (header.maxlevel + 4)
    log = scan_log(buf, start, file)
    if unsorted is not None:
        result = _emulate(buf, header, inorder, log, sk, file)
        previous = None
        for key, _ in result:
            k = sk(key)
            if previous is not None and k <= previous:
                raise FormatError(file, unsorted, f"keys are not in the {chosen} order Cyrus reads this file with "
                                  "(written with improved_mboxlist_sort? that order is cyr_dbtool -M)")
            previous = k
        yield from result
        return
    overrides: dict[bytes, tuple[int, bytes] | None] = {}
    for rtype, off, key, value, target in log.ops:
        if rtype == ADD:
            overrides[key] = (off, value)
            continue
        dkey = _key_at(buf, target, file)
        if dkey is None:
            continue
        current = overrides.get(dkey, ...)
        if current is ...:
            i = bisect.bisect_left(inorder, target)
            if i < len(inorder) and inorder[i] == target:
                overrides[dkey] = None
        elif current is not None and current[0] == target:
            overrides[dkey] = None
    if not overrides:
        yield from _inorder_records(buf, inorder)
        return
    live = sorted(((sk(k), k, v[1]) for k, v in overrides.items() if v is not None))
    base = ((sk(k), k, v) for k, v in _inorder_records(buf, inorder) if k not in overrides)
    for _, key, value in heapq.merge(base, live):
        yield key, value


def _inorder_records(buf: Any, offsets: Iterable[int]) -> Iterator[tuple[bytes, bytes]]:
    for off in offsets:
        keylen = _u32(buf, off + 4)[0]
        dlpos = off + 8 + ((keylen + 3) & ~3)
        yield buf[off + 8:off + 8 + keylen], buf[dlpos + 4:dlpos + 4 + _u32(buf, dlpos)[0]]


def _first_unsorted(buf: Any, offsets: array, sk: Any) -> int | None:
    previous = None
    for off, (key, _) in zip(offsets, _inorder_records(buf, offsets)):
        k = sk(key)
        if previous is not None and k <= previous:
            return off
        previous = k
    return None


def _emulate(buf: Any, header: Header, inorder: array, log: Log, sk: Any, file: str
             ) -> list[tuple[bytes, bytes]]:
    """Run Cyrus's recovery on an in-memory skiplist (INORDER not sorted under ``sk``)."""
    maxlevel = header.maxlevel
    # node: [sortkey, key, value, level, forward list]; index 0 is the DUMMY
    nodes: list[list[Any]] = [[b"", b"", b"", maxlevel, [0] * maxlevel]]
    by_offset: dict[int, int] = {}
    last = [0] * maxlevel
    for off in inorder:
        n = node_at(buf, off, file)
        idx = len(nodes)
        nodes.append([sk(n.key), n.key, n.value, n.level, [0] * n.level])
        by_offset[off] = idx
        for i in range(min(n.level, maxlevel)):
            nodes[last[i]][4][i] = idx
            last[i] = idx
    curlevel = max(1, header.curlevel)

    def find(skey: bytes) -> tuple[int, list[int]]:
        update = [0] * maxlevel
        x = 0
        for i in range(curlevel - 1, -1, -1):
            while (nxt := nodes[x][4][i]) and nodes[nxt][0] < skey:
                x = nxt
            update[i] = x
        return nodes[x][4][0], update

    for rtype, off, key, value, extra in log.ops:
        if rtype == ADD:
            skey = sk(key)
            found, update = find(skey)
            keyptr = found if found and nodes[found][0] == skey else 0
            lvl = extra
            idx = len(nodes)
            fwd = [0] * lvl
            nodes.append([skey, key, value, lvl, fwd])
            by_offset[off] = idx
            klevel = nodes[keyptr][3] if keyptr else 0
            for i in range(lvl):
                fwd[i] = nodes[keyptr][4][i] if keyptr and i < klevel else nodes[update[i]][4][i]
                nodes[update[i]][4][i] = idx
            for i in range(lvl, klevel):
                nodes[update[i]][4][i] = nodes[keyptr][4][i]
        else:
            target = by_offset.get(extra)
            if target is None:
                continue
            found, update = find(nodes[target][0])
            if not found or nodes[found][0] != nodes[target][0]:
                continue
            for i in range(curlevel):
                if nodes[update[i]][4][i] != target:
                    break
                nodes[update[i]][4][i] = nodes[target][4][i] if i < nodes[target][3] else 0
    out: list[tuple[bytes, bytes]] = []
    x = nodes[0][4][0]
    while x:
        if len(out) >= len(nodes):
            raise FormatError(file, None, "skiplist pointers form a loop during recovery")
        out.append((nodes[x][1], nodes[x][2]))
        x = nodes[x][4][0]
    return out


def _unique_sorted(items: Iterable[tuple[bytes, bytes]], order: Order) -> list[tuple[bytes, bytes]]:
    """Last value per key, sorted by ``order``; keys equal under it are refused."""
    sk = sort_key(order)
    latest = {bytes(k): bytes(v) for k, v in items}
    ordered = sorted(latest.items(), key=lambda kv: sk(kv[0]))
    for (a, _), (b, _) in zip(ordered, ordered[1:]):
        if sk(a) == sk(b):
            raise ValueError(f"keys {a!r} and {b!r} are the same key under the {order} order")
    return ordered


def node_level(index: int, maxlevel: int) -> int:
    """Deterministic skiplist level of the index-th node: 1 + trailing zeros of index+1."""
    n = index + 1
    return min(maxlevel, (n & -n).bit_length())


def build(items: Iterable[tuple[bytes, bytes]], *, order: Order = "signed", last_recovery: int = 0) -> bytes:
    """A freshly checkpointed skiplist: header, DUMMY, sorted INORDER records, no log.

    ``last_recovery`` 0 makes the first Cyrus that opens it run a (harmless)
    recovery, which is what a file copied from another machine gets anyway.
    """
    ordered = _unique_sorted(items, order)
    levels = [node_level(i, MAXLEVEL) for i in range(len(ordered))]
    dummy_size = 4 * (3 + MAXLEVEL + 1)
    offsets = []
    off = DUMMY_OFFSET + dummy_size
    for (key, value), level in zip(ordered, levels):
        offsets.append(off)
        off += 12 + ((len(key) + 3) & ~3) + ((len(value) + 3) & ~3) + 4 * level + 4
    size = off
    nxt = [0] * MAXLEVEL
    forwards: list[list[int]] = [[]] * len(ordered)
    for i in range(len(ordered) - 1, -1, -1):
        forwards[i] = nxt[:levels[i]]
        for lv in range(levels[i]):
            nxt[lv] = offsets[i]
    curlevel = max(levels, default=1)
    parts = [MAGIC, struct.pack(">7I", VERSION, VERSION_MINOR, MAXLEVEL, curlevel, len(ordered), size, last_recovery),
             struct.pack(f">3I{MAXLEVEL}I", DUMMY, 0, 0, *nxt), TERMINATOR]
    for (key, value), fwd in zip(ordered, forwards):
        parts.append(struct.pack(">II", INORDER, len(key)))
        parts.append(key + b"\0" * (-len(key) % 4))
        parts.append(struct.pack(">I", len(value)))
        parts.append(value + b"\0" * (-len(value) % 4))
        parts.append(struct.pack(f">{len(fwd)}I", *fwd))
        parts.append(TERMINATOR)
    out = b"".join(parts)
    assert len(out) == size
    if size > 0xFFFFFFFF:
        raise ValueError("a skiplist file cannot exceed 4 GiB (32-bit offsets)")
    return out


def check(buf: Any, *, file: str) -> Report:
    """Structural check: header, every record, key order, log, pointer chains."""
    report = Report()
    size = len(buf)
    if size == 0:
        report.note(None, "empty file: an empty database")
        return report
    try:
        header = read_header(buf, file)
        inorder, unsorted = scan_inorder(buf, header, file, "signed")
        start = _node_end(buf, inorder[-1], size, file) if inorder else DUMMY_OFFSET + 4 * (header.maxlevel + 4)
        log = scan_log(buf, start, file)
    except FormatError as error:
        report.problem(error.offset, error.problem)
        return report
    order: Order = "signed"
    if unsorted is not None:
        if _first_unsorted(buf, inorder, sort_key("mbox")) is None:
            order = "mbox"
            report.note(None, "keys are in mailbox order (improved_mboxlist_sort; cyr_dbtool needs -M)")
        else:
            report.problem(unsorted, "INORDER record out of order (neither signed nor mailbox order)")
    if header.logstart != start:
        report.note(40, f"header logstart {header.logstart} but the INORDER section ends at {start} "
                    "(Cyrus corrects this on recovery)")
    for zero, length in log.zero_runs:
        report.note(zero, f"{length} zero bytes between transactions (Cyrus 2.2 truncation bug; skipped)")
    if log.rolled_back:
        ends_committed = size % 4 == 0 and _u32(buf, size - 4)[0] == COMMIT
        if log.stopped and (ends_committed or "past the end" not in log.stopped[1]):
            report.problem(log.stopped[0], f"damaged log record ({log.stopped[1]}): Cyrus discards the "
                           f"{log.rolled_back} bytes from {log.committed_end} on, committed ones included")
        else:
            report.note(log.committed_end, f"uncommitted tail of {log.rolled_back} bytes: rolled back, as Cyrus does")
    for rtype, off, _, _, target in log.ops:
        if rtype == DELETE and _key_at(buf, target, file) is None:
            what = "target 0 (Cyrus 2.2 DELETE of a missing key)" if target == 0 else f"target {target} is no record"
            (report.note if target == 0 else report.problem)(off, f"DELETE {what}; Cyrus ignores it")
    try:
        report.records = sum(1 for _ in records(buf, file=file, order=order))
    except FormatError as error:
        report.problem(error.offset, error.problem)
        return report
    if log.rolled_back:
        return report  # live pointers may lead into the rolled-back tail
    _check_chains(buf, header, log.committed_end, order, report, file)
    return report


def _check_chains(buf: Any, header: Header, end: int, order: Order, report: Report, file: str) -> None:
    """Every level's forward chain: valid targets, increasing keys, level 0 = the live records."""
    sk = sort_key(order)
    dummy = node_at(buf, DUMMY_OFFSET, file)
    for level in range(header.maxlevel):
        offset = _u32(buf, dummy.forward_offset + 4 * level)[0]
        previous: bytes | None = None
        seen = 0
        prev_off = DUMMY_OFFSET
        while offset:
            seen += 1
            if seen > end // 16 + 1:
                report.problem(prev_off, f"level {level} pointers form a loop")
                return
            if offset >= end:
                report.problem(prev_off, f"level {level} pointer {offset} beyond the committed end {end}")
                return
            try:
                node = node_at(buf, offset, file)
            except FormatError:
                report.problem(prev_off, f"level {level} pointer {offset} does not point at a record")
                return
            if node.type not in (INORDER, ADD) or node.level <= level:
                report.problem(prev_off, f"level {level} pointer {offset} points at a record without that level")
                return
            k = sk(node.key)
            if previous is not None and k <= previous:
                report.problem(offset, f"level {level} chain out of key order")
                return
            previous = k
            prev_off = offset
            offset = _u32(buf, node.forward_offset + 4 * level)[0]
        if level == 0 and seen != report.records:
            report.problem(DUMMY_OFFSET, f"level 0 chain links {seen} records but {report.records} are committed")


def salvage(buf: Any, *, file: str, order: Order | None = None) -> tuple[list[tuple[bytes, bytes]], Report]:
    """Every intact committed record of a damaged file, and what was lost where.

    Reads linearly from the DUMMY on, re-synchronising on the next plausible
    record after damage; a transaction touched by damage is dropped whole.
    """
    report = Report()
    size = len(buf)
    state: dict[bytes, bytes] = {}
    key_at: dict[int, bytes] = {}
    pending: list[tuple[int, int, bytes, bytes]] = []
    damaged_txn = False
    if size < HEADER_SIZE or bytes(buf[0:20]) != MAGIC:
        report.problem(0, "skiplist header damaged (magic); reading records anyway")
    off = DUMMY_OFFSET
    bad_from: int | None = None
    witness = OrderWitness("signed")

    def plausible(at: int) -> bool:
        if at + 4 > size:
            return False
        t = _u32(buf, at)[0]
        if t in (INORDER, ADD, DUMMY):
            try:
                n = node_at(buf, at, file)
            except FormatError:
                return False
            return followed(n.end)
        if t == COMMIT:
            return followed(at + 4)
        return t == DELETE and followed(at + 8)

    def followed(at: int) -> bool:
        """Is ``at`` the end of the file or the start of a record?"""
        return at == size or (at + 4 <= size and _u32(buf, at)[0] in (INORDER, ADD, DELETE, COMMIT, 0))

    while off + 4 <= size:
        if bad_from is not None and not plausible(off):
            off += 4
            continue
        if bad_from is not None:
            report.problem(bad_from, f"{off - bad_from} unreadable bytes skipped")
            bad_from = None
        t = _u32(buf, off)[0]
        try:
            if t in (INORDER, ADD, DUMMY):
                node = node_at(buf, off, file)
                key_at[off] = node.key
                if t == INORDER:
                    state[node.key] = node.value
                    witness.see(node.key)
                elif t == ADD:
                    pending.append((ADD, off, node.key, node.value))
                off = node.end
            elif t == DELETE:
                if off + 8 > size:
                    raise FormatError(file, off, "DELETE record cut short")
                pending.append((DELETE, off, b"", _u32(buf, off + 4)[0].to_bytes(4, "big")))
                off += 8
            elif t == COMMIT:
                if damaged_txn:
                    report.problem(off, f"transaction of {len(pending)} readable records dropped: it was damaged")
                else:
                    for rtype, _, key, value in pending:
                        if rtype == ADD:
                            state[key] = value
                        else:
                            dkey = key_at.get(int.from_bytes(value, "big"))
                            if dkey is not None:
                                state.pop(dkey, None)
                pending.clear()
                damaged_txn = False
                off += 4
            elif t == 0:
                off += 4
            else:
                raise FormatError(file, off, f"unknown record type 0x{t:x}")
        except FormatError as error:
            bad_from = off
            damaged_txn = damaged_txn or bool(pending) or t in (ADD, DELETE)
            report.problem(off, error.problem)
            off += 4
    if bad_from is not None:
        report.problem(bad_from, f"{size - bad_from} unreadable bytes at the end")
    if pending:
        report.note(pending[0][1], f"uncommitted transaction of {len(pending)} records rolled back")
    if order is None and witness.mbox_only():
        report.order = order = "mbox"
        report.note(None, "records are in mailbox order (improved_mboxlist_sort)")
    sk = sort_key(order or "signed")
    result = sorted(state.items(), key=lambda kv: sk(kv[0]))
    report.records = len(result)
    return result, report
