"""The prepared stat judges the combined command's stderr line by line while it is still arriving.

A benign note of find (a path that vanished) may have arrived only in part
when a tree's answers end; read as a line, its beginning would not match the
benign pattern and a harmless race would fail the pass.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from spoolmig.errors import TransportError
from spoolmig.transport import _prepared, _remote
from spoolmig.transport._common import check_relpath
from spoolmig.transport.base import Entry, KnownPaths

ROOT = "/var/spool/imap"
PATHS = [b"", b"a", b"a/cyrus.index", b"b"]


class _Combined:
    """The combined command's output as :class:`_prepared.PreparedStat` reads it: records, then stderr."""

    def __init__(self, stderr_after: bytes) -> None:
        self.errbuf = bytearray()
        self.pos, self.generation, self.clock = 0, 0, None
        self.stderr_after = stderr_after

    def section(self, index: int, what: str) -> Iterator[Entry]:
        prefix = _remote.stat_prefix(ROOT)
        for path in PATHS:
            if path == b"b":  # vanished: find answers nothing and notes it on stderr (it arrives meanwhile)
                self.errbuf += self.stderr_after
                continue
            kind = "f" if path.endswith(b".index") else "d"
            yield Entry(_remote.stat_arg(prefix, path), kind, 10, 1_700_000_000_000_000_000, 0o700)


def _answers(stderr: bytes) -> list[Entry | bytes]:
    combined = _Combined(stderr)
    sent, starts = _prepared.stat_args([KnownPaths(ROOT, lambda: iter(PATHS))])
    stat = _prepared.PreparedStat(combined, 0, sent, starts)

    def recheck(path: bytes) -> Entry | bytes:
        raise AssertionError(f"{path!r} needed no second stat")

    def restat(paths: list[bytes]) -> list[Entry | bytes]:
        raise AssertionError(f"{paths!r} needed no second stat")

    return list(stat.answers(ROOT, PATHS, [], recheck, restat))


def test_a_benign_note_that_arrived_in_part_is_not_judged_yet() -> None:
    answers = _answers(b"find: '/var/spool/imap/./b': No such file or dir")
    assert [a if isinstance(a, bytes) else (a.path, a.kind) for a in answers] == \
        [(b"", "d"), (b"a", "d"), (b"a/cyrus.index", "f"), b"b"]


def test_a_whole_benign_note_passes() -> None:
    assert _answers(b"find: '/var/spool/imap/./b': No such file or directory\n")[-1] == b"b"


def test_a_whole_line_of_another_error_fails_the_stat_naming_the_tree() -> None:
    with pytest.raises(TransportError, match=r"stat in /var/spool/imap failed on the source: find: .*Permission"):
        _answers(b"find: '/var/spool/imap/./b': No such file or directory\n"
                 b"find: '/var/spool/imap/./c': Permission denied\nfind: '/var/spool/imap/./d': No such")


# --- placing "unchanged" answers: one byte each, no path (the real find's output) --------------------

class _Stream:
    """A combined command's stat section, as parse_records gives it from real output."""

    def __init__(self, output: bytes) -> None:
        self.errbuf = bytearray()
        self.pos, self.generation, self.clock = 0, 0, None
        self.output = output

    def section(self, index: int, what: str) -> Iterator[Entry | int]:
        yield from _remote.parse_records([self.output])


def _lstat(root: Path, path: bytes) -> Entry | bytes:
    try:
        st = os.lstat(os.path.join(root, os.fsdecode(path)) if path else root)
    except FileNotFoundError:
        return path
    kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
    return Entry(path, kind, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino)


class _Trees:
    """Two trees on disk, dated before a ``since``; the stat section the real find gives for them."""

    PATHS = {"p1": [b"", b"a", b"a/cyrus.index", b"b", b"b/cyrus.index", b"c"],
             "p2": [b"", b"x", b"x/cyrus.index", b"y"]}

    def __init__(self, tmp_path: Path) -> None:
        self.roots = {name: tmp_path / name for name in self.PATHS}
        for name, paths in self.PATHS.items():
            for p in paths:
                target = self.roots[name] / os.fsdecode(p)
                if p.endswith(b".index"):
                    target.write_bytes(b"i" * 8)
                else:
                    target.mkdir(parents=True, exist_ok=True)
        time.sleep(1.1)
        self.since = int(time.time())  # every ctime above is before it, every change below after it
        time.sleep(0.05)
        self.restated: list[tuple[str, list[bytes]]] = []

    def stat(self) -> _prepared.PreparedStat:
        known = [KnownPaths(str(self.roots[n]), lambda n=n: iter(self.PATHS[n])) for n in self.PATHS]
        sent, starts = _prepared.stat_args(known)
        done = subprocess.run(["/bin/sh", "-c", _remote.stat_stdin_script(self.since)], input=sent,
                              capture_output=True)
        assert done.returncode in (0, 1), done.stderr  # find's own status: this machine's find reads its paths
        return _prepared.PreparedStat(_Stream(done.stdout), 0, sent, starts)  # type: ignore[arg-type]

    def changes(self, stat: _prepared.PreparedStat, name: str) -> list[Entry | bytes]:
        def restat(paths: list[bytes]) -> list[Entry | bytes]:
            self.restated.append((name, paths))
            return [_lstat(self.roots[name], p) for p in paths]

        return list(stat.changes(str(self.roots[name]), restat))


def _said(answers: list[Entry | bytes]) -> list[tuple[bytes, str]]:
    return [(a, "gone") if isinstance(a, bytes) else (a.path, a.kind) for a in answers]


def test_unchanged_paths_are_left_out_and_a_change_comes_with_its_path(tmp_path: Path) -> None:
    trees = _Trees(tmp_path)
    (trees.roots["p1"] / "b" / "cyrus.index").write_bytes(b"new")
    stat = trees.stat()
    assert _said(trees.changes(stat, "p1")) == [(b"b/cyrus.index", "f")]
    assert trees.changes(stat, "p2") == []
    assert trees.restated == []


def test_paths_with_no_answer_at_all_between_two_full_ones_are_vanished_without_a_second_stat(tmp_path: Path) -> None:
    trees = _Trees(tmp_path)
    shutil.rmtree(trees.roots["p1"] / "a")  # the root changes (full answer); a and its index: nothing
    (trees.roots["p1"] / "b").chmod(0o750)  # the next full answer
    stat = trees.stat()
    assert _said(trees.changes(stat, "p1")) == [(b"", "d"), (b"a", "gone"), (b"a/cyrus.index", "gone"),
                                               (b"b", "d")]
    assert trees.changes(stat, "p2") == [] and trees.restated == []


def test_a_vanished_path_among_unchanged_ones_has_that_stretch_stated_again(tmp_path: Path) -> None:
    trees = _Trees(tmp_path)
    (trees.roots["p1"] / "a" / "cyrus.index").write_bytes(b"new")  # a full answer before the stretch
    (trees.roots["p1"] / "c").rmdir()  # vanished, after b and b/cyrus.index (unchanged): 2 bytes for 3 paths
    (trees.roots["p2"] / "x" / "cyrus.index").write_bytes(b"new")  # a full answer after it, in the next tree
    stat = trees.stat()
    p1 = trees.changes(stat, "p1")
    assert (b"c", "gone") in _said(p1) and (b"a/cyrus.index", "f") in _said(p1)
    # the stretch the count is exact for runs into p2: its part is stat'ed again too
    assert trees.restated[0] == ("p1", [b"b", b"b/cyrus.index", b"c"])
    p2 = trees.changes(stat, "p2")
    assert (b"x/cyrus.index", "f") in _said(p2)
    assert trees.restated[1] == ("p2", [b"", b"x"])
    assert all(not isinstance(a, bytes) for a in p2)


def test_the_last_tree_without_changes_does_not_mistake_a_vanished_path_for_an_unchanged_one(tmp_path: Path) -> None:
    trees = _Trees(tmp_path)
    (trees.roots["p1"] / "c").rmdir()  # vanished; the root changed too (a full answer first)
    stat = trees.stat()
    # after the root, 8 bytes for a stretch of 9 paths, to the end: all of it stat'ed again, p2's part too
    assert _said(trees.changes(stat, "p1")) == [(b"", "d"), (b"a", "d"), (b"a/cyrus.index", "f"), (b"b", "d"),
                                               (b"b/cyrus.index", "f"), (b"c", "gone")]
    assert _said(trees.changes(stat, "p2")) == [(b"", "d"), (b"x", "d"), (b"x/cyrus.index", "f"), (b"y", "d")]
    assert trees.restated == [("p1", _Trees.PATHS["p1"][1:]), ("p2", _Trees.PATHS["p2"])]


def test_more_unchanged_answers_than_paths_fail_the_stat(tmp_path: Path) -> None:
    trees = _Trees(tmp_path)
    stat = trees.stat()
    stat.combined.output += b"uu"  # type: ignore[attr-defined]
    with pytest.raises(TransportError, match="more paths than were asked"):
        trees.changes(stat, "p1")  # the count runs to the section's end: known as soon as p1's last path


def _one_by_one(root: str, paths: list[bytes]) -> bytes:
    """The stat section's stdin as it was built before it was joined in one step: a call per path."""
    prefix = _remote.stat_prefix(root)
    return b"".join(_remote.stat_arg(prefix, check_relpath(p)) + b"\0" for p in paths)


def _built(build: Callable[[], bytes]) -> bytes | str:
    try:
        return build()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"


#: Names as a spool and a hostile source have them: dots, slashes, NULs, empty parts, non-UTF-8.
_PATH_BYTES = hs.binary(max_size=12).map(lambda b: bytes(b"ab./\0\xff"[c % 6] for c in b))


@given(hs.lists(hs.one_of(_PATH_BYTES, hs.sampled_from([b"", b"user", b"user/a/cyrus.index", b".x"])),
                max_size=8))
@settings(max_examples=400, deadline=None)
def test_the_stat_arguments_joined_in_one_step_are_the_ones_made_path_by_path(paths: list[bytes]) -> None:
    """Every path is sent as ``root/./path`` (the root as ``root/.``), and a path that could name
    something outside the root is refused with the same error as when each was checked alone."""
    expected = _built(lambda: _one_by_one(ROOT, paths))
    got = _built(lambda: _prepared.stat_args([KnownPaths(ROOT, lambda: iter(paths))])[0])
    assert got == expected


def test_the_stat_arguments_of_several_trees_start_where_each_tree_begins() -> None:
    trees = [("/var/spool/imap", [b"", b"a", b"a/cyrus.index"]), ("/var/spool/imap2", [b"b/c"]), ("/x", [])]
    sent, starts = _prepared.stat_args([KnownPaths(r, lambda ps=ps: iter(ps)) for r, ps in trees])
    assert sent == b"".join(_one_by_one(r, ps) for r, ps in trees)
    assert starts == [("/var/spool/imap", 0), ("/var/spool/imap2", len(_one_by_one(*trees[0]))),
                      ("/x", len(sent))]
