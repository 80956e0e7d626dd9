"""Hostile input: odd names, symlinks pointing out, a source that lies about paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    tree_digest,
)

from spoolmig.fileio import TEMP_MARK
from spoolmig.mirror.engine import run_pass
from spoolmig.mirror.trees import check_relpath
from spoolmig.transport.base import Entry
from spoolmig.transport.local import LocalSource

ODD_NAMES = [
    b"with space", b"quote'single", b'quote"double', b"dollar$HOME", b"back`tick`", b"new\nline",
    b"latin1-\xe9\xff", b"-rf", b"--help", b"$(touch pwned)", b"semi;colon", b"star*", b"tab\tname",
]


def _make_odd_mailboxes(partition: Path) -> None:
    base = os.fsencode(partition / "u" / "user")
    for i, name in enumerate(ODD_NAMES):
        d = base + b"/" + name
        os.makedirs(d, exist_ok=True)
        for uid in (1, 2):
            with open(d + b"/%d." % uid, "wb") as f:
                f.write(b"message %d in %r\n" % (uid, name))
        with open(d + b"/cyrus.index", "wb") as f:
            f.write(b"index %d" % i)
        with open(d + b"/" + name, "wb") as f:  # an odd file name too
            f.write(b"odd file")


@pytest.fixture
def setup(tmp_path: Path):  # noqa: ANN201
    server = make_server(tmp_path / "old", users=2, messages=10)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not part of the spool")
    return server, cfg, outside


def test_odd_names_are_mirrored_exactly(setup) -> None:  # noqa: ANN001
    server, cfg, _ = setup
    part = server.path(server.partitions["default"])
    _make_odd_mailboxes(part)
    report = run_pass(cfg, local_factory(cfg))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(server.root, cfg)
    # and incrementally: a new message in each odd mailbox, one odd mailbox deleted
    for name in ODD_NAMES:
        with open(os.fsencode(part / "u" / "user") + b"/" + name + b"/3.", "wb") as f:
            f.write(b"third")
    import shutil

    shutil.rmtree(os.fsencode(part / "u" / "user") + b"/" + ODD_NAMES[0])
    report = run_pass(cfg, local_factory(cfg))
    assert report.figures["files_new"] == len(ODD_NAMES) - 1
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    assert not Path("pwned").exists() and not (Path(cfg.mirror.path) / "pwned").exists()


def test_symlinks_pointing_outside_are_recreated_never_followed(setup) -> None:  # noqa: ANN001
    server, cfg, outside = setup
    part = server.path(server.partitions["default"])
    user = part / "u" / "user"
    os.symlink(outside, user / "escape-dir")
    os.symlink(outside / "secret", user / "escape-file")
    os.symlink("../../../../../../../../etc/passwd", user / "dotdot")
    before = tree_digest(outside)
    run_pass(cfg, local_factory(cfg))
    replica = Path(cfg.mirror.path) / "partition-default" / "u" / "user"
    for name in ("escape-dir", "escape-file", "dotdot"):
        assert (replica / name).is_symlink()
        assert os.readlink(replica / name) == os.readlink(user / name)
    assert tree_digest(outside) == before
    assert_mirrors(server.root, cfg)


def test_a_symlink_replaced_by_a_directory_is_not_written_through(setup) -> None:  # noqa: ANN001
    server, cfg, outside = setup
    part = server.path(server.partitions["default"])
    trap = part / "u" / "user" / "trap"
    os.symlink(outside, trap)
    run_pass(cfg, local_factory(cfg))
    before = tree_digest(outside)
    trap.unlink()
    trap.mkdir()
    (trap / "1.").write_bytes(b"a message")
    (trap / "secret").write_bytes(b"overwrite attempt")
    (trap / "cyrus.index").write_bytes(b"index")
    run_pass(cfg, local_factory(cfg))
    assert tree_digest(outside) == before
    replica = Path(cfg.mirror.path) / "partition-default" / "u" / "user" / "trap"
    assert replica.is_dir() and not replica.is_symlink()
    assert (replica / "1.").read_bytes() == b"a message"
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_a_symlink_planted_in_the_replica_is_not_written_through(setup) -> None:  # noqa: ANN001
    server, cfg, outside = setup
    run_pass(cfg, local_factory(cfg))
    mbox = next(m for m in server.mailboxes.values() if server.partition_of[m.name] == "default"
                and not any(o.startswith(m.name + ".") for o in server.mailboxes))
    rel = server.mailbox_dir(mbox).relative_to(server.path(server.partitions["default"]))
    planted = Path(cfg.mirror.path) / "partition-default" / rel
    import shutil

    shutil.rmtree(planted)
    os.symlink(outside, planted)
    before = tree_digest(outside)
    server._append(mbox)
    server._write_metadata(mbox)
    run_pass(cfg, local_factory(cfg))
    assert tree_digest(outside) == before
    assert planted.is_dir() and not planted.is_symlink()


def test_source_names_that_would_escape_are_refused(setup) -> None:  # noqa: ANN001
    server, cfg, outside = setup

    class Lying(Wrapper):
        def walk(self, root: str, **kw: Any) -> Iterator[Entry]:
            yield from self.inner.walk(root, **kw)
            for bad in (b"../../outside/evil", b"/etc/evil", b"a/../../evil", b"nul\0byte", b"a//b",
                        TEMP_MARK.encode() + b"x"):
                yield Entry(path=bad, kind="f", size=4, mtime_ns=0, mode=0o644)

    before = tree_digest(outside)
    report = run_pass(cfg, lambda: Lying(LocalSource(cfg.source.url.path)))
    assert report.exit_code() == 1
    assert report.figures["errors"] == 6 * 4  # each bad name, in each of the 4 trees
    assert any("skipped: the name" in w for w in report.warnings)
    assert tree_digest(outside) == before
    assert not (Path(cfg.mirror.path).parent / "evil").exists()
    assert temporaries(Path(cfg.mirror.path)) == []


@pytest.mark.parametrize("path,problem", [
    (b"", None), (b"a/b/1.", None), (b"-rf", None), (b"new\nline", None),
    (b"/abs", "is absolute"), (b"a/../b", "has an empty"), (b"..", "has an empty"), (b"a//b", "has an empty"),
    (b"a/", "has an empty"), (b"./a", "has an empty"), (b"a\0b", "contains a NUL"),
    (TEMP_MARK.encode() + b"1", "spoolmig temporary"),
])
def test_check_relpath(path: bytes, problem: str | None) -> None:
    result = check_relpath(path)
    assert (result is None) if problem is None else (result is not None and problem in result)


def test_deleting_under_a_planted_replica_symlink_deletes_nothing_outside(setup) -> None:  # noqa: ANN001
    from spoolmig.mirror.engine import Options

    server, cfg, outside = setup
    run_pass(cfg, local_factory(cfg))
    mbox = next(m for m in server.mailboxes.values() if server.partition_of[m.name] == "default"
                and len(m.uids) >= 2 and not any(o.startswith(m.name + ".") for o in server.mailboxes))
    rel = server.mailbox_dir(mbox).relative_to(server.path(server.partitions["default"]))
    planted = Path(cfg.mirror.path) / "partition-default" / rel
    import shutil

    names = [p.name for p in planted.iterdir()]
    shutil.rmtree(planted)
    os.symlink(outside, planted)
    for name in names:  # the outside directory looks like the mailbox
        (outside / name).write_bytes(b"outside, not ours")
    before = tree_digest(outside)
    uid = mbox.uids.pop(0)
    (server.mailbox_dir(mbox) / f"{uid}.").unlink()
    server._write_metadata(mbox)
    run_pass(cfg, local_factory(cfg))
    run_pass(cfg, local_factory(cfg), Options(full=True))
    assert tree_digest(outside) == before
    assert planted.is_dir() and not planted.is_symlink()
    assert_mirrors(server.root, cfg)
