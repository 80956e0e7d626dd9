"""Faults: kill -9 anywhere, a connection dropped mid-stream, files changing or vanishing during a pass."""

from __future__ import annotations

import os
import re
import sqlite3
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from test_mirror_support import (
    Wrapper,
    assert_mirrors,
    assert_state_matches_disk,
    load_config,
    local_factory,
    make_server,
    temporaries,
)

from spoolmig.errors import TransportError
from spoolmig.mirror.engine import run_pass
from spoolmig.transport.base import Fetched
from spoolmig.transport.local import LocalSource

REPO = Path(__file__).resolve().parent.parent

#: Runs `spoolmig mirror` (cli.main) with small batches and SIGKILLs itself at
#: the Nth event: before/after each rename into place, each filesystem sync,
#: each state transaction (begin, before commit, after commit), each file read.
KILLER = textwrap.dedent("""
    import contextlib, os, signal, sys
    sys.path.insert(0, {repo!r})
    target = int(sys.argv[2])
    count = 0

    def hit():
        global count
        count += 1
        if count == target:
            os.kill(os.getpid(), signal.SIGKILL)

    from spoolmig.mirror import replica, state, worker
    from spoolmig.transport import local

    real_replace = os.replace
    def replace(*a, **k):
        hit(); real_replace(*a, **k); hit()
    os.replace = replace

    real_sync = replica.Replica.sync
    def sync(self):
        hit(); real_sync(self); hit()
    replica.Replica.sync = sync

    real_write = state.write
    @contextlib.contextmanager
    def write(conn):
        hit()
        with real_write(conn) as c:
            yield c
            hit()
        hit()
    state.write = write

    real_fetched = local._local_fetched
    def fetched(fd, entry):
        f = real_fetched(fd, entry)
        inner = f.read
        def read(n=1 << 20):
            data = inner(n)
            if data:
                hit()
            return data
        f.read = read
        return f
    local._local_fetched = fetched

    real_init = worker.TreeWorker.__init__
    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.batch_files = 7
    worker.TreeWorker.__init__ = init

    from spoolmig.cli import main
    sys.exit(main(["mirror", "--config", sys.argv[1], "-q"]))
""")


def _killed_run(config_file: str, at: int) -> int:
    script = KILLER.format(repo=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script, config_file, str(at)], capture_output=True, timeout=120)
    return proc.returncode


def _no_partial_messages(server, cfg) -> None:  # noqa: ANN001
    """Every message file visible in the replica is complete (equal to the source's, which never changes)."""
    mirror = Path(cfg.mirror.path)
    for name, root in cfg.source.layout.partitions.items():
        base = mirror / f"partition-{name}"
        if not base.exists():
            continue
        for path in base.rglob("*."):
            if not re.fullmatch(r"\d+\.", path.name) or not path.is_file():
                continue
            source = server.path(root) / path.relative_to(base)
            if source.exists():
                assert path.read_bytes() == source.read_bytes(), f"partial file visible: {path}"


KILL_POINTS = [1, 2, 3, 4, 6, 9, 14, 20, 30, 45, 70, 100, 150, 230, 350]


@pytest.mark.parametrize("scenario", ["first pass", "incremental pass"])
def test_kill_9_at_many_points_converges(tmp_path: Path, scenario: str) -> None:
    server = make_server(tmp_path / "old", users=3, messages=30)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    completed = 0
    for at in KILL_POINTS:
        if scenario == "incremental pass":
            run_pass(cfg, local_factory(cfg))
            server.deliver(4)
            server.expunge(2)
            leaves = [n for n in sorted(server.mailboxes) if not any(o.startswith(n + ".") for o in server.mailboxes)]
            server.rename_mailbox(leaves[at % len(leaves)], f"user.renamed{at}")
        code = _killed_run(cfg.file, at)
        if code == 0:
            completed += 1  # fewer events than `at`: the pass finished
        else:
            assert code == -signal.SIGKILL, code
        _no_partial_messages(server, cfg)
        report = run_pass(cfg, local_factory(cfg))
        assert report.exit_code() == 0, report.warnings
        assert_mirrors(server.root, cfg)
        assert temporaries(Path(cfg.mirror.path)) == []
        assert_state_matches_disk(Path(cfg.mirror.path))
        if scenario == "first pass":
            import shutil

            shutil.rmtree(cfg.mirror.path)
    assert completed < len(KILL_POINTS) - 3  # most runs really were killed


def test_kill_9_of_a_real_subprocess_at_random_moments(tmp_path: Path) -> None:
    server = make_server(tmp_path / "old", users=6, messages=400)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    for delay in (0.3, 0.5, 0.8):
        proc = subprocess.Popen([sys.executable, "-m", "spoolmig", "mirror", "--config", cfg.file, "-q"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _no_partial_messages(server, cfg)
        server.deliver(3)
    report = run_pass(cfg, local_factory(cfg))
    assert report.exit_code() == 0
    assert_mirrors(server.root, cfg)
    assert temporaries(Path(cfg.mirror.path)) == []
    assert_state_matches_disk(Path(cfg.mirror.path))


class Dropping(Wrapper):
    """The connection dies in the middle of the ``after``-th file."""

    def __init__(self, inner: Any, after: int) -> None:
        super().__init__(inner)
        self.after, self.seen = after, 0

    def fetch(self, root: str, paths):  # noqa: ANN001, ANN201
        for item in self.inner.fetch(root, paths):
            if not isinstance(item, bytes):
                self.seen += 1
                if self.seen == self.after:
                    first = item.read(10)

                    def broken(n: int, _first=[first]) -> bytes:  # noqa: B006
                        if _first:
                            return _first.pop()
                        raise TransportError("ssh://cyrus@old:22: connection lost (test)")

                    item = Fetched(entry=item.entry, read=broken, skip=item.skip)
            yield item


@pytest.mark.parametrize("after", [1, 8, 25])
def test_connection_dropped_mid_stream(tmp_path: Path, after: int) -> None:
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    with pytest.raises(TransportError):
        run_pass(cfg, lambda: Dropping(LocalSource(cfg.source.url.path), after))
    mirror = Path(cfg.mirror.path)
    assert temporaries(mirror) == []  # the half-written file was removed with its temporary name
    _no_partial_messages(server, cfg)
    import sqlite3

    conn = sqlite3.connect(mirror / ".spoolmig" / "state.sqlite")
    outcome = conn.execute("SELECT outcome, message FROM passes").fetchone()
    conn.close()
    assert outcome[0] == "failed" and "connection lost" in outcome[1]
    report = run_pass(cfg, local_factory(cfg))
    assert report.exit_code() == 0
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(mirror)


def test_file_changing_during_the_pass_is_reported_and_copied_again(tmp_path: Path) -> None:
    """Changed between listing and fetching: stored, reported (exit 1), marked for the next pass."""
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    run_pass(cfg, local_factory(cfg))
    message = server.deliver(1)[0]
    index = message.parent / "cyrus.index"

    class Touching(Wrapper):
        def fetch(self, root: str, paths):  # noqa: ANN001, ANN201
            paths = list(paths)
            if any(p.path.endswith(b"/cyrus.index") for p in paths):
                with open(index, "ab") as f:
                    f.write(b"a flag changed after the listing")
            return self.inner.fetch(root, paths)

    report = run_pass(cfg, lambda: Touching(LocalSource(cfg.source.url.path)))
    assert report.exit_code() == 1  # finished with warnings
    assert report.figures["files_changed_during"] == 1
    assert any("cyrus.index" in w and "changed while it was copied" in w for w in report.warnings)
    again = run_pass(cfg, local_factory(cfg))
    assert again.figures["files_changed"] == 1 and again.exit_code() == 0
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_file_changing_while_it_is_read_converges_next_pass(tmp_path: Path) -> None:
    """Changed after it was opened: the recorded mtime predates the change, so the next pass sees it."""
    from test_mirror_final import ChangesWhileRead, _mailbox_of

    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    run_pass(cfg, local_factory(cfg))
    message = server.deliver(1)[0]
    index = message.parent / "cyrus.index"
    base = server.path(server.partitions[server.partition_of[_mailbox_of(server, message)]])
    target = os.fsencode(index.relative_to(base))
    run_pass(cfg, lambda: ChangesWhileRead(LocalSource(cfg.source.url.path), target, index))
    again = run_pass(cfg, local_factory(cfg))
    assert again.figures["files_changed"] == 1
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_file_vanishing_between_listing_and_fetching(tmp_path: Path) -> None:
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    run_pass(cfg, local_factory(cfg))
    doomed = server.deliver(2)[0]

    class Expunging(Wrapper):
        def fetch(self, root: str, paths):  # noqa: ANN001, ANN201
            paths = list(paths)
            if doomed.exists():
                doomed.unlink()  # expunged after the listing, before the fetch
            return self.inner.fetch(root, paths)

    report = run_pass(cfg, lambda: Expunging(LocalSource(cfg.source.url.path)))
    assert report.figures["files_vanished"] == 1
    assert report.exit_code() == 0, report.warnings  # dropped quietly (counted)
    assert_mirrors(server.root, cfg, dir_mtimes=False)
    assert_state_matches_disk(Path(cfg.mirror.path))
    rec = run_pass(cfg, local_factory(cfg))  # the directory changed again after its listing: re-listed
    assert rec.figures["dirs_relisted"] >= 1
    assert_mirrors(server.root, cfg)


def test_full_disk_is_a_mirror_error_and_recoverable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from spoolmig.errors import MirrorError
    from spoolmig.mirror import replica

    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    real = replica.atomic_writer
    calls = [0]

    def full(*a: Any, **k: Any):  # noqa: ANN202
        calls[0] += 1
        if calls[0] == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    real_publish = replica.publish_bytes

    def full_publish(*a: Any, **k: Any) -> None:  # small files are written by publish_bytes
        calls[0] += 1
        if calls[0] == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_publish(*a, **k)

    monkeypatch.setattr(replica, "atomic_writer", full)
    monkeypatch.setattr(replica, "publish_bytes", full_publish)
    with pytest.raises(MirrorError, match="No space left on device"):
        run_pass(cfg, local_factory(cfg))
    monkeypatch.setattr(replica, "atomic_writer", real)
    monkeypatch.setattr(replica, "publish_bytes", real_publish)
    run_pass(cfg, local_factory(cfg))
    assert_mirrors(server.root, cfg)
    assert temporaries(Path(cfg.mirror.path)) == []
    assert_state_matches_disk(Path(cfg.mirror.path))


#: `spoolmig mirror` killed while it replaces a ``cyrus.index``: the new file is linked under a
#: temporary name and the kill comes before the rename over the old one.
KILLED_REPLACING = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from spoolmig.fileio import TEMP_MARK

    real_rename = os.rename
    def rename(src, dst, *a, **k):
        if os.fsencode(dst).endswith(b"/cyrus.index") and os.fsencode(TEMP_MARK) in os.fsencode(src):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(src, dst, *a, **k)
    os.rename = rename

    from spoolmig.cli import main
    sys.exit(main(["mirror", "--config", sys.argv[1], "-q"]))
""")


def test_a_pass_killed_replacing_a_file_leaves_a_mark_the_next_pass_cleans_up(tmp_path: Path) -> None:
    """The directory's row keeps its attributes; its mark alone sends the next pass looking for debris.

    The source's directory did not change (an index rewritten in place), so
    nothing but the mark says that this pass wrote into it.
    """
    server = make_server(tmp_path / "old", users=3, messages=30)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0
    mbox = next(iter(server.mailboxes.values()))
    index = server.mailbox_dir(mbox) / "cyrus.index"
    before = index.stat().st_mtime_ns
    index.write_bytes(bytes([index.read_bytes()[0] ^ 0xFF]) + index.read_bytes()[1:])
    os.utime(index, ns=(before + 1, before + 1))  # same size, the mtime moved by a nanosecond
    os.utime(index.parent, ns=(index.parent.stat().st_atime_ns, index.parent.stat().st_mtime_ns))
    code = subprocess.run([sys.executable, "-c", KILLED_REPLACING.format(repo=str(REPO)), cfg.file],
                          capture_output=True, timeout=120).returncode
    assert code == -signal.SIGKILL
    mirror = Path(cfg.mirror.path)
    left = temporaries(mirror)
    assert len(left) == 1 and Path(left[0]).parent.name == index.parent.name, left
    tree = Path(left[0]).relative_to(mirror).parts[0]
    rel = os.fsencode(Path(left[0]).parent.relative_to(mirror / tree))
    with sqlite3.connect(mirror / ".spoolmig" / "state.sqlite") as conn:
        assert conn.execute("SELECT tree, path FROM marks").fetchall() == [(tree, rel)]
        assert conn.execute("SELECT stale FROM files WHERE tree = ? AND path = ?", (tree, rel)).fetchone() == (0,)
    report = run_pass(cfg, local_factory(cfg))
    assert report.exit_code() == 0, report.warnings
    assert temporaries(mirror) == []
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(mirror)
