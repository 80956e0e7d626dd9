"""The stat section's "unchanged since" answers, as the source's own shell and GNU find give them.

An incremental pass asks the source to stat the paths it knows; with a time
(the last clean pass's listing, on the source's clock) a path whose ctime is
older comes back as one byte, no path. A find without ``-newerct`` must give
full answers, never an empty section: that would read as "all vanished".
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from spoolmig.transport import _remote


def _tree(tmp_path: Path) -> tuple[str, list[bytes]]:
    root = tmp_path / "spool"
    (root / "a").mkdir(parents=True)
    (root / "a" / "cyrus.index").write_bytes(b"x" * 10)
    (root / "b").write_bytes(b"y")
    return str(root), [b"", b"a", b"a/cyrus.index", b"gone", b"b"]


def _run(script: str, root: str, paths: list[bytes], env: dict[str, str] | None = None) -> bytes:
    """The script's output for ``paths`` (asked as the SSH source asks them), run by the real shell and find."""
    prefix = _remote.stat_prefix(root)
    stdin = b"".join(_remote.stat_arg(prefix, p) + b"\0" for p in paths)
    done = subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, env=env)
    assert done.returncode == 123 and b"gone" in done.stderr  # find's note of the vanished path, as always
    return done.stdout


def _records(script: str, root: str, paths: list[bytes], env: dict[str, str] | None = None) -> list:  # type: ignore[type-arg]
    return list(_remote.parse_records([_run(script, root, paths, env)]))


def test_paths_unchanged_since_come_back_as_one_byte_each(tmp_path: Path) -> None:
    root, paths = _tree(tmp_path)
    later = int(time.time()) + 60
    out = _run(_remote.stat_stdin_script(later), root, paths)
    assert out == _remote.UNCHANGED_MARK.encode() * 4  # a vanished path: nothing
    assert list(_remote.parse_records([out[:1], out[1:3], out[3:]])) == [4]  # one run, however it arrives


def test_paths_changed_since_get_a_full_answer(tmp_path: Path) -> None:
    root, paths = _tree(tmp_path)
    since = int(time.time()) + 60
    os.utime(Path(root) / "b", (since + 10, since + 10))  # a file time says nothing: ctime is now, before since
    full = _records(_remote.stat_stdin_script(None), root, paths)
    assert _records(_remote.stat_stdin_script(since), root, paths) == [4]
    earlier = _records(_remote.stat_stdin_script(int(time.time()) - 60), root, paths)
    assert earlier == full  # every ctime is later: the same answers as a plain stat
    assert [a.kind for a in full] == ["d", "d", "f", "f"]
    assert full[2].size == 10


def test_a_run_of_unchanged_answers_is_counted_before_the_full_one_that_follows(tmp_path: Path) -> None:
    root, paths = _tree(tmp_path)
    time.sleep(1.1)
    since = int(time.time())
    time.sleep(1.1)
    (Path(root) / "b").write_bytes(b"changed")  # its ctime now after since; the rest before
    records = _records(_remote.stat_stdin_script(since), root, paths)
    assert records[0] == 3 and len(records) == 2  # "", a, a/cyrus.index; gone: nothing
    assert records[1].kind == "f" and records[1].size == 7
    assert records[1].path == _remote.stat_arg(_remote.stat_prefix(root), b"b")
    assert list(_remote.parse_records([_run(_remote.stat_stdin_script(since), root, paths) + b"uu"])) \
        == [3, records[1], 2]  # a run last of all


def _no_newerct(tmp_path: Path) -> Path:
    """A directory whose ``find`` refuses -newerct, as an old or BusyBox find does."""
    shim = tmp_path / "bin"
    shim.mkdir()
    real = subprocess.run(["/bin/sh", "-c", "command -v find"], capture_output=True, text=True, check=True).stdout.strip()
    (shim / "find").write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -newerct ] && { echo "find: unknown predicate \'-newerct\'" >&2; exit 1; }; done\n'
        f'exec {real} "$@"\n')
    (shim / "find").chmod(0o755)
    return shim


def test_a_find_without_newerct_gives_full_answers(tmp_path: Path) -> None:
    """An old or BusyBox find refuses -newerct: the script falls back to plain answers, never to none."""
    root, paths = _tree(tmp_path)
    env = dict(os.environ, PATH=f"{_no_newerct(tmp_path)}:{os.environ['PATH']}")
    answers = _records(_remote.stat_stdin_script(int(time.time()) + 60), root, paths, env)
    assert [a.kind for a in answers] == ["d", "d", "f", "f"]
    assert answers == _records(_remote.stat_stdin_script(None), root, paths)


def test_a_walk_since_with_a_find_without_newerct_lists_everything(tmp_path: Path) -> None:
    """The walk's fallback, as the stat's: every entry, never only the directories (it would read as "unchanged")."""
    root, _ = _tree(tmp_path)
    since = int(time.time()) + 60  # nothing changed since: only the directories, where -newerct works
    walk = ["/bin/sh", "-c", _remote.walk_script(root, (), (), since)]
    brief = [e.path for e in _remote.parse_records([subprocess.run(walk, capture_output=True, check=True).stdout])]
    assert sorted(brief) == [b"", b"a"]
    env = dict(os.environ, PATH=f"{_no_newerct(tmp_path)}:{os.environ['PATH']}")
    full = [e.path for e in _remote.parse_records([subprocess.run(walk, capture_output=True, env=env,
                                                                  check=True).stdout])]
    assert sorted(full) == [b"", b"a", b"a/cyrus.index", b"b"]
