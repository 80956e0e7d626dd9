"""The SSH source: one paramiko connection, streamed remote commands, SFTP as the fallback.

The only module that imports paramiko. Why it is shaped this way:

* Per-file SFTP round trips are the enemy (anchors.md 5.2). A whole tree is
  listed by one streamed ``find -printf``, and the known paths an incremental
  pass stats go out with the walks, in the same command
  (:meth:`SshSource.prepare_walks`); files arrive as one POSIX tar
  stream per batch over one channel, and the next batch's command is started
  before the current one is parsed, so its start-up latency overlaps the
  transfer. Lists of paths travel on the remote command's stdin,
  NUL-separated (see :mod:`._remote`).
* Trust fails closed: the host key must be in ``known_hosts`` (``[host]:port``
  for other ports) or match a pinned ``SHA256:`` fingerprint; anything else is
  a :class:`HostKeyError` showing the offered key, never an auto-accept.
* Every wait is bounded (connect, banner, auth, channel open, each read) and
  a keepalive runs. A dropped connection is re-established with backoff and
  the operation resumes from the first item not yet delivered; only a walk
  that already yielded entries cannot resume (its pass must be re-run).
* When the account has no usable shell, or the remote tools are not GNU
  (``find`` without ``-printf``: old Solaris), everything goes over SFTP,
  with mtimes in whole seconds (SFTP v3 carries no nanoseconds or inodes):
  see :mod:`._sftp`, which this module hands the connection, the retry policy
  and the paramiko-specific pieces.
"""

from __future__ import annotations

import base64
import functools
import getpass
import hashlib
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

# paramiko.config imports ``invoke`` when it is installed (only for ssh_config "Match exec", unused
# here): a tenth of a second of every pass's start-up. Hide it while paramiko loads.
_HIDE_INVOKE = "invoke" not in sys.modules
if _HIDE_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]
try:
    import paramiko
finally:
    if _HIDE_INVOKE and sys.modules.get("invoke", False) is None:
        del sys.modules["invoke"]
from paramiko.buffered_pipe import BufferedPipe
from paramiko.common import MSG_CHANNEL_CLOSE
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_OPENDIR, CMD_READDIR
from paramiko.sftp_attr import SFTPAttributes

from spoolmig.errors import HostKeyError, TransportError
from spoolmig.transport import _remote
from spoolmig.transport._fifo import ByteFifo
from spoolmig.transport._prepared import PreparedStat, stat_args
from spoolmig.transport._common import check_relpath, check_root, glob_matcher
from spoolmig.transport._common import BUFFER_LIMIT, MiB, buffered, show
from spoolmig.transport._common import Lost as _Lost
from spoolmig.transport._sftp import SftpReader
from spoolmig.transport._tar import TarFormatError, TarStream
from spoolmig.transport.base import Entry, Fetched, KnownPaths, Names, Walk, changed_only

if TYPE_CHECKING:
    from spoolmig.config import SourceConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Bytes of NUL-separated paths sent on one command's stdin: well under
#: OpenSSH's 2 MiB channel window, so sending never waits for the reader.
_STDIN_LIMIT = 512 * 1024
#: Receive window and packet size we offer. Packets of 256 KiB instead of paramiko's 32 KiB: the
#: Python cost is per packet. The window stays 2 MiB: 16 MiB was no faster on a 52k-file first copy
#: and held up to 32 MiB more per fetching process (two channels in flight each).
_WINDOW = 2 * MiB
_MAX_PACKET = 256 * 1024
#: Ciphers tried first when the server offers them: AES-GCM is one pass (no separate HMAC per
#: packet, which paramiko computes in Python); measured ~25 % less client CPU and ~30 % more
#: throughput than paramiko's default aes128-ctr + hmac-sha2-256 on a 1 GiB tar over loopback.
_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
#: Receive window of the one command that lists every tree: bounds what waits in memory for later trees.
_PREPARED_WINDOW = 2 * MiB


class _ChunkPipe(BufferedPipe):
    """A channel's receive buffer without paramiko's per-read shifting (see :mod:`._fifo`).

    A read returns at most the oldest packet's data, as it came: asked for
    2 MiB with 2 MiB waiting, the plain buffer joined ~40 packets into a new
    2 MiB object, and a block that large comes from fresh pages (glibc maps
    it, and frees it back), so a first copy spent a tenth of its CPU in page
    faults (732k faults for a 1.2 GB partition). Readers loop anyway: a
    ``recv`` may return less than it was asked for.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = ByteFifo()  # type: ignore[assignment]

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer.append(data)  # type: ignore[attr-defined]

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        return self._buffer.peek(limit)  # type: ignore[attr-defined,no-any-return]

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        # Only this channel's one reader takes from the front, and feeding appends at the back,
        # so the first chunk measured here is the one paramiko's read hands out. When the buffer
        # is empty, that read waits, and takes up to nbytes of what arrived (usually one packet).
        first = self._buffer.first_size()  # type: ignore[attr-defined]
        return super().read(min(nbytes, first) if first else nbytes, timeout)  # type: ignore[no-any-return]


#: Bytes one read of the SSH socket asks the kernel for (:class:`_QuickAckSocket`).
READ_AHEAD = 256 * 1024


class _QuickAckSocket(socket.socket):
    """A TCP socket that reads ahead and acknowledges every read at once (Linux ``TCP_QUICKACK``).

    OpenSSH's sshd leaves Nagle's algorithm on for non-interactive sessions, so
    when it sends two small packets in a row (after login: the hostkeys-00
    notice and a debug message, then the channel-open confirmation) the second
    waits until we acknowledge the first, and Linux delays that ACK by 40 ms
    while we have nothing to send. Measured: 44 ms to open the first channel,
    2–3 ms with this. The kernel re-enters delayed-ACK mode by itself, hence
    the option again after every read of the kernel's queue.

    paramiko reads a packet's exact length, header first (four reads per
    packet of a copy, each a poll and a recv that let go of the GIL): one
    read takes what the kernel has, up to :data:`READ_AHEAD`, and the next
    reads are served from it. It reads into one buffer kept for the socket's
    life: a new 256 KiB ``bytes`` per read is a block glibc maps afresh, and
    the page faults of filling it cost more than the copies out.
    """

    _ahead: memoryview | None = None
    _at = _end = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        at, end = self._at, self._end
        if at < end:
            if flags:
                raise OSError(f"recv with flags {flags:#x} while {end - at} bytes were read ahead")
            n = min(bufsize, end - at)
            self._at = at + n
            return bytes(self._ahead[at:at + n])  # type: ignore[index]
        if flags or bufsize >= READ_AHEAD:
            data = super().recv(bufsize, flags)
        else:
            if self._ahead is None:
                self._ahead = memoryview(bytearray(READ_AHEAD))
            got = self.recv_into(self._ahead)
            n = min(bufsize, got)
            self._at, self._end = n, got
            data = bytes(self._ahead[:n])
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _quick_acks(sock: socket.socket) -> socket.socket:
    """``sock`` as a :class:`_QuickAckSocket` where the system has ``TCP_QUICKACK`` (Linux)."""
    if not hasattr(socket, "TCP_QUICKACK") or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    timeout = sock.gettimeout()
    quick = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    quick.settimeout(timeout)
    return quick


def _closes_never_wait_for_kex(transport: paramiko.Transport) -> None:
    """Answer the server's channel close without blocking paramiko's reader on a key exchange.

    paramiko renegotiates keys every 512 MiB received, and while it does, a
    message to send waits until the exchange is done. When a command's
    channel closes in that moment, paramiko's own thread (the one that reads
    the server's key exchange messages) sends the answering close and waits
    for itself: 30 s, then the connection dies (paramiko issue #822). By hand
    it stalled one first copy of a 1.2 GB partition in twelve by 30 s. Here
    the close is answered by a short-lived thread of its own when a key
    exchange is under way.
    """
    table = dict(getattr(transport, "_channel_handler_table", {}))  # this transport's, not the class's
    if MSG_CHANNEL_CLOSE not in table:  # a paramiko built otherwise: left as it is (the test says if it hangs)
        return
    send = transport._send_user_message

    def send_all(messages: list[paramiko.Message]) -> None:
        try:
            for message in messages:
                send(message)
        except (paramiko.SSHException, EOFError, OSError) as error:  # the connection is going anyway
            log.debug("closing a channel: %s", error)

    def handle_close(chan: paramiko.Channel, m: paramiko.Message) -> None:
        with chan.lock:  # as paramiko's Channel._handle_close, but for where its answer is sent
            messages = [x for x in chan._close_internal() if x is not None]
            transport._unlink_channel(chan.chanid)
        if not messages:
            return
        if transport.clear_to_send.is_set():  # this thread alone starts an exchange: no race
            send_all(messages)
        else:
            threading.Thread(target=send_all, args=(messages,), name="ssh-close", daemon=True).start()

    table[MSG_CHANNEL_CLOSE] = handle_close
    transport._channel_handler_table = table


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:<base64>`` of a key, as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _norm_fp(text: str) -> str:
    text = text.strip()
    if not text.upper().startswith("SHA256:"):
        raise TransportError(f"host_key_fingerprint {text!r} must look like SHA256:<base64>")
    return "SHA256:" + text[7:].rstrip("=")


@dataclass
class _Conn:
    """One live connection and what the remote account can do."""

    transport: paramiko.Transport
    generation: int
    shell: bool = False  # GNU find -printf and xargs -0 work
    tar: bool = False
    sha256sum: bool = False
    head: bool = False  # GNU head -c reads exactly: the symlink check rides in the command it protects
    files0: bool = False  # find reads its paths itself (-files0-from): no xargs and shell per command
    #: The capability probe's channel until its answer has been read (it runs alongside the first commands).
    probe: paramiko.Channel | None = None
    #: Not probed yet: the first command (prepare_walks) may carry the probe.
    unprobed: bool = False
    _sftp: paramiko.SFTPClient | None = None

    def sftp(self, timeout: float) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = paramiko.SFTPClient.from_transport(self.transport)
            if self._sftp is None:
                raise _Lost("cannot open an SFTP channel")
            self._sftp.get_channel().settimeout(timeout)
        return self._sftp

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
        self.transport.close()


class _Combined:
    """The output of :func:`_remote.sections_command`, read section by section, in order."""

    def __init__(self, source: SshSource, chan: paramiko.Channel, generation: int,
                 recv: Callable[[int], bytes], errbuf: bytearray, rest: bytes = b"") -> None:
        self.source, self.chan, self.generation = source, chan, generation
        self.errbuf = errbuf
        chunks = itertools.chain((rest,), iter(lambda: recv(1 << 18), b""))
        self.records = _remote.parse_records(chunks, sections=True)
        self.pos = 0  # index of the section the stream is in
        #: The source's clock (ns) before the walks began, once its record was read; None: unknown.
        self.clock: int | None = None

    def section(self, index: int, what: str) -> Iterator[Entry]:
        try:
            for record in self.records:
                if type(record) is int:  # a run of "unchanged" stat answers
                    if self.pos == index:
                        yield record  # type: ignore[misc]
                    continue
                if not isinstance(record, (Entry, Names)):  # (index, status): a section ends
                    done, status = record
                    if done == _remote.CLOCK_SECTION:
                        self.clock = status * 1_000_000_000 if status >= 0 else None
                        continue
                    self.pos += 1
                    if done == index:
                        self.source._check(what, status, bytes(self.errbuf))
                        if done == self.source._last_section(self):
                            _quiet_close(self.chan)
                        return
                elif self.pos == index:
                    yield record
        except ValueError as error:
            raise _Lost(str(error)) from None
        raise _Lost("the listing ended early")


@dataclass
class _Pending:
    """A command started with the directory-symlink check folded in; its first byte is the check's answer."""

    chan: paramiko.Channel
    paths: list[bytes]
    command: Callable[..., str]
    root: str

    def close(self) -> None:
        self.chan.close()


class SshSource:
    """A Cyrus server reached over SSH, read-only; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int = 22,
        user: str | None = None,
        *,
        known_hosts: str = "~/.ssh/known_hosts",
        identity_file: str | None = None,
        host_key_fingerprint: str | None = None,
        connect_timeout: float = 20.0,
        io_timeout: float = 120.0,
        keepalive: int = 15,
        retries: int = 5,
        backoff: float = 1.0,
        batch_files: int = 10000,
        batch_bytes: int = 256 * MiB,
        large_file: int = 64 * MiB,
        force_sftp: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.user = user or getpass.getuser()
        self.known_hosts = os.path.expanduser(known_hosts)
        self.identity_file = os.path.expanduser(identity_file) if identity_file else None
        self.pinned = _norm_fp(host_key_fingerprint) if host_key_fingerprint else None
        self.connect_timeout, self.io_timeout = connect_timeout, io_timeout
        self.keepalive, self.retries, self.backoff = keepalive, retries, backoff
        self.batch_files, self.batch_bytes, self.large_file = batch_files, batch_bytes, large_file
        self.force_sftp = force_sftp
        self._conn: _Conn | None = None
        self._generation = 0
        self.reconnects = 0  # how many times a dropped connection was re-established
        #: Walks started ahead by :meth:`prepare_walks`: key -> (their one command, section index).
        self._prepared: dict[tuple[Any, ...], tuple[_Combined, int]] = {}
        #: Stats started ahead by :meth:`prepare_walks`: root -> the section its answers are in.
        self._stats: dict[str, PreparedStat] = {}
        self._clocks: dict[str, int | None] = {}
        #: Remote commands started on this source (tests count them; a pass should need few).
        self.commands = 0
        #: The fallback when the account has no usable shell (see :mod:`._sftp`).
        self._sftp = SftpReader(self.describe(), io_timeout=io_timeout, retries=retries, live=self._live,
                                reconnect=self._reconnect, connected=self._connected, readdir=_readdir,
                                ssh_error=paramiko.SSHException)
        try:
            self._connect(wait_probe=False)
        except _Lost as error:
            raise TransportError(str(error), hint="is the host reachable and sshd running?") from None

    @classmethod
    def from_config(cls, cfg: SourceConfig, **options: Any) -> SshSource:
        url = cfg.url
        return cls(url.host, url.port, url.user, known_hosts=cfg.known_hosts,
                   identity_file=cfg.identity_file, host_key_fingerprint=cfg.host_key_fingerprint,
                   **options)

    def describe(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        """``"shell"`` (streamed commands) or ``"sftp"`` (the fallback)."""
        return "shell" if self._live().shell else "sftp"

    # -- connection ---------------------------------------------------------

    def _connect(self, wait_probe: bool = True) -> _Conn:
        where = self.describe()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as error:
            raise _Lost(f"{where}: cannot connect: {error.strerror or error}") from None
        # Every remote command is a few small messages each way (channel open, exec, EOF, status,
        # close): with Nagle's algorithm on, each waits for the peer's delayed ACK (~40 ms per command).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = _quick_acks(sock)  # and the server's Nagle never waits for our delayed ACK
        transport = paramiko.Transport(sock, default_window_size=_WINDOW, default_max_packet_size=_MAX_PACKET)
        _closes_never_wait_for_kex(transport)
        try:
            transport.banner_timeout = self.connect_timeout
            transport.handshake_timeout = self.connect_timeout
            transport.auth_timeout = self.connect_timeout
            opts = transport.get_security_options()
            opts.ciphers = _prefer(opts.ciphers, _FAST_CIPHERS)
            known_types = self._known_key_types()
            if known_types and not self.pinned:
                opts.key_types = _prefer(opts.key_types, [t for t in opts.key_types if _key_family(t) in known_types])
            try:
                transport.start_client(timeout=self.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as error:
                raise _Lost(f"{where}: SSH handshake failed: {error}") from None
            self._verify_host_key(transport.get_remote_server_key())
            self._authenticate(transport)
            transport.set_keepalive(self.keepalive)
        except BaseException:
            transport.close()
            raise
        self._generation += 1
        conn = _Conn(transport, self._generation)
        self._conn = conn
        if not self.force_sftp:
            if wait_probe:
                self._start_probe(conn)
                self._finish_probe(conn)
            else:
                conn.unprobed = True
        log.debug("connected to %s", where)
        return conn

    def _live(self) -> _Conn:
        conn = self._conn
        if conn is None or not conn.transport.is_active():
            conn = self._reconnect(None)
        if conn.probe is not None or conn.unprobed:
            try:
                if conn.unprobed:
                    conn.unprobed = False
                    self._start_probe(conn)
                self._finish_probe(conn)
            except _Lost as error:
                conn = self._reconnect(conn, str(error))
        return conn

    def _reconnect(self, failed: _Conn | None, why: str = "connection lost") -> _Conn:
        """Re-establish the connection with exponential backoff (unless already done)."""
        if failed is not None and self._conn is not None and self._conn is not failed \
                and self._conn.transport.is_active():
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        delay = self.backoff
        last = why
        for attempt in range(1, self.retries + 1):
            log.warning("%s: %s; reconnecting (attempt %d of %d) in %.1fs",
                        self.describe(), last, attempt, self.retries, delay)
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
            try:
                conn = self._connect()
            except _Lost as error:
                last = str(error)
                continue
            self.reconnects += 1
            return conn
        raise TransportError(f"{self.describe()}: connection lost and not re-established after "
                             f"{self.retries} attempts: {last}",
                             hint="check the network and the source's sshd, then run the pass again")

    def _connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.transport.is_active()

    def _known_key_types(self) -> set[str]:
        entry = self._host_keys()[0].lookup(self._host_key_name())
        return {_key_family(t) for t in entry.keys()} if entry else set()

    def _host_key_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _host_keys(self) -> tuple[paramiko.HostKeys, set[bytes]]:
        """known_hosts entries and the blobs of ``@revoked`` keys."""
        keys = paramiko.HostKeys()
        revoked: set[bytes] = set()
        try:
            with open(self.known_hosts, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return keys, revoked
        except OSError as error:
            raise HostKeyError(f"{self.known_hosts}: cannot read known_hosts: {error.strerror}") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                fields = line.split()
                if fields[0] == "@revoked" and len(fields) >= 4:
                    try:
                        revoked.add(base64.b64decode(fields[3]))
                    except ValueError:
                        pass
                continue  # @cert-authority: certificates are not supported, never trusted
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            except Exception:  # noqa: BLE001 - a malformed line is skipped, as OpenSSH does
                entry = None
            if entry is None:
                continue
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)
        return keys, revoked

    def _verify_host_key(self, key: paramiko.PKey) -> None:
        offered, fp = key.get_name(), fingerprint(key)
        where = self.describe()
        trust_hint = (f"verify {fp} with the server's administrator (on the server: ssh-keygen -lf "
                      f"/etc/ssh/ssh_host_*_key.pub), then run: ssh-keyscan -p {self.port} {self.host} "
                      f">> {self.known_hosts}   (or set host_key_fingerprint = \"{fp}\" in [source])")
        if self.pinned is not None:
            if fp != self.pinned:
                raise HostKeyError(f"{where}: host key mismatch: the server offered {offered} {fp}, "
                                   f"the configuration pins {self.pinned}",
                                   hint="if the server's key really changed, verify it and update "
                                        "host_key_fingerprint in [source]")
            return
        known, revoked = self._host_keys()
        if key.asbytes() in revoked:
            raise HostKeyError(f"{where}: the server offered {offered} {fp}, which {self.known_hosts} "
                               "marks @revoked")
        name = self._host_key_name()
        entry = known.lookup(name)
        if entry is None:
            raise HostKeyError(f"{where}: host key unknown: the server offered {offered} {fp}; "
                               f"{name} is not in {self.known_hosts}", hint=trust_hint)
        expected = entry.get(offered)
        if expected is not None and expected.asbytes() == key.asbytes():
            return
        have = ", ".join(f"{t} {fingerprint(k)}" for t, k in entry.items())
        raise HostKeyError(
            f"{where}: HOST KEY CHANGED: the server offered {offered} {fp}, but {self.known_hosts} "
            f"has {have} for {name}; refusing (a man-in-the-middle is possible)",
            hint=f"if the change is expected, verify the new key, then run: ssh-keygen -R '{name}' "
                 f"-f {self.known_hosts}; ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}")

    def _authenticate(self, transport: paramiko.Transport) -> None:
        where = f"{self.user}@{self.host}:{self.port}"
        keys: list[paramiko.PKey] = []
        if self.identity_file:
            try:
                keys.append(paramiko.PKey.from_path(self.identity_file))
            except FileNotFoundError:
                raise TransportError(f"{self.identity_file}: identity file not found") from None
            except paramiko.PasswordRequiredException:
                raise TransportError(f"{self.identity_file}: identity file is passphrase-protected",
                                     hint="load it into ssh-agent and leave identity_file unset") from None
            except (paramiko.SSHException, OSError, ValueError) as error:
                raise TransportError(f"{self.identity_file}: cannot load identity file: {error}") from None
        else:
            try:
                keys.extend(paramiko.Agent().get_keys())
            except paramiko.SSHException:
                pass
            for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
                path = os.path.expanduser(f"~/.ssh/{name}")
                if os.path.exists(path):
                    try:
                        keys.append(paramiko.PKey.from_path(path))
                    except (paramiko.SSHException, OSError, ValueError):
                        continue
        if not keys:
            raise TransportError(f"{where}: no key to authenticate with",
                                 hint="set identity_file in [source] or add a key to ssh-agent")
        for key in keys:
            try:
                transport.auth_publickey(self.user, key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError) as error:
                raise _Lost(f"{where}: authentication interrupted: {error}") from None
            if transport.is_authenticated():
                return
        raise TransportError(f"{where}: authentication refused for every key offered",
                             hint="is the public key in the server's authorized_keys?")

    def _start_probe(self, conn: _Conn) -> None:
        """Start finding out, once per connection, whether GNU find/xargs/tar/sha256sum can be run.

        The answer is read when first needed (:meth:`_live`), so the probe's
        start-up cost overlaps with the walks :meth:`prepare_walks` starts.
        """
        try:
            conn.probe = self._open(conn, _remote.PROBE, None)
        except (_Lost, TransportError):
            if not conn.transport.is_active():
                raise
            self._capabilities(conn, b"")  # exec refused: fall back

    def _finish_probe(self, conn: _Conn) -> None:
        chan, conn.probe = conn.probe, None
        if chan is None:
            return
        try:
            out, _err, _status = self._collect(chan, limit=4096)
        except (_Lost, TransportError):
            if not conn.transport.is_active():
                raise
            out = b""  # the "shell" is an SFTP server: fall back
        self._capabilities(conn, out)

    def _capabilities(self, conn: _Conn, out: bytes) -> None:
        lines = set(out.split(b"\n"))
        conn.shell = b"Pd" in lines and b"Xa" in lines and b"E" in lines
        conn.tar = conn.shell and b"T" in lines
        conn.sha256sum = conn.shell and b"S" in lines
        conn.head = conn.shell and b"H" in lines
        conn.files0 = conn.shell and b"F" in lines

    # -- channels -----------------------------------------------------------

    def _open(self, conn: _Conn, command: str, stdin: bytes | None, window: int | None = None,
              background: bool = False) -> paramiko.Channel:
        """Start ``command``; send all of ``stdin`` then EOF.

        Sent here, ``stdin`` must fit the remote's window (:data:`_STDIN_LIMIT`);
        with ``background`` a thread sends it, for a command that reads its
        stdin only after the caller has read some of its output, and with
        ``background`` and no ``stdin`` the caller sends it (:func:`_send_behind`)
        once it has it: the command starts up on the source meanwhile.
        """
        try:
            chan = conn.transport.open_session(window_size=window, timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as error:
            raise _Lost(f"cannot open a channel: {error}") from None
        self.commands += 1
        chan.in_buffer = _ChunkPipe()
        try:
            chan.settimeout(self.io_timeout)
            chan.exec_command(command)
            if background:
                if stdin is not None:
                    _send_behind(chan, stdin)
            else:
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as error:
            _quiet_close(chan)
            if not conn.transport.is_active():
                raise _Lost(f"connection lost starting a command: {error}") from None
            raise TransportError(f"{self.describe()}: the server refused to run a command: {error}") \
                from None
        return chan

    def _recv(self, chan: paramiko.Channel, errbuf: bytearray) -> Callable[[int], bytes]:
        """A ``recv(n)`` that drains stderr (so it never blocks the remote) and maps failures."""

        def recv(n: int) -> bytes:
            try:
                data = chan.recv(n)
                while chan.recv_stderr_ready():
                    _remote.add_stderr(errbuf, chan.recv_stderr(65536))
            except socket.timeout:
                raise _Lost(f"no data from the source for {self.io_timeout:.0f}s") from None
            except (paramiko.SSHException, EOFError, OSError) as error:
                raise _Lost(str(error)) from None
            if not data:
                self._finish(chan, errbuf)
            return data

        return recv

    def _finish(self, chan: paramiko.Channel, errbuf: bytearray) -> int:
        """After stdout's EOF: collect stderr and the exit status; a missing status means lost."""
        deadline = time.monotonic() + self.io_timeout
        while not chan.status_event.is_set():
            if time.monotonic() > deadline:
                raise _Lost("the remote command did not finish")
            chan.status_event.wait(0.2)
        try:
            while chan.recv_stderr_ready():
                _remote.add_stderr(errbuf, chan.recv_stderr(65536))
        except (socket.timeout, OSError, EOFError):
            pass
        status = chan.exit_status
        transport = chan.get_transport()
        if status == -1 and (transport is None or not transport.is_active() or chan.closed):
            raise _Lost("the connection closed before the command finished")
        return status

    def _run(self, conn: _Conn, command: str, stdin: bytes, limit: int | None = None
             ) -> tuple[bytes, bytes, int]:
        """Run a short command to completion: (stdout, stderr, exit status)."""
        return self._collect(self._open(conn, command, stdin), limit)

    def _collect(self, chan: paramiko.Channel, limit: int | None = None) -> tuple[bytes, bytes, int]:
        """Read a started command to completion: (stdout, stderr, exit status)."""
        errbuf = bytearray()
        recv = self._recv(chan, errbuf)
        out = bytearray()
        try:
            while chunk := recv(65536):
                out += chunk
                if limit is not None and len(out) > limit:
                    break
            status = chan.exit_status if chan.status_event.is_set() else -1
        finally:
            _quiet_close(chan)
        return bytes(out), bytes(errbuf), status

    def _check(self, what: str, status: int, errbuf: bytes) -> None:
        """Fail on a real error; files that vanished or changed under us are not errors."""
        if status == _remote.EXIT_NO_ROOT:
            raise TransportError(f"{self.describe()}: {what}: cannot enter the directory on the source")
        if status in (0, -1):
            return
        line = _remote.fatal_stderr(errbuf)
        if line is not None:
            raise TransportError(f"{self.describe()}: {what} failed on the source: {line}")

    def _safe(self, conn: _Conn, root: str, paths: list[bytes]) -> list[bytes]:
        """Drop paths below an ancestor that is no longer a real directory.

        The kernel follows a symlink in the middle of a path, so a directory
        swapped for a link since the listing could lead outside the tree;
        such paths are then reported as vanished, never read. (A swap racing
        this check is not covered: that needs root on the source.)
        """
        prefixes = _remote.ancestors(paths)
        if not prefixes:
            return paths
        out, err, status = self._run(conn, _remote.not_dirs_command(root, files0=conn.files0),
                                     _remote.stdin_paths(prefixes))
        self._check(f"checking directories in {root}", status, err)
        bad = {_remote.strip_dot(p) for p in out.split(b"\0") if p}
        return [p for p in paths if not _remote.under(p, bad)] if bad else paths

    def _start(self, command: Callable[..., str], root: str) -> Callable[[_Conn, list[Any]], Any]:
        """Start ``command(root)`` on a batch, the directory-symlink check folded in when the source can.

        Folded, the command's output starts with one byte saying whether the
        check passed; :meth:`_checked` reads it before the batch is parsed. On
        the rare failure the batch is run again the old way: the check as its
        own command, then the command on the paths it leaves.
        """
        def start(conn: _Conn, batch: list[Any]) -> Any:
            paths = [i.path if isinstance(i, Entry) else i for i in batch]
            if not conn.head:
                return self._open(conn, command(root, files0=conn.files0),
                                  _remote.stdin_paths(self._safe(conn, root, paths)))
            prefixes = _remote.ancestors(paths)
            pre = _remote.stdin_paths(prefixes) if prefixes else b""
            chan = self._open(conn, command(root, len(pre), files0=conn.files0), pre + _remote.stdin_paths(paths))
            return _Pending(chan, paths, command, root)
        return start

    def _checked(self, conn: _Conn, pending: _Pending) -> paramiko.Channel:
        """Read a folded check's answer; on a failed check, redo the batch with the check apart."""
        chan = pending.chan
        try:
            head = chan.recv(1)
        except socket.timeout:
            _quiet_close(chan)
            raise _Lost(f"no data from the source for {self.io_timeout:.0f}s") from None
        except (paramiko.SSHException, EOFError, OSError) as error:
            _quiet_close(chan)
            raise _Lost(str(error)) from None
        if head in (_remote.CHECK_OK, b""):  # b"": the root is missing or could not be entered
            return chan
        _quiet_close(chan)
        if head != _remote.CHECK_BAD:
            raise TransportError(f"{self.describe()}: unexpected answer {head!r} from a command in {pending.root}")
        safe = self._safe(conn, pending.root, pending.paths)
        return self._open(conn, pending.command(pending.root, files0=conn.files0), _remote.stdin_paths(safe))

    # -- the resumable, pipelined batch driver ------------------------------

    def _batches(self, items: Iterable[T], path_of: Callable[[T], bytes],
                 size_of: Callable[[T], int] | None = None) -> Iterator[list[T]]:
        batch: list[T] = []
        nbytes = nsize = 0
        for item in items:
            path = path_of(item)
            check_relpath(path)
            batch.append(item)
            nbytes += len(path) + 3
            nsize += size_of(item) if size_of else 0
            if len(batch) >= self.batch_files or nbytes >= _STDIN_LIMIT or nsize >= self.batch_bytes:
                yield batch
                batch, nbytes, nsize = [], 0, 0
        if batch:
            yield batch

    def _drive(
        self,
        batches: Iterator[list[T]],
        start: Callable[[_Conn, list[T]], Any],
        parse: Callable[[_Conn, Any, list[T]], Iterator[tuple[int, Any]]],
        key: Callable[[Any], bytes],
    ) -> Iterator[Any]:
        """Run ``start``/``parse`` per batch, the next batch started before this one is parsed.

        ``parse`` yields ``(index in the sub-list, value)`` in input order. On a
        lost connection the batch is redone from the first item not known to be
        complete, skipping values (by ``key``) already yielded for that item.
        """
        nxt: tuple[list[T], Any, int] | None = None  # (batch, started handle, generation)
        try:
            pending = next(batches, None)
            while pending is not None:
                batch, done, seen = pending, 0, set()
                pending = None
                attempts = 0
                while True:
                    conn = self._live()
                    try:
                        if nxt is not None and nxt[0] is batch and nxt[2] == conn.generation and done == 0:
                            handle = nxt[1]
                        else:
                            handle = start(conn, batch[done:])
                        nxt = None
                        if pending is None:
                            pending = next(batches, None)
                        if pending is not None:
                            nxt = (pending, start(conn, pending), conn.generation)
                        if isinstance(handle, _Pending):
                            handle = self._checked(conn, handle)
                        base = current = done
                        for idx, value in parse(conn, handle, batch[base:]):
                            if base + idx != current:
                                current, seen = base + idx, set()
                            done = current
                            k = key(value)
                            if k in seen:
                                continue
                            seen.add(k)
                            yield value
                        break
                    except _Lost as error:
                        attempts += 1
                        if attempts > self.retries:
                            raise TransportError(f"{self.describe()}: {error}") from None
                        nxt = None
                        self._reconnect(conn, str(error))
        finally:
            if nxt is not None and nxt[1] is not None:
                _quiet_close(nxt[1])

    # -- listing ------------------------------------------------------------

    def walk(
        self, root: str, *, only_dirs_and: Iterable[bytes] = (), prune: Iterable[bytes] = (),
        since: int | None = None,
    ) -> Iterator[Entry]:
        """One streamed ``find``, or an SFTP walk; resumable only until the first entry.

        Only a walk :meth:`prepare_walks` started leaves out what did not change
        ``since``: its command dates it (:meth:`listing_clock`).
        """
        root = check_root(root)
        self._clocks.pop(root, None)
        key = _walk_key(Walk(root, tuple(only_dirs_and), tuple(prune), since))
        yielded = False
        attempts = 0
        while True:
            conn = self._live()
            try:
                if conn.shell:
                    it = self._walk_shell(conn, key)
                else:
                    it = self._sftp.walk(conn, root, glob_matcher(key[1]), set(key[2]))
                for entry in it:
                    yielded = True
                    yield entry
                return
            except _Lost as error:
                attempts += 1
                if yielded or attempts > self.retries:
                    raise TransportError(f"{self.describe()}: connection lost while listing {root}: {error}",
                                         hint="run the pass again; it resumes from what was copied") from None
                self._reconnect(conn, str(error))

    def prepare_walks(self, walks: Iterable[Walk | KnownPaths]) -> None:
        """Start now, as one remote command, the listings that will be asked for, in this order.

        A :class:`Walk` is a :meth:`walk` to come, with its arguments; a
        :class:`KnownPaths` is a :meth:`stat` to come. Every remote command has
        a fixed start-up cost (login shell, rc files): one command for all
        trees pays it once, and it runs while the capability probe does. The
        output waits in the channel's window until :meth:`walk` or
        :meth:`stat` reads it, section by section; one asked for out of order,
        or never, runs or is dropped on its own. The known paths of
        consecutive trees share one section, fed by the command's stdin. A
        listing is as old as its start, so they are prepared only just before
        they are needed.
        """
        conn = self._conn
        if conn is None or self.force_sftp or not conn.transport.is_active():
            return
        if conn.probe is None and not conn.shell and not conn.unprobed:
            return
        keys: list[tuple[Any, ...]] = []
        scripts: list[str] = []
        known: list[KnownPaths] = []  # the trees of the stat section, in order
        stat_at = -1  # its index; closed to more trees once a walk follows it
        for spec in walks:
            if isinstance(spec, KnownPaths):
                root = check_root(spec.root)
                if ("stat", root) in self._prepared or any(check_root(k.root) == root for k in known):
                    continue
                if stat_at < 0:
                    stat_at = len(scripts)
                    keys.append(("stat",))
                    scripts.append("")  # below, once its trees are known
                elif stat_at != len(scripts) - 1:
                    continue  # after a walk: its own command, when asked for
                known.append(KnownPaths(root, spec.paths, spec.since))
                continue
            key = _walk_key(Walk(*spec))
            if key not in self._prepared and key not in keys:
                keys.append(key)
                scripts.append(_remote.walk_script(*key))
        if not scripts:
            return
        probe = conn.unprobed
        if known:  # one find for all: unchanged answers only from the earliest time every tree accepts
            sinces = [k.since for k in known if k.since is not None]
            since = min(sinces) // 1_000_000_000 if len(sinces) == len(known) else None
            # Capabilities not known yet (the probe rides in this command, or still runs): the script tries.
            files0 = None if probe or conn.probe is not None else conn.files0
            scripts[stat_at] = _remote.stat_stdin_script(since, files0)
        try:
            # A small window: output of the trees not being read yet waits on the source, not here.
            command = _remote.sections_command(scripts, probe=probe, stdin_section=stat_at if known else None)
            chan = self._open(conn, command, None,
                              window=_PREPARED_WINDOW, background=True)
        except (_Lost, TransportError):
            return
        # The known paths are read from the state while the command starts up (the walks after its
        # stat section run meanwhile); an error here must not leave it waiting.
        try:
            sent, starts = stat_args(known)
        except BaseException:
            _quiet_close(chan)
            raise
        _send_behind(chan, sent)
        errbuf = bytearray()
        recv = self._recv(chan, errbuf)
        rest = b""
        if probe:  # the probe's answer comes first: read it, then the walks follow
            try:
                while not (rest.startswith(b"E\n") or b"\nE\n" in rest) and len(rest) < 4096:
                    data = recv(65536)
                    if not data:
                        break
                    rest += data
            except _Lost:
                _quiet_close(chan)
                return  # _live probes on its own
            end = 2 if rest.startswith(b"E\n") else rest.find(b"\nE\n") + 3
            if end < 3 and not rest.startswith(b"E\n"):
                end = len(rest)  # no answer: not a shell we can use
            conn.unprobed = False
            self._capabilities(conn, rest[:end])
            rest = rest[end:]
            if not conn.shell:
                _quiet_close(chan)
                return
        combined = _Combined(self, chan, conn.generation, recv, errbuf, rest)
        for i, key in enumerate(keys):
            if i != stat_at:
                self._prepared[key] = (combined, i)
        if known:
            stat = PreparedStat(combined, stat_at, sent, starts)
            for k in known:
                self._prepared[("stat", k.root)] = (combined, stat_at)
                self._stats[k.root] = stat

    def _take_stat(self, conn: _Conn, root: str) -> PreparedStat | None:
        """The prepared stat of ``root``, if it was prepared on this connection and is still ahead."""
        stat = self._stats.pop(root, None)
        if self._prepared.pop(("stat", root), None) is None or stat is None:
            return None
        if stat.combined.generation != conn.generation or not stat.ahead_for(root):
            return None
        return stat

    def _last_section(self, combined: _Combined) -> int:
        """The highest section index still wanted from ``combined`` (-1 if none): when read, it is closed."""
        return max((i for c, i in self._prepared.values() if c is combined), default=-1)

    def _take_prepared(self, conn: _Conn, key: tuple[Any, ...]) -> Iterator[Entry] | None:
        ready = self._prepared.pop(key, None)
        if ready is None:
            return None
        combined, index = ready
        if combined.generation != conn.generation or index < combined.pos:
            return None
        return self._clocked(key[0], combined, combined.section(index, f"listing {key[0]}"))

    def _clocked(self, root: str, combined: _Combined, entries: Iterator[Entry]) -> Iterator[Entry]:
        """A prepared walk's entries, then the source clock read before them is known."""
        yield from entries
        self._clocks[root] = combined.clock

    def listing_clock(self, root: str) -> int | None:
        """The source's ``date +%s`` before the last walk of ``root`` (prepared walks only; else None)."""
        return self._clocks.get(check_root(root))

    def _walk_shell(self, conn: _Conn, key: tuple[str, tuple[bytes, ...], tuple[bytes, ...], int | None]
                    ) -> Iterator[Entry]:
        root = key[0]
        prepared = self._take_prepared(conn, key)
        if prepared is not None:
            yield from prepared
            return
        # (with no clock to date it, a walk asked for now lists everything: see Source.walk)
        chan = self._open(conn, _remote.walk_command(*key[:3]), None)
        errbuf = bytearray()
        recv = self._recv(chan, errbuf)
        try:
            yield from _remote.parse_records(iter(lambda: recv(1 << 18), b""))
            self._check(f"listing {root}", chan.exit_status, bytes(errbuf))
        except ValueError as error:
            raise _Lost(str(error)) from None
        finally:
            _quiet_close(chan)

    def list_dirs(
        self, root: str, dirs: Iterable[bytes], *, stat_globs: Iterable[bytes] | None = None
    ) -> Iterator[Entry | Names]:
        root = check_root(root)
        conn = self._live()
        if not conn.shell:
            yield from self._sftp.list_dirs(root, dirs)
            return
        globs = None if stat_globs is None else tuple(stat_globs)
        parser = _remote.parse_records if globs is None else _remote.parse_named

        def parse(conn: _Conn, chan: paramiko.Channel, batch: list[bytes]) -> Iterator[tuple[int, Entry | Names]]:
            index = {d: i for i, d in enumerate(batch)}
            for value in self._stream(chan, f"listing in {root}", parser):
                parent = value.dir if isinstance(value, Names) else value.path.rpartition(b"/")[0]
                if parent in index:
                    yield index[parent], value

        yield from self._drive(
            self._batches(dirs, lambda d: d),
            self._start(functools.partial(_remote.list_command, stat_globs=globs), root),
            parse, key=lambda v: b"\0" + v.dir if isinstance(v, Names) else v.path)  # NUL: never in a path

    def _stream(self, chan: paramiko.Channel, what: str,
                parser: Callable[[Iterable[bytes]], Iterator[Any]] = _remote.parse_records) -> Iterator[Any]:
        errbuf = bytearray()
        recv = self._recv(chan, errbuf)
        try:
            yield from parser(iter(lambda: recv(1 << 18), b""))
        except ValueError as error:
            raise _Lost(str(error)) from None
        finally:
            _quiet_close(chan)
        self._check(what, chan.exit_status, bytes(errbuf))

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        root = check_root(root)
        self._clocks.pop(root, None)
        conn = self._live()
        if not conn.shell:
            yield from self._sftp.stat(root, paths)
            return
        prepared = self._take_stat(conn, root)
        if prepared is not None:
            rest, asking = iter(paths), []
            try:
                yield from prepared.answers(root, rest, asking, lambda p: list(self._stat(root, [p]))[0],
                                            lambda ps: self._stat(root, ps))
                self._clocks[root] = prepared.combined.clock
                return
            except _Lost as error:  # go on with the rest as its own command
                self._reconnect(conn, str(error))
                paths = itertools.chain(asking, rest)
        yield from self._stat(root, paths)

    def stat_changed(self, root: str, known: KnownPaths) -> Iterator[Entry | bytes]:
        root = check_root(root)
        conn = self._live()
        prepared = self._take_stat(conn, root) if conn.shell else None
        if prepared is None:
            yield from changed_only(self.stat(root, known.paths()))
            return
        self._clocks.pop(root, None)
        try:
            for answer in prepared.changes(root, lambda ps: self._stat(root, ps)):
                yield answer
        except _Lost as error:  # go on from the first path not answered, as a command of its own
            self._reconnect(conn, str(error))
            yield from changed_only(self._stat(root, prepared.unanswered(root)))
            return
        self._clocks[root] = prepared.combined.clock

    def _stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        """:meth:`stat` by batched commands, each checking the paths' directories first."""

        def parse(conn: _Conn, chan: paramiko.Channel, batch: list[bytes]) -> Iterator[tuple[int, Entry | bytes]]:
            pos = 0
            for entry in self._stream(chan, f"stat in {root}"):
                pos = yield from _catch_up(batch, pos, entry.path)
                yield pos, entry
                pos += 1
            for i in range(pos, len(batch)):
                yield i, batch[i]

        yield from self._drive(
            self._batches(paths, lambda p: p),
            self._start(_remote.stat_command, root),
            parse, key=_key)

    def checksum(self, root: str, paths: Iterable[bytes]) -> Iterator[tuple[bytes, str | None]]:
        root = check_root(root)
        conn = self._live()
        if not conn.sha256sum:
            yield from self._sftp.checksum(root, paths)
            return

        def parse(conn: _Conn, chan: paramiko.Channel, batch: list[bytes]
                  ) -> Iterator[tuple[int, tuple[bytes, str | None]]]:
            errbuf = bytearray()
            recv = self._recv(chan, errbuf)
            pos = 0
            rest = b""
            try:
                for chunk in iter(lambda: recv(65536), b""):
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        try:
                            path, digest = _remote.parse_sha256_line(line)
                        except ValueError as error:
                            raise TransportError(f"{self.describe()}: checksum: {error}") from None
                        for i in range(pos, len(batch)):
                            if batch[i] == path:
                                break
                        else:
                            raise TransportError(f"{self.describe()}: checksum: unexpected path {path!r}")
                        for j in range(pos, i):
                            yield j, (batch[j], None)
                        yield i, (path, digest)
                        pos = i + 1
            finally:
                _quiet_close(chan)
            self._check(f"checksum in {root}", chan.exit_status, bytes(errbuf))
            for j in range(pos, len(batch)):
                yield j, (batch[j], None)

        yield from self._drive(
            self._batches(paths, lambda p: p),
            self._start(_remote.checksum_command, root),
            parse, key=lambda v: v[0])

    # -- fetching -----------------------------------------------------------

    def fetch(self, root: str, paths: Iterable[bytes | Entry]) -> Iterator[Fetched | bytes]:
        """Files in order: tar batches, and SFTP with prefetch for large files.

        Items may be bare paths or the Entries a listing gave: an Entry's size
        bounds the batch by bytes and sends a file over ``large_file`` by SFTP,
        and its ``mtime_ns`` restores nanoseconds SFTP cannot carry.
        """
        root = check_root(root)
        conn = self._live()
        use_tar = conn.tar
        dirs_ok: set[bytes] = set()  # ancestors the SFTP fetches verified to be real directories

        def path_of(item: bytes | Entry) -> bytes:
            return item.path if isinstance(item, Entry) else item

        def size_of(item: bytes | Entry) -> int:
            return item.size if isinstance(item, Entry) else 0

        def is_large(item: bytes | Entry) -> bool:
            return isinstance(item, Entry) and item.size > self.large_file

        def batches() -> Iterator[list[bytes | Entry]]:
            small: list[bytes | Entry] = []
            for batch in self._batches(paths, path_of, size_of):
                for item in batch:
                    if is_large(item) or not use_tar:
                        if small:
                            yield small
                            small = []
                        yield [item]
                    else:
                        small.append(item)
                if small:
                    yield small
                    small = []

        tar_start = self._start(_remote.tar_command, root)

        def start(conn: _Conn, batch: list[bytes | Entry]) -> Any:
            if len(batch) == 1 and (is_large(batch[0]) or not use_tar):
                return None  # SFTP: nothing to start ahead
            return tar_start(conn, batch)

        def parse(conn: _Conn, chan: Any, batch: list[bytes | Entry]) -> Iterator[tuple[int, Fetched | bytes]]:
            if chan is None:
                yield 0, self._sftp.fetch(conn, root, batch[0], dirs_ok)
                return
            yield from self._parse_tar(conn, chan, root, [path_of(i) for i in batch])

        yield from self._drive(batches(), start, parse, key=_key)

    def _parse_tar(self, conn: _Conn, chan: paramiko.Channel, root: str, batch: list[bytes]
                   ) -> Iterator[tuple[int, Fetched | bytes]]:
        errbuf = bytearray()
        recv = self._recv(chan, errbuf)
        stream = TarStream(recv, chunk=_WINDOW)  # ask for all that is buffered: no partial reads
        pos = 0
        try:
            while True:
                try:
                    member = stream.next()
                except EOFError as error:
                    raise _Lost(str(error)) from None
                except TarFormatError as error:
                    raise TransportError(f"{self.describe()}: fetching from {root}: bad tar stream: {error}") \
                        from None
                if member is None:
                    break
                path = _remote.strip_dot(member.path.rstrip(b"/"))
                pos = yield from _catch_up(batch, pos, path)
                if not member.is_file:
                    yield pos, path
                    pos += 1
                    continue
                entry = Entry(path=path, kind="f", size=member.size, mtime_ns=member.mtime_ns,
                              mode=member.mode)
                if member.size <= BUFFER_LIMIT:
                    data = _read_all(stream, member.size)
                    yield pos, buffered(entry, data)
                else:
                    yield pos, self._streamed(stream, entry, root)
                    stream.skip_data()
                pos += 1
            while recv(65536):  # the rest after the end-of-archive blocks, then EOF
                pass
        finally:
            _quiet_close(chan)
        self._check(f"fetching from {root}", chan.exit_status, bytes(errbuf))
        for i in range(pos, len(batch)):
            yield i, batch[i]

    def _streamed(self, stream: TarStream, entry: Entry, root: str) -> Fetched:
        """A big tar member handed out as it arrives; a drop mid-file resumes by SFTP at the offset."""
        offset = 0
        resumed: Callable[[int], bytes] | None = None

        def read(n: int = MiB) -> bytes:
            nonlocal offset, resumed
            if resumed is not None:
                data = resumed(n)
            else:
                try:
                    data = stream.read(n)
                except (_Lost, EOFError) as error:
                    resumed = self._sftp.resume(root, entry, offset, str(error))
                    data = resumed(n)
            offset += len(data)
            return data

        def skip() -> None:
            nonlocal offset
            offset = entry.size
            if resumed is None:
                try:
                    stream.skip_data()
                except (_Lost, EOFError):
                    pass

        return Fetched(entry=entry, read=read, skip=skip)

    # -- processes ----------------------------------------------------------

    def cyrus_processes(self) -> list[str]:
        """Exact command lines of running Cyrus processes (``ps``; /proc over SFTP without a shell)."""
        attempts = 0
        while True:
            conn = self._live()
            try:
                return [line for line in self._command_lines(conn) if _is_cyrus(line)]
            except _Lost as error:
                attempts += 1
                if attempts > self.retries:
                    raise TransportError(f"{self.describe()}: {error}") from None
                self._reconnect(conn, str(error))

    def _command_lines(self, conn: _Conn) -> list[str]:
        if conn.shell:
            out, err, status = self._run(conn, _remote.PS_COMMAND, b"")
            if status != 0:
                raise TransportError(f"{self.describe()}: ps failed: {err.decode(errors='replace').strip()}")
            lines = out.decode("utf-8", "replace").splitlines()
            return [l.strip() for l in lines[1:] if l.strip()]  # first line: the header
        return self._sftp.command_lines(conn)

    def close(self) -> None:
        for combined, _index in self._prepared.values():
            _quiet_close(combined.chan)
        self._prepared.clear()
        self._stats.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SshSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Cyrus daemons by program name (``master`` only when it is not Postfix's).
_CYRUS_PROGRAMS = {
    "master", "cyrmaster", "cyrus-master", "imapd", "pop3d", "lmtpd", "lmtpproxyd", "proxyd",
    "sync_client", "sync_server", "idled", "notifyd", "timsieved", "fud", "nntpd", "smmapd",
    "mupdate", "ptloader", "squatter", "cyr_expire", "ctl_cyrusdb", "deliver", "backupd",
}


def _is_cyrus(line: str) -> bool:
    argv0 = line.split(None, 1)[0] if line.strip() else ""
    name = argv0.rsplit("/", 1)[-1].rstrip(":")
    if name == "master":
        return "postfix" not in line
    if name == "httpd":
        return "/cyrus" in argv0
    return name in _CYRUS_PROGRAMS


def _prefer(available: Sequence[str], first: Sequence[str]) -> tuple[str, ...]:
    """``available`` reordered so that those of ``first`` it contains come first (in their order)."""
    head = [name for name in first if name in available]
    return tuple(head) + tuple(name for name in available if name not in head)


def _key_family(name: str) -> str:
    """RSA host keys are negotiated as rsa-sha2-* but stored as ssh-rsa."""
    return "ssh-rsa" if name.startswith("rsa-sha2-") else name


def _readdir(sftp: paramiko.SFTPClient, path: bytes) -> list[tuple[bytes, SFTPAttributes]]:
    """READDIR with raw byte names (paramiko's listdir decodes UTF-8 and fails otherwise).

    The one piece of the SFTP fallback that speaks paramiko's wire messages, so it
    stays here (only this module imports paramiko); :mod:`._sftp` gets it as ``readdir``.
    """
    t, msg = sftp._request(CMD_OPENDIR, path)
    if t != CMD_HANDLE:
        raise _Lost("SFTP: expected a handle")
    handle = msg.get_binary()
    out: list[tuple[bytes, SFTPAttributes]] = []
    try:
        while True:
            try:
                t, msg = sftp._request(CMD_READDIR, handle)
            except EOFError:
                break
            for _ in range(msg.get_int()):
                name = msg.get_string()
                longname = msg.get_string()
                attr = SFTPAttributes._from_msg(msg, name, longname)
                if name not in (b".", b".."):
                    out.append((name, attr))
    finally:
        sftp._request(CMD_CLOSE, handle)
    return out


def _walk_key(walk: Walk) -> tuple[str, tuple[bytes, ...], tuple[bytes, ...], int | None]:
    """A walk as :func:`._remote.walk_script` takes it (``since`` in the whole seconds ``find`` compares)."""
    since = None if walk.since is None else walk.since // 1_000_000_000
    return (check_root(walk.root), tuple(walk.only_dirs_and), tuple(check_relpath(p) for p in walk.prune), since)


def _key(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Entry):
        return value.path
    return value.entry.path  # Fetched


def _catch_up(batch: list[bytes], pos: int, path: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield the items before ``path`` as vanished; return ``path``'s index (output is in input order)."""
    for i in range(pos, len(batch)):
        if batch[i] == path:
            for j in range(pos, i):
                yield j, batch[j]
            return i
    raise TransportError(f"the source answered for {show(path)!r}, which was not asked for")


def _read_all(stream: TarStream, size: int) -> bytes:
    parts = []
    left = size
    while left:
        try:
            data = stream.read(left)
        except EOFError as error:
            raise _Lost(str(error)) from None
        if not data:
            raise _Lost("tar stream ended inside a file")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _send_behind(chan: paramiko.Channel, data: bytes) -> None:
    """Send a command's stdin, then EOF, from a thread (the command reads it when it gets there)."""
    threading.Thread(target=_send, args=(chan, data), name="spoolmig-stdin", daemon=True).start()


def _send(chan: paramiko.Channel, data: bytes) -> None:
    """Send a command's stdin from a thread; a failure shows to the reader as a lost command."""
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except Exception:  # noqa: BLE001 - the channel was closed or the connection dropped
        pass


def _quiet_close(chan: paramiko.Channel) -> None:
    """Close a channel whose connection may already be dead (paramiko raises EOFError then)."""
    try:
        chan.close()
    except (EOFError, OSError, paramiko.SSHException):
        pass
