"""End to end over a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py): the same guarantees as locally."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sshd import Sshd, sftp_only_sshd, sshd  # noqa: F401 - the fixtures
from test_mirror_hostile import ODD_NAMES, _make_odd_mailboxes
from test_mirror_support import (
    Recording,
    Wrapper,
    assert_mirrors,
    assert_state_matches_disk,
    listed_clocks,
    make_server,
    no_freshness,  # noqa: F401 - fixture
    temporaries,
    wait_past_since,
)

from spoolmig import config
from spoolmig.cli import main
from spoolmig.errors import TransportError
from spoolmig.mirror import state as st
from spoolmig.mirror import worker as worker_mod
from spoolmig.mirror.engine import Options, run_pass
from spoolmig.transport import open_source
from spoolmig.transport.base import UNCHANGED, Entry, Fetched

pytestmark = pytest.mark.ssh

ROOT = Path("/")  # over SSH the configured paths are the real ones


def _ssh_config(tmp: Path, server, sshd_: Sshd, mirror: Path, extra: str = "") -> config.Config:  # noqa: ANN001
    parts = ", ".join(f'{k} = "{server.path(v)}"' for k, v in server.partitions.items())
    text = (
        "[source]\n"
        f'url = "{sshd_.url}"\n'
        f'known_hosts = "{sshd_.known_hosts}"\n'
        f'identity_file = "{sshd_.identity_file}"\n'
        f'configdirectory = "{server.path(server.configdirectory)}"\n'
        f'sievedir = "{server.path(server.sievedir)}"\n'
        f"partitions = {{ {parts} }}\n"
        "hashimapspool = true\n"
        "\n[mirror]\n"
        f'path = "{mirror}"\n' + extra
    )
    path = tmp / "migration.toml"
    path.write_text(text)
    return config.load(path)


class NoCyrus(Wrapper):
    """Other tests on this machine may run Cyrus tools; --final here is about the mirror."""

    def cyrus_processes(self) -> list[str]:
        return []


@pytest.fixture
def setup(tmp_path: Path, sshd: Sshd):  # noqa: ANN201, F811
    server = make_server(tmp_path / "old", users=4, messages=60)
    cfg = _ssh_config(tmp_path, server, sshd, tmp_path / "mirror")
    return server, cfg, sshd


@pytest.mark.usefixtures("no_freshness")
def test_mirror_over_ssh_file_for_file_and_incremental(setup) -> None:  # noqa: ANN001
    server, cfg, _ = setup
    boxes = [m for m in server.mailboxes.values() if server.partition_of[m.name] == "default"][:2]
    shared = server._append(boxes[0])  # singleinstancestore: one delivery, two mailboxes
    boxes[1].last_uid += 1
    boxes[1].uids.append(boxes[1].last_uid)
    os.link(shared, server.mailbox_dir(boxes[1]) / f"{boxes[1].last_uid}.")
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    assert report.source.startswith("ssh://")
    assert report.figures["files_linked"] == 1
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    # no change: nothing listed beyond the cheap walk, nothing fetched
    rec = Recording(open_source(cfg.source))
    report = run_pass(cfg, lambda: rec)
    assert rec.fetched == [] and rec.listed == []
    # changes of every kind converge
    delivered = server.deliver(5)
    server.expunge(2)
    leaves = [n for n in sorted(server.mailboxes) if not any(o.startswith(n + ".") for o in server.mailboxes)]
    server.delete_mailbox(leaves[0])
    server.rename_mailbox(leaves[2], "user.renamed")
    server.create_mailbox("user.newcomer")
    conf = server.path(server.configdirectory)  # the configdirectory is incremental too
    (conf / "user" / "n").mkdir(exist_ok=True)
    (conf / "user" / "n" / "newcomer.seen").write_bytes(b"seen database placeholder newcomer")
    sorted(conf.glob("quota/*/user.*"))[0].unlink()
    rec = Recording(open_source(cfg.source))
    report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    fetched = {p for _, p in rec.fetched}
    assert all(any(p.endswith(os.fsencode(d.name)) for p in fetched) for d in delivered)
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def _whole_seconds(root: Path, bump: set[Path] = frozenset()) -> None:  # type: ignore[assignment]
    """SFTP carries whole seconds only: truncate every mtime below ``root``; ``bump`` directories move on 5 s."""
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            p = os.path.join(top, name)
            st = os.lstat(p)
            mtime = st.st_mtime_ns // 10**9 * 10**9 + (5 * 10**9 if Path(p) in bump else 0)
            os.utime(p, ns=(st.st_atime_ns, mtime), follow_symlinks=False)


@pytest.mark.usefixtures("no_freshness")
def test_incremental_pass_over_an_sftp_only_account(tmp_path: Path, sftp_only_sshd: Sshd) -> None:  # noqa: F811
    """No shell: changed directories are listed by SFTP (full entries, no by-name blocks) and still converge."""
    server = make_server(tmp_path / "old", users=3, messages=40)
    _whole_seconds(server.root)
    cfg = _ssh_config(tmp_path, server, sftp_only_sshd, tmp_path / "mirror")
    assert run_pass(cfg, lambda: open_source(cfg.source)).exit_code() == 0
    delivered = server.deliver(4)
    expunged = server.expunge(2)
    _whole_seconds(server.root, bump={p.parent for p in delivered + expunged})
    rec = Recording(open_source(cfg.source))
    report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    assert rec.listed, "the changed directories were listed"
    assert report.figures["files_new"] == sum(1 for d in delivered if d.exists())
    assert report.figures["files_deleted"] == len(set(expunged) - set(delivered))  # not: delivered, then expunged
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_odd_names_over_ssh(setup) -> None:  # noqa: ANN001
    server, cfg, _ = setup
    _make_odd_mailboxes(server.path(server.partitions["default"]))
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(ROOT, cfg)
    for name in ODD_NAMES:
        with open(os.fsencode(server.path(server.partitions["default"]) / "u" / "user") + b"/" + name + b"/9.",
                  "wb") as f:
            f.write(b"new")
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.figures["files_new"] == len(ODD_NAMES)
    assert_mirrors(ROOT, cfg)


def test_final_over_ssh_with_checksum(setup) -> None:  # noqa: ANN001
    server, cfg, _ = setup
    run_pass(cfg, lambda: open_source(cfg.source), Options(jobs=2))
    server.deliver(3)
    server.flag_change(2)  # same size, same mtime: only the unconditional metadata re-copy sees it
    report = run_pass(cfg, lambda: NoCyrus(open_source(cfg.source)),
                      Options(final=True, checksum=True, quiet_wait=0.1, jobs=2))
    assert report.statement is not None and report.statement.startswith("replica equals source:"), \
        report.differences
    assert report.figures["checksum_mismatches"] == 0
    assert_mirrors(ROOT, cfg)


class Cutting(Wrapper):
    """Kills every sshd session (the connection drops) while the ``after``-th file is streamed."""

    def __init__(self, inner: Any, server: Sshd, after: int) -> None:
        super().__init__(inner)
        self.server, self.after, self.count = server, after, 0

    def fetch(self, root: str, paths):  # noqa: ANN001, ANN201
        for item in self.inner.fetch(root, paths):
            if not isinstance(item, bytes):
                self.count += 1
                if self.count == self.after:
                    self.server.kill_sessions()
            yield item


@pytest.mark.parametrize("after", [3, 40])
def test_connection_dropped_mid_stream_over_ssh(setup, after: int) -> None:  # noqa: ANN001
    server, cfg, sshd_ = setup
    try:
        report = run_pass(cfg, lambda: Cutting(open_source(cfg.source), sshd_, after))
        dropped_cleanly = report.exit_code() in (0, 1)  # the transport reconnected and went on
    except TransportError:
        dropped_cleanly = True  # or the pass stopped with a one-line error
    assert dropped_cleanly
    sshd_.start()
    mirror = Path(cfg.mirror.path)
    assert temporaries(mirror) == []
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(mirror)


def test_cli_over_ssh(setup, capsys) -> None:  # noqa: ANN001
    server, cfg, _ = setup
    assert main(["mirror", "--config", cfg.file, "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "from ssh://" in out
    assert main(["mirror", "--config", cfg.file, "--dry-run"]) == 0
    assert "would fetch: 0 new" in capsys.readouterr().out
    assert_mirrors(ROOT, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_passes_need_few_remote_commands(setup) -> None:  # noqa: ANN001
    """Every remote command pays a login shell's start-up: a no-change pass is one listing, probe included."""
    server, cfg, _ = setup
    run_pass(cfg, lambda: open_source(cfg.source))
    opened: list[Any] = []

    def counted() -> Any:
        source = open_source(cfg.source)
        opened.append(source)
        return source

    report = run_pass(cfg, counted)
    assert report.exit_code() == 0, report.warnings
    assert report.figures["files_new"] == 0
    assert sum(s.commands for s in opened) == 1
    # new messages: per changed partition, one listing of its changed directories and one tar
    # stream, each with the directory-symlink check folded in (not a command of its own)
    server.deliver(3)
    opened.clear()
    report = run_pass(cfg, counted)
    assert report.exit_code() == 0, report.warnings
    assert report.figures["files_new"] == 3
    assert_mirrors(ROOT, cfg)
    assert sum(s.commands for s in opened) <= 1 + 2 * len(server.partitions)


class Answers(Wrapper):
    """Sorts the stat answers: full ones (their paths), "unchanged since the last clean pass" ones (counted)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.full: list[bytes] = []
        self.unchanged = 0

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        for answer in self.inner.stat(root, paths):
            if not isinstance(answer, bytes):
                if answer.kind == UNCHANGED:
                    self.unchanged += 1
                else:
                    self.full.append(answer.path)
            yield answer


def _clean_pass_then_wait_past_its_since(cfg: config.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean pass whose "since" is a second after its listing began, then until a change is after it."""
    # (the margin is two minutes before the listing: the tree, just made, would all count as changed)
    monkeypatch.setattr(worker_mod, "UNCHANGED_MARGIN_NS", -1_000_000_000)
    assert run_pass(cfg, lambda: open_source(cfg.source)).exit_code() == 0
    wait_past_since(cfg)


def _index_of(server: Any) -> tuple[Path, bytes]:
    """A default-partition mailbox's cyrus.index: the file, and its path in the partition's tree."""
    box = next(m for m in server.mailboxes.values() if server.partition_of[m.name] == "default")
    index = server.mailbox_dir(box) / "cyrus.index"
    return index, os.fsencode(index.relative_to(server.path(server.partitions["default"])))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))  # same size, same inode: only its times say it changed


@pytest.mark.usefixtures("no_freshness")
def test_an_incremental_pass_hears_only_of_what_changed_since_the_last_clean_one(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Paths whose ctime is older than the last clean listing come back as "unchanged", and stand for the state."""
    server, cfg, _ = setup
    # "since" a second after the listing began (it is two minutes before): the tree, just made, counts as unchanged
    monkeypatch.setattr(worker_mod, "UNCHANGED_MARGIN_NS", -1_000_000_000)
    assert run_pass(cfg, lambda: open_source(cfg.source)).exit_code() == 0
    trees = {"config", "sieve", *(f"partition-{p}" for p in server.partitions)}
    assert set(listed_clocks(cfg)) == {f"listed:{t}" for t in trees}  # every tree is incremental
    wait_past_since(cfg)
    index, rel = _index_of(server)
    _flip_last_byte(index)
    (delivered,) = server.deliver(1)
    box = os.fsencode(delivered.parent.relative_to(server.path(server.partitions[
        next(p for p, root in server.partitions.items() if delivered.is_relative_to(server.path(root)))])))
    rec = Answers(open_source(cfg.source))
    report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    assert rec.unchanged > 20
    # in full: the index, and the delivery's mailbox (its directory, its cyrus.* files, the new message)
    assert rel in rec.full
    assert all(p == rel or p == box or p.startswith(box + b"/") for p in rec.full), [p for p in rec.full if not (p == rel or p == box or p.startswith(box + b"/"))]
    assert report.figures["files_changed"] >= 1 and report.figures["files_new"] == 1
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_a_source_clock_behind_the_last_clean_pass_gets_every_path_stated(
        setup, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """If the source's clock went back, "unchanged since" means nothing: the tree is stat'ed again in full."""
    server, cfg, _ = setup
    assert run_pass(cfg, lambda: open_source(cfg.source)).exit_code() == 0
    with sqlite3.connect(st.state_path(cfg.mirror.path)) as conn:  # as if the last pass ran an hour from now
        conn.execute("UPDATE meta SET value = CAST(CAST(substr(value, 1, instr(value, ' ') - 1) AS INTEGER)"
                     " + 3600000000000 AS TEXT) || substr(value, instr(value, ' ')) WHERE key LIKE 'listed:%'")
    index, rel = _index_of(server)
    index.write_bytes(index.read_bytes() + b"\0" * 64)  # a change "before" that pass: answered "unchanged"
    rec = Answers(open_source(cfg.source))
    with caplog.at_level(logging.WARNING, logger="spoolmig"):
        report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    assert rec.unchanged > 0 and rel in rec.full
    assert any("clock is behind" in r.getMessage() for r in caplog.records)
    assert report.figures["files_changed"] >= 1
    assert_mirrors(ROOT, cfg)


class Dropping(Wrapper):
    """A source that never delivers one file (as a read error would leave it)."""

    def __init__(self, inner: Any, path: bytes) -> None:
        super().__init__(inner)
        self.path = path

    def fetch(self, root: str, paths: Iterable[Any]) -> Iterator[Fetched | bytes]:
        for item in self.inner.fetch(root, paths):
            if not isinstance(item, bytes) and item.entry.path == self.path:
                item.skip()
                continue
            yield item


@pytest.mark.usefixtures("no_freshness")
def test_after_a_pass_with_errors_the_next_hears_of_everything(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A file that failed to copy is retried even if it never changes again: no "unchanged" answers then."""
    server, cfg, _ = setup
    _clean_pass_then_wait_past_its_since(cfg, monkeypatch)
    index, rel = _index_of(server)
    _flip_last_byte(index)
    report = run_pass(cfg, lambda: Dropping(open_source(cfg.source), rel))
    assert report.figures["errors"] == 1 and report.exit_code() == 1
    assert "listed:partition-default" not in listed_clocks(cfg)
    rec = Answers(open_source(cfg.source))
    report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    assert rec.unchanged == 0 and rel in rec.full
    assert_mirrors(ROOT, cfg)
    assert "listed:partition-default" in listed_clocks(cfg)


@pytest.mark.usefixtures("no_freshness")
def test_an_unchanged_answer_does_not_stand_for_a_stale_row(
        setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """Rows a killed pass left stale are stat'ed again (the file fetched), however old the paths' ctimes."""
    server, cfg, _ = setup
    _clean_pass_then_wait_past_its_since(cfg, monkeypatch)
    _, rel = _index_of(server)
    copy = Path(cfg.mirror.path) / "partition-default" / os.fsdecode(rel)
    copy.write_bytes(b"half written")  # what the killed pass left, recorded stale
    box = rel.rpartition(b"/")[0]
    with sqlite3.connect(st.state_path(cfg.mirror.path)) as conn:
        assert conn.execute("UPDATE files SET stale = 1 WHERE tree = 'partition-default' AND path = ?",
                            (rel,)).rowcount == 1
        # and its directory as a killed pass records one it made: stale, attributes unknown (-1)
        assert conn.execute("UPDATE files SET stale = 1, size = -1, mtime_ns = -1, mode = -1"
                            " WHERE tree = 'partition-default' AND path = ?", (box,)).rowcount == 1
    rec = Answers(open_source(cfg.source))
    with caplog.at_level(logging.WARNING, logger="spoolmig"):
        report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    assert rec.unchanged > 20 and {rel, box} <= set(rec.full)  # answered "unchanged" first, then stat'ed again
    assert set(rec.full) <= {rel, box}  # those two alone: the tree was not stat'ed again in full
    assert not any("clock" in r.getMessage() for r in caplog.records)
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


@pytest.mark.usefixtures("no_freshness")
def test_the_configdirectory_is_walked_for_what_changed_within_the_one_listing_command(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Over SSH the dated walk of the configdirectory is a section of the pass's one listing command."""
    server, cfg, _ = setup
    _clean_pass_then_wait_past_its_since(cfg, monkeypatch)
    conf = server.path(server.configdirectory)
    seen = sorted(conf.glob("user/*/*.seen"))[0]
    seen.write_bytes(seen.read_bytes() + b"more")  # in place: its directory's mtime stays
    rec = Recording(open_source(cfg.source))
    report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    walked = [(p, kind) for root, p, kind in rec.walked if root == str(conf)]
    assert [p for p, kind in walked if kind != "d"] == [os.fsencode(seen.relative_to(conf))]
    assert len(walked) > 3 and rec.listed == []
    assert rec.inner.commands == 2  # the listing, then the tar of the one changed file
    assert report.figures["files_changed"] == 1
    assert_mirrors(ROOT, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_the_partitions_stats_come_before_the_configdirectory_walk(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The source walks a big configdirectory while this side works on the partitions' answers, not before."""
    from spoolmig.transport import _remote

    server, cfg, _ = setup
    _clean_pass_then_wait_past_its_since(cfg, monkeypatch)
    commands: list[list[str]] = []
    real = _remote.sections_command

    def recording(scripts: Any, **kw: Any) -> str:
        commands.append(list(scripts))
        return real(commands[-1], **kw)

    monkeypatch.setattr(_remote, "sections_command", recording)
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    (scripts,) = commands  # the one listing command
    conf = str(server.path(server.configdirectory))
    walk = next(i for i, s in enumerate(scripts) if conf in s and "-newerct" in s)
    stat = next(i for i, s in enumerate(scripts) if "xargs" in s)
    assert stat < walk
    assert_mirrors(ROOT, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_a_parallel_pass_also_hears_only_of_what_changed(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """With --jobs, each tree's listing is started on its own connection, dated: the next pass is as brief."""
    server, cfg, _ = setup
    parallel = Options(jobs=2)
    monkeypatch.setattr(worker_mod, "UNCHANGED_MARGIN_NS", -1_000_000_000)
    assert run_pass(cfg, lambda: open_source(cfg.source), parallel).exit_code() == 0
    trees = {"config", "sieve", *(f"partition-{p}" for p in server.partitions)}
    assert set(listed_clocks(cfg)) == {f"listed:{t}" for t in trees}
    wait_past_since(cfg)
    index, rel = _index_of(server)
    _flip_last_byte(index)
    conf = server.path(server.configdirectory)
    recs: list[Answers] = []

    def recorded() -> Any:
        recs.append(Answers(Recording(open_source(cfg.source))))
        return recs[-1]

    report = run_pass(cfg, recorded, parallel)
    assert report.exit_code() == 0, report.warnings
    assert len(recs) == 2
    assert sum(r.unchanged for r in recs) > 20 and rel in {p for r in recs for p in r.full}
    walked = [p for r in recs for root, p, kind in r.inner.walked if root == str(conf) and kind != "d"]
    assert walked == []  # the configdirectory's dated walk: nothing changed there
    assert report.figures["files_changed"] >= 1
    assert_mirrors(ROOT, cfg)


def _answers_of(monkeypatch: pytest.MonkeyPatch, method: str) -> list[tuple[str, Entry | bytes]]:
    """Every answer the raw SSH source's ``stat_changed`` or ``_stat`` gives, with its tree's root (no wrapper)."""
    from spoolmig.transport.ssh import SshSource

    answers: list[tuple[str, Entry | bytes]] = []
    real = getattr(SshSource, method)

    def recording(self: SshSource, root: str, *args: Any) -> Iterator[Entry | bytes]:
        for answer in real(self, root, *args):
            answers.append((root, answer))
            yield answer

    monkeypatch.setattr(SshSource, method, recording)
    return answers


@pytest.mark.usefixtures("no_freshness")
def test_unchanged_paths_send_nothing_and_every_kind_of_change_converges(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Through the real source and sshd: one byte per unchanged path; changes, expunges and a mailbox gone."""
    server, cfg, _ = setup
    _clean_pass_then_wait_past_its_since(cfg, monkeypatch)
    index, rel = _index_of(server)
    _flip_last_byte(index)
    server.deliver(3)
    server.expunge(2)
    gone = next(name for name, m in server.mailboxes.items()
                if server.partition_of[name] == "default" and server.mailbox_dir(m) != index.parent)
    server.delete_mailbox(gone)  # its directory and cyrus.* files print nothing: vanished, among unchanged
    answers = _answers_of(monkeypatch, "stat_changed")
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    with sqlite3.connect(st.state_path(cfg.mirror.path)) as conn:
        known = conn.execute("SELECT count(*) FROM files WHERE tree LIKE 'partition-%' AND cls > 0").fetchone()[0]
    assert 0 < len(answers) < known / 2, (len(answers), known)  # the rest: a byte each, no answer here
    assert report.figures["files_changed"] >= 1 and report.figures["files_deleted"] >= 2
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


@pytest.mark.usefixtures("no_freshness")
def test_a_row_whose_directory_the_state_lost_is_stated_again_checked(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Nothing vouches for a path below an unrecorded directory: it is stat'ed again, its directories checked."""
    server, cfg, _ = setup
    _clean_pass_then_wait_past_its_since(cfg, monkeypatch)
    index, rel = _index_of(server)
    box = rel.rpartition(b"/")[0]
    with sqlite3.connect(st.state_path(cfg.mirror.path)) as conn:  # a state that lost the mailbox's row
        assert conn.execute("DELETE FROM files WHERE tree = 'partition-default' AND path = ?", (box,)).rowcount == 1
    answers = _answers_of(monkeypatch, "_stat")  # the checked stat: one answer per path asked
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    checked = [a if isinstance(a, bytes) else a.path for _, a in answers]
    assert rel in checked and all(p.startswith(box + b"/") for p in checked), checked
    assert_mirrors(ROOT, cfg)  # (the directory's own row stays lost: nothing lists its unchanged parent)
