"""The mirror from a local folder: first copy, incremental convergence, what is (not) copied."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from test_mirror_support import (
    Recording,
    assert_mirrors,
    assert_state_matches_disk,
    load_config,
    local_factory,
    make_server,
    no_freshness,  # noqa: F401 - fixture
    temporaries,
    wait_past_since,
)

from spoolmig.mirror import worker as worker_mod
from spoolmig.mirror.engine import Options, run_pass
from spoolmig.mirror.replica import Replica
from spoolmig.transport.local import LocalSource


@pytest.fixture
def setup(tmp_path: Path):  # noqa: ANN201
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    return server, cfg


def test_first_pass_copies_file_for_file(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    report = run_pass(cfg, local_factory(cfg))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    mirror = Path(cfg.mirror.path)
    # runtime state and staging are not copied
    assert not (mirror / "config" / "db").exists()
    assert not (mirror / "config" / "deliver.db").exists()
    assert not (mirror / "config" / "socket").exists()
    assert not (mirror / "config" / "sieve").exists()  # mirrored once, as sieve/
    assert (mirror / "sieve").is_dir()
    assert (mirror / "config" / "mailboxes.db").is_file()
    # the active sieve script link is a link, with its target as stored
    links = [p for p in (mirror / "sieve").rglob("defaultbc")]
    assert links and all(p.is_symlink() and os.readlink(p) == "default.bc" for p in links)
    assert report.figures["files_new"] == sum(1 for _ in server.files()) - _not_copied(server)
    assert temporaries(mirror) == []


def _not_copied(server) -> int:  # noqa: ANN001
    conf = server.path(server.configdirectory)
    runtime = [conf / d for d in ("db", "socket", "proc", "log", "stage.")] + [conf / "deliver.db"]
    n = 0
    for p in runtime:
        n += 1 if p.is_file() else sum(len(f) for _, _, f in os.walk(p))
    return n


@pytest.mark.usefixtures("no_freshness")
def test_second_pass_without_change_fetches_and_relists_nothing(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    rec = Recording(LocalSource(cfg.source.url.path))
    report = run_pass(cfg, lambda: rec)
    assert rec.fetched == [] and rec.listed == []
    assert report.figures["files_new"] == report.figures["files_changed"] == report.figures["files_deleted"] == 0
    # no partition is walked: what the state knows as its directories and cyrus.* files is stat'ed, by
    # path; the configdirectory and sievedir (every file a metadata file) are walked for what changed since
    roots = _roots(cfg)
    assert sorted((root, cheap) for root, cheap, _ in rec.walks) == sorted(
        [(roots["config"], False), (roots["sieve"], False)])
    assert all(since is not None for _, _, since in rec.walks)
    stated = set(rec.stated)
    assert stated == {(roots[t], p) for t, p in _known(cfg) if t.startswith("partition-")}
    partitions = set(cfg.source.layout.partitions.values())
    assert not [p for root, p in stated if root in partitions and p.endswith(b".")]  # no message file
    assert {root for root, _ in stated} == partitions


def _roots(cfg) -> dict[str, str]:  # noqa: ANN001
    """Source root of every tree, by tree name."""
    layout = cfg.source.layout
    return {"config": layout.configdirectory, "sieve": layout.sievedir,
            **{f"partition-{name}": root for name, root in layout.partitions.items()}}


def _known(cfg) -> set[tuple[str, bytes]]:  # noqa: ANN001
    """(tree, path) of the directories and metadata files the state records: what a pass stats to list them."""
    with sqlite3.connect(Path(cfg.mirror.path) / ".spoolmig" / "state.sqlite") as conn:
        return set(conn.execute("SELECT tree, path FROM files WHERE cls > 0"))


def _message_stats(cfg, rec: Recording, known: set[tuple[str, bytes]]) -> set[bytes]:  # noqa: ANN001
    """The paths ``rec`` stat'ed besides the known directories and metadata files (``known``)."""
    trees = {root: tree for tree, root in _roots(cfg).items()}
    return {p for root, p in rec.stated if (trees.get(root), p) not in known}


def _recorded_pass(cfg):  # noqa: ANN001, ANN202
    """One pass from the local source, recording what it listed, stat'ed and fetched; it must succeed."""
    rec = Recording(LocalSource(cfg.source.url.path))
    report = run_pass(cfg, lambda: rec)
    assert report.exit_code() == 0, report.warnings
    return rec, report


def _converged(server, cfg) -> None:  # noqa: ANN001
    """The replica equals the source file for file, and the state describes the replica."""
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def _rel(server, cfg, path: Path) -> bytes:  # noqa: ANN001
    """``path`` on the source as the state names it: relative to its partition."""
    return os.fsencode(_replica_path(server, cfg, path)[1])


def _listed_dirs(server, rec: Recording) -> set[bytes]:  # noqa: ANN001
    """The directories ``rec`` listed, as absolute source paths."""
    return {os.fsencode(os.path.join(server.root, root.lstrip("/"))) + b"/" + d for root, d in rec.listed}


@pytest.mark.usefixtures("no_freshness")
def test_configdirectory_and_sievedir_converge_incrementally(setup) -> None:  # noqa: ANN001
    """Their files change in place: each tree is walked for what changed, and only directories whose mtime moved are listed."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    conf = server.path(server.configdirectory)
    sieve = server.path(server.sievedir)
    time.sleep(0.01)
    seen = sorted(conf.glob("user/*/*.seen"))[0]
    _rewrite_in_place(seen)  # a seen database committed
    _rewrite_in_place(conf / "mailboxes.db")
    (seen.parent / "newuser.sub").write_bytes(b"user.newuser\t\n")
    (conf / "user" / "z").mkdir()
    (conf / "user" / "z" / "zed.seen").write_bytes(b"seen database placeholder zed")
    quota = sorted(conf.glob("quota/*/user.*"))[0]
    quota.unlink()
    (conf / "tls_sessions.db").write_bytes(b"a cache, never migrated")
    (conf / "proc" / "5678").write_bytes(b"lmtpd\n")  # runtime: never entered
    script = sorted(sieve.glob("*/*/default.script"))[0]
    _rewrite_in_place(script)
    link = script.parent / "defaultbc"
    link.unlink()
    (script.parent / "vacation.bc").write_bytes(b"CyrSBytecode\0\0\0\x06")
    os.symlink("vacation.bc", link)
    rec, report = _recorded_pass(cfg)
    roots = _roots(cfg)
    assert {(root, since is not None) for root, _, since in rec.walks} == {(roots["config"], True),
                                                                           (roots["sieve"], True)}
    assert not [p for root, p in rec.stated if root in (roots["config"], roots["sieve"])]
    listed = {server.path(os.path.join(root, os.fsdecode(d))) for root, d in rec.listed}
    assert listed == {conf, seen.parent, conf / "user", conf / "user" / "z", quota.parent, script.parent}
    fetched = {server.path(os.path.join(root, os.fsdecode(p))) for root, p in rec.fetched}
    assert {seen, conf / "mailboxes.db", script, seen.parent / "newuser.sub", conf / "user" / "z" / "zed.seen",
            script.parent / "vacation.bc"} <= fetched
    assert not [p for p in fetched if p.name in ("tls_sessions.db", "5678")]
    assert report.figures["files_deleted"] == 1
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_a_tree_of_metadata_files_is_walked_for_what_changed_since_the_last_clean_pass(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The configdirectory's walk shows every directory and only the files whose inode changed since.

    Whatever else happened to it converges: a file deleted, a directory gone
    with what it held, a file swapped for a directory and one for a symlink,
    a file replaced by a rename, a new directory.
    """
    server, cfg = setup
    monkeypatch.setattr(worker_mod, "UNCHANGED_MARGIN_NS", -1_000_000_000)  # "since": just after the listing
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0
    wait_past_since(cfg)
    conf = server.path(server.configdirectory)
    seen = sorted(conf.glob("user/*/*.seen"))
    _rewrite_in_place(seen[0])
    replaced = seen[0].with_suffix(".sub")
    replaced.with_name("tmp").write_bytes(b"user.x\t\n")
    os.rename(replaced.with_name("tmp"), replaced)  # as cyrus_copyfile/rename writes it
    quotas = sorted(conf.glob("quota/*/user.*"))
    quotas[0].unlink()
    quotas[1].unlink()
    quotas[1].mkdir()  # a file, now a directory holding one
    (quotas[1] / "inner").write_bytes(b"0\n")
    quotas[2].unlink()
    os.symlink("elsewhere", quotas[2])
    gone_dir = seen[-1].parent
    assert gone_dir != seen[0].parent
    shutil.rmtree(gone_dir)
    (conf / "user" / "q").mkdir()
    (conf / "user" / "q" / "new.seen").write_bytes(b"seen")
    rec, report = _recorded_pass(cfg)
    root = _roots(cfg)["config"]
    assert [(r, since is not None) for r, _, since in rec.walks if r == root] == [(root, True)]
    walked = {os.fsdecode(p): kind for r, p, kind in rec.walked if r == root}
    on_source = {os.path.relpath(d, conf) if d != str(conf) else "" for d, _, _ in os.walk(conf)}
    on_source = {d for d in on_source if d.split("/")[0] not in ("db", "socket", "proc", "log", "stage.", "sieve")}
    assert {p for p, kind in walked.items() if kind == "d"} == on_source  # every directory
    changed = {seen[0], replaced, quotas[2], quotas[1] / "inner", conf / "user" / "q" / "new.seen"}
    assert {p for p, kind in walked.items() if kind != "d"} == {str(p.relative_to(conf)) for p in changed}
    assert report.figures["files_deleted"] >= 3  # two quota files, the user directory's files
    _converged(server, cfg)
    assert not (Path(cfg.mirror.path) / "config" / gone_dir.relative_to(conf)).exists()


@pytest.mark.usefixtures("no_freshness")
def test_a_source_clock_behind_the_last_clean_pass_gets_the_configdirectory_walked_in_full(
        setup, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """"Changed since" means nothing if the source's clock went back: the tree is walked again, whole."""
    server, cfg = setup
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0
    with sqlite3.connect(Path(cfg.mirror.path) / ".spoolmig" / "state.sqlite") as conn:  # an hour from now
        conn.execute("UPDATE meta SET value = CAST(CAST(substr(value, 1, instr(value, ' ') - 1) AS INTEGER)"
                     " + 3600000000000 AS TEXT) || substr(value, instr(value, ' ')) WHERE key LIKE 'listed:%'")
    conf = server.path(server.configdirectory)
    seen = sorted(conf.glob("user/*/*.seen"))[0]
    _rewrite_in_place(seen)  # a change "before" that pass: the walk since then leaves it out
    with caplog.at_level(logging.WARNING, logger="spoolmig"):
        rec, report = _recorded_pass(cfg)
    root = _roots(cfg)["config"]
    walks = [since for r, _, since in rec.walks if r == root]
    assert len(walks) == 2 and walks[0] is not None and walks[1] is None
    assert any("config: the source's clock is behind" in r.getMessage() for r in caplog.records)
    assert report.figures["files_changed"] >= 1
    _converged(server, cfg)


def _rewrite_in_place(path: Path) -> None:
    """Change a file's bytes in place, keeping its size and inode (a database commit): its mtime moves."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    with open(path, "r+b") as f:
        f.write(data)


@pytest.mark.usefixtures("no_freshness")
def test_incremental_pass_relists_only_changed_directories(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    delivered = server.deliver(1)[0]
    expunged = server.expunge(1)[0]
    rec, report = _recorded_pass(cfg)
    listed_dirs = _listed_dirs(server, rec)
    want = {os.fsencode(delivered.parent), os.fsencode(expunged.parent)}
    assert listed_dirs == want
    fetched = {p.rpartition(b"/")[2] for _, p in rec.fetched}
    assert os.fsencode(delivered.name) in fetched
    assert report.figures["files_new"] == 1 and report.figures["files_deleted"] == 1
    assert report.figures["dirs_relisted"] == len(want)
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_relisted_directories_compare_message_files_by_name(setup) -> None:  # noqa: ANN001
    """Message files of a changed directory are compared by name: only the new ones are stat'ed."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    delivered = server.deliver(6)
    server.expunge(3)
    known = _known(cfg)
    rec, report = _recorded_pass(cfg)
    new = {_rel(server, cfg, d) for d in delivered if d.exists()}
    assert _message_stats(cfg, rec, known) == new
    assert report.figures["files_new"] == len(new) and report.figures["files_deleted"] == 3
    assert report.figures["entries_listed"] >= sum(len(os.listdir(d.parent)) for d in delivered if d.exists())
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_message_files_in_a_partition_root_with_odd_names_are_compared_by_name(setup) -> None:  # noqa: ANN001
    """Names of the root itself (its files have the dir b"") and names no encoding holds: only new ones stat'ed."""
    server, cfg = setup
    top = server.path(server.partitions["default"])
    odd = [b"1.", b"\xff\xfe.", b"new\nline.", b"-rf", b"0"]
    for name in odd:
        (top / os.fsdecode(name)).write_bytes(b"x" * 7)
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    (top / os.fsdecode(odd[1])).unlink()
    (top / "2.").write_bytes(b"y")
    known = _known(cfg)
    rec, report = _recorded_pass(cfg)
    assert _message_stats(cfg, rec, known) == {b"2."}
    assert report.figures["files_new"] == 1 and report.figures["files_deleted"] == 1
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_a_message_file_replaced_by_a_directory_converges(setup) -> None:  # noqa: ANN001
    """A name listed as a directory where the state has a message file: the file goes, the directory comes."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    victim = sorted(server.deliver(1)[0].parent.glob("*."))[0]
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    victim.unlink()
    victim.mkdir()
    (victim / "inside").write_bytes(b"x")
    _recorded_pass(cfg)
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_a_directory_replaced_by_a_file_is_recorded_as_the_file(setup) -> None:  # noqa: ANN001
    """The directory's row goes before the file's is recorded: the state holds the file, the next pass is idle."""
    server, cfg = setup
    leaf = next(m for n, m in sorted(server.mailboxes.items())
                if not any(o.startswith(n + ".") for o in server.mailboxes))
    directory = server.mailbox_dir(leaf)
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    shutil.rmtree(directory)
    directory.write_bytes(b"now a file")
    run_pass(cfg, local_factory(cfg))
    assert_state_matches_disk(Path(cfg.mirror.path))
    rec, report = _recorded_pass(cfg)
    assert rec.fetched == [] and report.figures["files_new"] == 0
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_a_stale_message_file_in_a_relisted_directory_is_checked_again(setup) -> None:  # noqa: ANN001
    """A message file the state does not trust (a pass died while writing it) is stat'ed and fetched again."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    time.sleep(0.01)
    delivered = server.deliver(1)[0]
    victim = sorted(p for p in delivered.parent.iterdir() if p.name.endswith(".") and p != delivered)[0]
    tree, rel = _replica_path(server, cfg, victim)
    replica_file = Path(cfg.mirror.path) / tree / rel
    replica_file.write_bytes(b"half written")
    with sqlite3.connect(Path(cfg.mirror.path) / ".spoolmig" / "state.sqlite") as conn:
        assert conn.execute("UPDATE files SET stale = 1 WHERE tree = ? AND path = ?",
                            (tree, os.fsencode(rel))).rowcount == 1
    known = _known(cfg)
    rec, report = _recorded_pass(cfg)
    assert _message_stats(cfg, rec, known) == {_rel(server, cfg, f) for f in (delivered, victim)}
    assert replica_file.read_bytes() == victim.read_bytes()
    _converged(server, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_a_renamed_mailbox_is_linked_not_fetched_again(setup) -> None:  # noqa: ANN001
    """A rename keeps the message files' inodes: the replica links them at the new place, then drops the old."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    leaves = [n for n in sorted(server.mailboxes) if not any(o.startswith(n + ".") for o in server.mailboxes)]
    name = max(leaves, key=lambda n: len(server.mailboxes[n].uids))
    mbox = server.mailboxes[name]
    messages = len(mbox.uids)
    assert messages >= 2
    old_tree, old_rel = _replica_path(server, cfg, server.mailbox_dir(mbox))
    server.rename_mailbox(name, "user.renamed")
    new_dir = server.mailbox_dir(server.mailboxes["user.renamed"])
    rec, report = _recorded_pass(cfg)
    fetched = {p for _, p in rec.fetched}
    tree, rel = _replica_path(server, cfg, new_dir)
    assert not any(p.startswith(os.fsencode(rel) + b"/") and p.endswith(b".") for p in fetched), \
        "no message of the renamed mailbox is fetched again"
    assert report.figures["files_linked"] == messages
    assert not (Path(cfg.mirror.path) / old_tree / old_rel).exists()
    for uid in mbox.uids:
        assert (Path(cfg.mirror.path) / tree / rel / f"{uid}.").stat().st_nlink == 1, "the old path is gone"
    _converged(server, cfg)


def test_replica_totals_follow_every_change_and_an_old_state_is_upgraded(setup) -> None:  # noqa: ANN001
    """The totals every report shows are kept by triggers: equal to a recount after any change.

    A state made before the totals table (with the files_cls and files_size
    indexes) gets the table, counted once, and loses those indexes.
    """
    server, cfg = setup
    state = Path(cfg.mirror.path) / ".spoolmig" / "state.sqlite"

    def counted() -> tuple[int, int]:
        with sqlite3.connect(state) as conn:
            return conn.execute("SELECT count(*), sum(size) FROM files WHERE kind = 'f' AND size >= 0").fetchone()

    def totals(report) -> tuple[int, int]:  # noqa: ANN001
        return report.figures["replica_files"], report.figures["replica_bytes"]

    assert totals(run_pass(cfg, local_factory(cfg))) == counted()
    before = counted()
    server.deliver(3)
    server.expunge(2)
    server.flag_change(2)
    assert totals(run_pass(cfg, local_factory(cfg))) == counted() != before
    with sqlite3.connect(state) as conn:  # as an earlier spoolmig left it
        conn.executescript("DROP TRIGGER totals_insert; DROP TRIGGER totals_delete; DROP TRIGGER totals_update;"
                           " DROP TABLE totals; CREATE INDEX files_cls ON files(tree, cls);"
                           " CREATE INDEX files_size ON files(kind, size);")
    server.delete_mailbox(next(iter(server.mailboxes)))
    assert totals(run_pass(cfg, local_factory(cfg))) == counted()
    with sqlite3.connect(state) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "totals" in names and not {"files_cls", "files_size"} & names
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_all_kinds_of_change_converge(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    leaves = [n for n in sorted(server.mailboxes) if not any(o.startswith(n + ".") for o in server.mailboxes)]
    server.deliver(7)
    server.expunge(3)
    server.create_mailbox("user.newbie")
    server.create_mailbox("user.newbie.Sub", partition="second")
    server.deliver(2)
    server.delete_mailbox(leaves[1])
    server.rename_mailbox(leaves[3], "user.renamed")
    report = run_pass(cfg, local_factory(cfg))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    assert report.figures["files_deleted"] > 0 and report.figures["files_new"] > 0


def test_index_rewritten_in_place_same_size_same_second(setup) -> None:  # noqa: ANN001
    """Same size, same second, only the nanoseconds differ: rsync's quick check misses it."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    mbox = next(iter(server.mailboxes.values()))
    index = server.mailbox_dir(mbox) / "cyrus.index"
    st = index.stat()
    data = bytearray(index.read_bytes())
    data[0] ^= 0xFF
    with open(index, "r+b") as f:
        f.write(data)
    second = st.st_mtime_ns // 10**9 * 10**9
    new_ns = second + (st.st_mtime_ns - second + 1) % 10**9
    os.utime(index, ns=(new_ns, new_ns))
    report = run_pass(cfg, local_factory(cfg))
    assert report.figures["files_changed"] == 1
    assert_mirrors(server.root, cfg)


def test_index_rewritten_with_identical_stat_is_fixed_by_final(setup) -> None:  # noqa: ANN001
    """A rewrite that keeps size and mtime to the nanosecond: only --final's unconditional re-copy sees it."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    changed = server.flag_change(2)
    report = run_pass(cfg, local_factory(cfg), Options(final=True, quiet_wait=0.1))
    assert report.statement is not None, report.differences
    for index in changed:
        tree, rel = _replica_path(server, cfg, index)
        assert (Path(cfg.mirror.path) / tree / rel).read_bytes() == index.read_bytes()
    assert report.figures["files_recopied"] >= 2


def _replica_path(server, cfg, path: Path) -> tuple[str, str]:  # noqa: ANN001
    for name, root in cfg.source.layout.partitions.items():
        base = server.path(root)
        if base in path.parents:
            return f"partition-{name}", str(path.relative_to(base))
    raise AssertionError(path)


def test_jobs_mirror_partitions_in_parallel(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    opened = []

    def factory():  # noqa: ANN202
        opened.append(1)
        return LocalSource(cfg.source.url.path)

    report = run_pass(cfg, factory, Options(jobs=3))
    assert report.exit_code() == 0
    assert len(opened) >= 2  # more than one source connection was used
    server.deliver(5)
    server.expunge(2)
    run_pass(cfg, factory, Options(jobs=3))
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_delete_false_keeps_and_reports(tmp_path: Path) -> None:
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror", mirror_extra="delete = false\n")
    run_pass(cfg, local_factory(cfg))
    gone = server.expunge(2)
    report = run_pass(cfg, local_factory(cfg))
    assert report.figures["files_kept"] == 2 and report.figures["files_deleted"] == 2
    for path in gone:
        tree, rel = _replica_path(server, cfg, path)
        assert (tmp_path / "mirror" / tree / rel).exists()


def test_config_include_and_exclude(tmp_path: Path) -> None:
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror",
                      mirror_extra='config_include = ["mailboxes.db", "user", "deliver.db"]\n'
                                   'config_exclude = ["*.seen"]\n')
    run_pass(cfg, local_factory(cfg))
    conf = tmp_path / "mirror" / "config"
    assert (conf / "mailboxes.db").is_file() and (conf / "deliver.db").is_file()
    assert not (conf / "quota").exists()
    assert list(conf.rglob("*.sub")) and not list(conf.rglob("*.seen"))


def test_cyrus_temporaries_and_staging_are_not_copied(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    part = server.path(server.partitions["default"])
    (part / "stage.").mkdir(exist_ok=True)
    (part / "stage.").joinpath("1234-5678-1").write_bytes(b"half a delivery")
    mbox = next(m for m in server.mailboxes.values() if server.partition_of[m.name] == "default")
    (server.mailbox_dir(mbox) / "cyrus.index.NEW").write_bytes(b"torn")
    run_pass(cfg, local_factory(cfg))
    replica = tmp = Path(cfg.mirror.path) / "partition-default"
    assert not (replica / "stage.").exists()
    assert not list(tmp.rglob("*.NEW"))
    assert_mirrors(server.root, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_changed_tree_switches_to_one_walk(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """When most directories changed, one walk replaces listing them one by one."""
    from spoolmig.mirror import worker

    monkeypatch.setattr(worker, "RELIST_WALK_MIN", 0)
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    for mbox in list(server.mailboxes.values()):
        server._append(mbox)
    rec = Recording(LocalSource(cfg.source.url.path))
    run_pass(cfg, lambda: rec)
    default = cfg.source.layout.partitions["default"]
    assert not [d for root, d in rec.listed if root == default]
    assert (default, False, None) in rec.walks
    assert_mirrors(server.root, cfg)


@pytest.mark.usefixtures("no_freshness")
def test_pass_figures_are_recorded(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    server.deliver(3)
    run_pass(cfg, local_factory(cfg))
    conn = sqlite3.connect(Path(cfg.mirror.path) / ".spoolmig" / "state.sqlite")
    rows = conn.execute("SELECT mode, outcome, files_new, ended >= started, entries_listed FROM passes"
                        " ORDER BY id").fetchall()
    conn.close()
    assert [r[:2] for r in rows] == [("incremental", "ok"), ("incremental", "ok")]
    assert rows[1][2] == 3 and rows[0][3] == 1 and rows[1][4] < rows[0][4]


def test_full_pass_repairs_a_tampered_replica(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    mirror = Path(cfg.mirror.path)
    victim = next((mirror / "partition-default").rglob("1."))
    victim.write_bytes(b"tampered")
    stray = mirror / "partition-default" / "stray-file"
    stray.write_bytes(b"not from the source")
    gone = next((mirror / "config" / "user").rglob("*.sub"))
    gone.unlink()
    quick = run_pass(cfg, local_factory(cfg))
    assert quick.figures["files_changed"] == 0  # an incremental pass trusts the state
    run_pass(cfg, local_factory(cfg), Options(full=True))
    assert not stray.exists()
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(mirror)


class RecordingProgress:
    def __init__(self) -> None:
        self.phases: list[list] = []

    def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
        self.phases.append([label, total, unit, 0])

    def advance(self, n: int = 1) -> None:
        self.phases[-1][3] += n

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


def test_progress_reports_entries_then_bytes(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    progress = RecordingProgress()
    report = run_pass(cfg, local_factory(cfg), progress=progress)
    (listing, _, unit1, entries), (copying, total, unit2, copied) = progress.phases
    assert (listing, unit1, copying, unit2) == ("listing", "entries", "copying", "B")
    assert entries == report.figures["entries_listed"]
    symlink_bytes = sum(len(os.readlink(p)) for p in (Path(cfg.mirror.path) / "sieve").rglob("defaultbc"))
    assert total == copied == report.figures["bytes_new"] - symlink_bytes


def test_a_change_in_the_same_clock_tick_as_the_listing_is_not_missed(setup) -> None:  # noqa: ANN001
    """A delivery right after the listing, in the same tick, leaves the directory mtime unchanged."""
    server, cfg = setup
    mbox = next(iter(server.mailboxes.values()))
    directory = server.mailbox_dir(mbox)
    now = time.time_ns()
    os.utime(directory, ns=(now, now))  # the newest directory: just changed
    run_pass(cfg, local_factory(cfg))
    new = server._append(mbox)
    os.utime(directory, ns=(now, now))  # same tick: the mtime did not move
    report = run_pass(cfg, local_factory(cfg))
    assert report.figures["files_new"] == 1
    assert (Path(cfg.mirror.path) / _replica_path(server, cfg, new)[0] / _replica_path(server, cfg, new)[1]).exists()
    assert_mirrors(server.root, cfg)


def test_a_too_fresh_directory_is_listed_again_but_not_scanned_for_crash_debris(setup, monkeypatch) -> None:  # noqa: ANN001
    """Untrusted mtimes are not interrupted writes: the next pass relists them, nothing scans the replica."""
    server, cfg = setup
    mbox = next(iter(server.mailboxes.values()))
    directory = server.mailbox_dir(mbox)
    now = time.time_ns()
    os.utime(directory, ns=(now, now))  # the newest directory: too fresh to trust
    run_pass(cfg, local_factory(cfg))
    scanned: list[tuple[str, bytes]] = []
    real_scan = Replica.scan_dir
    monkeypatch.setattr(Replica, "scan_dir", lambda self, tree, rel: scanned.append((tree, rel)) or real_scan(
        self, tree, rel))
    rec = Recording(LocalSource(cfg.source.url.path))
    run_pass(cfg, lambda: rec)
    listed = _listed_dirs(server, rec)
    assert os.fsencode(directory) in listed
    assert scanned == []
    assert_state_matches_disk(Path(cfg.mirror.path))


def _age(top: Path) -> None:
    """Date everything below ``top`` an hour back: a source quiet for long."""
    old = time.time_ns() - 3600 * 10**9
    for dirpath, dirs, files in os.walk(top):
        for name in files + dirs:
            os.utime(os.path.join(dirpath, name), ns=(old, old), follow_symlinks=False)
        os.utime(dirpath, ns=(old, old))


class _NoClock(Recording):
    """A source that cannot date its listings (as over SFTP)."""

    def listing_clock(self, root: str) -> None:
        return None


@pytest.mark.parametrize("clock", [True, False])
def test_a_burst_of_changes_seconds_before_the_listing_is_trusted_when_the_source_clock_is_known(
        setup, clock: bool) -> None:  # noqa: ANN001
    """Dated by the source's clock, directories changed 5 s before the listing are not listed again.

    Without a clock the newest mtime stands in for the listing's start, and the
    whole burst (within a second of it) is taken as too fresh: listed again.
    """
    server, cfg = setup
    _age(server.root)
    run_pass(cfg, local_factory(cfg))
    delivered = server.deliver(5)
    burst = time.time_ns() - 5 * 10**9
    changed = {p.parent for p in delivered}
    # the burst is the newest thing on the source (older message files never change)
    for path in [*delivered, *(p for d in changed for p in d.glob("cyrus.*")), *changed]:
        os.utime(path, ns=(burst, burst))
    wrap = Recording if clock else _NoClock
    rec = wrap(LocalSource(cfg.source.url.path))
    run_pass(cfg, lambda: rec)
    listed = _listed_dirs(server, rec)
    assert {os.fsencode(d) for d in changed} <= listed  # changed: listed this pass
    rec = wrap(LocalSource(cfg.source.url.path))
    run_pass(cfg, lambda: rec)
    again = _listed_dirs(server, rec)
    if clock:
        assert again == set()
    else:
        assert {os.fsencode(d) for d in changed} <= again
    assert_mirrors(server.root, cfg)


def test_old_directories_are_trusted(setup) -> None:  # noqa: ANN001
    """On a source quiet for minutes nothing is too fresh: a no-change pass lists no directory."""
    server, cfg = setup
    _age(server.root)
    run_pass(cfg, local_factory(cfg))
    rec = Recording(LocalSource(cfg.source.url.path))
    run_pass(cfg, lambda: rec)
    assert rec.listed == []


def test_hard_links_of_the_source_are_linked_not_fetched(setup) -> None:  # noqa: ANN001
    """Cyrus's singleinstancestore hard-links one delivery into several mailboxes."""
    server, cfg = setup
    boxes = [m for m in server.mailboxes.values() if server.partition_of[m.name] == "default"][:3]
    first = server._append(boxes[0])
    for mbox in boxes[1:]:
        mbox.last_uid += 1
        mbox.uids.append(mbox.last_uid)
        os.link(first, server.mailbox_dir(mbox) / f"{mbox.last_uid}.")
    rec = Recording(LocalSource(cfg.source.url.path))
    report = run_pass(cfg, lambda: rec)
    assert report.figures["files_linked"] == 2
    fetched = {p for _, p in rec.fetched}
    base = server.path(server.partitions["default"])
    linked = [os.fsencode((server.mailbox_dir(m) / f"{m.last_uid}.").relative_to(base)) for m in boxes[1:]]
    assert not fetched & set(linked)
    replica = Path(cfg.mirror.path) / "partition-default"
    inodes = {(replica / os.fsdecode(p)).stat().st_ino for p in linked}
    inodes.add((replica / first.relative_to(base)).stat().st_ino)
    assert len(inodes) == 1
    assert_mirrors(server.root, cfg)
    # a later delivery linked to an already mirrored message: linked again
    target = boxes[0]
    target.last_uid += 1
    target.uids.append(target.last_uid)
    os.link(first, server.mailbox_dir(target) / f"{target.last_uid}.")
    report = run_pass(cfg, local_factory(cfg))
    assert report.figures["files_linked"] == 1
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
