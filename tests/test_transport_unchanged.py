"""The stat section's "unchanged since" answers, as the source's own shell and GNU find give them.

An incremental pass asks the source to stat the paths it knows; with a time
(the last clean pass's listing, on the source's clock) a path whose ctime is
older comes back as one byte, no path. A find without ``-newerct`` must give
full answers, never an empty section: that would read as "all vanished".
Each script comes in two forms: GNU find from 4.9 reads the paths itself
(``-files0-from``), older ones get them through xargs; where the connection
has not been probed yet the script picks one, and every form answers alike.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from spoolmig.transport import _remote


def _tree(tmp_path: Path) -> tuple[str, list[bytes]]:
    root = tmp_path / "spool"
    (root / "a").mkdir(parents=True)
    (root / "a" / "cyrus.index").write_bytes(b"x" * 10)
    (root / "b").write_bytes(b"y")
    return str(root), [b"", b"a", b"a/cyrus.index", b"gone", b"b"]


#: The forms of the stat script: probed with or without -files0-from, or not probed yet (None).
FORMS = pytest.mark.parametrize("files0", [None, True, False], ids=["unprobed", "files0", "xargs"])


def _run(script: str, root: str, paths: list[bytes], env: dict[str, str] | None = None, *,
         by_xargs: bool = False) -> bytes:
    """The script's output for ``paths`` (asked as the SSH source asks them), run by the real shell and find.

    find's note of the vanished path comes as always; its exit status says which
    form ran: 1 from find itself, 123 from xargs (that ran it on some arguments).
    """
    prefix = _remote.stat_prefix(root)
    stdin = b"".join(_remote.stat_arg(prefix, p) + b"\0" for p in paths)
    done = subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, env=env)
    assert b"gone" in done.stderr
    assert done.returncode == (123 if by_xargs else 1)
    return done.stdout


def _records(script: str, root: str, paths: list[bytes], env: dict[str, str] | None = None, *,
             by_xargs: bool = False) -> list:  # type: ignore[type-arg]
    return list(_remote.parse_records([_run(script, root, paths, env, by_xargs=by_xargs)]))


@FORMS
def test_paths_unchanged_since_come_back_as_one_byte_each(tmp_path: Path, files0: bool | None) -> None:
    root, paths = _tree(tmp_path)
    later = int(time.time()) + 60
    out = _run(_remote.stat_stdin_script(later, files0), root, paths, by_xargs=files0 is False)
    assert out == _remote.UNCHANGED_MARK.encode() * 4  # a vanished path: nothing
    assert list(_remote.parse_records([out[:1], out[1:3], out[3:]])) == [4]  # one run, however it arrives


@FORMS
def test_paths_changed_since_get_a_full_answer(tmp_path: Path, files0: bool | None) -> None:
    root, paths = _tree(tmp_path)
    since = int(time.time()) + 60
    os.utime(Path(root) / "b", (since + 10, since + 10))  # a file time says nothing: ctime is now, before since
    full = _records(_remote.stat_stdin_script(None, files0), root, paths, by_xargs=files0 is False)
    assert _records(_remote.stat_stdin_script(since, files0), root, paths, by_xargs=files0 is False) == [4]
    earlier = _records(_remote.stat_stdin_script(int(time.time()) - 60, files0), root, paths,
                       by_xargs=files0 is False)
    assert earlier == full  # every ctime is later: the same answers as a plain stat
    assert [a.kind for a in full] == ["d", "d", "f", "f"]
    assert full[2].size == 10


@FORMS
def test_a_run_of_unchanged_answers_is_counted_before_the_full_one_that_follows(
        tmp_path: Path, files0: bool | None) -> None:
    root, paths = _tree(tmp_path)
    time.sleep(1.1)
    since = int(time.time())
    time.sleep(1.1)
    (Path(root) / "b").write_bytes(b"changed")  # its ctime now after since; the rest before
    script = _remote.stat_stdin_script(since, files0)
    records = _records(script, root, paths, by_xargs=files0 is False)
    assert records[0] == 3 and len(records) == 2  # "", a, a/cyrus.index; gone: nothing
    assert records[1].kind == "f" and records[1].size == 7
    assert records[1].path == _remote.stat_arg(_remote.stat_prefix(root), b"b")
    assert list(_remote.parse_records([_run(script, root, paths, by_xargs=files0 is False) + b"uu"])) \
        == [3, records[1], 2]  # a run last of all


def _refusing(tmp_path: Path, *predicates: str) -> Path:
    """A directory whose ``find`` refuses ``predicates``, as an old or BusyBox find does."""
    shim = tmp_path / "bin"
    shim.mkdir()
    real = subprocess.run(["/bin/sh", "-c", "command -v find"], capture_output=True, text=True, check=True).stdout.strip()
    tests = "".join(f'[ "$a" = {p} ] && {{ echo "find: unknown predicate \'{p}\'" >&2; exit 1; }}; '
                    for p in predicates)
    (shim / "find").write_text(f'#!/bin/sh\nfor a in "$@"; do {tests}done\nexec {real} "$@"\n')
    (shim / "find").chmod(0o755)
    return shim


def _no_newerct(tmp_path: Path) -> Path:
    return _refusing(tmp_path, "-newerct")


def _path(shim: Path) -> dict[str, str]:
    return dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")


@pytest.mark.parametrize("files0", [None, False], ids=["unprobed", "xargs"])
def test_a_find_without_newerct_gives_full_answers(tmp_path: Path, files0: bool | None) -> None:
    """An old or BusyBox find refuses -newerct: the script falls back to plain answers, never to none."""
    root, paths = _tree(tmp_path)
    env = _path(_refusing(tmp_path, "-newerct", "-files0-from"))
    answers = _records(_remote.stat_stdin_script(int(time.time()) + 60, files0), root, paths, env, by_xargs=True)
    assert [a.kind for a in answers] == ["d", "d", "f", "f"]
    assert answers == _records(_remote.stat_stdin_script(None), root, paths)


def test_the_probe_says_whether_find_reads_its_paths_itself(tmp_path: Path) -> None:
    """Its ``F`` line comes from the test the stat script makes when the probe's answer is not known yet."""
    lines = subprocess.run(["/bin/sh", "-c", _remote.PROBE], capture_output=True, check=True).stdout.split(b"\n")
    assert b"F" in lines and b"E" in lines
    env = _path(_refusing(tmp_path, "-files0-from"))
    lines = subprocess.run(["/bin/sh", "-c", _remote.PROBE], capture_output=True, env=env).stdout.split(b"\n")
    assert b"F" not in lines and b"Pd" in lines and b"E" in lines


def test_a_find_without_files0_from_gets_its_paths_through_xargs(tmp_path: Path) -> None:
    """Not probed yet, the script tries -files0-from; a find before 4.9 refuses it and gets the same answers by xargs."""
    root, paths = _tree(tmp_path)
    env = _path(_refusing(tmp_path, "-files0-from"))
    since = int(time.time()) + 60
    for when in (since, None):
        assert _records(_remote.stat_stdin_script(when), root, paths, env, by_xargs=True) \
            == _records(_remote.stat_stdin_script(when, True), root, paths)
    assert _records(_remote.stat_stdin_script(since), root, paths, env, by_xargs=True) == [4]


def test_a_walk_since_with_a_find_without_newerct_lists_everything(tmp_path: Path) -> None:
    """The walk's fallback, as the stat's: every entry, never only the directories (it would read as "unchanged")."""
    root, _ = _tree(tmp_path)
    since = int(time.time()) + 60  # nothing changed since: only the directories, where -newerct works
    walk = ["/bin/sh", "-c", _remote.walk_script(root, (), (), since)]
    brief = [e.path for e in _remote.parse_records([subprocess.run(walk, capture_output=True, check=True).stdout])]
    assert sorted(brief) == [b"", b"a"]
    env = _path(_no_newerct(tmp_path))
    full = [e.path for e in _remote.parse_records([subprocess.run(walk, capture_output=True, env=env,
                                                                  check=True).stdout])]
    assert sorted(full) == [b"", b"a", b"a/cyrus.index", b"b"]
