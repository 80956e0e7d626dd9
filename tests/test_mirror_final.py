"""--final, --checksum, --dry-run, the lock, status and the command line."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_mirror_support import (
    Wrapper,
    assert_mirrors,
    assert_state_matches_disk,
    expected_replica,
    load_config,
    local_factory,
    make_server,
    tree_digest,
)

from spoolmig.cli import main
from spoolmig.errors import LockedError, SourceNotQuiet
from spoolmig.mirror.engine import Options, run_pass
from spoolmig.mirror.lock import MirrorLock
from spoolmig.mirror.status import compute_churn, compute_forecast, read_status
from spoolmig.mirror.trees import trees_from_config
from spoolmig.mirror.worker import TreeWorker
from spoolmig.transport.base import Fetched
from spoolmig.transport.local import LocalSource

FINAL = Options(final=True, quiet_wait=0.05)


@pytest.fixture
def setup(tmp_path: Path):  # noqa: ANN201
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    return server, cfg


# ---------------------------------------------------------------- --final


def test_final_states_what_it_verified(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    server.deliver(3)
    report = run_pass(cfg, local_factory(cfg), FINAL)
    want = expected_replica(server.root, cfg)
    files = sum(1 for t in want.values() for v in t.values() if v[0] in "fl")
    size = sum(v[1] for t in want.values() for v in t.values() if v[0] == "f")
    assert report.statement == f"replica equals source: {files} files, {size} bytes"
    assert report.exit_code() == 0
    assert report.figures["files_new"] == 3
    # every metadata file (cyrus.*, config, sieve) was copied again, changed or not
    metadata = sum(1 for name, t in want.items() for rel, v in t.items()
                   if v[0] in "fl" and (not name.startswith("partition-")
                                        or rel.rsplit(b"/", 1)[-1].startswith(b"cyrus.")))
    assert report.figures["files_recopied"] + report.figures["files_changed"] == metadata
    assert report.figures["files_recopied"] > 0
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_final_reads_the_replica_while_the_source_lists_it_the_last_time(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The closing listing is started, the replica read for the verified statement, and only then the listing."""
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    events: list[str] = []

    class Ordered(Wrapper):
        def prepare_walks(self, walks: Any) -> None:
            events.append("start listing")

        def walk(self, root: str, **kw: Any) -> Any:
            events.append("read listing")
            return self.inner.walk(root, **kw)

    load_disk = TreeWorker._load_disk

    def recorded(self: TreeWorker) -> None:
        events.append("read replica")
        load_disk(self)

    monkeypatch.setattr(TreeWorker, "_load_disk", recorded)
    server.deliver(2)
    report = run_pass(cfg, lambda: Ordered(LocalSource(cfg.source.url.path)), FINAL)
    assert report.statement is not None and report.statement.startswith("replica equals source")
    trees = len(trees_from_config(cfg))
    closing = len(events) - 1 - events[::-1].index("start listing")
    assert events[closing:] == ["start listing"] + ["read replica"] * trees + ["read listing"] * trees


def test_final_refuses_while_cyrus_runs(setup) -> None:  # noqa: ANN001
    server, cfg = setup

    class Running(Wrapper):
        def cyrus_processes(self) -> list[str]:
            return ["/usr/lib/cyrus/bin/master -d", "imapd -s"]

    with pytest.raises(SourceNotQuiet) as exc:
        run_pass(cfg, lambda: Running(LocalSource(cfg.source.url.path)), FINAL)
    assert "Cyrus is still running" in str(exc.value) and exc.value.exit_code == 10
    assert not (Path(cfg.mirror.path) / "partition-default").exists()


def test_final_refuses_when_the_source_still_changes(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    trees = 4  # config, sieve, two partitions: the first listing has this many walks

    class Busy(Wrapper):
        walks = 0

        def walk(self, root: str, **kw: Any):  # noqa: ANN201
            Busy.walks += 1
            if Busy.walks == trees + 1:  # between the two listings, a delivery
                server.deliver(1)
            return self.inner.walk(root, **kw)

    with pytest.raises(SourceNotQuiet) as exc:
        run_pass(cfg, lambda: Busy(LocalSource(cfg.source.url.path)), FINAL)
    assert "changed between two listings" in str(exc.value)


def test_final_lists_differences_when_a_file_changes_during_it(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    message = server.deliver(1)[0]
    index = message.parent / "cyrus.index"
    base = server.path(server.partitions[server.partition_of[_mailbox_of(server, message)]])
    target = os.fsencode(index.relative_to(base))
    report = run_pass(cfg, lambda: ChangesWhileRead(LocalSource(cfg.source.url.path), target, index), FINAL)
    assert report.statement is None
    assert report.exit_code() == 13
    assert report.figures["files_changed_during"] == 1
    assert any("cyrus.index" in line and "changed during the pass" in line for line in report.differences)
    # the next pass copies it again and converges
    report = run_pass(cfg, local_factory(cfg), FINAL)
    assert report.statement is not None, report.differences
    assert_mirrors(server.root, cfg)


def _mailbox_of(server, path: Path) -> str:  # noqa: ANN001
    return next(name for name, m in server.mailboxes.items() if server.mailbox_dir(m) == path.parent)


class ChangesWhileRead(Wrapper):
    """The source file is appended to right after its content was read."""

    def __init__(self, inner: Any, target: bytes, local: Path) -> None:
        super().__init__(inner)
        self.target, self.local = target, local

    def fetch(self, root: str, paths):  # noqa: ANN001, ANN201
        for item in self.inner.fetch(root, paths):
            if not isinstance(item, bytes) and item.entry.path == self.target:
                data = b""
                while chunk := item.read(1 << 20):
                    data += chunk
                with open(self.local, "ab") as f:
                    f.write(b"written while it was copied")
                yield Fetched(entry=item.entry, read=io.BytesIO(data).read, skip=lambda: None)
            else:
                yield item


def test_checksum_finds_same_size_same_mtime_corruption(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    mirror = Path(cfg.mirror.path)
    victim = sorted((mirror / "partition-default").rglob("1."))[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x55
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    plain = run_pass(cfg, local_factory(cfg), FINAL)
    assert plain.statement is not None  # size+mtime alone cannot see it (documented limit)
    report = run_pass(cfg, local_factory(cfg), Options(final=True, checksum=True, quiet_wait=0.05))
    assert report.figures["checksum_mismatches"] == 1
    assert report.statement is not None
    assert_mirrors(server.root, cfg)


# ---------------------------------------------------------------- --dry-run


def test_dry_run_changes_nothing_and_predicts_the_pass(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    mirror = Path(cfg.mirror.path)
    run_pass(cfg, local_factory(cfg))
    server.deliver(4)
    server.expunge(2)
    before = tree_digest(mirror)
    names_before = sorted(os.listdir(mirror / ".spoolmig"))
    dry = run_pass(cfg, local_factory(cfg), Options(dry_run=True))
    assert tree_digest(mirror) == before
    assert sorted(os.listdir(mirror / ".spoolmig")) == names_before
    real = run_pass(cfg, local_factory(cfg))
    for figure in ("files_new", "bytes_new", "files_changed", "files_deleted", "bytes_deleted"):
        assert dry.figures[figure] == real.figures[figure], figure
    assert dry.figures["files_new"] == 4 and dry.figures["files_deleted"] == 2
    assert sum(line.startswith("fetch (new): partition-") for line in dry.planned) == 4
    assert sum(line.startswith("delete: partition-") for line in dry.planned) == 2


def test_dry_run_creates_no_mirror(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    report = run_pass(cfg, local_factory(cfg), Options(dry_run=True))
    assert not Path(cfg.mirror.path).exists()
    assert report.figures["files_new"] > 0


# ---------------------------------------------------------------- lock


def test_second_pass_is_refused_while_one_holds_the_lock(setup, capsys) -> None:  # noqa: ANN001
    server, cfg = setup
    run_pass(cfg, local_factory(cfg))
    with MirrorLock(str(Path(cfg.mirror.path) / ".spoolmig")):
        with pytest.raises(LockedError):
            run_pass(cfg, local_factory(cfg))
        with pytest.raises(LockedError):
            run_pass(cfg, local_factory(cfg), Options(dry_run=True))
        assert main(["mirror", "--config", cfg.file]) == 9
        assert "holds the mirror lock" in capsys.readouterr().err
        assert read_status(cfg.mirror.path).passes  # status does not need the lock
    assert run_pass(cfg, local_factory(cfg)).exit_code() == 0


# ---------------------------------------------------------------- status


def _row(i: int, started: float, **kw: Any) -> dict[str, Any]:
    row = dict(id=i, started=started, ended=started + 10, mode="incremental", outcome="ok", files_new=0,
               bytes_new=0, files_changed=0, bytes_changed=0, files_deleted=0, entries_listed=1000,
               list_seconds=1.0, fetch_seconds=0.0, bytes_fetched=0, verify_seconds=0.0)
    row.update(kw)
    return row


def test_churn_and_forecast_from_recorded_passes() -> None:
    rows = [
        _row(1, 0, files_new=1000, bytes_new=10_000_000, list_seconds=4.0, fetch_seconds=10.0,
             bytes_fetched=10_000_000),
        _row(2, 3600, files_new=10, bytes_new=100_000, files_changed=5, bytes_changed=50_000, list_seconds=0.5,
             fetch_seconds=0.5, bytes_fetched=150_000),
        _row(3, 7200, files_new=20, bytes_new=200_000, files_changed=5, bytes_changed=50_000, list_seconds=0.3,
             fetch_seconds=1.5, bytes_fetched=250_000),
        _row(4, 9000, outcome="failed"),  # failed passes are not churn
    ]
    churn = compute_churn(rows)
    assert churn is not None
    assert churn["files_per_hour"] == pytest.approx(40 / 2)
    assert churn["bytes_per_hour"] == pytest.approx(400_000 / 2)
    assert churn["typical_interval_seconds"] == 3600
    replica = {"files": 1030, "bytes": 10_300_000, "entries": 2000, "metadata_bytes": 600_000}
    fc = compute_forecast(rows, churn, replica, quiet_wait=2.0)
    assert fc is not None
    rate = (10_000_000 + 150_000 + 250_000) / 12.0
    assert fc["transfer_rate_bytes_per_second"] == round(rate)
    assert fc["listing_seconds"] == pytest.approx(4.0 * 2000 / 1000)  # the whole listing, scaled
    assert fc["transfer_bytes"] == 200_000 + 600_000  # one usual interval of churn + all metadata
    assert fc["transfer_seconds"] == pytest.approx(800_000 / rate, abs=0.01)
    cheap = (0.5 + 0.3) / 2
    assert fc["seconds"] == pytest.approx(2.0 + 3 * cheap + 8.0 + 800_000 / rate + 8.0, abs=0.2)


def test_status_reads_without_writing(setup, capsys) -> None:  # noqa: ANN001
    server, cfg = setup
    for _ in range(3):
        run_pass(cfg, local_factory(cfg))
        server.deliver(2)
    mirror = Path(cfg.mirror.path)
    before = tree_digest(mirror)
    status = read_status(cfg.mirror.path)
    assert [p["id"] for p in status.passes] == [1, 2, 3]
    assert [p["files_new"] for p in status.passes][1:] == [2, 2]
    assert status.churn is not None and status.forecast is not None
    assert main(["status", "--config", cfg.file]) == 0
    out = capsys.readouterr().out
    assert "forecast" in out and "churn" in out
    assert main(["status", "--config", cfg.file, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["passes"]) == 3 and doc["replica"]["files"] > 0
    assert tree_digest(mirror) == before
    assert sorted(os.listdir(mirror / ".spoolmig")) == ["lock", "state.sqlite"]


def test_status_without_any_pass(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    server = make_server(tmp_path / "old", users=1, messages=2)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    assert main(["status", "--config", cfg.file]) == 0
    assert "no pass recorded" in capsys.readouterr().out
    assert not (tmp_path / "mirror").exists()


# ---------------------------------------------------------------- command line


def test_cli_json_quiet_and_final(setup, capsys) -> None:  # noqa: ANN001
    server, cfg = setup
    assert main(["mirror", "--config", cfg.file, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files_new"] > 0 and doc["exit_code"] == 0 and doc["mode"] == "incremental"
    server.deliver(1)
    assert main(["mirror", "--config", cfg.file, "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert main(["mirror", "--config", cfg.file, "--final", "--quiet-wait", "0.05"]) == 0
    assert "replica equals source:" in capsys.readouterr().out
    assert main(["mirror", "--config", cfg.file, "--checksum"]) == 2
    assert main(["mirror", "--config", cfg.file, "--dry-run", "--full"]) == 0
    assert "would fetch: 0 new" in capsys.readouterr().out


def test_cli_help_teaches(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        main(["mirror", "--help"])
    text = capsys.readouterr().out
    for word in ("--final", "--dry-run", "--jobs", "--checksum", "cyrus.*", "replica equals source"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    assert "forecast" in capsys.readouterr().out


def test_owner_is_mapped_when_running_as_root(tmp_path: Path) -> None:
    import grp
    import pwd

    assert os.geteuid() == 0, "the test machine runs the suite as root"
    server = make_server(tmp_path / "old", users=1, messages=5)
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    cfg = load_config(tmp_path, server, tmp_path / "mirror", mirror_extra=f'owner = "nobody:{group}"\n')
    run_pass(cfg, local_factory(cfg))
    nobody = pwd.getpwnam("nobody")
    for path in (tmp_path / "mirror" / "partition-default").rglob("*"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path
