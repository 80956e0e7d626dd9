"""A streaming reader for the POSIX (pax) tar stream that ``tar --format=posix`` sends (and GNU tar's own format).

Why not :mod:`tarfile`: it builds a TarInfo with a dozen fields and decodes
names to str for every member; at 200k small files the per-member cost shows
(measured in tests/test_transport_tar.py's benchmark note, see the report).
Here a header is sliced with fixed offsets (the hot loop) and the layout is
documented once, as a construct definition (built on demand by
:func:`ustar_header`, so importing this module does not import construct),
which the tests check against the offsets used.

Only what a transport needs is decoded: path (raw bytes: a GNU long-name
member, a pax ``path`` record, or the header's name, after the POSIX
prefix), type, size, mode and mtime (whole seconds in GNU headers; pax
``mtime`` gives nanoseconds). The stream is consumed strictly forward.

GNU format (long names and link targets as their own members, base-256
numbers) is read as well: it is what a tar sends by default.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BLOCK = 512

#: The ustar header (POSIX.1-1988 + pax magic), 512 bytes; numbers are octal ASCII
#: (GNU tar writes base-256 where octal does not fit: first byte 0x80, or 0xff for a negative
#: number, e.g. an mtime before 1970). A GNU header has the magic "ustar  \0" (six bytes, then
#: " \0" as the version) and no prefix: its bytes 345-500 hold atime, ctime and sparse maps.
#:
#: ======  ====  =========  ==================================================
#: offset  size  field      meaning
#: ======  ====  =========  ==================================================
#: 0       100   name       path (NUL-terminated unless full)
#: 100     8     mode       permission bits, octal
#: 108     8     uid
#: 116     8     gid
#: 124     12    size       data bytes that follow, octal or base-256
#: 136     12    mtime      seconds since the epoch, octal
#: 148     8     chksum     sum of header bytes with this field as spaces
#: 156     1     typeflag   '0'/NUL file, '5' dir, '2' symlink, 'x'/'g' pax, 'L'/'K' GNU long name/link
#: 157     100   linkname
#: 257     6     magic      "ustar\0"
#: 263     2     version    "00"
#: 265     32    uname
#: 297     32    gname
#: 329     8     devmajor
#: 337     8     devminor
#: 345     155   prefix     POSIX only: prepended to name with "/" when not empty
#: 500     12    pad
#: ======  ====  =========  ==================================================
@functools.cache
def ustar_header() -> Any:
    """The construct definition of the table above (imported on demand: construct costs
    ~23 ms at start-up, and ``spoolmig mirror`` runs from cron every few minutes)."""
    from construct import Bytes, Struct

    header = Struct(
        "name" / Bytes(100),
        "mode" / Bytes(8),
        "uid" / Bytes(8),
        "gid" / Bytes(8),
        "size" / Bytes(12),
        "mtime" / Bytes(12),
        "chksum" / Bytes(8),
        "typeflag" / Bytes(1),
        "linkname" / Bytes(100),
        "magic" / Bytes(6),
        "version" / Bytes(2),
        "uname" / Bytes(32),
        "gname" / Bytes(32),
        "devmajor" / Bytes(8),
        "devminor" / Bytes(8),
        "prefix" / Bytes(155),
        "pad" / Bytes(12),
    )
    assert header.sizeof() == BLOCK
    return header


#: (start, end) of each field, as the hot loop slices them; tests compare with ustar_header().
OFFSETS = {
    "name": (0, 100), "mode": (100, 108), "size": (124, 136), "mtime": (136, 148),
    "chksum": (148, 156), "typeflag": (156, 157), "magic": (257, 263), "prefix": (345, 500),
}


_adler32 = zlib.adler32


def header_sum(block: bytes) -> int:
    """What a header's chksum field must hold: the sum of its bytes, the field itself counted as spaces.

    At C speed: with 0 as the start value, the low 16 bits of zlib's adler32
    are the byte sum modulo 65521, which is the exact sum for up to 256 bytes
    (at most 255 * 256 = 65280). So the header is summed in three such pieces
    around the field, and 8 spaces (256) added. sum() over the 512 bytes was
    ~1.5 % of a first copy's CPU.
    """
    return ((_adler32(block[:148], 0) & 0xFFFF) + (_adler32(block[156:412], 0) & 0xFFFF)
            + (_adler32(block[412:512], 0) & 0xFFFF) + 256)


class TarFormatError(ValueError):
    """The stream is not the tar we expected (offset in the stream, problem)."""


@dataclass(slots=True)
class Member:
    path: bytes
    typeflag: bytes
    size: int
    mode: int
    mtime_ns: int
    linkname: bytes = b""

    @property
    def is_file(self) -> bool:
        return self.typeflag in (b"0", b"\0", b"7")


def _octal(field: bytes, offset: int, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256: the marker bit, then a two's complement number
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"offset {offset}: bad {what} field {field!r}") from None


def _time_ns(text: bytes) -> int:
    neg = text.startswith(b"-")
    whole, _, frac = text.lstrip(b"-").partition(b".")
    ns = int(whole or b"0") * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
    return -ns if neg else ns


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """``"<len> key=value\\n"`` records → dict (values raw bytes)."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= 0:
            raise TarFormatError("bad pax record length")
        record = data[space + 1:pos + length - 1]  # drop the trailing "\n"
        key, _, value = record.partition(b"=")
        out[key] = value
        pos += length
    return out


class TarStream:
    """Pull members and their data off a byte source; ``recv(n)`` returns b"" at EOF."""

    def __init__(self, recv: Callable[[int], bytes], chunk: int = 1 << 20) -> None:
        self._recv = recv
        self._chunk = chunk
        # Unread bytes are self._buf[self._pos:]; slicing immutable bytes at an
        # index (no copy-and-shift per block) is what keeps 200k members cheap.
        self._buf = b""
        self._pos = 0
        self.offset = 0  # stream offset of self._buf[self._pos]
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0  # padding after the current member's data

    def _fill(self, n: int) -> None:
        have = len(self._buf) - self._pos
        if have >= n:
            return
        parts = [self._buf[self._pos:]]
        while have < n:
            data = self._recv(max(self._chunk, n - have))
            if not data:
                raise EOFError(f"tar stream ended at offset {self.offset + have}")
            parts.append(data)
            have += len(data)
        self._buf = b"".join(parts)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            self._fill(n)
        pos = self._pos
        self._pos = pos + n
        self.offset += n
        return self._buf[pos:pos + n]

    def read(self, n: int) -> bytes:
        """Up to ``n`` data bytes of the current member (b"" at its end)."""
        if self._left <= 0:
            return b""
        if self._pos >= len(self._buf):
            data = self._recv(self._chunk)
            if not data:
                raise EOFError(f"tar stream ended at offset {self.offset}")
            self._buf, self._pos = data, 0
        n = min(n, self._left, len(self._buf) - self._pos)
        self._left -= n
        return self._take(n)

    def skip_data(self) -> None:
        """Discard what is left of the current member, and its padding."""
        while self._left > 0:
            self.read(min(self._left, 1 << 20))
        if self._pad:
            self._take(self._pad)
            self._pad = 0

    def next(self) -> Member | None:
        """The next member's header (data follows); None at the end of the archive."""
        self.skip_data()
        pax: dict[bytes, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            start = self.offset
            block = self._take(BLOCK)
            if block.count(0) == BLOCK:
                return None  # end-of-archive marker
            stored = _octal(block[148:156], start, "chksum")
            if stored != header_sum(block):
                raise TarFormatError(f"offset {start}: header checksum mismatch")
            typeflag = block[156:157]
            size = pax[b"size"] if b"size" in pax else None
            size = int(size) if size is not None else _octal(block[124:136], start, "size")
            if typeflag in (b"x", b"g", b"L", b"K"):
                data = self._take(size)
                self._take(-size % BLOCK)
                if typeflag == b"x":
                    pax.update(parse_pax(data))
                elif typeflag == b"L":
                    longname = data.split(b"\0", 1)[0]
                elif typeflag == b"K":
                    longlink = data.split(b"\0", 1)[0]
                continue
            if b"path" in pax:
                path = pax[b"path"]
            elif longname is not None:
                path = longname
            else:
                name = block[0:100].split(b"\0", 1)[0]
                prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\0" else b""
                path = prefix + b"/" + name if prefix else name
            mtime_ns = (_time_ns(pax[b"mtime"]) if b"mtime" in pax
                        else _octal(block[136:148], start, "mtime") * 1_000_000_000)
            member = Member(
                path=path,
                typeflag=typeflag,
                size=size if typeflag not in (b"1", b"2", b"3", b"4", b"5", b"6") else 0,
                mode=_octal(block[100:108], start, "mode") & 0o7777,
                mtime_ns=mtime_ns,
                linkname=pax.get(b"linkpath", longlink if longlink is not None else block[157:257].split(b"\0", 1)[0]),
            )
            self._left = member.size
            self._pad = -member.size % BLOCK
            return member
