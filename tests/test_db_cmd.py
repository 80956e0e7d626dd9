"""`spoolmig db show|check|recover` from the outside: bytes, exit codes, one-line errors."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cyrus_tools import CYRUS_BIN, CyrusTools
from spoolmig.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "db"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
INTACT = sorted(n for n, e in MANIFEST.items() if e["kind"] in ("good", "crash", "quirk") and n != "skiplist-mbox")


def spoolmig(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "spoolmig", *args], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def cyrus(tmp_path_factory: pytest.TempPathFactory) -> CyrusTools:
    return CyrusTools(tmp_path_factory.mktemp("cyrus"))


def dbtool(cyrus: CyrusTools, path: Path, backend: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    copy = cyrus.root / "copy.db"
    shutil.copyfile(path, copy)
    argv = [str(CYRUS_BIN / "cyr_dbtool"), "-C", str(cyrus.conf), str(copy), backend, *args]
    return subprocess.run(argv, capture_output=True, env=cyrus.env, timeout=30)


@pytest.mark.parametrize("name", INTACT)
def test_show_is_byte_identical(name: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["db", "show", str(FIXTURES / f"{name}.db")]) == 0
    assert capsysbinary.readouterr().out == (FIXTURES / f"{name}.show").read_bytes()


def test_show_mbox_like_cyr_dbtool_M(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["db", "show", "-M", str(FIXTURES / "skiplist-mbox.db")]) == 0
    assert capsysbinary.readouterr().out == (FIXTURES / "skiplist-mbox.M.show").read_bytes()
    assert main(["db", "show", str(FIXTURES / "skiplist-mbox.db")]) == 4  # cyr_dbtool refuses it too


@pytest.mark.cyrus
@pytest.mark.parametrize("backend", ["skiplist", "twoskip", "flat"])
@pytest.mark.parametrize("prefix", ["k1", "k0", "zz", "k"])
def test_show_prefix_like_cyr_dbtool(cyrus: CyrusTools, backend: str, prefix: str,
                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = FIXTURES / f"{backend}-history.db"
    expected = dbtool(cyrus, path, backend, "show", prefix)
    assert expected.returncode == 0
    assert main(["db", "show", str(path), prefix]) == 0
    assert capsysbinary.readouterr().out == expected.stdout


def test_show_json(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["db", "show", "--json", str(FIXTURES / "twoskip-binary.db")]) == 0
    docs = [json.loads(line) for line in capsysbinary.readouterr().out.splitlines()]
    expected = (FIXTURES / "twoskip-binary.show").read_bytes()
    assert b"".join(base64.b64decode(d["key_b64"]) + b"\t" + base64.b64decode(d["value_b64"]) + b"\n"
                    for d in docs) == expected
    by_key = {base64.b64decode(d["key_b64"]): d for d in docs}
    assert by_key[b"user.bob"]["value"] == "0 default bob\tlrswipkxtecda\t"
    assert "key" not in by_key[b"high\x80\xff"] and "value" not in by_key[b"high\x80\xff"]


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["kind"] == "damaged"))
def test_damaged_files_one_line_error_or_cyrus_records(name: str) -> None:
    result = spoolmig("db", "show", str(FIXTURES / f"{name}.db"))
    if result.returncode == 0:
        cyrus_did = MANIFEST[name]["cyrus"]
        assert cyrus_did["show_rc"] == 0 and result.stdout == (FIXTURES / f"{name}.show").read_bytes()
        return
    assert result.returncode in (4, 5)
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith("spoolmig: error: ") and f"{name}.db" in lines[0]
    assert "Traceback" not in result.stderr.decode() and len(lines) <= 2  # error + optional hint
    assert "offset" in lines[0]


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "check", str(FIXTURES / "twoskip-history.db")]) == 0
    assert "ok: twoskip" in capsys.readouterr().out
    assert main(["db", "check", str(FIXTURES / "twoskip-damaged-bad-tail-crc.db")]) == 4
    out = capsys.readouterr().out.splitlines()
    assert out and all("offset" in line for line in out)
    bdb = tmp_path / "mailboxes.db"
    bdb.write_bytes(b"\0" * 12 + (0x00053162).to_bytes(4, "little") + b"\0" * 4080)
    assert main(["db", "check", str(bdb)]) == 5
    assert "ctl_mboxlist -d" in capsys.readouterr().err
    assert main(["db", "check", str(tmp_path / "missing")]) == 6
    assert main(["db", "check", "--json", str(FIXTURES / "skiplist-crash.db")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sound"] and doc["backend"] == "skiplist" and doc["notes"]


def test_empty_file_is_an_empty_database(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    assert main(["db", "show", str(tmp_path / "empty.db")]) == 0
    assert capsysbinary.readouterr().out == b""


@pytest.mark.cyrus
def test_recover_writes_a_database_cyrus_accepts(cyrus: CyrusTools, tmp_path: Path) -> None:
    out = tmp_path / "recovered.db"
    result = spoolmig("db", "recover", str(FIXTURES / "twoskip-damaged-bad-tail-crc.db"), str(out))
    assert result.returncode == 1  # something was lost, and said so
    err = result.stderr.decode()
    assert "tail CRC" in err and "offset" in err and "recovered" in err and "Traceback" not in err
    assert dbtool(cyrus, out, "twoskip", "consistent").stdout == b"Yes, consistent\n"
    good = (FIXTURES / "twoskip-history.show").read_bytes().splitlines()
    got = dbtool(cyrus, out, "twoskip", "show").stdout.splitlines()
    assert set(got) <= set(good) and len(got) == len(good) - 1


@pytest.mark.cyrus
def test_recover_converts_backend_losslessly(cyrus: CyrusTools, tmp_path: Path) -> None:
    out = tmp_path / "converted.db"
    result = spoolmig("db", "recover", str(FIXTURES / "skiplist-crash.db"), str(out), "--backend", "twoskip")
    assert result.returncode == 0, result.stderr
    assert dbtool(cyrus, out, "twoskip", "show").stdout == (FIXTURES / "skiplist-crash.show").read_bytes()


def test_recover_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    path = tmp_path / "db"
    shutil.copyfile(FIXTURES / "flat-history.db", path)
    before = path.read_bytes()
    result = spoolmig("db", "recover", str(path), str(tmp_path / "." / "db"))
    assert result.returncode == 2 and "refusing" in result.stderr.decode()
    assert path.read_bytes() == before


def test_help_for_each_db_command() -> None:
    for sub in ("show", "check", "recover"):
        result = spoolmig("db", sub, "--help")
        assert result.returncode == 0 and b"usage: spoolmig db " + sub.encode() in result.stdout


@pytest.mark.cyrus
@pytest.mark.parametrize("backend", ["skiplist", "twoskip"])
def test_recover_keeps_the_mailbox_order(cyrus: CyrusTools, tmp_path: Path, backend: str) -> None:
    """A file of a server with improved_mboxlist_sort stays readable by that server after recovery."""
    out = tmp_path / "recovered.db"
    result = spoolmig("db", "recover", str(FIXTURES / f"{backend}-mbox.db"), str(out))
    assert result.returncode == 0 and b"mailbox order" in result.stderr
    assert dbtool(cyrus, out, backend, "consistent", "-M").stdout == b"Yes, consistent\n"
    assert dbtool(cyrus, out, backend, "show", "-M").stdout == (FIXTURES / f"{backend}-mbox.M.show").read_bytes()
