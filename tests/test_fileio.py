"""The durable-write path on real files: publish_bytes both ways (unnamed file + linkat, temporary + rename)."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from spoolmig import fileio
from spoolmig.fileio import TEMP_MARK, publish_bytes

MTIME = 1_700_000_000_123_456_789
REPO = Path(__file__).resolve().parent.parent


def _unnamed_works(directory: Path) -> bool:
    """Can this kernel and filesystem make O_TMPFILE files (and is /proc there to name them)?"""
    if fileio._PROC_FD[0] is None or not fileio._UNNAMED_OK[0]:
        return False
    try:
        os.close(os.open(directory, fileio._UNNAMED_FILE, 0o600))
    except OSError:
        return False
    return True


@pytest.fixture(params=["unnamed", "renamed"])
def way(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way of publishing; "renamed" is the fallback, forced by the cached decision."""
    if request.param == "unnamed":
        if not _unnamed_works(tmp_path):
            pytest.skip("no O_TMPFILE or no /proc here")
        monkeypatch.setattr(fileio, "_UNNAMED_OK", [True])
    else:
        monkeypatch.setattr(fileio, "_UNNAMED_OK", [False])
    return str(request.param)


def _used_unnamed(way: str) -> None:
    """The unnamed way really ran (it did not quietly fall back)."""
    assert fileio._UNNAMED_OK[0] == (way == "unnamed")


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_a_replacement_hinted_wrongly_still_makes_the_file(tmp_path: Path, way: str) -> None:
    """The caller's hint that the path exists may be out of date (the file was deleted meanwhile)."""
    publish_bytes(bytes(tmp_path / "gone"), b"data", 0o640, MTIME, replacing=True)
    st = os.lstat(tmp_path / "gone")
    assert (tmp_path / "gone").read_bytes() == b"data"
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_nlink) == (0o640, MTIME, 1)
    assert _entries(tmp_path) == ["gone"], "no temporaries left"


def test_new_file_has_content_mode_and_mtime(tmp_path: Path, way: str) -> None:
    old_umask = os.umask(0o022)
    try:
        for name, mode in ((b"1.", 0o600), (b"2.", 0o644), (b"3.", 0o666), (b"4.", 0o2750)):  # bits as listed
            publish_bytes(bytes(tmp_path) + b"/" + name, name * 1000, mode, MTIME)
            st = os.lstat(bytes(tmp_path) + b"/" + name)
            assert stat.S_ISREG(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == mode, name  # the umask took nothing away
            assert st.st_mtime_ns == MTIME
            assert st.st_nlink == 1
            assert (tmp_path / os.fsdecode(name)).read_bytes() == name * 1000
    finally:
        os.umask(old_umask)
    publish_bytes(bytes(tmp_path) + b"/empty", b"", 0o600, 0)
    assert (tmp_path / "empty").read_bytes() == b""
    assert os.lstat(tmp_path / "empty").st_mtime_ns == 0
    assert _entries(tmp_path) == ["1.", "2.", "3.", "4.", "empty"], "no temporaries left"
    _used_unnamed(way)


@pytest.mark.parametrize("replacing", [False, True], ids=["unhinted", "hinted"])
def test_existing_file_is_replaced_atomically(tmp_path: Path, way: str, replacing: bool) -> None:
    dest = tmp_path / "cyrus.index"
    dest.write_bytes(b"old index")
    os.chmod(dest, 0o644)
    old_inode = os.lstat(dest).st_ino
    with open(dest, "rb") as reader:  # a reader of the old file keeps the old file: no write in place
        publish_bytes(bytes(dest), b"new index, longer", 0o600, MTIME, replacing=replacing)
        assert reader.read() == b"old index"
    st = os.lstat(dest)
    assert st.st_ino != old_inode and st.st_nlink == 1
    assert dest.read_bytes() == b"new index, longer"
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, MTIME)
    assert _entries(tmp_path) == ["cyrus.index"], "no temporaries left"
    _used_unnamed(way)


def test_a_concurrent_reader_always_finds_a_whole_file(tmp_path: Path, way: str) -> None:
    """Replacement is one rename: a reader never meets a missing name or a torn file in between."""
    dest = tmp_path / "cyrus.index"
    versions = [bytes([65 + i % 26]) * (4096 + i) for i in range(400)]
    publish_bytes(bytes(dest), versions[0], 0o600, MTIME)
    stop = threading.Event()
    seen: list[bytes | str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(dest.read_bytes())
            except FileNotFoundError:
                seen.append("missing")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for data in versions[1:]:
            publish_bytes(bytes(dest), data, 0o600, MTIME)
    finally:
        stop.set()
        reader.join()
    whole = set(versions)
    assert "missing" not in seen
    assert all(s in whole for s in seen)
    assert dest.read_bytes() == versions[-1]
    assert _entries(tmp_path) == ["cyrus.index"]


@pytest.mark.parametrize("replacing", [False, True], ids=["unhinted", "hinted"])
def test_symlink_at_destination_is_replaced_never_followed(tmp_path: Path, way: str, replacing: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"keep me")
    box = tmp_path / "box"
    box.mkdir()
    (box / "a").symlink_to(victim)
    (box / "b").symlink_to(outside / "not-there")  # dangling: must not be created through
    publish_bytes(bytes(box / "a"), b"data a", 0o600, MTIME, replacing=replacing)
    publish_bytes(bytes(box / "b"), b"data b", 0o600, MTIME, replacing=replacing)
    for name in ("a", "b"):
        assert stat.S_ISREG(os.lstat(box / name).st_mode)
        assert (box / name).read_bytes() == b"data " + name.encode()
    assert victim.read_bytes() == b"keep me"
    assert _entries(outside) == ["victim"]
    assert _entries(box) == ["a", "b"]
    _used_unnamed(way)


@pytest.mark.parametrize("replacing", [False, True], ids=["unhinted", "hinted"])
def test_directory_at_destination_is_an_error_leaving_nothing(tmp_path: Path, way: str, replacing: bool) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inside").write_bytes(b"x")
    with pytest.raises(IsADirectoryError):  # the replica turns this into its "directory in the way" error
        publish_bytes(bytes(tmp_path / "d"), b"data", 0o600, MTIME, replacing=replacing)
    assert _entries(tmp_path) == ["d"]
    assert _entries(tmp_path / "d") == ["inside"]


@pytest.mark.parametrize("replacing", [False, True], ids=["unhinted", "hinted"])
def test_failing_data_leaves_nothing_and_the_old_file_intact(tmp_path: Path, way: str, replacing: bool) -> None:
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    with pytest.raises(TypeError):
        publish_bytes(bytes(dest), "not bytes", 0o600, MTIME, replacing=replacing)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        publish_bytes(bytes(tmp_path / "new"), "not bytes", 0o600, MTIME)  # type: ignore[arg-type]
    assert _entries(tmp_path) == ["f"]
    assert dest.read_bytes() == b"old"


def test_failing_write_midway_leaves_nothing_and_the_old_file_intact(tmp_path: Path, way: str) -> None:
    """A real short write then a write error (EFBIG past RLIMIT_FSIZE, as a full disk would fail)."""
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))  # Python ignores SIGXFSZ: write() fails
    try:
        with pytest.raises(OSError) as first:
            publish_bytes(bytes(dest), b"x" * 100_000, 0o600, MTIME)
        with pytest.raises(OSError) as second:
            publish_bytes(bytes(tmp_path / "new"), b"x" * 100_000, 0o600, MTIME)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert first.value.errno == second.value.errno == __import__("errno").EFBIG
    assert _entries(tmp_path) == ["f"]
    assert dest.read_bytes() == b"old"
    _used_unnamed(way)


#: A child that publishes a file bigger than it may write and so is killed by SIGXFSZ in the middle.
KILLED_MIDWAY = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {repo!r})
    from spoolmig import fileio
    fileio._UNNAMED_OK[0] = fileio._UNNAMED_OK[0] and sys.argv[2] == "unnamed"
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, resource.RLIM_INFINITY))
    fileio.publish_bytes(sys.argv[1].encode(), b"x" * 100_000, 0o600, 0)
""")


def test_a_killed_writer_leaves_no_temporary_for_a_new_file(tmp_path: Path, way: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_MIDWAY.format(repo=str(REPO)), str(tmp_path / "f"), way],
                          capture_output=True, check=False)
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr
    left = _entries(tmp_path)
    if way == "unnamed":
        assert left == [], "the kernel frees an unnamed file"
    else:
        assert len(left) == 1 and left[0].startswith(TEMP_MARK), left  # what remove_temporaries is for
        assert fileio.remove_temporaries(tmp_path) == 1


def test_without_o_tmpfile_the_fallback_is_taken_once_and_works(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What a kernel older than 3.11 sees: O_DIRECTORY|O_WRONLY on a directory, EISDIR."""
    if fileio._PROC_FD[0] is None:
        pytest.skip("no /proc")
    monkeypatch.setattr(fileio, "_UNNAMED_OK", [True])
    monkeypatch.setattr(fileio, "_UNNAMED_FILE", os.O_DIRECTORY | os.O_WRONLY | os.O_CLOEXEC)
    publish_bytes(bytes(tmp_path / "a"), b"aaa", 0o640, MTIME)
    assert fileio._UNNAMED_OK == [False], "decided once for this process"
    publish_bytes(bytes(tmp_path / "a"), b"bbb", 0o600, MTIME)
    assert (tmp_path / "a").read_bytes() == b"bbb"
    assert (stat.S_IMODE(os.lstat(tmp_path / "a").st_mode), os.lstat(tmp_path / "a").st_mtime_ns) == (0o600, MTIME)
    assert _entries(tmp_path) == ["a"]


def test_without_proc_the_fallback_is_taken_once_and_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/self/fd that names nothing (an empty directory in its place): linkat ENOENT, then the rename way."""
    if not _unnamed_works(tmp_path):
        pytest.skip("no O_TMPFILE or no /proc here")
    empty = tmp_path / "empty-proc"
    empty.mkdir()
    fake_proc = os.open(empty, os.O_RDONLY | os.O_DIRECTORY)
    box = tmp_path / "box"
    box.mkdir()
    try:
        monkeypatch.setattr(fileio, "_PROC_FD", [fake_proc])
        monkeypatch.setattr(fileio, "_UNNAMED_OK", [True])
        publish_bytes(bytes(box / "a"), b"aaa", 0o600, MTIME)
        assert fileio._UNNAMED_OK == [False]
    finally:
        os.close(fake_proc)
    assert (box / "a").read_bytes() == b"aaa" and os.lstat(box / "a").st_mtime_ns == MTIME
    assert _entries(box) == ["a"]
    assert _entries(empty) == []


def test_a_vanished_directory_is_an_error_not_a_reason_to_fall_back(tmp_path: Path, way: str) -> None:
    with pytest.raises(FileNotFoundError):
        publish_bytes(bytes(tmp_path / "gone" / "f"), b"data", 0o600, MTIME)
    _used_unnamed(way)


def test_a_forked_child_names_its_own_files(tmp_path: Path, way: str) -> None:
    """/proc/self/fd is resolved when opened: a child must not name files through its parent's descriptors."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            publish_bytes(bytes(tmp_path / "child"), b"from the child", 0o600, MTIME)
            code = 0 if fileio._UNNAMED_OK[0] == (way == "unnamed") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child fell back: it used its parent's /proc/<pid>/fd"
    assert (tmp_path / "child").read_bytes() == b"from the child"
    assert _entries(tmp_path) == ["child"]
