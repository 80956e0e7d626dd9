"""The database layer against Cyrus: recorded fixtures, live cyr_dbtool runs, properties."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyrus_tools import CYRUS_BIN, CyrusTools
from spoolmig.errors import FormatError, LocalFileError, UnsupportedFormat
from spoolmig.formats import cyrusdb

FIXTURES = Path(__file__).parent / "fixtures" / "db"
MANIFEST: dict[str, dict] = json.loads((FIXTURES / "MANIFEST.json").read_text())


def show_bytes(items) -> bytes:
    return b"".join(k + b"\t" + v + b"\n" for k, v in items)


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def batch(*ops: tuple) -> bytes:
    out = b""
    for op in ops:
        out += op[0].encode() + b"".join(b" " + lit(x) for x in op[1:]) + b"\n"
    return out


@pytest.fixture(scope="module")
def cyrus(tmp_path_factory: pytest.TempPathFactory) -> CyrusTools:
    return CyrusTools(tmp_path_factory.mktemp("cyrus"))


def dbtool_show(cyrus: CyrusTools, path: Path, backend: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    """cyr_dbtool show on a copy (Cyrus rewrites a skiplist it recovers), with a short timeout."""
    copy = cyrus.root / "copy.db"
    shutil.copyfile(path, copy)
    argv = [str(CYRUS_BIN / "cyr_dbtool"), "-C", str(cyrus.conf), str(copy), backend, "show", *flags]
    return subprocess.run(argv, capture_output=True, env=cyrus.env, timeout=30)


# ------------------------------------------------------------ recorded fixtures

@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_matches_cyrus_or_fails_cleanly(name: str) -> None:
    """Every fixture: exactly what Cyrus served, or a FormatError -- never different records."""
    entry = MANIFEST[name]
    data = (FIXTURES / f"{name}.db").read_bytes()
    for key, suffix, order in (("cyrus", "", cyrusdb.default_order(entry["backend"])), ("cyrus_M", ".M", "mbox")):
        if key not in entry:
            continue
        cyrus_did = entry[key]
        expected = (FIXTURES / f"{name}{suffix}.show").read_bytes()
        try:
            ours = show_bytes(cyrusdb.records(data, file=name, backend=entry["backend"], order=order))
        except FormatError as error:
            assert entry["kind"] in ("damaged", "good") and error.file == name
            if entry["kind"] == "good":  # only the mbox skiplist read in signed order, which Cyrus refuses too
                assert cyrus_did["show_rc"] != 0
            continue
        assert cyrus_did["show_rc"] == 0 and cyrus_did["show_finished"], f"{name}: Cyrus failed, we served records"
        assert ours == expected


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["kind"] in ("good", "crash", "quirk")))
def test_intact_fixtures_match_exactly(name: str) -> None:
    entry = MANIFEST[name]
    data = (FIXTURES / f"{name}.db").read_bytes()
    if name == "skiplist-mbox":
        with pytest.raises(FormatError, match="not in the signed order"):
            list(cyrusdb.records(data, file=name, order="signed"))
        assert entry["cyrus"]["show_rc"] != 0  # Cyrus refuses it without -M, as we do
        assert show_bytes(cyrusdb.records(data, file=name)) == (FIXTURES / f"{name}.M.show").read_bytes()
        return
    assert show_bytes(cyrusdb.records(data, file=name, order=cyrusdb.default_order(entry["backend"]))) == (
        FIXTURES / f"{name}.show").read_bytes()


def test_damaged_fixtures_cyrus_serves_are_matched() -> None:
    """Damage Cyrus tolerates in a well-defined way (lost tail, repaired pointers) gives its records."""
    for name in ("skiplist-damaged-truncated-log", "skiplist-damaged-bad-pointer", "skiplist-damaged-bad-datalen-log",
                 "twoskip-damaged-dirty-current-size", "flat-damaged-unsorted"):
        data = (FIXTURES / f"{name}.db").read_bytes()
        assert show_bytes(cyrusdb.records(data, file=name)) == (FIXTURES / f"{name}.show").read_bytes(), name


def test_fixtures_cover_what_the_issue_asks() -> None:
    kinds = {(e["backend"], e["kind"]) for e in MANIFEST.values()}
    for backend in ("skiplist", "twoskip", "flat"):
        for kind in ("good", "crash", "damaged"):
            assert (backend, kind) in kinds
        assert f"{backend}-mbox" in MANIFEST and f"{backend}-empty" in MANIFEST and f"{backend}-emptied" in MANIFEST
        items = dict(cyrusdb.records((FIXTURES / f"{backend}-binary.db").read_bytes(), file="x"))
        for needle in (b"\x00", b"\t", b"\n", b"\x80", b"\xff"):
            assert any(needle in k for k in items) and any(needle in v for v in items.values()), needle
        assert any("é".encode() in k for k in items) and any("✓".encode() in v for v in items.values())
        assert max(map(len, items.values())) > 65536
    assert (FIXTURES / "PROVENANCE.md").exists()


# ------------------------------------------------------------------ detection

@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if "magic" not in n and "header" not in n))
def test_detect_fixtures(name: str) -> None:
    data = (FIXTURES / f"{name}.db").read_bytes()
    assert cyrusdb.detect(data, file=name) == MANIFEST[name]["backend"] or (not data and MANIFEST[name]["backend"])


@pytest.mark.parametrize("order", [">I", "<I"])
@pytest.mark.parametrize("magic", [0x00053162, 0x00061561])
def test_berkeley_db_is_refused_with_advice(order: str, magic: int) -> None:
    import struct

    page = b"\0" * 12 + struct.pack(order, magic) + b"\0" * 4080
    with pytest.raises(UnsupportedFormat, match="Berkeley DB") as info:
        cyrusdb.detect(page, file="mailboxes.db")
    assert "ctl_mboxlist -d" in (info.value.hint or "")
    assert info.value.exit_code == 5


def test_unknown_files_are_refused() -> None:
    for data in (b"\x7fELF\x02\x01\x01" + b"\0" * 100, b"hello world\n", b"\xa1\x02\x8b\x0dCyrus mailbox header\n"):
        with pytest.raises(UnsupportedFormat):
            cyrusdb.detect(data, file="x")


def test_empty_buffer_is_an_empty_database() -> None:
    assert cyrusdb.detect(b"", file="x") == "flat"
    for backend in ("skiplist", "twoskip", "flat"):
        assert list(cyrusdb.records(b"", file="x", backend=backend)) == []


# ------------------------------------------------------------------ open_file

def test_open_file_reads_without_touching(tmp_path: Path) -> None:
    path = tmp_path / "db"
    shutil.copyfile(FIXTURES / "skiplist-crash.db", path)
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    with cyrusdb.open_file(path) as db:
        assert db.backend == "skiplist" and db.file == str(path)
        assert show_bytes(db.records()) == (FIXTURES / "skiplist-crash.show").read_bytes()
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before


def test_open_file_errors(tmp_path: Path) -> None:
    with pytest.raises(LocalFileError, match="missing"):
        with cyrusdb.open_file(tmp_path / "missing"):
            pass
    with pytest.raises(LocalFileError):
        with cyrusdb.open_file(tmp_path):
            pass
    (tmp_path / "empty").write_bytes(b"")
    with cyrusdb.open_file(tmp_path / "empty") as db:
        assert list(db.records()) == []


def test_records_accepts_memoryview() -> None:
    data = (FIXTURES / "twoskip-history.db").read_bytes()
    expected = (FIXTURES / "twoskip-history.show").read_bytes()
    assert show_bytes(cyrusdb.records(memoryview(data), file="x")) == expected
    assert show_bytes(cyrusdb.records(memoryview(b"junk" + data)[4:], file="x")) == expected


# ---------------------------------------------------------------------- orders

def test_sort_keys_match_cyrus_comparators() -> None:
    keys = [b"user.bob", b"user.bob two", b"user.bob.Sent", b"user.bob2", b"user.b\xe9"]
    assert sorted(keys, key=cyrusdb.sort_key("signed")) == [
        b"user.b\xe9", b"user.bob", b"user.bob two", b"user.bob.Sent", b"user.bob2"]
    assert sorted(keys, key=cyrusdb.sort_key("raw")) == [
        b"user.bob", b"user.bob two", b"user.bob.Sent", b"user.bob2", b"user.b\xe9"]
    assert sorted(keys, key=cyrusdb.sort_key("mbox")) == [
        b"user.bob", b"user.bob.Sent", b"user.bob two", b"user.bob2", b"user.b\xe9"]
    with pytest.raises(ValueError):
        cyrusdb.sort_key("nope")  # type: ignore[arg-type]


# ---------------------------------------------------------------- live writers

RECORDS = [
    (b"user.bob", b"0 default bob\tlrswipkxtecda\t"), (b"user.bob two", b"x"), (b"user.bob.Sent", b"y"),
    (b"user.bob2", b"z"), (b"bin\x00ary\t\n\r", b"\x00\xff\x80\t\n"), (b"\xe9t\xe9", b"latin1"),
    (b"big", b"B" * 70000), (b"", b"empty key"),
]


@pytest.mark.cyrus
@pytest.mark.parametrize("backend", ["skiplist", "twoskip", "flat"])
@pytest.mark.parametrize("order", ["default", "mbox"])
def test_written_files_are_accepted_by_cyrus(cyrus: CyrusTools, tmp_path: Path, backend: str, order: str) -> None:
    """cyr_dbtool reads our files, finds them consistent, writes to them; we read its writes back."""
    chosen = None if order == "default" else "mbox"
    flags = ("-M",) if chosen else ()
    records = [r for r in RECORDS if backend == "skiplist" or r[0]]  # twoskip/flat cannot hold an empty key
    path = tmp_path / f"{backend}.db"
    path.write_bytes(cyrusdb.build(backend, records, order=chosen))
    sk = cyrusdb.sort_key(chosen or cyrusdb.default_order(backend))
    expected = show_bytes(sorted(records, key=lambda kv: sk(kv[0])))
    shown = dbtool_show(cyrus, path, backend, *flags)
    assert shown.returncode == 0 and shown.stdout == expected
    assert show_bytes(cyrusdb.records(path.read_bytes(), file="x", order=chosen)) == expected
    assert cyrus.run("cyr_dbtool", path, backend, "consistent", *flags).stdout == b"Yes, consistent\n"
    cyrus.run("cyr_dbtool", path, backend, "batch", *flags, input=batch(
        ("SET", b"user.bob.Sent", b"changed by cyrus"), ("DELETE", b"user.bob2"), ("SET", b"user.new", b"n")))
    after = dbtool_show(cyrus, path, backend, *flags)
    assert after.returncode == 0
    assert show_bytes(cyrusdb.records(path.read_bytes(), file="x", order=chosen)) == after.stdout
    assert b"changed by cyrus" in after.stdout and b"user.bob2\t" not in after.stdout


@pytest.mark.cyrus
def test_unescaped_flat_is_what_old_cyrus_wrote(cyrus: CyrusTools, tmp_path: Path) -> None:
    path = tmp_path / "old.sub"
    path.write_bytes(cyrusdb.build("flat", [(b"user.bob.Sent", b""), (b"user.bob", b"")], flat_escape=False))
    assert path.read_bytes() == b"user.bob\t\nuser.bob.Sent\t\n"
    assert dbtool_show(cyrus, path, "flat").stdout == path.read_bytes()
    with pytest.raises(ValueError):
        cyrusdb.build("flat", [(b"a\tb", b"")], flat_escape=False)


@pytest.mark.cyrus
@pytest.mark.parametrize("backend", ["skiplist", "twoskip"])
def test_live_history_with_uncommitted_tail(cyrus: CyrusTools, tmp_path: Path, backend: str) -> None:
    """Fresh files from Cyrus: many transactions, then a crash tail; we serve what a restart serves."""
    path = tmp_path / "live.db"
    ops = [("SET", b"m%03d" % i, b"v" * (i % 13)) for i in range(300)]
    cyrus.run("cyr_dbtool", path, backend, "batch", "-n", input=batch(*ops))
    cyrus.run("cyr_dbtool", path, backend, "batch", input=batch(
        *[("DELETE", b"m%03d" % i) for i in range(0, 300, 7)], ("BEGIN",), ("SET", b"m001", b"txn"),
        ("DELETE", b"m002"), ("COMMIT",), ("BEGIN",), ("SET", b"gone", b"x"), ("ABORT",)))
    cyrus.run("cyr_dbtool", path, backend, "damage", check=False)
    shown = dbtool_show(cyrus, path, backend)
    assert shown.returncode == 0
    assert show_bytes(cyrusdb.records(path.read_bytes(), file="x")) == shown.stdout
    assert b"INVALID" not in shown.stdout and b"gone" not in shown.stdout


# ------------------------------------------------------------------ properties

KEYS = st.binary(min_size=0, max_size=24)
VALUES = st.binary(min_size=0, max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.dictionaries(KEYS, VALUES, max_size=60),
       backend_order=st.sampled_from([("skiplist", None), ("skiplist", "signed"), ("skiplist", "mbox"),
                                      ("twoskip", None), ("twoskip", "raw"), ("twoskip", "mbox"), ("flat", None)]))
def test_write_read_round_trip(items: dict[bytes, bytes], backend_order: tuple[str, str | None]) -> None:
    backend, order = backend_order
    chosen = order or cyrusdb.default_order(backend)  # type: ignore[arg-type]
    sk = cyrusdb.sort_key(chosen)  # type: ignore[arg-type]
    if backend != "skiplist":
        items = {k: v for k, v in items.items() if k}
    if len({sk(k) for k in items}) != len(items):
        with pytest.raises(ValueError):
            cyrusdb.build(backend, items.items(), order=order)  # type: ignore[arg-type]
        if backend != "flat":
            return
        items = {}
    data = cyrusdb.build(backend, items.items(), order=order)  # type: ignore[arg-type]
    assert cyrusdb.detect(data, file="x") == backend or not data
    back = list(cyrusdb.records(data, file="x", backend=backend, order=order))  # type: ignore[arg-type]
    if backend == "flat":
        assert sorted(back) == sorted(items.items())
    else:
        assert back == sorted(items.items(), key=lambda kv: sk(kv[0]))
    assert cyrusdb.check(data, file="x", backend=backend).sound  # type: ignore[arg-type]


def test_build_refuses_what_cyrus_cannot_read() -> None:
    for backend, order in (("skiplist", "raw"), ("twoskip", "signed"), ("flat", "raw")):
        with pytest.raises(ValueError, match="never reads"):
            cyrusdb.build(backend, [], order=order)  # type: ignore[arg-type]
    for backend in ("twoskip", "flat"):
        with pytest.raises(ValueError, match="empty key"):
            cyrusdb.build(backend, [(b"", b"x")])  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(items=st.dictionaries(st.binary(min_size=1, max_size=12).filter(lambda k: not set(k) & {0, 9, 10}),
                             st.binary(max_size=40).filter(lambda v: not set(v) & {0, 10}), max_size=30))
def test_unescaped_flat_round_trip(items: dict[bytes, bytes]) -> None:
    data = cyrusdb.build("flat", items.items(), flat_escape=False)
    from spoolmig.formats import flat

    assert sorted(flat.records(data, file="x", escaped=False)) == sorted(items.items())


CORRUPTIBLE = sorted(n for n, e in MANIFEST.items() if e["kind"] != "damaged" and "empty" not in n)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(CORRUPTIBLE), data=st.data())
def test_random_corruption_only_raises_format_error(name: str, data: st.DataObject) -> None:
    """Flips, truncations and overwrites of real files: our error or records, never a crash or hang."""
    original = bytearray((FIXTURES / f"{name}.db").read_bytes())
    buf = original
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "word", "zero"]))
        if not buf:
            break
        at = data.draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del buf[at:]
        elif kind == "word":
            buf[at:at + 4] = data.draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x01", b"\x7f\xff\xff\xf0",
                                                        b"\x00\x00\x00\x40", b"\x00\x00\x01\x50"]))
        else:
            buf[at:at + 8] = bytes(8)
    blob = bytes(buf)
    backend = MANIFEST[name]["backend"]
    for call in (lambda: list(cyrusdb.records(blob, file=name, backend=backend)),
                 lambda: list(cyrusdb.records(blob, file=name)),
                 lambda: cyrusdb.check(blob, file=name, backend=backend),
                 lambda: cyrusdb.salvage(blob, file=name, backend=backend)):
        try:
            call()
        except FormatError as error:
            assert error.file == name and "\n" not in str(error)


def test_salvage_of_intact_files_is_lossless() -> None:
    for name, entry in MANIFEST.items():
        if entry["kind"] not in ("good", "crash") or name == "skiplist-mbox":
            continue
        data = (FIXTURES / f"{name}.db").read_bytes()
        items, report = cyrusdb.salvage(data, file=name)
        assert report.sound, (name, report.problems)
        expected = list(cyrusdb.records(data, file=name))
        assert sorted(items) == sorted(expected), name



ALPHABET = [b"a", b"b", b".", b" ", b"\x80", b"\xff", b"\x00", b"\t", b"\n", b"user", b"-"]
OP = st.one_of(
    st.tuples(st.just("SET"), st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=4).map(b"".join),
              st.binary(max_size=40)),
    st.tuples(st.just("DELETE"), st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=4).map(b"".join)),
)
BATCH = st.tuples(st.sampled_from(["auto", "COMMIT", "ABORT"]), st.lists(OP, min_size=1, max_size=20))


@pytest.mark.cyrus
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(backend=st.sampled_from(["skiplist", "twoskip", "flat"]), mbox=st.booleans(),
       batches=st.lists(BATCH, min_size=1, max_size=5), crash=st.booleans())
def test_random_histories_match_cyrus(cyrus: CyrusTools, backend: str, mbox: bool, batches: list, crash: bool) -> None:
    """Differential: random transactions (committed, aborted, auto-commit) and a crash, written by Cyrus."""
    path = cyrus.root / "random.db"
    path.unlink(missing_ok=True)
    flags = ("-M",) if mbox else ()
    for mode, ops in batches:
        script = [("BEGIN",)] if mode != "auto" else []
        script += ops
        script += [(mode,)] if mode != "auto" else []
        cyrus.run("cyr_dbtool", path, backend, "batch", "-n", *flags, input=batch(*script), check=False)
    if crash:
        cyrus.run("cyr_dbtool", path, backend, "damage", *flags, check=False)
    shown = dbtool_show(cyrus, path, backend, *flags)
    order = "mbox" if mbox else cyrusdb.default_order(backend)  # type: ignore[arg-type]
    try:
        ours = show_bytes(cyrusdb.records(path.read_bytes(), file="r", order=order))
    except FormatError:
        assert shown.returncode != 0
        return
    assert shown.returncode == 0 and ours == shown.stdout
