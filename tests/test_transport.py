"""One behavioural suite for every source: a local folder, SSH (shell), SSH (SFTP fallback).

The SSH sources talk to a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py);
the "remote" tree is a temp folder on this machine, so the ground truth for
every answer is ``os.lstat``/``open`` on the same files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hst

from spoolmig.transport.base import Entry, Fetched, Names, Source
from spoolmig.transport import _remote
from spoolmig.transport.local import LocalSource
from spoolmig.transport.ssh import SshSource

ROOT = "/var/spool/imap"
MTIME_NS = 1_600_000_000_123_456_789

#: Hostile names: spaces, quotes, $, backticks, newlines, backslashes, globs, non-UTF-8, leading dashes.
HOSTILE = [b"a b", b"q'uote", b'd"q', b"$HOME", b"`id`", b"new\nline", b"back\\slash",
           b"st*r[x]?", b"\xff\xfe latin\xe9", b"-rf", b"--help", b" lead", b"tab\there"]
LARGE = 70 * (1 << 20)


def _content(name: bytes) -> bytes:
    return b"message " + name + b"\n" * 3


@dataclass
class Tree:
    folder: Path  # stands for the old server's "/"
    spool: Path  # folder + ROOT
    outside: Path  # a secret that no source may ever read
    files: dict[bytes, bytes]  # relative path -> content, every regular file in the tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("transport")
    folder = base / "old"
    spool = folder / ROOT.lstrip("/")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"TOP SECRET outside the tree\n")
    files: dict[bytes, bytes] = {}

    def put(rel: bytes, data: bytes, mode: int = 0o600) -> None:
        path = os.path.join(bytes(spool), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        os.utime(path, ns=(MTIME_NS, MTIME_NS + len(rel)))
        files[rel] = data

    for i in range(1, 40):
        put(b"b/user/bob/%d." % i, b"Subject: %d\r\n\r\nbody\r\n" % i * i)
    put(b"b/user/bob/cyrus.header", b"\241\002\213\015Cyrus mailbox header\n", 0o644)
    put(b"b/user/bob/cyrus.index", b"\0" * 96, 0o640)
    put(b"b/user/bob/cyrus.cache", b"")  # empty file
    for name in HOSTILE:
        put(b"h/user/" + name + b"/1.", _content(name))
        put(b"h/user/" + name + b"/cyrus.header", b"hdr " + name)
        put(b"h/files/" + name, _content(name), 0o644)
    with open(outside / "big", "wb") as f:  # built once, hard-linked in: saves disk and time
        block = hashlib.sha256(b"seed").digest() * 32768
        for _ in range(LARGE // len(block)):
            f.write(block)
    os.makedirs(spool / "big", exist_ok=True)
    os.link(outside / "big", spool / "big" / "70m.")
    os.utime(spool / "big" / "70m.", ns=(MTIME_NS, MTIME_NS))
    files[b"big/70m."] = (outside / "big").read_bytes()
    # Symlinks pointing outside: reported, never followed.
    os.symlink(outside / "secret", spool / "b" / "user" / "bob" / "evil")
    os.symlink("../../../../../outside", spool / "b" / "user" / "outdir")
    os.mkfifo(spool / "b" / "fifo")
    return Tree(folder=folder, spool=spool, outside=outside, files=files)


@pytest.fixture(params=["local", "ssh", "ssh-xargs", "sftp"])
def src(request: pytest.FixtureRequest, tree: Tree) -> Iterator[tuple[Source, str]]:
    """(source, root) — the same tree seen through each transport.

    ``ssh-xargs`` is the shell transport as a source whose find predates
    ``-files0-from`` (GNU find before 4.9) runs it: every command gets its
    paths through xargs.
    """
    if request.param == "local":
        source: Source = LocalSource(tree.folder)
        root = ROOT
    else:
        if request.param == "ssh-xargs":
            capabilities = SshSource._capabilities

            def without_files0(self: SshSource, conn: Any, out: bytes) -> None:
                capabilities(self, conn, b"\n".join(line for line in out.split(b"\n") if line != b"F"))

            request.getfixturevalue("monkeypatch").setattr(SshSource, "_capabilities", without_files0)
        server = request.getfixturevalue("sftp_only_sshd" if request.param == "sftp" else "sshd")
        server.start()
        source = SshSource(server.host, server.port, server.user, known_hosts=str(server.known_hosts),
                           identity_file=str(server.identity_file))
        assert source.mode == ("sftp" if request.param == "sftp" else "shell")
        if request.param != "sftp":  # this machine's GNU find (4.9) reads its paths itself, unless we say not
            assert source._live().files0 is (request.param == "ssh")
        root = str(tree.spool)
    try:
        yield source, root
    finally:
        source.close()


def _precise(source: Source) -> bool:
    return not isinstance(source, SshSource) or source.mode == "shell"


def _expected(tree: Tree, rel: bytes, precise: bool) -> tuple[str, int, int, int]:
    st = os.lstat(os.path.join(bytes(tree.spool), rel) if rel else bytes(tree.spool))
    mtime = st.st_mtime_ns if precise else st.st_mtime_ns // 10**9 * 10**9
    kind = {0o100000: "f", 0o040000: "d", 0o120000: "l"}.get(st.st_mode & 0o170000, "o")
    return kind, st.st_size, mtime, st.st_mode & 0o7777


def _all_paths(tree: Tree) -> set[bytes]:
    out = {b""}
    for dirpath, dirnames, filenames in os.walk(bytes(tree.spool)):
        rel = os.path.relpath(dirpath, bytes(tree.spool))
        for name in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, name)))
    return out


def test_walk_lists_every_entry_with_lstat_values(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    entries = list(source.walk(root))
    assert entries[0].path == b"" and entries[0].kind == "d"
    by_path = {e.path: e for e in entries}
    assert len(by_path) == len(entries), "no entry twice"
    assert set(by_path) == _all_paths(tree)
    position = {e.path: i for i, e in enumerate(entries)}
    for e in entries:
        if e.path:
            assert position[e.path.rpartition(b"/")[0]] < position[e.path], "a directory precedes its contents"
        kind, size, mtime, mode = _expected(tree, e.path, _precise(source))
        assert (e.kind, e.mtime_ns, e.mode) == (kind, mtime, mode), e.path
        assert e.size == size, e.path
    assert by_path[b"b/user/bob/1."].mtime_ns == (MTIME_NS + 13 if _precise(source)
                                                   else (MTIME_NS + 13) // 10**9 * 10**9)
    assert by_path[b"b/user/bob/evil"].kind == "l"
    assert by_path[b"b/user/bob/evil"].link == bytes(tree.outside / "secret")
    assert by_path[b"b/user/outdir"].link == b"../../../../../outside"
    assert by_path[b"b/fifo"].kind == "o"
    assert not any(p.startswith(b"b/user/outdir/") for p in by_path), "a symlinked dir is not entered"


def test_cheap_walk_yields_only_dirs_and_matching_files(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    paths = {e.path: e for e in source.walk(root, only_dirs_and=[b"cyrus.*"])}
    expected = {p for p in _all_paths(tree)
                if os.path.isdir(os.path.join(bytes(tree.spool), p)) and not os.path.islink(os.path.join(bytes(tree.spool), p))
                or os.path.basename(p).startswith(b"cyrus.")}
    assert set(paths) == expected
    assert paths[b"b/user/bob/cyrus.index"].size == 96
    assert b"h/user/new\nline/cyrus.header" in paths
    assert not any(p.endswith(b"/1.") for p in paths)


@pytest.mark.parametrize("kind", ["local", "ssh", "sftp"])
def test_walk_since_yields_every_directory_and_only_what_changed(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A dated walk leaves out the entries whose inode did not change since; an undated one leaves out nothing."""
    from spoolmig.transport.base import Walk

    top = tmp_path / "old"
    conf = top / "var" / "lib" / "imap"
    for d in ("user/a", "user/b", "quota/a", "proc"):
        (conf / d).mkdir(parents=True)
    for f in ("mailboxes.db", "user/a/anna.seen", "user/b/bob.seen", "quota/a/user.anna", "proc/12"):
        (conf / f).write_bytes(b"x")
    os.symlink("anna.seen", conf / "user" / "a" / "old-link")
    time.sleep(1.1)  # every ctime so far in an earlier second than "since"
    since = time.time_ns()
    time.sleep(0.05)
    (conf / "user" / "a" / "anna.seen").write_bytes(b"changed")
    (conf / "user" / "c").mkdir()
    (conf / "user" / "c" / "carl.seen").write_bytes(b"new")
    os.utime(conf / "quota" / "a" / "user.anna", ns=(0, 0))  # times set back: its ctime says it changed
    if kind == "local":
        source: Source = LocalSource(top)
        root = "/var/lib/imap"
    else:
        server = request.getfixturevalue("sshd" if kind == "ssh" else "sftp_only_sshd")
        server.start()
        source = SshSource(server.host, server.port, server.user, known_hosts=str(server.known_hosts),
                           identity_file=str(server.identity_file))
        root = str(conf)
    dirs = {b"", b"user", b"user/a", b"user/b", b"user/c", b"quota", b"quota/a"}
    changed = {b"user/a/anna.seen", b"user/c/carl.seen", b"quota/a/user.anna"}
    everything = dirs | {b"mailboxes.db", b"user/a/old-link", b"user/b/bob.seen"} | changed
    with source:
        if hasattr(source, "prepare_walks"):
            source.prepare_walks([Walk(root, (), (b"proc",), since)])
        dated = {e.path: e for e in source.walk(root, prune=[b"proc"], since=since)}
        clock = source.listing_clock(root)
        undated = {e.path for e in source.walk(root, prune=[b"proc"], since=since)}  # not prepared
        undated_clock = source.listing_clock(root)
    if kind == "sftp":  # no ctime over SFTP, and no clock: everything, undated
        assert set(dated) == everything and clock is None
    else:
        assert set(dated) == dirs | changed
        assert dated[b"user/a/anna.seen"].size == len(b"changed")
        assert clock is not None and clock >= since // 10**9 * 10**9
    if kind == "local":  # this machine's clock dates every walk
        assert undated == dirs | changed and undated_clock is not None
    else:  # a walk the SSH source did not start ahead has no clock to date it: everything
        assert undated == everything and undated_clock is None


def test_the_scripts_after_the_stdin_section_run_beside_it_and_keep_their_order(tmp_path: Path) -> None:
    """Sections after the one that reads stdin start at once; their output still follows it, each with its status."""
    started = tmp_path / "started"
    scripts = ["echo before",
               "cat",  # the stat section's place: reads the command's stdin
               f"echo walk; : > {started}; exit 3",  # a walk that fails
               "cat; echo last"]  # never given the command's stdin
    command = _remote.sections_command(scripts, stdin_section=1)
    proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    for _ in range(500):  # the walk runs while the stdin section still waits for its input
        if started.exists():
            break
        time.sleep(0.01)
    assert started.exists()
    proc.stdin.write(b"paths\n")
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait() == 0
    clock = out.split(b"\0", 7)  # first, the record with the source's clock
    assert clock[0] == b"=" and clock[1].isdigit() and clock[2] == str(_remote.CLOCK_SECTION).encode()
    assert clock[-1].replace(b"\0", b"|") == (
        b"before\n=|0|0|||||paths\n=|0|1|||||walk\n=|3|2|||||last\n=|0|3|||||")


def test_walk_prune_and_missing_root(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    paths = {e.path for e in source.walk(root, prune=[b"h/user", b"big"])}
    assert b"h" in paths and b"h/files/a b" in paths
    assert not any(p == b"big" or p.startswith((b"h/user", b"big/")) for p in paths)
    assert list(source.walk(root + "/no/such/dir")) == []


def test_list_dirs(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    dirs = [b"h/user/" + n for n in HOSTILE] + [b"gone", b"b/user/outdir", b"b/user/bob"]
    got = list(source.list_dirs(root, dirs))
    paths = [e.path for e in got]
    assert len(paths) == len(set(paths))
    expected = set()
    for d in [b"h/user/" + n for n in HOSTILE] + [b"b/user/bob"]:
        expected |= {d + b"/" + n for n in os.listdir(os.path.join(bytes(tree.spool), d))}
    assert set(paths) == expected, "vanished dirs and symlinked dirs yield nothing"
    for e in got:
        kind, size, mtime, mode = _expected(tree, e.path, _precise(source))
        assert (e.kind, e.size, e.mtime_ns, e.mode) == (kind, size, mtime, mode)


def test_list_dirs_by_name_reports_plain_files_once_per_directory(src: tuple[Source, str], tree: Tree) -> None:
    """stat_globs: message-like files come by name only, one Names per directory; the rest as Entries."""
    source, root = src
    dirs = [b"h/user/" + n for n in HOSTILE] + [b"gone", b"b/user/outdir", b"b/user/bob", b"b", b"h/files"]
    got = list(source.list_dirs(root, dirs, stat_globs=[b"cyrus.*"]))
    entries = [g for g in got if isinstance(g, Entry)]
    blocks = [g for g in got if isinstance(g, Names)]
    by_name = [b.dir + b"/" + n for b in blocks for n in b.names]
    assert len({b.dir for b in blocks}) == len(blocks), "one block per directory"
    for block in blocks:
        assert all(n and b"/" not in n for n in block.names), "base names"
    listed = [e.path for e in entries] + by_name
    assert len(listed) == len(set(listed)), "nothing twice"
    expected = set()
    for d in [b"h/user/" + n for n in HOSTILE] + [b"b/user/bob", b"b", b"h/files"]:
        expected |= {d + b"/" + n for n in os.listdir(os.path.join(bytes(tree.spool), d))}
    assert set(listed) == expected, "vanished dirs and symlinked dirs yield nothing"
    for e in entries:
        kind, size, mtime, mode = _expected(tree, e.path, _precise(source))
        assert (e.kind, e.size, e.mtime_ns, e.mode) == (kind, size, mtime, mode)
    plain = {p for p in expected if os.path.isfile(os.path.join(bytes(tree.spool), p))
             and not os.path.islink(os.path.join(bytes(tree.spool), p))
             and not os.path.basename(p).startswith(b"cyrus.")}
    if _precise(source):  # a shell or a local folder lists them without stat; SFTP stats anyway
        assert set(by_name) == plain
        assert b"h/user/new\nline/1." in by_name and b"h/files/-rf" in by_name
        assert all(os.path.basename(e.path).startswith(b"cyrus.") or e.kind != "f" for e in entries)
    else:
        assert not blocks
    assert {e.path for e in entries if e.kind == "l"} == {b"b/user/bob/evil"}
    assert {e.path: e.kind for e in entries}[b"b/fifo"] == "o", "not a regular file: not by name"
    assert b"b/user/bob/cyrus.index" in {e.path for e in entries}


def test_list_dirs_by_name_with_no_stat_globs_names_every_regular_file(tmp_path: Path) -> None:
    spool = tmp_path / ROOT.lstrip("/")
    (spool / "d").mkdir(parents=True)
    for name in ("1.", "cyrus.index"):
        (spool / "d" / name).write_bytes(b"x")
    got = list(LocalSource(tmp_path).list_dirs(ROOT, [b"d"], stat_globs=[]))
    assert len(got) == 1 and isinstance(got[0], Names) and got[0].dir == b"d"
    assert sorted(got[0].names) == [b"1.", b"cyrus.index"]


def test_a_listing_by_name_from_the_real_find_parses_the_same_wherever_chunks_cut(tmp_path: Path) -> None:
    """list_command's output as /bin/sh and GNU find print it: one Names per directory, after its other
    entries; a listed directory that is a file or symlink now, or gone, lists nothing."""
    root = tmp_path / "spool"
    for d in ("a", "a/sub", "b", "c", "empty"):
        (root / d).mkdir(parents=True)
    for f in ("a/1.", "a/new\nline.", "a/cyrus.index", "a/sub/5.", "b/7.", "c/cyrus.header", "1.", "plain", "0x"):
        (root / f).write_bytes(b"x" * 12)
    os.symlink("a", root / "link")
    dirs = [b"a", b"plain", b"a/sub", b"b", b"link", b"gone", b"empty", b"c", b"", b"0x"]
    stdin = _remote.stdin_paths(dirs)
    done = subprocess.run(["/bin/sh", "-c", _remote.list_command(str(root), stat_globs=[b"cyrus.*"])],
                          input=stdin, capture_output=True)
    assert b"gone" in done.stderr
    raw = done.stdout

    def entry(path: str, kind: str) -> Entry:
        st = os.lstat(root / path)
        return Entry(path.encode(), kind, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino,
                     os.readlink(root / path).encode() if kind == "l" else None)

    expected = [
        entry("a/sub", "d"), entry("a/cyrus.index", "f"), Names(b"a", [b"1.", b"new\nline."]),
        Names(b"a/sub", [b"5."]), Names(b"b", [b"7."]), entry("c/cyrus.header", "f"),
        *(entry(n, k) for n, k in (("a", "d"), ("b", "d"), ("c", "d"), ("empty", "d"), ("link", "l"))),
        Names(b"", [b"1.", b"plain", b"0x"]),
    ]
    def unordered(items: list[Entry | Names]) -> list[str]:  # find's order within a directory is its own
        return sorted(repr(Names(i.dir, sorted(i.names)) if isinstance(i, Names) else i) for i in items)

    got = list(_remote.parse_named([raw]))
    assert unordered(got) == unordered(expected)
    for names in (g for g in got if isinstance(g, Names)):  # after the directory's other entries
        assert not any(isinstance(g, Entry) and g.path.rpartition(b"/")[0] == names.dir
                       for g in got[got.index(names):])
    for cut in range(len(raw)):
        assert list(_remote.parse_named([raw[:cut], raw[cut:]])) == got, cut
    with pytest.raises(ValueError):
        list(_remote.parse_named([raw[:-1]]))


@given(hst.integers(min_value=-(2**33), max_value=2**40), hst.text("0123456789", max_size=12))
def test_listing_times_are_exact_in_every_form(seconds: int, fraction: str) -> None:
    """The walk's inlined %T@ conversion agrees with parse_time_ns (exact) for every fraction length."""
    text = f"{seconds}.{fraction}".encode() if fraction else str(seconds).encode()
    record = b"f\x00644\x001\x002\x00" + text + b"\x00\x00./x\x00"
    (entry,) = _remote.parse_records([record])
    assert entry.mtime_ns == _remote.parse_time_ns(text)


def test_stat_in_order_with_vanished_as_bare_paths(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    ask = [b"b/user/bob/1.", b"nope", b"h/files/-rf", b"b/user/outdir/secret", b"b/user/bob/evil", b"",
           b"h/files/new\nline", b"b/user/bob/cyrus.cache"]
    got = list(source.stat(root, ask))
    assert [g if isinstance(g, bytes) else g.path for g in got] == ask
    assert got[1] == b"nope"
    assert got[3] == b"b/user/outdir/secret", "never resolved through a symlinked directory"
    for g in got:
        if isinstance(g, Entry):
            kind, size, mtime, mode = _expected(tree, g.path, _precise(source))
            assert (g.kind, g.mtime_ns, g.mode) == (kind, mtime, mode)
    assert got[4].kind == "l" and got[7].size == 0


def _read(f: Fetched, chunk: int = 65536) -> bytes:
    parts = []
    while data := f.read(chunk):
        parts.append(data)
    return b"".join(parts)


def test_fetch_content_mtime_mode_size_and_order(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    ask = sorted(p for p in tree.files if not p.startswith(b"big/"))
    ask[3:3] = [b"vanished/1.", b"b/user/bob/evil", b"b/user/outdir/secret", b"b/fifo", b"b/user"]
    got: list[bytes | tuple[Entry, bytes]] = []
    for item in source.fetch(root, ask):
        if isinstance(item, bytes):
            got.append(item)
        else:
            got.append((item.entry, _read(item)))
    assert [g if isinstance(g, bytes) else g[0].path for g in got] == ask
    assert got[3:8] == [b"vanished/1.", b"b/user/bob/evil", b"b/user/outdir/secret", b"b/fifo", b"b/user"]
    for g in got:
        if isinstance(g, bytes):
            continue
        entry, data = g
        assert data == tree.files[entry.path], entry.path
        kind, size, mtime, mode = _expected(tree, entry.path, _precise(source))
        assert (entry.kind, entry.size, entry.mtime_ns, entry.mode) == ("f", len(data), mtime, mode)
    assert not any(b"TOP SECRET" in g[1] for g in got if not isinstance(g, bytes))


def test_fetch_entries_keep_listing_nanoseconds(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    entries = list(source.stat(root, [b"b/user/bob/2.", b"b/user/bob/cyrus.index"]))
    got = [(f.entry, _read(f)) for f in source.fetch(root, entries) if not isinstance(f, bytes)]
    assert [e.path for e, _ in got] == [b"b/user/bob/2.", b"b/user/bob/cyrus.index"]
    for (entry, data), listed in zip(got, entries):
        assert entry.mtime_ns == listed.mtime_ns and data == tree.files[entry.path]


def test_fetch_trusts_the_listing_nanoseconds_only_for_the_same_second_and_size(
        src: tuple[Source, str], tree: Tree) -> None:
    """A file changed since it was listed (another second, another size) shows what was read."""
    source, root = src
    listed = {e.path: e for e in source.stat(root, [b"b/user/bob/2.", b"b/user/bob/cyrus.index"])}
    stale = [listed[b"b/user/bob/2."]._replace(mtime_ns=listed[b"b/user/bob/2."].mtime_ns - 10**9 - 7),
             listed[b"b/user/bob/cyrus.index"]._replace(size=listed[b"b/user/bob/cyrus.index"].size + 1,
                                                        mtime_ns=listed[b"b/user/bob/cyrus.index"].mtime_ns + 3)]
    got = [f.entry for f in source.fetch(root, stale) if not isinstance(f, bytes)]
    assert [e.path for e in got] == [b"b/user/bob/2.", b"b/user/bob/cyrus.index"]
    for entry in got:
        assert entry.mtime_ns == _expected(tree, entry.path, _precise(source))[2]


def test_fetch_skip_and_partial_reads(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    ask = [b"b/user/bob/5.", b"b/user/bob/6.", b"b/user/bob/7."]
    out = []
    for i, f in enumerate(source.fetch(root, ask)):
        assert isinstance(f, Fetched)
        if i == 1:
            f.skip()
            out.append(None)
        else:
            out.append(f.read(3) + _read(f, 7))
    assert out == [tree.files[ask[0]], None, tree.files[ask[2]]]


@pytest.mark.parametrize("as_entry", [False, True], ids=["path", "entry"])
def test_fetch_large_file(src: tuple[Source, str], tree: Tree, as_entry: bool) -> None:
    source, root = src
    item: bytes | Entry = b"big/70m."
    if as_entry:  # an Entry over 64 MiB goes by SFTP with prefetch over SSH
        (item,) = list(source.stat(root, [item]))  # type: ignore[assignment]
    seen = []
    for x in source.fetch(root, [item, b"b/user/bob/1."]):
        _take(x, tree)  # read each fully before advancing, as the protocol asks
        seen.append(x.entry.path)  # type: ignore[union-attr]
    assert seen == [b"big/70m.", b"b/user/bob/1."]


def _take(x: Fetched | bytes, tree: Tree) -> None:
    """Read a fetched item fully and check its content and size."""
    assert isinstance(x, Fetched)
    digest = hashlib.sha256()
    n = 0
    while data := x.read(1 << 20):
        digest.update(data)
        n += len(data)
    assert digest.digest() == hashlib.sha256(tree.files[x.entry.path]).digest()
    assert x.entry.size == n


def test_checksum(src: tuple[Source, str], tree: Tree) -> None:
    source, root = src
    ask = [b"h/files/" + n for n in HOSTILE] + [b"gone", b"b/user/bob/evil", b"b/user/outdir/secret",
                                                  b"b/user/bob/cyrus.cache", b"b/user"]
    got = list(source.checksum(root, ask))
    assert [p for p, _ in got] == ask
    for path, digest in got:
        if path in tree.files:
            assert digest == hashlib.sha256(tree.files[path]).hexdigest(), path
        else:
            assert digest is None, path


def test_cyrus_processes_is_a_list(src: tuple[Source, str]) -> None:
    source, _root = src
    procs = source.cyrus_processes()
    assert isinstance(procs, list)
    if isinstance(source, LocalSource):
        assert procs == []


def test_local_root_symlink_inside_folder_is_resolved_chroot_style(tmp_path: Path) -> None:
    (tmp_path / "srv" / "imap" / "x").mkdir(parents=True)
    (tmp_path / "srv" / "imap" / "x" / "1.").write_bytes(b"m")
    (tmp_path / "var").mkdir()
    os.symlink("/srv", tmp_path / "var" / "spool")  # absolute: means <folder>/srv
    source = LocalSource(tmp_path)
    assert [e.path for e in source.walk(ROOT)] == [b"", b"x", b"x/1."]


def test_local_root_symlink_cannot_escape_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "imap"
    outside.mkdir(parents=True)
    (outside / "secret").write_bytes(b"s")
    folder = tmp_path / "old"
    (folder / "var" / "spool").mkdir(parents=True)
    os.symlink("../../../outside/imap", folder / "var" / "spool" / "imap")  # climbs above the folder
    os.symlink(str(outside), folder / "var" / "spool" / "abs")  # absolute: means <folder>/<outside>
    source = LocalSource(folder)
    assert list(source.walk(ROOT)) == []
    assert list(source.walk("/var/spool/abs")) == []
    assert list(source.fetch(ROOT, [b"secret"])) == [b"secret"]


def test_relative_paths_are_checked(src: tuple[Source, str]) -> None:
    source, root = src
    for bad in (b"../x", b"/etc/passwd", b"a/./b", b"a//b"):
        with pytest.raises(ValueError):
            list(source.stat(root, [bad]))


_NOTE = b"find: '/var/spool/imap/./user/b/bob/%d.': No such file or directory\n"


@given(notes_before=hst.integers(0, 3000), error_at=hst.one_of(hst.none(), hst.integers(0, 3000)),
       chunk=hst.integers(1, 70000))
def test_stderr_kept_past_its_limit_still_says_exactly_whether_a_real_error_came(
        notes_before: int, error_at: int | None, chunk: int) -> None:
    """Thousands of vanished-path notes are no error wherever the stream is cut; an error among them is kept."""
    lines = [_NOTE % i for i in range(notes_before)]
    if error_at is not None:
        lines.insert(min(error_at, len(lines)), b"find: '/var/spool/imap/./user': Permission denied\n")
    stream = b"".join(lines)
    errbuf = bytearray()
    for at in range(0, len(stream), chunk):
        _remote.add_stderr(errbuf, stream[at:at + chunk])
        assert len(errbuf) <= _remote.STDERR_KEEP + chunk
    fatal = _remote.fatal_stderr(bytes(errbuf))
    if error_at is None:
        assert fatal is None
    else:
        assert fatal == "find: '/var/spool/imap/./user': Permission denied"
