"""`spoolmig inspect`: kinds detected from bytes and names, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spoolmig.cli import main

from cyrus_tools import CyrusTools

META = Path(__file__).parent / "fixtures" / "meta"


def inspect_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["inspect", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "rel, kind",
    [("header/lines-2x.header", "header"), ("header/dlist-3.6.header", "header"), ("index/v6.index", "index"),
     ("index/v17.index", "index"), ("seen/bob.seen", "seen"), ("sub/bob.sub", "sub"), ("sub/bob-v2.sub", "sub"),
     ("quota/legacy.quota", "quota"), ("quota/dlist.quota", "quota")],
)
def test_kind_is_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path, rel: str, kind: str) -> None:
    # under a neutral name too: the bytes decide where they can
    doc = inspect_json(capsys, str(META / rel))
    assert doc["kind"] == kind
    if kind in ("header", "index", "seen"):
        neutral = tmp_path / "somefile"
        shutil.copyfile(META / rel, neutral)
        assert inspect_json(capsys, str(neutral))["kind"] == kind


def test_index_summary(capsys: pytest.CaptureFixture[str]) -> None:
    doc = inspect_json(capsys, "--records", "2", str(META / "index" / "expunged-v17.index"))
    assert doc["header"]["minor_version"] == 17
    assert doc["summary"]["records"] == 5 and doc["summary"]["exists"] == 4
    assert doc["summary"]["flag_counts"]["expunged"] == 1
    assert [r["uid"] for r in doc["records"]] == [1, 2]


def test_header_summary(capsys: pytest.CaptureFixture[str]) -> None:
    doc = inspect_json(capsys, str(META / "header" / "lines-2x.header"))
    assert doc["header"]["uniqueid"] == "0f1e2d3c4b5a6978"
    assert doc["header"]["flags"] == ["$Label1", "Junk"]
    assert doc["header"]["acl"] == [["bob", "lrswipkxtecda"], ["anyone", "lrs"]]


def test_seen_sub_quota_summaries(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = inspect_json(capsys, str(META / "seen" / "bob.seen"))
    assert doc["entries"][0]["seen"] == "1:2,4" and doc["entries"][0]["lastuid"] == 5
    # a 3.6 subscription file at its real place names its owner
    place = tmp_path / "conf" / "user" / "b"
    place.mkdir(parents=True)
    shutil.copyfile(META / "sub" / "bob-v2.sub", place / "bob.sub")
    doc = inspect_json(capsys, str(place / "bob.sub"))
    assert doc["version"] == 2 and "user.bob.Sent" in doc["names"]
    doc = inspect_json(capsys, str(META / "quota" / "dlist.quota"))
    assert doc["resources"]["STORAGE"] == {"used": 830, "limit": 1000}


def test_mailbox_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copyfile(META / "header" / "lines-2x.header", tmp_path / "cyrus.header")
    shutil.copyfile(META / "index" / "v10.index", tmp_path / "cyrus.index")
    doc = inspect_json(capsys, str(tmp_path))
    assert [d["kind"] for d in doc["files"]] == ["header", "index"]
    assert main(["inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "cyrus.index version 10" in text and "uniqueid: 0f1e2d3c4b5a6978" in text


def test_text_output_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(META / "index" / "flags-v17.index")]) == 0
    out = capsys.readouterr().out
    assert "uidvalidity:" in out and "\\Seen: 3" in out


@pytest.mark.cyrus
def test_mailboxes_db_made_by_cyrus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cyrus = CyrusTools(tmp_path)
    doc = {f"user.u{i}": {"mbtype": "e", "partition": "default", "acl": {f"u{i}": "lrswipkxtecda"},
                          "uniqueid": f"{i:016x}"} for i in range(25)}
    cyrus.run("ctl_mboxlist", "-u", input=json.dumps(doc).encode())
    got = inspect_json(capsys, "--records", "3", str(cyrus.configdir / "mailboxes.db"))
    assert got["kind"] == "mailboxes" and got["backend"] == "twoskip"
    assert got["mailboxes"] == 25 and got["layout"] == "v2"
    assert [m["name"] for m in got["sample"]] == ["user.u0", "user.u1", "user.u10"]


# ------------------------------------------------------------------ errors


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_damaged_index_is_one_line_with_offset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "cyrus.index"
    bad.write_bytes((META / "index" / "v17.index").read_bytes()[:-30])
    assert main(["inspect", str(bad)]) == 4
    line = _one_error_line(capsys)
    assert str(bad) in line and "offset 608" in line and "truncated" in line


def test_damaged_header_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "cyrus.header"
    bad.write_bytes((META / "header" / "dlist-3.6.header").read_bytes().replace(b"%(T", b"%(T (", 1))
    assert main(["inspect", str(bad)]) == 4
    assert str(bad) in _one_error_line(capsys)


def test_bad_seen_value_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from spoolmig.formats import cyrusdb

    bad = tmp_path / "bob.seen"
    bad.write_bytes(cyrusdb.build("twoskip", [(b"0f1e", b"7 1 2 3 1:2")]))
    assert main(["inspect", str(bad)]) == 4
    line = _one_error_line(capsys)
    assert str(bad) in line and "seen version 7" in line


def test_unknown_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    odd = tmp_path / "picture.png"
    odd.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert main(["inspect", str(odd)]) == 5
    assert "not a Cyrus file" in _one_error_line(capsys)


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", str(tmp_path / "nope")]) == 6
    assert "nope" in _one_error_line(capsys)
