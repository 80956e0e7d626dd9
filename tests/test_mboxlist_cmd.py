"""`spoolmig mboxlist`: dialects, the 3.6 oracle, JSON summary, clean one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from spoolmig.cli import main
from spoolmig.formats import cyrusdb

sys.path.insert(0, str(Path(__file__).parent))
from cyrus_tools import CyrusTools  # noqa: E402
from mboxlist_fixtures import db_path, oracle  # noqa: E402


def run(capfdbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, str]:
    code = main(["mboxlist", *args])
    out, err = capfdbinary.readouterr()
    return code, out, err.decode()


@pytest.mark.parametrize("case", ["v2-3.6", "v2-upgraded-3.4"])
def test_as_3_6_equals_ctl_mboxlist(capfdbinary: pytest.CaptureFixture[bytes], case: str) -> None:
    code, out, err = run(capfdbinary, str(db_path(case)), "--as", "3.6")
    assert code == 0 and err == ""
    assert json.loads(out) == json.loads(oracle(case))
    assert out == oracle(case)
    # Without --as a 3.6 file is printed in its own dialect.
    assert run(capfdbinary, str(db_path(case)))[1] == out


def test_live_3_6_file(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """A database Cyrus writes now, read while Cyrus's own dump of it is fresh."""
    tools = CyrusTools(tmp_path, virtdomains="userid")
    doc = json.loads(oracle("v2-3.6", "undump.json"))
    tools.run("ctl_mboxlist", "-u", input=json.dumps(doc).encode())
    expected = tools.run("ctl_mboxlist", "-d").stdout
    code, out, _ = run(capfdbinary, str(tools.configdir / "mailboxes.db"), "--as", "3.6")
    assert code == 0 and out == expected


@pytest.mark.parametrize("version, line", [
    ("2.2", b"shared.folder\t2disk\tanyone\tlrs\t-group:interns\tw\tgroup:staff\tlrswipcd\t\n"),
    ("2.3.3", b"shared.folder\t2disk\tanyone\tlrs\t-group:interns\tw\tgroup:staff\tlrswipcd\t\n"),
    ("2.3.9", b"shared.folder\t0 2disk\tanyone\tlrs\t-group:interns\tw\tgroup:staff\tlrswipcd\t\n"),
    ("2.3", b"shared.folder\t0 2disk anyone\tlrs\t-group:interns\tw\tgroup:staff\tlrswipcd\t\n"),
    ("3.4", b"shared.folder\t0 2disk anyone\tlrs\t-group:interns\tw\tgroup:staff\tlrswipcd\t\n"),
])
def test_line_dialects(capfdbinary: pytest.CaptureFixture[bytes], version: str, line: bytes) -> None:
    code, out, _ = run(capfdbinary, str(db_path("legacy-2.2")), "--as", version)
    assert code == 0 and line in out
    assert out.count(b"\n") == 15


def test_default_dialect_is_the_writer(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    _, out22, _ = run(capfdbinary, str(db_path("legacy-2.2")))
    assert b"user.carol\tbackend1!default\tcarol\tlrswipcda\t\n" in out22
    _, out24, _ = run(capfdbinary, str(db_path("legacy-2.4")))
    assert b"user.bob.Gone\t16 default bob\tlrswipkxtecda\t\n" in out24


def test_skipped_keys_reported(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = run(capfdbinary, str(db_path("dlist-3.4")), "--as", "3.4")
    assert code == 0 and b"$RACL" not in out
    assert "skipped 2 non-mailbox key(s)" in err and err.count("\n") == 1


def test_json_summary(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, _ = run(capfdbinary, str(db_path("dlist-3.4")), "--json", "--as", "2.3.9")
    doc = json.loads(out)
    assert code == 1  # 2.3 has no collection/intermediate types: warned, exit status 1
    assert any("user.bob.#jmap" in w for w in doc["warnings"])
    assert (doc["backend"], doc["layout"], doc["dialect"], doc["mailboxes"]) == ("twoskip", "dlist", "2.3.4", 8)
    assert doc["written_by"]["from"] == "3.2.0"
    assert {s["key"][:5] for s in doc["skipped"]} == {"$RACL", "$RUNQ"}
    assert "user.bob\t0 default\tbob\t" in doc["text"]


def test_undump_json_is_cyrus_input(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, _ = run(capfdbinary, str(db_path("v2-3.6")), "--as", "3.6", "--undump")
    assert code == 0
    assert json.loads(out)["user.bob"]["name_history"][0]["name"] == "user.robert"
    tools = CyrusTools(tmp_path, virtdomains="userid")
    tools.run("ctl_mboxlist", "-u", input=out)
    listed = json.loads(tools.run("ctl_mboxlist", "-d").stdout)
    expected = json.loads(oracle("v2-3.6"))
    for doc in (listed, expected):
        for v in doc.values():
            v["mtime"] = "x"
    assert listed == expected


def test_undump_without_uniqueids_warns(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = run(capfdbinary, str(db_path("legacy-2.2")), "--as", "3.6", "--undump")
    assert code == 1
    assert "no uniqueid" in err and "user.bob" in err


# ------------------------------------------------------------------ errors


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("spoolmig: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_damaged_database(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    bad = tmp_path / "mailboxes.db"
    data = bytearray(db_path("v2-3.6").read_bytes())
    data[0x160:0x170] = b"\xff" * 16
    bad.write_bytes(bytes(data))
    code, out, err = run(capfdbinary, str(bad))
    assert code == 4 and out == b""
    line = _one_line_error(err)
    assert str(bad) in line and "offset" in line


def test_damaged_value_names_mailbox(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    bad = tmp_path / "mailboxes.db"
    bad.write_bytes(cyrusdb.build("twoskip", [(b"user.bob", b"0 default bob\tlrs\t"), (b"user.eve", b"%(A %(eve")]))
    code, out, err = run(capfdbinary, str(bad), "--as", "2.3")
    assert code == 4 and out == b""
    line = _one_line_error(err)
    assert str(bad) in line and "'user.eve'" in line


def test_not_a_database(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not a db" * 20)
    code, _, err = run(capfdbinary, str(junk))
    assert code == 5 and str(junk) in _one_line_error(err)


def test_missing_file_and_bad_version(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    code, _, err = run(capfdbinary, str(tmp_path / "nope.db"))
    assert code == 6 and "nope.db" in _one_line_error(err)
    code, _, err = run(capfdbinary, str(db_path("legacy-2.2")), "--as", "2.x")
    assert code == 2 and "2.x" in _one_line_error(err)
    code, _, err = run(capfdbinary, str(db_path("legacy-2.2")), "--legacy-lines")
    assert code == 2


def test_file_is_not_modified(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    copy = tmp_path / "m.db"
    shutil.copyfile(db_path("legacy-2.3-mboxsort"), copy)
    before = copy.read_bytes()
    run(capfdbinary, str(copy), "--as", "3.6")
    assert copy.read_bytes() == before


def test_mailbox_order(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """-M lists in improved_mboxlist_sort order, as cyr_dbtool -M shows the file."""
    code, out, _ = run(capfdbinary, str(db_path("legacy-2.3-mboxsort")), "-M", "--as", "2.3")
    shown = oracle("legacy-2.3-mboxsort", "show-M")
    assert code == 0
    assert [line.split(b"\t", 1)[0] for line in out.splitlines()] == [
        line.split(b"\t", 1)[0] for line in shown.splitlines()]
    names = [line.split(b"\t", 1)[0] for line in out.splitlines()]
    assert names.index(b"user.bob.Sent") < names.index(b"user.bob two")


@pytest.mark.parametrize("case", ["legacy-2.2", "dlist-2.5", "v2-3.6"])
def test_random_damage_gives_clean_errors(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes],
                                          case: str) -> None:
    """Flipped bytes anywhere: a listing, or one line naming the file — never an internal error."""
    import random

    rng = random.Random(case)
    original = db_path(case).read_bytes()
    bad = tmp_path / "mailboxes.db"
    for _ in range(60):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        bad.write_bytes(bytes(data))
        code, out, err = run(capfdbinary, str(bad), "--as", "3.6")
        assert code in (0, 1, 4, 5), err
        if code >= 4:
            assert out == b"" and str(bad) in _one_line_error(err)
