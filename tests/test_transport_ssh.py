"""SSH-only behaviour against a real sshd: host-key trust, dropped and hung connections, processes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sshd import Sshd, source_config

from spoolmig.errors import HostKeyError, TransportError
from spoolmig.transport import open_source
from spoolmig.transport.base import Fetched, KnownPaths
from spoolmig.transport.local import LocalSource
from spoolmig.transport.ssh import SshSource, _QuickAckSocket, _is_cyrus, _quick_acks


def _source(server: Sshd, **kw: object) -> SshSource:
    kw.setdefault("known_hosts", str(server.known_hosts))
    kw.setdefault("identity_file", str(server.identity_file))
    return SshSource(server.host, server.port, server.user, **kw)  # type: ignore[arg-type]


@pytest.fixture
def up(sshd: Sshd) -> Iterator[Sshd]:
    """The shared server, running before and after the test (tests here stop and kill it)."""
    sshd.start()
    yield sshd
    sshd.start()


# -- host keys -------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_its_fingerprint(up: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as exc:
        _source(up, known_hosts=str(empty))
    message = str(exc.value)
    assert up.fingerprint() in message and "ssh-ed25519" in message and "unknown" in message
    assert f"ssh-keyscan -p {up.port} {up.host}" in (exc.value.hint or "")
    assert exc.value.exit_code == 8


def test_key_known_only_for_port_22_is_unknown_on_another_port(up: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(up.host_key_line().replace(f"[{up.host}]:{up.port}", up.host) + "\n")
    with pytest.raises(HostKeyError, match="unknown"):
        _source(up, known_hosts=str(kh))


def test_changed_host_key_is_refused(up: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{up.host}]:{up.port} {kind} {blob}\n")
    with pytest.raises(HostKeyError) as exc:
        _source(up, known_hosts=str(kh))
    assert "CHANGED" in str(exc.value) and up.fingerprint() in str(exc.value)
    old_fp = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "other.pub")], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    assert old_fp in str(exc.value)


def test_hashed_known_hosts_entry_is_accepted(up: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(up.host_key_line() + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert "|1|" in kh.read_text()
    with _source(up, known_hosts=str(kh)) as source:
        assert source.mode == "shell"


def test_revoked_key_is_refused(up: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(up.host_key_line() + "\n@revoked * " + " ".join(up.host_key_line().split()[1:]) + "\n")
    with pytest.raises(HostKeyError, match="revoked"):
        _source(up, known_hosts=str(kh))


def test_pinned_fingerprint_is_accepted_without_known_hosts(up: Sshd, tmp_path: Path) -> None:
    with _source(up, known_hosts=str(tmp_path / "missing"), host_key_fingerprint=up.fingerprint()) as source:
        assert [e.path for e in source.stat("/", [b""])] == [b""]


def test_wrong_pinned_fingerprint_is_refused(up: Sshd) -> None:
    wrong = "SHA256:" + "A" * 43
    with pytest.raises(HostKeyError) as exc:
        _source(up, host_key_fingerprint=wrong)
    assert up.fingerprint() in str(exc.value) and wrong in str(exc.value)


def test_wrong_client_key_is_an_authentication_error(up: Sshd, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(TransportError, match="authentication refused") as exc:
        _source(up, identity_file=str(key))
    assert not isinstance(exc.value, HostKeyError)


def test_open_source_from_config(up: Sshd, tmp_path: Path) -> None:
    source = open_source(source_config(up))
    try:
        assert isinstance(source, SshSource) and source.describe() == up.url
    finally:
        source.close()
    cfg = source_config(up)
    local = open_source(type(cfg)(url=type(cfg.url)("local", path=str(tmp_path)), layout=cfg.layout))
    assert isinstance(local, LocalSource)


def test_aes_gcm_is_chosen_when_the_server_offers_it(up: Sshd) -> None:
    """One pass per packet instead of CTR plus a separate HMAC (BENCHMARKS.md has the measurement)."""
    source = _source(up)
    try:
        transport = source._live().transport
        assert transport.remote_cipher == "aes128-gcm@openssh.com"
        assert transport.local_cipher == "aes128-gcm@openssh.com"
    finally:
        source.close()


def test_the_connection_sends_small_messages_at_once(up: Sshd) -> None:
    """TCP_NODELAY: a remote command's small messages do not wait for delayed ACKs (~40 ms each command)."""
    import socket

    source = _source(up)
    try:
        sock = source._live().transport.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert isinstance(sock, _QuickAckSocket)  # and the server's small messages never wait for our ACK
        reconnected = source._connect()  # every connection, not only the first
        assert reconnected.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert isinstance(reconnected.transport.sock, _QuickAckSocket)
        chan = reconnected.transport.open_session()  # and paramiko works over it
        chan.exec_command("echo ok")
        assert chan.makefile().read() == b"ok\n" and chan.recv_exit_status() == 0
        reconnected.transport.close()
    finally:
        source.close()


def _quickack(sock: object) -> int:
    import socket

    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)  # type: ignore[attr-defined]


def test_quick_ack_socket_keeps_acknowledging_while_a_plain_one_delays() -> None:
    """After each read the pending ACK goes out at once; a plain socket falls back into delaying them."""
    import socket

    def after_exchanges(wrap: bool) -> list[int]:
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname())
            client.settimeout(5)
            peer, _ = server.accept()
            if wrap:
                client = _quick_acks(client)
                assert client.gettimeout() == 5
            seen = []
            with client, peer:
                for _ in range(5):
                    client.sendall(b"q")
                    peer.recv(1)
                    peer.sendall(b"a")
                    assert client.recv(1) == b"a"
                    seen.append(_quickack(client))
            return seen

    assert after_exchanges(True) == [1] * 5
    assert 0 in after_exchanges(False)  # what the option fights: delayed-ACK mode comes back


def _pair() -> tuple[object, object]:
    """A connected loopback pair: (our reading end as the transport wraps it, the peer)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        client.settimeout(5)
        peer, _ = server.accept()
    return _quick_acks(client), peer


def _queued(sock: object) -> int:
    """Bytes the kernel holds for ``sock`` (FIONREAD)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[arg-type]


def _wait_queued(sock: object, n: int) -> None:
    deadline = time.monotonic() + 5
    while _queued(sock) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _queued(sock) == n


def test_one_read_of_the_kernel_serves_many_of_paramikos() -> None:
    """paramiko asks for a header, then the rest: the first read takes all that is queued."""
    import socket

    client, peer = _pair()
    data = bytes(range(256)) * 40
    with client, peer:  # type: ignore[attr-defined]
        peer.sendall(data)  # type: ignore[attr-defined]
        _wait_queued(client, len(data))
        got = [client.recv(16)]  # type: ignore[attr-defined]
        assert _queued(client) == 0  # the kernel's queue was taken whole
        while sum(map(len, got)) < len(data):
            got.append(client.recv(1000))  # type: ignore[attr-defined]
        assert b"".join(got) == data and len(got) == 1 + -(-(len(data) - 16) // 1000)
        peer.sendall(b"xy")  # type: ignore[attr-defined]
        _wait_queued(client, 2)
        assert client.recv(1) == b"x"  # type: ignore[attr-defined]
        with pytest.raises(OSError, match="read ahead"):  # a peek would see the kernel's queue, not "y"
            client.recv(1, socket.MSG_PEEK)  # type: ignore[attr-defined]
        assert client.recv(1) == b"y"  # type: ignore[attr-defined]


def test_reading_ahead_allocates_nothing_per_read_of_the_kernel() -> None:
    """The read-ahead buffer is the socket's own: a fresh 256 KiB block per read was mapped and faulted in."""
    import tracemalloc

    client, peer = _pair()
    with client, peer:  # type: ignore[attr-defined]
        peer.sendall(b"x")  # type: ignore[attr-defined]
        assert client.recv(1) == b"x"  # type: ignore[attr-defined]
        payload = os.urandom(60_000)
        tracemalloc.start()
        try:
            for _ in range(3):
                peer.sendall(payload)  # type: ignore[attr-defined]
                _wait_queued(client, 60_000)
                assert len(client.recv(16)) == 16  # type: ignore[attr-defined]
                assert _queued(client) == 0  # the kernel's queue was read whole
                assert [len(client.recv(30_000)) for _ in range(2)] == [30_000, 29_984]  # type: ignore[attr-defined]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 40_000  # what was handed out (a 30 kB read at a time), not a buffer per read


@settings(max_examples=40, deadline=None)
@given(sends=st.lists(st.integers(1, 70_000), min_size=1, max_size=8),
       reads=st.lists(st.integers(1, 40_000), min_size=1, max_size=30))
def test_reads_ahead_return_the_stream_as_sent(sends: list[int], reads: list[int]) -> None:
    """Whatever the sizes of the sends and of the reads, the bytes come back in order, none lost."""
    import threading

    client, peer = _pair()
    data = os.urandom(sum(sends))
    with client, peer:  # type: ignore[attr-defined]
        def send() -> None:
            at = 0
            for n in sends:
                peer.sendall(data[at:at + n])  # type: ignore[attr-defined]
                at += n

        sender = threading.Thread(target=send)
        sender.start()
        got, i = bytearray(), 0
        while len(got) < len(data):
            chunk = client.recv(reads[i % len(reads)])  # type: ignore[attr-defined]
            assert 0 < len(chunk) <= reads[i % len(reads)]
            got += chunk
            i += 1
        sender.join()
        assert bytes(got) == data
        peer.close()  # type: ignore[attr-defined]
        assert client.recv(10) == b""  # type: ignore[attr-defined]


def test_nothing_listening_is_a_clean_transport_error(up: Sshd) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportError, match="cannot connect") as exc:
        SshSource("127.0.0.1", port, "root", known_hosts=str(up.known_hosts),
                  identity_file=str(up.identity_file), connect_timeout=2)
    assert exc.value.exit_code == 7


# -- dropped and hung connections -------------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[bytes, bytes]]:
    root = tmp_path_factory.mktemp("many")
    files = {}
    for d in range(30):
        os.makedirs(root / f"d{d}")
        for i in range(100):
            rel = f"d{d}/{i}.".encode()
            data = hashlib.sha256(rel).digest() * (40 + i * 8)
            (root / rel.decode()).write_bytes(data)
            files[rel] = data
    big = root / "big."
    with open(big, "wb") as f:
        for i in range(48):
            f.write(hashlib.sha256(b"%d" % i).digest() * 32768)
    files[b"big."] = big.read_bytes()
    return str(root), files


def _consume(source: SshSource, root: str, paths: list[bytes], files: dict[bytes, bytes],
             at: int, action) -> list[bytes]:  # noqa: ANN001
    out = []
    for i, item in enumerate(source.fetch(root, paths)):
        assert isinstance(item, Fetched)
        if i == at:
            action()
        data = b""
        while chunk := item.read(1 << 16):
            data += chunk
        assert data == files[item.entry.path], item.entry.path
        out.append(item.entry.path)
    return out


def test_fetch_survives_killed_connections(up: Sshd, many: tuple[str, dict[bytes, bytes]]) -> None:
    root, files = many
    paths = sorted(p for p in files if p != b"big.")
    with _source(up, batch_files=200, backoff=0.1) as source:
        got = _consume(source, root, paths, files, 700, up.kill_sessions)
        assert got == paths, "every file once, in order, after the reconnect"
        assert source.reconnects >= 1


def test_large_member_dropped_mid_read_resumes(up: Sshd, many: tuple[str, dict[bytes, bytes]]) -> None:
    root, files = many
    with _source(up, backoff=0.1) as source:
        digest = hashlib.sha256()
        killed = False
        for item in source.fetch(root, [b"big.", b"d0/1."]):
            assert isinstance(item, Fetched)
            n = 0
            while chunk := item.read(1 << 20):
                if item.entry.path == b"big.":
                    digest.update(chunk)
                n += len(chunk)
                if item.entry.path == b"big." and n >= 8 << 20 and not killed:
                    killed = up.kill_sessions() >= 1
            assert n == len(files[item.entry.path])
        assert digest.digest() == hashlib.sha256(files[b"big."]).digest()
        assert killed and source.reconnects >= 1


def test_stat_and_checksum_survive_killed_connections(up: Sshd, many: tuple[str, dict[bytes, bytes]]) -> None:
    root, files = many
    paths = sorted(files)
    with _source(up, batch_files=100, backoff=0.1) as source:
        got = []
        for i, e in enumerate(source.checksum(root, paths)):
            if i == 250:
                up.kill_sessions()
            got.append(e)
        assert got == [(p, hashlib.sha256(files[p]).hexdigest()) for p in paths]
        assert source.reconnects >= 1
        listed = []
        for i, e in enumerate(source.list_dirs(root, [f"d{d}".encode() for d in range(30)])):
            if i == 1000:
                up.kill_sessions()
            listed.append(e.path)
        assert sorted(listed) == sorted(p for p in paths if p != b"big.")


def test_server_staying_down_is_a_clean_transport_error(up: Sshd, many: tuple[str, dict[bytes, bytes]]) -> None:
    root, files = many
    paths = sorted(p for p in files if p != b"big.")
    with _source(up, batch_files=100, retries=2, backoff=0.1, connect_timeout=2) as source:
        with pytest.raises(TransportError) as exc:
            _consume(source, root, paths, files, 300, up.stop)
        assert "not re-established" in str(exc.value) or "lost" in str(exc.value)
        assert not isinstance(exc.value, HostKeyError)


def test_hung_connection_times_out_and_reconnects(up: Sshd, many: tuple[str, dict[bytes, bytes]]) -> None:
    root, files = many
    paths = sorted(p for p in files if p != b"big.")
    stopped: list[int] = []

    def freeze() -> None:
        for pid in up.sshd_session_pids():
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    try:
        with _source(up, batch_files=100, backoff=0.1, io_timeout=2, keepalive=1) as source:
            assert _consume(source, root, paths, files, 150, freeze) == paths
            assert source.reconnects >= 1 and stopped
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- processes --------------------------------------------------------------------


@pytest.mark.parametrize("server", ["sshd", "sftp_only_sshd"])
def test_cyrus_processes_are_listed_with_exact_command_lines(
        request: pytest.FixtureRequest, server: str, tmp_path: Path) -> None:
    srv: Sshd = request.getfixturevalue(server)
    srv.start()
    imapd = tmp_path / "cyrus" / "bin" / "imapd"
    imapd.parent.mkdir(parents=True)
    shutil.copy("/bin/sleep", imapd)
    proc = subprocess.Popen([str(imapd), "61", "1s"])
    try:
        with _source(srv) as source:
            procs = source.cyrus_processes()
        assert f"{imapd} 61 1s" in procs
        assert not any("python" in p for p in procs)
    finally:
        proc.kill()
        proc.wait()


def test_is_cyrus_tells_cyrus_from_postfix() -> None:
    assert _is_cyrus("/usr/lib/cyrus/bin/master -d")
    assert _is_cyrus("/usr/cyrus/bin/imapd -s")
    assert _is_cyrus("lmtpd")
    assert not _is_cyrus("/usr/lib/postfix/sbin/master -w")
    assert not _is_cyrus("/usr/sbin/apache2 -k start")
    assert not _is_cyrus("/usr/sbin/httpd -DFOREGROUND")
    assert _is_cyrus("/usr/lib/cyrus/bin/httpd")


# -- the listing's clock -----------------------------------------------------------


@pytest.mark.parametrize("server", ["sshd", "sftp_only_sshd"])
def test_a_prepared_walk_dates_its_listing_with_the_source_clock(
        server: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``date +%s`` before the walks: the mirror judges directory freshness by it (None without a shell)."""
    srv = request.getfixturevalue(server)
    srv.start()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cyrus.index").write_bytes(b"x")
    root = str(tmp_path)
    with _source(srv) as source:
        before = time.time_ns()
        source.prepare_walks([(root, (b"cyrus.*",), ())])
        listed = [e.path for e in source.walk(root, only_dirs_and=[b"cyrus.*"])]
        after = time.time_ns()
        clock = source.listing_clock(root)
        unprepared = source.listing_clock(root + "/d")
    assert sorted(listed) == [b"", b"d", b"d/cyrus.index"]
    if server == "sshd":
        assert clock is not None and clock % 1_000_000_000 == 0
        assert before // 1_000_000_000 * 1_000_000_000 <= clock <= after  # same machine, same clock
    else:
        assert clock is None
    assert unprepared is None


# -- stats prepared ahead (the incremental listing of known paths) ----------------


@pytest.fixture
def known_trees(tmp_path: Path) -> tuple[str, str, str, list[bytes], list[bytes]]:
    """Two partitions and a config tree; A's known paths include a swapped-in symlink and a vanished dir."""
    a, b, c, outside = tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "outside"
    for d in (a / "d1", a / "h" / "-rf", a / "h" / "new\nline", a / "u", b / "x", c / "user", outside):
        d.mkdir(parents=True)
    for f in (a / "d1" / "cyrus.header", a / "d1" / "cyrus.index", a / "h" / "-rf" / "cyrus.header",
              a / "u" / "cyrus.header", b / "x" / "cyrus.index", c / "mailboxes.db", outside / "cyrus.header"):
        f.write_bytes(b"x" * len(f.name))
    os.symlink(outside, a / "d2")  # was a directory when the state recorded it
    known_a = [b"", b"d1", b"d1/cyrus.header", b"d1/cyrus.index", b"d1/gone", b"d2", b"d2/cyrus.header",
               b"gone", b"gone/cyrus.header", b"h", b"h/-rf", b"h/-rf/cyrus.header", b"h/new\nline",
               b"u/cyrus.header"]  # the last one's directory not asked: stat'ed again, checked
    known_b = [b"", b"x", b"x/cyrus.index"]
    return str(a), str(b), str(c), known_a, known_b


def _answers(got: list) -> list:  # noqa: ANN001
    return [g if isinstance(g, bytes) else (g.path, g.kind, g.size, g.mtime_ns, g.mode, g.inode) for g in got]


def test_prepared_stats_answer_as_the_plain_stat_in_the_one_listing_command(
        up: Sshd, known_trees: tuple[str, str, str, list[bytes], list[bytes]]) -> None:
    a, b, c, known_a, known_b = known_trees
    with _source(up) as plain:
        want_a, want_b = list(plain.stat(a, known_a)), list(plain.stat(b, known_b))
    with _source(up) as source:
        source.prepare_walks([(c, (), ()), KnownPaths(a, lambda: iter(known_a)), KnownPaths(b, lambda: iter(known_b))])
        walked = sorted(e.path for e in source.walk(c))
        got_a, got_b = list(source.stat(a, known_a)), list(source.stat(b, known_b))
        clock = source.listing_clock(b)
        commands = source.commands
    assert walked == [b"", b"mailboxes.db", b"user"]
    assert _answers(got_a) == _answers(want_a) and _answers(got_b) == _answers(want_b)
    by_path = {g if isinstance(g, bytes) else g.path: g for g in got_a}
    assert by_path[b"d2"].kind == "l"
    assert by_path[b"d2/cyrus.header"] == b"d2/cyrus.header", "never read through the swapped-in symlink"
    assert by_path[b"gone/cyrus.header"] == b"gone/cyrus.header" and by_path[b"d1/gone"] == b"d1/gone"
    assert by_path[b"h/-rf/cyrus.header"].size == len(b"cyrus.header")
    assert by_path[b"u/cyrus.header"].kind == "f"
    assert clock is not None
    assert commands == 2, "one listing command, and the check of the path whose directory was not asked"


def test_prepared_stats_taken_out_of_turn_or_not_as_sent(
        up: Sshd, known_trees: tuple[str, str, str, list[bytes], list[bytes]]) -> None:
    a, b, _c, known_a, known_b = known_trees
    with _source(up) as plain:
        want_b = list(plain.stat(b, known_b))
    with _source(up) as source:
        source.prepare_walks([KnownPaths(a, lambda: iter(known_a)), KnownPaths(b, lambda: iter(known_b))])
        assert _answers(list(source.stat(b, known_b))) == _answers(want_b), "A's answers skipped, never asked"
        assert source.commands == 1
    with _source(up) as source:
        source.prepare_walks([KnownPaths(a, lambda: iter(known_a))])
        with pytest.raises(TransportError, match="not the ones sent ahead"):
            list(source.stat(a, [b"", b"d1", b"h"]))


def test_a_prepared_stat_survives_a_killed_connection(up: Sshd, many: tuple[str, dict[bytes, bytes]]) -> None:
    """More answers than the listing window holds, so the kill lands mid-stream: the rest is stat'ed anew."""
    root, files = many
    paths = [p for _ in range(8) for d in range(30)
             for p in [f"d{d}".encode()] + sorted(f for f in files if f.startswith(b"d%d/" % d))]
    with _source(up) as plain:
        want = _answers(list(plain.stat(root, paths)))
    with _source(up, backoff=0.1) as source:
        source.prepare_walks([KnownPaths(root, lambda: iter(paths))])
        got = []
        for i, answer in enumerate(source.stat(root, paths)):
            if i == 1000:
                assert up.kill_sessions() >= 1
            got.append(answer)
        assert source.reconnects >= 1
    assert _answers(got) == want


def test_a_channel_closing_during_a_key_exchange_does_not_hang_the_connection(up: Sshd, tmp_path: Path) -> None:
    """paramiko renegotiates keys every 512 MiB; a command ending meanwhile stalled it 30 s, then killed it.

    Here it renegotiates every 64 KiB (each tar stream below is ~300 KB), and
    a stall fails the connection within 3 s instead of 30: every fetch must
    go through on the first connection.
    """
    for i in range(6):
        (tmp_path / f"m{i}").write_bytes(bytes([i]) * 50_000)
    source = _source(up)
    try:
        transport = source._live().transport
        transport.packetizer.REKEY_BYTES = 64 * 1024
        transport.clear_to_send_timeout = 3.0
        for _ in range(6):
            fetched = source.fetch(str(tmp_path), [f"m{i}".encode() for i in range(6)])
            got = {f.entry.path: f.read(1 << 20) for f in fetched if not isinstance(f, bytes)}
            assert got == {f"m{i}".encode(): bytes([i]) * 50_000 for i in range(6)}
        assert transport.is_active() and source.reconnects == 0
    finally:
        source.close()


@pytest.mark.parametrize("prepared", [False, True])
def test_thousands_of_vanished_paths_are_answered_vanished_not_an_error(
        up: Sshd, tmp_path: Path, prepared: bool) -> None:
    """find notes each vanished path on stderr (here ~200 KB of it, past what is kept): still no error."""
    root = tmp_path / "p"
    (root / "d").mkdir(parents=True)
    (root / "d" / "cyrus.index").write_bytes(b"x")
    gone = [b"d/%s-%04d.seen" % (b"gone" * 20, i) for i in range(1500)]
    paths = [b"", b"d", b"d/cyrus.index", *gone]
    with _source(up) as source:
        if prepared:
            source.prepare_walks([KnownPaths(str(root), lambda: iter(paths))])
        got = list(source.stat(str(root), paths))
    assert [g.path for g in got[:3]] == [b"", b"d", b"d/cyrus.index"]
    assert got[3:] == gone
