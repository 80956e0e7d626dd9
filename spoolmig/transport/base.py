"""What every source (a local folder, an SSH host) offers the mirror.

NOTE for the mirror (transport engineer, backward-compatible refinements):

* ``fetch`` also accepts :class:`Entry` items (from a listing) besides bare
  paths. Pass Entries when you have them: the SSH source then bounds its tar
  batches by bytes, sends files over 64 MiB by SFTP with prefetch, and keeps
  the listing's nanosecond mtime when it must fall back to SFTP.
* ``walk`` order: a directory comes before its contents; nothing else is
  promised (readdir order). Over SSH a walk that loses its connection after
  yielding entries raises TransportError (run the pass again); every other
  operation resumes by itself after a reconnect.
* In the SFTP fallback (no shell on the source) ``inode`` is 0 and mtimes are
  whole seconds; ``Fetched.entry.inode`` is always 0 over SSH (tar has none).
* ``Fetched.entry`` is the file as the sender opened it; if the file changed
  while being read, its mtime on the source moved, so the next pass's
  comparison catches it.

Paths on the source are raw bytes: Cyrus mailbox names may contain spaces,
quotes, ``$``, newlines and non-UTF-8 bytes. Every method that takes many
paths takes them as an iterable and streams; implementations must never put
a source-derived path into a shell command line unquoted (the SSH source
sends path lists on the remote command's stdin, NUL-separated).

All paths handed to and returned by a Source are *relative* to a ``root``
(an absolute directory on the source, e.g. ``/var/spool/imap``), use ``/`` as
separator, and never contain ``.``/``..`` components or a leading ``/``;
``b""`` names the root itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

#: f = regular file, d = directory, l = symbolic link, o = anything else;
#: u = unchanged: a :meth:`Source.stat` answer to :class:`KnownPaths` with ``since`` (see there).
Kind = Literal["f", "d", "l", "o", "u"]
UNCHANGED: Kind = "u"


class Entry(NamedTuple):
    """One file system entry as the source saw it (lstat: links are not followed).

    A named tuple, not a dataclass: a listing makes one per entry (209k for a
    big spool's walk), and a frozen dataclass costs ~1.5 us to build, a tuple
    ~0.3 us.
    """

    path: bytes
    kind: Kind
    size: int
    mtime_ns: int
    mode: int  # permission bits only (0o7777)
    inode: int = 0
    #: Target of a symbolic link, as stored in the link; None for other kinds.
    link: bytes | None = None


@dataclass(frozen=True, slots=True)
class Names:
    """Regular files of one directory, listed by name only (see :meth:`Source.list_dirs`).

    A directory's message files never change once written, so an incremental
    pass only needs their names to find new and expunged ones: no stat on the
    source, and the caller compares whole sets instead of one entry at a time.
    """

    dir: bytes
    #: Base names (no ``/``), in listing order: whole runs of a listing, with no path built per name.
    names: list[bytes]


@dataclass(frozen=True, slots=True)
class KnownPaths:
    """A listing by path, asked for ahead: :meth:`Source.stat` of ``paths()`` below ``root``.

    An incremental pass lists a partition by stat'ing the directories and
    metadata files it knows (no directory read), so a source that starts its
    listings together (the SSH source's ``prepare_walks``) is given this in
    place of a walk. ``paths`` gives the same paths, in the same order, every
    time it is called: once for the source to send them, once for the
    caller's own :meth:`Source.stat` call, which the source checks against
    what it sent. A directory comes before the paths below it (path order
    does that): its answer vouches for them.
    """

    root: str
    paths: Callable[[], Iterator[bytes]]
    #: A time on the source's clock (ns): a source may answer a path whose inode has not changed
    #: since (its ctime, which no tool can set back) with an Entry of kind :data:`UNCHANGED` and
    #: nothing else, and the caller keeps what it recorded. Its size is then not sent, nor compared.
    #: Any answer may still be a full one; a vanished path is still answered by its bare path.
    since: int | None = None


class Walk(NamedTuple):
    """A :meth:`Source.walk` asked for ahead (the SSH source's ``prepare_walks``), as its arguments."""

    root: str
    only_dirs_and: tuple[bytes, ...] = ()
    prune: tuple[bytes, ...] = ()
    #: See :meth:`Source.walk`.
    since: int | None = None


@dataclass(slots=True)
class Fetched:
    """One file's content as it streams in from :meth:`Source.fetch`.

    ``entry`` describes the file as the sender read it (size, mtime, mode at
    the time of reading). ``read(n)`` returns up to ``n`` bytes and ``b""`` at
    the end; the consumer must read the file to its end (or call
    ``skip()``) before advancing the iterator.
    """

    entry: Entry
    read: Callable[[int], bytes]
    skip: Callable[[], None]


class Source(Protocol):
    """A Cyrus server's file system, seen read-only."""

    def describe(self) -> str:
        """Human-readable name for messages (``ssh://root@host:22``, ``/old``)."""

    def walk(
        self, root: str, *, only_dirs_and: Iterable[bytes] = (), prune: Iterable[bytes] = (),
        since: int | None = None,
    ) -> Iterator[Entry]:
        """Stream the whole tree below ``root`` (root itself first, as ``b""``).

        With ``only_dirs_and`` non-empty, yield only directories and the files
        whose base name matches one of these shell glob patterns (e.g.
        ``b"cyrus.*"``): this is the cheap incremental listing that stats
        directories and metadata files but not message files. Directories whose
        relative path is in ``prune`` are neither entered nor yielded.
        Symbolic links are reported, never followed. A missing ``root`` yields
        nothing.

        With ``since`` (ns on the source's clock, as :class:`KnownPaths` has
        it) a source may leave out every entry but a directory whose inode
        has not changed since (ctime): a tree whose files all change in
        place (the configdirectory) is then listed by what changed, with no
        path list sent. Every directory still comes. A source leaves entries
        out only when it then knows the walk's :meth:`listing_clock`, which
        tells the caller whether ``since`` was good; one that cannot tell
        (SFTP has no ctime) yields everything.
        """

    def listing_clock(self, root: str) -> int | None:
        """The source's clock (ns) taken before the last :meth:`walk` or :meth:`stat` in ``root`` began; None: unknown.

        It dates the listing in the clock file times come from: a directory
        whose mtime is in the same clock tick as the listing may change again
        without its mtime moving, so the mirror lists it again next pass.
        Without it the mirror falls back to a guess from the newest mtime seen.
        """

    def list_dirs(
        self, root: str, dirs: Iterable[bytes], *, stat_globs: Iterable[bytes] | None = None
    ) -> Iterator[Entry | Names]:
        """Stream the entries directly inside each of ``dirs`` (not recursive).

        With ``stat_globs``, a regular file whose base name matches none of
        these globs may come by name only: all such files of a directory in one
        :class:`Names`, after that directory's other entries. A source that
        stats anyway (SFTP) may send Entries for them instead; callers take
        both. A directory that vanished on the source yields nothing.
        """

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        """lstat each path: one result per path, in the order given; a vanished one as its bare ``bytes`` path.

        Symbolic links are reported, never followed, and a path below an
        ancestor that is no longer a real directory counts as vanished (the
        kernel would resolve it through the link, outside the tree). Paths
        prepared as a :class:`KnownPaths` with a ``since`` may be answered
        :data:`UNCHANGED` (see there).
        """

    def stat_changed(self, root: str, known: KnownPaths) -> Iterator[Entry | bytes]:
        """:meth:`stat` of ``known.paths()``, in their order, leaving out the answers :data:`UNCHANGED`.

        What an incremental pass wants of the paths it knows: the ones that
        changed or vanished. A source that prepared them with a ``since``
        need not send anything for the rest (:func:`changed_only` is the
        plain way). A path below one answered vanished or not a directory may
        be answered anything, or not at all: the caller takes what is below
        such a path as gone.
        """

    def fetch(self, root: str, paths: Iterable[bytes | Entry]) -> Iterator[Fetched | bytes]:
        """Stream the contents of regular files, in the order given.

        Items are bare paths or Entries from a listing (their size and mtime
        are hints; what is sent is read afresh).

        A file that vanished (or is no longer a regular file) between listing
        and fetching is yielded as its bare ``bytes`` path instead.
        """

    def checksum(self, root: str, paths: Iterable[bytes]) -> Iterator[tuple[bytes, str | None]]:
        """sha256 hex digest of each file computed on the source (None: vanished)."""

    def cyrus_processes(self) -> list[str]:
        """Command lines of running Cyrus processes on the source (for --final)."""

    def close(self) -> None:
        """Release connections."""


def changed_only(answers: Iterable[Entry | bytes]) -> Iterator[Entry | bytes]:
    """:meth:`Source.stat` answers without the :data:`UNCHANGED` ones (:meth:`Source.stat_changed`)."""
    for answer in answers:
        if isinstance(answer, bytes) or answer.kind != UNCHANGED:
            yield answer
