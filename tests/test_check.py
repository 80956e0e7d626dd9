"""`spoolmig check`: blockers, warnings and the detected version, on a real tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spoolgen import SyntheticServer
from spoolmig.cli import main


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> SyntheticServer:
    srv = SyntheticServer(tmp_path_factory.mktemp("oldhost"), max_size=4096)
    srv.populate(users=6, messages=60)
    return srv


def run_check(tmp_path: Path, toml: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    config = tmp_path / "migration.toml"
    config.write_text(toml)
    code = main(["check", "--json", "--config", str(config)])
    return code, json.loads(capsys.readouterr().out)


def levels(report: dict, level: str) -> list[str]:
    return [f"{f['subject']}: {f['message']}" for f in report["findings"] if f["level"] == level]


def test_ready_source(server: SyntheticServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_check(tmp_path, server.config_toml(tmp_path / "m", extra_source='version = "2.3"\n'), capsys)
    assert code == 0, report
    assert levels(report, "blocker") == [] and levels(report, "warning") == []
    assert report["facts"]["mailboxes"] == len(server.mailboxes)
    assert report["facts"]["mailboxes_found_on_disk"] == len(server.mailboxes)
    assert set(report["facts"]["index_versions"]) == {"10"}
    # index v10 = 2.3.10+, and name-keyed legacy values = 3.4 at most
    assert report["versions"][0] == "2.3.10"
    assert report["versions"][1].startswith("3.4")
    assert not (tmp_path / "m").exists(), "check must write nothing"


def test_wrong_hashing_is_a_blocker(server: SyntheticServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    toml = server.config_toml(tmp_path / "m").replace("hashimapspool = true", "hashimapspool = false")
    code, report = run_check(tmp_path, toml, capsys)
    assert code == 3
    assert any(b.startswith("layout: no mailbox found") for b in levels(report, "blocker"))


def test_unlisted_partition_and_missing_root(server: SyntheticServer, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    toml = server.config_toml(tmp_path / "m").replace('second = "/var/spool/imap2"', 'third = "/nowhere"')
    code, report = run_check(tmp_path, toml, capsys)
    blockers = levels(report, "blocker")
    assert code == 3
    assert any("partition 'second'" in b and "does not list" in b for b in blockers)
    assert "partition third: /nowhere does not exist on the source" in blockers


def test_version_disagreement_warns(server: SyntheticServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_check(tmp_path, server.config_toml(tmp_path / "m", extra_source='version = "2.2"\n'), capsys)
    assert code == 1
    assert any(w.startswith("version: configured 2.2, but") for w in levels(report, "warning"))


def test_berkeley_mailboxes_db_is_a_blocker(server: SyntheticServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bdb"
    shutil.copytree(server.root, root, symlinks=True)
    # A Berkeley DB btree: magic 0x00053162 at offset 12 (host byte order).
    (root / "var/lib/imap/mailboxes.db").write_bytes(b"\0" * 12 + (0x00053162).to_bytes(4, "little") + b"\0" * 4080)
    toml = server.config_toml(tmp_path / "m").replace(f'url = "{server.root}"', f'url = "{root}"')
    code, report = run_check(tmp_path, toml, capsys)
    assert code == 3
    assert any("mailboxes.db" in b and "Berkeley" in b for b in levels(report, "blocker"))


def test_human_output_says_verdict(server: SyntheticServer, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "migration.toml"
    config.write_text(server.config_toml(tmp_path / "m"))
    assert main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ready to mirror" in out
    assert "mailboxes.db: skiplist, legacy values" in out
