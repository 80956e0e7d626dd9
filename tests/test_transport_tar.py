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

from spoolmig.transport import _remote
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
    return rels


def _gnu_tar(tmp_path: Path, rels: list[bytes]) -> bytes:
    cmd = _remote.tar_command(str(tmp_path))
    return subprocess.run(["/bin/sh", "-c", cmd], input=_remote.stdin_paths(rels + [b"missing"]),
                          capture_output=True, check=False).stdout


def test_reads_gnu_tar_posix_stream_exactly(tmp_path: Path) -> None:
    rels = _tree(tmp_path)
    data = _gnu_tar(tmp_path, rels)
    stream = TarStream(io.BytesIO(data).read, chunk=1000)
    seen = []
    while (m := stream.next()) is not None:
        path = _remote.strip_dot(m.path)
        seen.append(path)
        st = os.lstat(os.path.join(bytes(tmp_path), path))
        if path == b"link":
            assert not m.is_file and m.linkname == b"/etc/passwd"
            continue
        content = b""
        while chunk := stream.read(7):
            content += chunk
        assert content == (tmp_path / os.fsdecode(path)).read_bytes()
        assert (m.size, m.mode, m.mtime_ns) == (st.st_size, st.st_mode & 0o7777, st.st_mtime_ns)
    assert seen == rels, "order kept; the missing file is simply absent"


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
