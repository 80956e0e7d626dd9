"""The pure parsers of the SSH source, checked against the real GNU tools' output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spoolmig.transport import _remote, _tar
from spoolmig.transport._tar import OFFSETS, TarFormatError, TarStream, header_sum, ustar_header


def test_hot_loop_offsets_match_the_documented_layout() -> None:
    start = 0
    layout = {}
    for sub in ustar_header().subcons:
        size = sub.sizeof()
        layout[sub.name] = (start, start + size)
        start += size
    assert start == 512
    for name, span in OFFSETS.items():
        assert layout[name] == span, name


@given(st.binary(min_size=512, max_size=512))
@example(b"\xff" * 512)  # 130560: past 65521 twice, so a sum modulo 65521 would be wrong
@example(b"\x00" * 512)
@example(b"\xff" * 148 + b"\x00" * 8 + b"\xff" * 356)
def test_header_sum_is_the_exact_byte_sum(block: bytes) -> None:
    assert header_sum(block) == sum(block) - sum(block[148:156]) + 8 * ord(" ")


def test_header_with_high_bytes_is_accepted_and_a_near_miss_refused() -> None:
    """A header whose byte sum is far beyond 65521 (names of 0xff bytes) checks out exactly."""
    block = bytearray(512)
    block[0:100] = b"\xff" * 100
    block[100:108] = b"0000600\0"[:8]
    block[124:136] = b"00000000000\0"
    block[136:148] = b"14000000000\0"
    block[156:157] = b"0"
    block[157:257] = b"\xff" * 100
    block[257:263] = b"ustar\0"
    block[345:500] = b"\xfe" * 155
    total = sum(block) + 256
    assert total > 65521
    for stored, ok in ((total, True), (total - 65521, False), (total + 1, False)):
        block[148:156] = b"%07o\0" % stored
        stream = TarStream(io.BytesIO(bytes(block) + bytes(1024)).read)
        if ok:
            member = stream.next()
            assert member is not None and member.path == b"\xfe" * 155 + b"/" + b"\xff" * 100
            assert stream.next() is None
        else:
            with pytest.raises(TarFormatError, match="checksum"):
                stream.next()


def test_importing_the_ssh_transport_does_not_import_construct() -> None:
    """construct costs ~23 ms of every `spoolmig mirror` start (cron); the layout is built on demand."""
    out = subprocess.run([sys.executable, "-c", "import sys, spoolmig.transport.ssh; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'construct'))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


NAMES = [b"a b", b"new\nline", b"back\\slash", b"\xff\xfe", b"-rf", b"x" * 150, b"empty"]


def _tree(tmp_path: Path) -> list[bytes]:
    rels = []
    for i, name in enumerate(NAMES):
        path = os.path.join(bytes(tmp_path), name)
        with open(path, "wb") as f:
            f.write(b"" if name == b"empty" else name * (i + 1))
        os.chmod(path, 0o640 + i % 2)
        os.utime(path, ns=(1, 1_700_000_000_000_000_007 + i * 1_000_000_001))
        rels.append(name)
    os.symlink("/etc/passwd", tmp_path / "link")
    rels.append(b"link")
    deep = os.path.join(bytes(tmp_path), b"d" * 120, b"e" * 120)  # a path past ustar's 255 bytes
    os.makedirs(deep)
    with open(os.path.join(deep, b"f" * 60), "wb") as f:
        f.write(b"deep")
    os.utime(os.path.join(deep, b"f" * 60), ns=(1, 1_600_000_000_123_456_789))
    rels.append(b"d" * 120 + b"/" + b"e" * 120 + b"/" + b"f" * 60)
    os.symlink(b"/" + b"t" * 200, os.path.join(bytes(tmp_path), b"longlink"))  # a target past 100 bytes
    rels.append(b"longlink")
    return rels


def _gnu_tar(tmp_path: Path, rels: list[bytes]) -> bytes:
    cmd = _remote.tar_command(str(tmp_path))
    return subprocess.run(["/bin/sh", "-c", cmd], input=_remote.stdin_paths(rels + [b"missing"]),
                          capture_output=True, check=False).stdout


def _members(data: bytes, tmp_path: Path, *, exact_ns: bool) -> list[bytes]:
    """Every member checked against the file it came from; the paths, in stream order."""
    stream = TarStream(io.BytesIO(data).read, chunk=1000)
    seen = []
    while (m := stream.next()) is not None:
        path = _remote.strip_dot(m.path)
        seen.append(path)
        st = os.lstat(os.path.join(bytes(tmp_path), path))
        if path in (b"link", b"longlink"):
            assert not m.is_file and m.linkname == os.readlink(os.path.join(bytes(tmp_path), path))
            continue
        content = b""
        while chunk := stream.read(7):
            content += chunk
        assert content == (tmp_path / os.fsdecode(path)).read_bytes()
        mtime = st.st_mtime_ns if exact_ns else st.st_mtime_ns // 10**9 * 10**9
        assert (m.size, m.mode, m.mtime_ns) == (st.st_size, st.st_mode & 0o7777, mtime)
    return seen


def test_reads_the_pax_stream_the_source_sends_exactly(tmp_path: Path) -> None:
    """Long names and link targets, newlines, non-UTF-8 bytes; mtimes to the nanosecond."""
    rels = _tree(tmp_path)
    data = _gnu_tar(tmp_path, rels)
    assert data[257:263] == b"ustar\0"
    assert _members(data, tmp_path, exact_ns=True) == rels, "order kept; the missing file is simply absent"


def test_reads_gnu_tars_own_format_exactly(tmp_path: Path) -> None:
    """GNU format: long names and link targets as members of their own, mtimes in whole seconds."""
    rels = _tree(tmp_path)
    data = subprocess.run(["tar", "--null", "--no-recursion", "--no-unquote", "--hard-dereference", "--format=gnu",
                           "-cf", "-", "-T", "-"], cwd=tmp_path,
                          input=_remote.stdin_paths(rels), capture_output=True, check=True).stdout
    assert data[257:265] == b"ustar  \0"
    assert _members(data, tmp_path, exact_ns=False) == rels


def test_a_gnu_header_keeps_its_name_whatever_follows_at_the_posix_prefix(tmp_path: Path) -> None:
    """GNU headers keep atime, ctime and sparse maps where POSIX has the prefix: never a path."""
    (tmp_path / "a").write_bytes(b"x")
    block = bytearray(subprocess.run(["tar", "--format=gnu", "-cf", "-", "./a"], cwd=tmp_path,
                                     capture_output=True, check=True).stdout[:512])
    assert block[257:265] == b"ustar  \0"
    block[345:369] = b"%011o\0%011o\0" % (1_700_000_000, 1_700_000_001)  # as --incremental writes them
    block[148:156] = b"%06o\0 " % header_sum(bytes(block))
    member = TarStream(io.BytesIO(bytes(block) + b"x".ljust(512, b"\0") + bytes(1024)).read).next()
    assert member is not None and member.path == b"./a"


@pytest.mark.parametrize(("field", "value"), [
    (b"\x80" + (5).to_bytes(11, "big"), 5),
    (b"\x80" + (2**70).to_bytes(11, "big"), 2**70),
    (b"\xff" * 12, -1),
    (b"\xff" * 8 + (-86400 & 0xFFFFFFFF).to_bytes(4, "big"), -86400),
    (b"00000000017\0", 15),
])
def test_numbers_in_octal_and_gnu_base_256(field: bytes, value: int) -> None:
    assert _tar._octal(field, 0, "mtime") == value


def test_damaged_and_truncated_streams(tmp_path: Path) -> None:
    data = bytearray(_gnu_tar(tmp_path, _tree(tmp_path)))
    bad = bytearray(data)
    bad[0] ^= 1  # first header's name: checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        TarStream(io.BytesIO(bytes(bad)).read).next()
    stream = TarStream(io.BytesIO(bytes(data[:1500])).read)
    with pytest.raises(EOFError):
        while stream.next() is not None:
            while stream.read(1 << 16):
                pass


def test_sha256sum_escaped_names_round_trip(tmp_path: Path) -> None:
    for name in (b"new\nline", b"back\\slash", b"plain name"):
        (tmp_path / os.fsdecode(name)).write_bytes(name)
    out = subprocess.run(["sha256sum", "./new\nline", "./back\\slash", "./plain name"], cwd=tmp_path,
                         capture_output=True, check=True).stdout
    parsed = [_remote.parse_sha256_line(line) for line in out.splitlines()]
    assert [p for p, _ in parsed] == [b"new\nline", b"back\\slash", b"plain name"]


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=999_999_999))
def test_time_parsing_is_exact(seconds: int, nanos: int) -> None:
    text = f"{seconds}.{nanos:09d}".rstrip("0").rstrip(".").encode()
    assert _remote.parse_time_ns(text) == seconds * 10**9 + nanos
    assert _remote.parse_time_ns(f"{seconds}.{nanos:09d}0".encode()) == seconds * 10**9 + nanos


def test_find_records_parse_across_chunk_boundaries() -> None:
    raw = b"f\x00644\x0012\x0099\x001700000000.5000000000\x00\x00./a\nb\x00" \
          b"l\x00777\x003\x00100\x001.0\x00/etc\x00./l\x00"
    for cut in range(len(raw)):
        entries = list(_remote.parse_records([raw[:cut], raw[cut:]]))
        assert [(e.path, e.kind, e.size, e.mode, e.inode, e.link) for e in entries] == [
            (b"a\nb", "f", 12, 0o644, 99, None), (b"l", "l", 3, 0o777, 100, b"/etc")]
        assert entries[0].mtime_ns == 1_700_000_000_500_000_000
