"""The stat section of the SSH source's one listing command: known paths answered ahead, tree after tree.

An incremental pass stats, by path, the directories and metadata files
the state knows (:class:`~spoolmig.transport.base.KnownPaths`). Over SSH
those paths, for every tree, go on the stdin of the one listing command
(:meth:`SshSource.prepare_walks`), which also walks any tree listed in
full, as absolute arguments (:func:`._remote.stat_arg`); this module builds that
stdin and hands each tree its answers. No paramiko here: the command's
output comes as a section of :class:`Combined`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from spoolmig.errors import TransportError
from spoolmig.transport import _remote
from spoolmig.transport._common import check_relpath, plain_relpaths, show
from spoolmig.transport.base import UNCHANGED, Entry, KnownPaths


class Combined(Protocol):
    """What a stat section needs of the combined command's output (ssh._Combined)."""

    errbuf: bytearray
    pos: int  # the section being read
    generation: int  # of the connection it runs on
    clock: int | None  # the source's clock before the listing began

    def section(self, index: int, what: str) -> Iterator[Entry | int]: ...  # int: a run of "unchanged"


class PreparedStat:
    """The stat section of a combined command: several trees' known paths answered, tree after tree.

    The paths went out on the command's stdin as absolute arguments
    (:func:`_remote.stat_arg`) and the answers come back in that order: a
    full record names its path; a vanished path prints nothing; with a
    ``since`` (:class:`KnownPaths`), a path unchanged since then prints one
    byte and no path, so the answers for 10,000 unchanged paths are 10 kB
    that no Python loop goes through. Where they stand is told by what is
    around them: between two full records, as many "unchanged" bytes as paths
    sent means each of those paths is unchanged; none, that every one
    vanished; a few, that some vanished, and that stretch is stat'ed again in
    full (``restat``). :meth:`changes` gives a tree's answers that are not
    "unchanged"; :meth:`answers` one answer per path, for :meth:`SshSource.stat`.
    """

    def __init__(self, combined: Combined, index: int, sent: bytes, starts: list[tuple[str, int]]) -> None:
        self.combined, self.index, self.sent = combined, index, sent
        #: root -> offsets in ``sent`` of its first path and of the end of its last
        self.starts = dict(starts)
        self.ends = {root: starts[i + 1][1] if i + 1 < len(starts) else len(sent)
                     for i, (root, _) in enumerate(starts)}
        self.waiting = set(self.starts)  # trees not asked for yet
        self._records: Iterator[Entry | int] | None = None
        self._ahead: tuple[int, Entry] | None = None  # a full answer read and placed, not taken yet
        self._units = 0  # "unchanged" answers read and not yet counted against paths
        self._at = 0  # offset in ``sent`` of the first path whose answer is not placed yet
        self._doubt_to = 0  # paths before this offset were counted in a mixed stretch: stat'ed again
        self._prefix = b""  # of the tree being answered

    def ahead_for(self, root: str) -> bool:
        """Are ``root``'s answers still to be had: in the stream ahead, or read into this object?

        Trees are taken in the order sent. Reading a tree's last answers may
        read the section to its end (to count the "unchanged" bytes up to the
        next full answer): what is left then is here, not in the stream.
        """
        in_stream = self._records is not None or self.index >= self.combined.pos
        return in_stream and self._at <= self.starts[root]

    def _next(self) -> tuple[int, Entry] | None:
        """The next full answer and its offset in ``sent``; None at the section's end."""
        if self._ahead is None:
            if self._records is None:
                self._records = self.combined.section(self.index, "stat of known paths")
            for record in self._records:
                if isinstance(record, int):
                    self._units += record
                    continue
                at = self._locate(record.path)
                if at < 0:
                    raise TransportError(f"the source answered for {show(record.path)!r}, which was not asked for"
                                         " (or not in this order)")
                self._ahead = (at, record)
                break
        return self._ahead

    def _locate(self, arg: bytes) -> int:
        """Offset of the path ``arg`` in ``sent``, at or after the first not placed; -1 if not there."""
        sent, needle = self.sent, arg + b"\0"
        at = sent.find(needle, self._at)
        while at > 0 and sent[at - 1] != 0:  # inside a longer path
            at = sent.find(needle, at + 1)
        return at

    def _place(self, upto: int, quiet: bool = False) -> tuple[bool, list[bytes]]:
        """Place the paths from the first not placed up to ``upto``: no full answer is among them.

        Returns (stat again?, paths): no paths if every one is unchanged,
        else all of them, vanished or to be stat'ed again. The count of
        "unchanged" bytes is only exact up to the next full answer (or the
        section's end), which may lie in a later tree: a mixed count there
        has that tree's part stat'ed again too.
        """
        lo, sent = self._at, self.sent
        n = sent.count(b"\0", lo, upto)
        if n == 0:
            self._at = upto
            return False, []
        ahead = self._next()  # (a lost connection here leaves them unplaced: :meth:`unanswered`)
        self._at = upto
        end = ahead[0] if ahead is not None else len(sent)  # the stretch the count is exact for
        whole = n if end == upto else n + sent.count(b"\0", upto, end)
        if self._units > whole:
            raise TransportError("the source answered more paths than were asked for")
        doubt = lo < self._doubt_to
        if not doubt and self._units == whole:
            self._units -= n  # every one unchanged
            return False, []
        if not doubt and self._units:  # some vanished, in this tree or a later one: which, a stat can tell
            self._doubt_to, doubt = end, True
        self._units = 0  # (none at all: every one vanished)
        if quiet:
            return doubt, []
        return doubt, [_relative(self._prefix, arg) for arg in sent[lo:upto].split(b"\0")[:-1]]

    def _settled(self, upto: int,
                 restat: Callable[[list[bytes]], Iterable[Entry | bytes]]) -> Iterator[Entry | bytes]:
        again, paths = self._place(upto)
        yield from restat(paths) if again else paths

    def changes(self, root: str, restat: Callable[[list[bytes]], Iterable[Entry | bytes]]) -> Iterator[Entry | bytes]:
        """``root``'s answers, in path order, leaving out those "unchanged": full Entries and vanished paths.

        A path below one answered vanished or not a directory may be answered
        anything, or not at all: the caller takes what is below such a path
        as gone. The paths' directories are among them (:class:`KnownPaths`).
        ``restat`` stats paths again, one answer each.
        """
        lo, hi = self.starts[root], self.ends[root]
        self.waiting.discard(root)
        if self._at > lo:
            raise TransportError(f"the stat of the known paths below {root} was read past already")
        while (ahead := self._next()) is not None and ahead[0] < lo:  # an earlier tree's, never asked for
            self._ahead = None
            self._place(ahead[0], quiet=True)
            self._at = ahead[0] + len(ahead[1].path) + 1
        if self._at < lo:
            self._place(lo, quiet=True)
        self._prefix = _remote.stat_prefix(root)
        entry = tuple.__new__
        while (ahead := self._next()) is not None and ahead[0] < hi:
            at, record = ahead
            yield from self._settled(at, restat)  # (reads nothing more: the next answer is this one)
            self._ahead = None
            self._at = at + len(record.path) + 1
            yield entry(Entry, (_relative(self._prefix, record.path), *record[1:]))  # = record._replace(path=...)
        yield from self._settled(hi, restat)
        errors = bytes(self.combined.errbuf)  # still arriving: a last line without its end is not judged yet
        line = _remote.fatal_stderr(errors[:errors.rfind(b"\n") + 1])
        if line is not None:
            raise TransportError(f"stat in {root} failed on the source: {line}")
        if not self.waiting:  # the last tree: read the section's end (its exit status is checked there)
            while self._next() is not None:
                self._ahead = None
                self._at = len(self.sent)
            if self._units > self.sent.count(b"\0", self._at):
                raise TransportError("the source answered more paths than were asked for")

    def unanswered(self, root: str) -> list[bytes]:
        """``root``'s paths from the first whose answer was not given (the connection was lost)."""
        lo = max(self._at, self.starts[root])
        return [_relative(_remote.stat_prefix(root), arg)
                for arg in self.sent[lo:self.ends[root]].split(b"\0")[:-1]]

    def answers(self, root: str, paths: Iterable[bytes], asking: list[bytes],
                recheck: Callable[[bytes], Entry | bytes],
                restat: Callable[[list[bytes]], Iterable[Entry | bytes]]) -> Iterator[Entry | bytes]:
        """:meth:`SshSource.stat` of ``root``'s paths, one answer each; ``asking`` holds the one not answered yet.

        An unchanged path is answered :data:`UNCHANGED`. The kernel resolves
        a path through a symlink in the middle, so an answer stands only if
        the path's directory was answered a directory (before it, in this
        stat): below anything else the path is vanished, and below a directory
        not asked for it is stat'ed again, checked (``recheck``).
        """
        prefix = _remote.stat_prefix(root)
        pos, sent = self.starts[root], self.sent
        changes = self.changes(root, restat)
        dirs: set[bytes] = {b""}  # answered as real directories: what is below them can be trusted
        others: set[bytes] = set()  # answered as something else, or vanished
        entry = tuple.__new__
        change = next(changes, None)
        for path in paths:
            arg = _remote.stat_arg(prefix, path)  # the same bytes as sent: checked by _stat_args
            if not sent.startswith(arg + b"\0", pos):
                raise TransportError(f"the paths to stat below {root} are not the ones sent ahead "
                                     f"({show(path)!r} was not)")
            pos += len(arg) + 1
            asking.append(path)
            answer: Entry | bytes
            if change is not None and (change if isinstance(change, bytes) else change.path) == path:
                answer, change = change, next(changes, None)
            else:
                answer = entry(Entry, (path, UNCHANGED, -1, -1, 0, 0, None))
            if path:
                parent = path.rpartition(b"/")[0]
                if parent in others:
                    answer = path
                elif parent not in dirs:
                    answer = recheck(path)
            # An unchanged path is what the caller recorded: if that was a directory, it still is one.
            (dirs if not isinstance(answer, bytes) and answer.kind in ("d", UNCHANGED) else others).add(path)
            asking.clear()
            yield answer
        for _ in changes:  # (the section's end is read, and checked)
            pass


def _relative(prefix: bytes, arg: bytes) -> bytes:
    """The path of a tree's argument :func:`_remote.stat_arg` made (``root/.``: the root, ``b""``)."""
    return arg[len(prefix):] if arg.startswith(prefix) else b""


def stat_args(known: list[KnownPaths]) -> tuple[bytes, list[tuple[str, int]]]:
    """The stat section's stdin, every tree's paths as absolute arguments, and where each tree's start."""
    parts: list[bytes] = []
    starts: list[tuple[str, int]] = []
    offset = 0
    for k in known:
        starts.append((k.root, offset))
        part = _tree_args(_remote.stat_prefix(k.root), list(k.paths()))
        parts.append(part)
        offset += len(part)
    return b"".join(parts), starts


def _tree_args(prefix: bytes, paths: list[bytes]) -> bytes:
    """One tree's arguments (:func:`_remote.stat_arg`), each ended by a NUL, its paths checked.

    An incremental pass sends thousands of paths, and a Python call or two
    per path was most of the time it took to build this: the arguments are
    joined in one step, and the paths checked one by one only when
    :func:`plain_relpaths` cannot vouch for them all.
    """
    root = paths[:1] == [b""]
    rest = paths[1:] if root else paths
    if not plain_relpaths(rest):
        return b"".join(_remote.stat_arg(prefix, check_relpath(path)) + b"\0" for path in paths)
    head = _remote.stat_arg(prefix, b"") + b"\0" if root else b""
    return head + (prefix + (b"\0" + prefix).join(rest) + b"\0" if rest else b"")
