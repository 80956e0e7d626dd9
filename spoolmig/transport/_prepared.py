"""The stat section of the SSH source's one listing command: known paths answered ahead, tree after tree.

An incremental pass stats, by path, the directories and ``cyrus.*`` files
the state knows (:class:`~spoolmig.transport.base.KnownPaths`). Over SSH
those paths, for every partition, go on the stdin of the command that also
walks the configdirectory and sievedir (:meth:`SshSource.prepare_walks`),
as absolute arguments (:func:`._remote.stat_arg`); this module builds that
stdin and hands each tree its answers. No paramiko here: the command's
output comes as a section of :class:`Combined`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from spoolmig.errors import TransportError
from spoolmig.transport import _remote
from spoolmig.transport._common import check_relpath, show
from spoolmig.transport.base import Entry, KnownPaths


class Combined(Protocol):
    """What a stat section needs of the combined command's output (ssh._Combined)."""

    errbuf: bytearray
    pos: int  # the section being read
    generation: int  # of the connection it runs on
    clock: int | None  # the source's clock before the listing began

    def section(self, index: int, what: str) -> Iterator[Entry]: ...


class PreparedStat:
    """The stat section of a combined command: several trees' known paths answered, tree after tree.

    The paths went out on the command's stdin as absolute arguments
    (:func:`_remote.stat_arg`) and the answers come back in that order, a
    vanished path printing nothing (and, with a ``since``, a path unchanged
    since then its path alone, see :class:`KnownPaths`). Each tree's :meth:`SshSource.stat` takes
    its share, checking the caller's paths against what was sent, so an
    answer is only ever taken for the path it was asked for.
    """

    def __init__(self, combined: Combined, index: int, sent: bytes, starts: list[tuple[str, int]]) -> None:
        self.combined, self.index, self.sent = combined, index, sent
        #: root -> offset in ``sent`` of its first path
        self.starts = dict(starts)
        #: A tree's position by the prefix of its answers' paths (its root, then ``/./``).
        self.order = {_remote.stat_prefix(root): i for i, (root, _) in enumerate(starts)}
        self.waiting = set(self.starts)  # trees not asked for yet
        self._records: Iterator[Entry] | None = None
        self._ahead: tuple[int, Entry] | None = None  # read, not taken: a later path's or tree's

    def _peek(self) -> tuple[int, Entry] | None:
        """The next answer and its tree's position; None at the section's end."""
        if self._ahead is None:
            if self._records is None:
                self._records = self.combined.section(self.index, "stat of known paths")
            record = next(self._records, None)
            if record is None:
                return None
            path = record.path
            cut = path.find(b"/./")
            tree = self.order.get(path[:cut + 3] if cut >= 0 else path + b"/")
            if tree is None:
                raise TransportError(f"the source answered for {show(path)!r}, which was not asked for")
            self._ahead = (tree, record)
        return self._ahead

    def answers(self, root: str, paths: Iterable[bytes], asking: list[bytes],
                recheck: Callable[[bytes], Entry | bytes]) -> Iterator[Entry | bytes]:
        """:meth:`SshSource.stat` of ``root``'s paths; ``asking`` holds the one not answered yet.

        The kernel resolves a path through a symlink in the middle, so an
        answer stands only if the path's directory was answered a directory
        (before it, in this stat): below anything else the path is vanished,
        and below a directory not asked for it is stat'ed again, checked
        (``recheck``; a listing of known paths always asks for directories
        first).
        """
        prefix = _remote.stat_prefix(root)
        tree, pos, sent = self.order[prefix], self.starts[root], self.sent
        self.waiting.discard(root)
        dirs: set[bytes] = {b""}  # answered as real directories: what is below them can be trusted
        others: set[bytes] = set()  # answered as something else, or vanished
        peek, entry = self._peek, tuple.__new__  # (a hot loop: once per known path of the spool)
        for path in paths:
            arg = _remote.stat_arg(prefix, path)  # the same bytes as sent: checked by _stat_args
            if not sent.startswith(arg + b"\0", pos):
                raise TransportError(f"the paths to stat below {root} are not the ones sent ahead "
                                     f"({show(path)!r} was not)")
            pos += len(arg) + 1
            asking.append(path)
            answer: Entry | bytes = path  # vanished, unless the next answer is for it
            while (ahead := peek()) is not None and ahead[0] <= tree:
                if ahead[0] == tree:
                    record = ahead[1]
                    if record[0] == arg:
                        self._ahead = None
                        answer = entry(Entry, (path, *record[1:]))  # = record._replace(path=path), faster
                    break  # else: the answer of a later path
                self._ahead = None  # an earlier tree's, never asked for
            if path:
                parent = path.rpartition(b"/")[0]
                if parent in others:
                    answer = path
                elif parent not in dirs:
                    answer = recheck(path)
            # An unchanged path is what the caller recorded: if that was a directory, it still is one.
            (dirs if not isinstance(answer, bytes) and answer.kind in ("d", "u") else others).add(path)
            asking.clear()
            yield answer
        errors = bytes(self.combined.errbuf)  # still arriving: a last line without its end is not judged yet
        line = _remote.fatal_stderr(errors[:errors.rfind(b"\n") + 1])
        if line is not None:
            raise TransportError(f"stat in {root} failed on the source: {line}")
        if not self.waiting:  # the last tree: read the section's end (its exit status is checked there)
            while self._peek() is not None:
                self._ahead = None


def stat_args(known: list[KnownPaths]) -> tuple[bytes, list[tuple[str, int]]]:
    """The stat section's stdin, every tree's paths as absolute arguments, and where each tree's start."""
    parts: list[bytes] = []
    starts: list[tuple[str, int]] = []
    offset = 0
    for k in known:
        starts.append((k.root, offset))
        prefix = _remote.stat_prefix(k.root)
        for path in k.paths():
            arg = _remote.stat_arg(prefix, check_relpath(path)) + b"\0"
            parts.append(arg)
            offset += len(arg)
    return b"".join(parts), starts
