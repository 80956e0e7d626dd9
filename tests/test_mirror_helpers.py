"""Big fetches over helper processes: same replica, same state, and failures that converge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sshd import Sshd, sftp_only_sshd, sshd  # noqa: F401 - the fixtures
from test_mirror_ssh import ROOT, _ssh_config
from test_mirror_support import assert_mirrors, assert_state_matches_disk, make_server, temporaries

from spoolmig.errors import MirrorError
from spoolmig.mirror import helpers
from spoolmig.mirror.engine import Options, run_pass
from spoolmig.transport import open_source

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ssh


@pytest.fixture
def small_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers from a handful of files on, in small chunks (so both get work several times)."""
    monkeypatch.setattr(helpers, "MIN_FILES", 10)
    monkeypatch.setattr(helpers, "CHUNK_ROWS", 7)


@pytest.fixture
def setup(tmp_path: Path, sshd: Sshd):  # noqa: ANN201, F811
    server = make_server(tmp_path / "old", users=6, messages=300)
    cfg = _ssh_config(tmp_path, server, sshd, tmp_path / "mirror")
    return server, cfg


def _helper_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "spoolmig.mirror.helpers import helper_main"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.usefixtures("small_helpers")
def test_helpers_mirror_file_for_file_and_record_every_file(setup) -> None:  # noqa: ANN001
    server, cfg = setup
    opts = Options(helpers=3, batch_files=5)  # this process and two helpers
    report = run_pass(cfg, lambda: open_source(cfg.source), opts)
    assert report.exit_code() == 0, report.warnings
    assert report.figures["files_new"] > 300
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    assert temporaries(Path(cfg.mirror.path)) == []
    again = run_pass(cfg, lambda: open_source(cfg.source), opts)
    assert again.figures["files_new"] == again.figures["files_changed"] == 0
    # new messages after the first copy: fetched by helpers again (more than MIN_FILES)
    server.deliver(40)
    third = run_pass(cfg, lambda: open_source(cfg.source), opts)
    assert third.exit_code() == 0 and third.figures["files_new"] >= 40
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


@pytest.mark.usefixtures("small_helpers")
def test_helpers_report_progress_in_bytes(setup, tmp_path: Path, sshd: Sshd) -> None:  # noqa: ANN001, F811
    server, cfg = setup

    class Counting:
        def __init__(self) -> None:
            self.bytes = 0
            self.label = ""

        def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
            self.label = label

        def advance(self, n: int = 1) -> None:
            if self.label == "copying":
                self.bytes += n

        def note(self, message: str) -> None:
            pass

        def finish(self) -> None:
            pass

    progress = Counting()
    report = run_pass(cfg, lambda: open_source(cfg.source), Options(helpers=2), progress)
    assert report.exit_code() == 0
    # what the in-process fetch reports for the same tree
    reference = Counting()
    (tmp_path / "plain").mkdir()
    plain = _ssh_config(tmp_path / "plain", server, sshd, tmp_path / "mirror-plain")
    assert run_pass(plain, lambda: open_source(plain.source), Options(), reference).exit_code() == 0
    assert progress.bytes == reference.bytes > 0


@pytest.mark.usefixtures("small_helpers")
def test_a_killed_helper_fails_the_pass_in_one_line_and_the_next_pass_converges(
        setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The helper dies after its first synced batch, with work in hand (no timing guesses).

    This process's own fetch waits until the kill, so the helper surely gets
    chunks; the kill comes from the thread that records the helper's batches,
    right after recording the first, while the helper still holds unfinished
    chunks (it can never have said "done").
    """
    server, cfg = setup
    before = _helper_pids()
    killed: list[int] = []
    kill_done = threading.Event()
    receive, take = helpers._receive, helpers.Dispenser.take

    def receive_then_kill(h, next_chunk, progress, report, commit, undelivered) -> None:  # noqa: ANN001
        def commit_then_kill(*batch: object) -> None:
            commit(*batch)
            if not killed:
                h.proc.send_signal(signal.SIGKILL)
                h.proc.wait()
                killed.append(h.proc.pid)
                kill_done.set()
        receive(h, next_chunk, progress, report, commit_then_kill, undelivered)

    def take_after_kill(self: helpers.Dispenser) -> list | None:
        if threading.current_thread().name != "spoolmig-helpers":  # this process's fetch
            kill_done.wait(30)
        return take(self)

    monkeypatch.setattr(helpers, "_receive", receive_then_kill)
    monkeypatch.setattr(helpers.Dispenser, "take", take_after_kill)
    with pytest.raises(MirrorError, match=r"fetch helper 0 was killed by signal 9 in the middle of the pass"):
        run_pass(cfg, lambda: open_source(cfg.source), Options(helpers=2, batch_files=5, batch_bytes=4096))
    assert killed
    assert _helper_pids() - before == set()
    monkeypatch.setattr(helpers, "_receive", receive)
    monkeypatch.setattr(helpers.Dispenser, "take", take)
    report = run_pass(cfg, lambda: open_source(cfg.source), Options(helpers=2))  # helpers again
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    assert temporaries(Path(cfg.mirror.path)) == []
    assert server  # the source is untouched by all this


def test_killing_the_parent_stops_its_helpers_and_the_next_pass_converges(setup) -> None:  # noqa: ANN001
    """kill -9 of the pass itself: the helpers notice their pipe closing and stop."""
    _server, cfg = setup
    script = (
        "import sys\n"
        "from spoolmig import config\n"
        "from spoolmig.mirror import helpers\n"
        "from spoolmig.mirror.engine import Options, run_pass\n"
        "from spoolmig.transport import open_source\n"
        "helpers.MIN_FILES, helpers.CHUNK_ROWS = 10, 7\n"
        "cfg = config.load(sys.argv[1])\n"
        "run_pass(cfg, lambda: open_source(cfg.source), Options(helpers=2, batch_files=5, batch_bytes=4096))\n"
    )
    for delay in (1.2, 1.8):
        before = _helper_pids()
        proc = subprocess.Popen([sys.executable, "-c", script, cfg.file], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while _helper_pids() - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _helper_pids() - before == set(), "helpers outlived their parent"
    report = run_pass(cfg, lambda: open_source(cfg.source))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))
    assert temporaries(Path(cfg.mirror.path)) == []


def test_small_fetches_stay_in_process(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _server, cfg = setup
    started: list[int] = []
    monkeypatch.setattr(helpers, "HelperPool", lambda *a, **k: started.append(1))
    report = run_pass(cfg, lambda: open_source(cfg.source), Options(helpers=2))
    assert report.exit_code() == 0 and started == []  # a few hundred files: below MIN_FILES
    assert_mirrors(ROOT, cfg)


@pytest.mark.usefixtures("small_helpers")
def test_helpers_work_from_a_local_source(tmp_path: Path) -> None:
    """A local folder (an offline copy) as source: the helpers open the same folder."""
    from test_mirror_support import load_config, local_factory

    server = make_server(tmp_path / "old", users=4, messages=200)
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    report = run_pass(cfg, local_factory(cfg), Options(helpers=2, batch_files=5))
    assert report.exit_code() == 0, report.warnings
    assert_mirrors(server.root, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


@pytest.mark.usefixtures("small_helpers")
def test_helpers_work_over_an_sftp_only_account(tmp_path: Path, sftp_only_sshd: Sshd) -> None:  # noqa: F811
    """No shell on the source: every process falls back to SFTP on its own connection."""
    server = make_server(tmp_path / "old", users=3, messages=120)
    for top, dirs, files in os.walk(server.root, topdown=False):  # SFTP carries whole seconds only
        for name in files + dirs:
            p = os.path.join(top, name)
            st = os.lstat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns // 10**9 * 10**9), follow_symlinks=False)
    cfg = _ssh_config(tmp_path, server, sftp_only_sshd, tmp_path / "mirror")
    report = run_pass(cfg, lambda: open_source(cfg.source), Options(helpers=2, batch_files=5))
    assert report.exit_code() == 0, report.warnings
    assert report.figures["files_new"] > 120
    assert_mirrors(ROOT, cfg)
    assert_state_matches_disk(Path(cfg.mirror.path))


def test_big_buffers_get_their_own_pages_on_glibc() -> None:
    """mallopt is found and accepts the fixed threshold (elsewhere than glibc the call is a no-op)."""
    import platform

    assert platform.libc_ver()[0] == "glibc"  # Debian, where spoolmig runs and is tested
    assert helpers.map_big_buffers() is True
