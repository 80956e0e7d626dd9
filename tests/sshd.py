"""A real OpenSSH sshd on 127.0.0.1 for the tests (no mocks of paramiko or sshd).

``sshd`` (session-scoped) starts ``/usr/sbin/sshd -D`` on a random free port
with its own freshly generated host key, a client key, ``authorized_keys``
and a temporary ``known_hosts`` holding the ``[127.0.0.1]:PORT`` entry. The
object it yields can stop and restart the server and kill the per-connection
sshd processes, which is how the tests drop a connection mid-stream.

``sftp_only_sshd`` is a second server with ``ForceCommand internal-sftp``: an
exec request gets an SFTP server instead of a shell, as on an account whose
shell is refused, so the SFTP fallback runs for real.

``source_config(server, ...)`` gives a :class:`spoolmig.config.SourceConfig`
for either server; other test modules use it.

The fixtures log in as root. ``running_sshd(workdir, user=...)`` logs in as
another existing account instead (the mirror benchmark uses one with a stock
shell start-up); sshd reads ``authorized_keys`` with that user's rights, so the
work directory is opened up to it and checked along the whole path.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spoolmig.config import ServerLayout, SourceConfig, SourceURL

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519") -> str:
    """Generate a key pair; return the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "spoolmig-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return Path(str(path) + ".pub").read_text().strip()


@dataclass
class Sshd:
    """One running sshd; ``stop``/``start`` keep the port and keys."""

    workdir: Path
    port: int
    host_key: Path
    identity_file: Path
    known_hosts: Path
    extra_config: str = ""
    host: str = "127.0.0.1"
    user: str = "root"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def host_key_line(self) -> str:
        """The ``[host]:port keytype base64`` line a known_hosts file needs."""
        kind, blob = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {kind} {blob}"

    def fingerprint(self) -> str:
        """``SHA256:...`` of the host key, as ``ssh-keygen -lf`` prints it."""
        out = subprocess.run(["ssh-keygen", "-lf", str(self.host_key) + ".pub"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def _write_config(self) -> Path:
        config = self.workdir / "sshd_config"
        config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.workdir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "MaxStartups 100\n"
            "MaxSessions 100\n"
            "LogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
            + self.extra_config
        )
        return config

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers with a banner."""
        if self.running():
            return
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        config = self._write_config()
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "sshd.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.workdir / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not start listening")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def session_pids(self) -> list[int]:
        """Every process below the listener: per-connection monitors, their session children, commands."""
        if self.proc is None:
            return []
        out: list[int] = []
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            kids = [int(p) for p in text.split()]
            out.extend(kids)
            todo.extend(kids)
        return out

    def sshd_session_pids(self) -> list[int]:
        """Only the sshd processes below the listener (monitor and session child of each connection).

        Killing these drops the TCP connection, which is all a test needs. The
        commands they run are left to die of the hang-up: SIGKILLing them too
        can orphan lock files of whatever the login shell's rc file runs (a
        root ~/.bashrc running ``pyenv init`` left a stale rehash lock that
        made every later session wait 60 s).
        """
        out = []
        for pid in self.session_pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    out.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        return out

    def kill_sessions(self) -> int:
        """SIGKILL every live connection (the listener stays up); return how many processes."""
        pids = self.sshd_session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        """Stop listening and drop every live connection."""
        if self.proc is None:
            return
        children = self.sshd_session_pids()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None


def _user_can(user: str, test_flag: str, path: Path) -> bool:
    """``test <flag> path`` run as ``user``: ACLs and groups count, as they do for sshd."""
    pw = pwd.getpwnam(user)
    return subprocess.run(["test", test_flag, str(path)], user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=os.getgrouplist(user, pw.pw_gid), stdin=subprocess.DEVNULL).returncode == 0


def _open_to(user: str, workdir: Path, authorized_keys: Path) -> None:
    """Let ``user``'s sshd session read ``authorized_keys``, or say which directory stops it.

    sshd opens the file with the user's rights (StrictModes no only skips the
    ownership checks), so every directory above it must be searchable by them.
    """
    workdir.chmod(0o755)
    authorized_keys.chmod(0o644)
    if _user_can(user, "-r", authorized_keys):
        return
    for parent in reversed(authorized_keys.parents):
        if not _user_can(user, "-x", parent):
            raise RuntimeError(f"sshd: {user} cannot enter {parent} (mode {parent.stat().st_mode & 0o7777:o}), "
                               f"so cannot read {authorized_keys}; use a work directory it can reach")
    raise RuntimeError(f"sshd: {user} cannot read {authorized_keys}")


def make_sshd(workdir: Path, extra_config: str = "", *, user: str = "root") -> Sshd:
    """Fresh host and client keys, authorized_keys and known_hosts under ``workdir``; log in as ``user``."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "host_ed25519"
    identity = workdir / "client_ed25519"
    _keygen(host_key)
    client_pub = _keygen(identity)
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_pub + "\n")
    if user != "root":
        _open_to(user, workdir, authorized_keys)
    server = Sshd(workdir=workdir, port=_free_port(), host_key=host_key, identity_file=identity,
                  known_hosts=workdir / "known_hosts", extra_config=extra_config, user=user)
    server.known_hosts.write_text(server.host_key_line() + "\n")
    return server


def source_config(server: Sshd, *, known_hosts: str | None = None, fingerprint: str | None = None,
                  partitions: dict[str, str] | None = None, configdirectory: str = "/var/lib/imap",
                  sievedir: str = "/var/lib/imap/sieve") -> SourceConfig:
    """A SourceConfig pointing at ``server`` (paths are the remote, i.e. local, absolute paths)."""
    layout = ServerLayout(version="auto", configdirectory=configdirectory, sievedir=sievedir,
                          partitions=partitions or {"default": "/var/spool/imap"}, hashimapspool=False,
                          fulldirhash=False, virtdomains=False, unixhierarchysep=False)
    return SourceConfig(url=SourceURL("ssh", user=server.user, host=server.host, port=server.port),
                        layout=layout, known_hosts=str(known_hosts or server.known_hosts),
                        identity_file=str(server.identity_file), host_key_fingerprint=fingerprint)


@contextlib.contextmanager
def running_sshd(workdir: Path, extra_config: str = "", *, user: str = "root") -> Iterator[Sshd]:
    """A started :func:`make_sshd` server, stopped on the way out."""
    server = make_sshd(workdir, extra_config, user=user)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd; tests that stop it must start it again (``server.start()``)."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def sftp_only_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on which every exec request gets internal-sftp (no shell)."""
    with running_sshd(tmp_path_factory.mktemp("sshd-sftp"), "ForceCommand internal-sftp\n") as server:
        yield server
