"""The prepared stat judges the combined command's stderr line by line while it is still arriving.

A benign note of find (a path that vanished) may have arrived only in part
when a tree's answers end; read as a line, its beginning would not match the
benign pattern and a harmless race would fail the pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spoolmig.errors import TransportError
from spoolmig.transport import _prepared, _remote
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

    return list(stat.answers(ROOT, PATHS, [], recheck))


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
