"""Which source directories are mirrored, where they land, and what is left out.

A *tree* is one source directory copied to one replica directory:
``config`` (the configdirectory), ``sieve`` (the sievedir) and
``partition-<name>`` (each partition). The defaults follow the Cyrus facts
(research/cyrus-formats.md §9, §10):

* partitions: message files ``<uid>.`` and the ``cyrus.*`` files of every
  mailbox; not the delivery staging area ``stage./``, the replication staging
  area ``sync./``, ``lost+found``;
* configdirectory: what a migration needs (mailboxes.db, annotations.db,
  quotas.db, ``user/``, ``domain/``, ``quota/``), not runtime state or caches
  (``db/``, ``db.backup*``, ``socket/``, ``proc/``, ``lock/``, ``log/``,
  ``msg/`` (a ``msg/shutdown`` would lock everybody out of the new server),
  ``ptclient/``, deliver.db, tls_sessions.db, statuscache.db);
* everywhere: ``*.NEW`` files, which Cyrus writes while replacing a file
  (``cyrus.index.NEW``, ``defaultbc.NEW``, flat and skiplist ``.NEW``
  checkpoints) and which are garbage once the rename is done or a crash left
  them.

Paths are bytes, relative to the tree root, ``/``-separated.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

from spoolmig.config import Config
from spoolmig.fileio import TEMP_MARK

#: Base-name globs of files an incremental pass stats every time in a
#: partition (everything else there is a message file, written once).
META_GLOBS: tuple[bytes, ...] = (b"cyrus.*",)

#: configdirectory entries a migration needs (used when ``config_include`` is unset).
DEFAULT_CONFIG_INCLUDE: tuple[str, ...] = (
    "mailboxes.db", "annotations.db", "quotas.db", "user", "domain", "quota",
)
#: Runtime directories of a configdirectory, never entered (and never copied).
CONFIG_RUNTIME_DIRS: tuple[bytes, ...] = (
    b"db", b"db.backup1", b"db.backup2", b"socket", b"proc", b"lock", b"log", b"msg",
    b"ptclient", b"stage.", b"sync.",
)
#: Partition-root directories that are staging areas, never copied.
PARTITION_SKIP_DIRS: tuple[bytes, ...] = (b"stage.", b"sync.", b"lost+found")
#: Excluded in every tree.
ALWAYS_EXCLUDE: tuple[str, ...] = ("*.NEW",)

#: Entry classes stored in the state: message-like files, metadata files, directories.
CLS_PLAIN, CLS_META, CLS_DIR = 0, 1, 2

#: META_GLOBS as one regex on a base name.
META_RE = re.compile(rb"cyrus\.[^/]*\Z", re.DOTALL)
_TEMP = TEMP_MARK.encode()


def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One regex matching a path equal to, or below, any of the globs."""
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        text = fnmatch.translate(pattern.strip("/"))  # '(?s:...)\Z'
        parts.append(text[: -len(r"\Z")] if text.endswith(r"\Z") else text)
    body = "|".join(parts).encode("latin-1", "backslashreplace")
    return re.compile(rb"(?:" + body + rb")(?:/.*)?\Z", re.DOTALL)


def check_relpath(path: bytes) -> str | None:
    """Why ``path`` (from source data) must not be used, or None when it is safe."""
    if path == b"" or not SUSPECT_PATH.search(path):  # one regex for the usual, clean path
        return None
    if b"\0" in path:
        return "contains a NUL byte"
    if path.startswith(b"/"):
        return "is absolute"
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            return "has an empty, '.' or '..' component"
        if part.startswith(_TEMP):
            return "looks like a spoolmig temporary file"
    return None


#: Anything the checks below could object to: NUL, leading "/", an empty, "." or ".." component,
#: a component starting like a spoolmig temporary.
SUSPECT_PATH = re.compile(rb"\0|^/|(?:^|/)\.{0,2}(?:/|\Z)|(?:^|/)" + re.escape(_TEMP))


def split(path: bytes) -> bytes | None:
    """The parent of ``path`` (``b""`` for top-level entries, None for the root)."""
    if path == b"":
        return None
    head, _, _ = path.rpartition(b"/")
    return head


@dataclass(frozen=True)
class Tree:
    """One source directory mirrored to ``<mirror.path>/<name>/``.

    After its first pass, an incremental pass stats only what the state knows
    of it (directories and metadata files) and lists only the directories
    whose mtime moved.
    """

    name: str
    root: str  # absolute path on the source server
    prune: tuple[bytes, ...] = ()
    include: re.Pattern[bytes] | None = None
    exclude: re.Pattern[bytes] | None = None
    #: Every file here is metadata (re-copied unconditionally by --final).
    all_meta: bool = False

    @property
    def stat_globs(self) -> tuple[bytes, ...] | None:
        """Base names of the files a pass stats every time: the rest (message files) never change.

        None: every file may change in place (configdirectory, sievedir), so a
        listing of this tree stats them all.
        """
        return None if self.all_meta else META_GLOBS

    def accepts(self, path: bytes) -> bool:
        """Is this (already validated) entry part of the tree?"""
        if path == b"":
            return True
        if self.include is not None and not self.include.match(path):
            return False
        return not (self.exclude is not None and self.exclude.match(path))

    def classify(self, path: bytes, kind: str) -> int:
        if kind == "d":
            return CLS_DIR
        if self.all_meta or META_RE.match(path.rpartition(b"/")[2]):
            return CLS_META
        return CLS_PLAIN


def _inside(child: str, parent: str) -> bytes | None:
    """``child`` relative to ``parent`` when strictly inside it."""
    if parent == "/":
        rel = child.lstrip("/")
    elif child.startswith(parent + "/"):
        rel = child[len(parent) + 1:]
    else:
        return None
    return os.fsencode(rel) if rel else None


def trees_from_config(cfg: Config) -> list[Tree]:
    """The trees of a migration, partitions first; a tree inside another is pruned there.

    A pass lists the trees in this order, all started ahead as one remote
    command: the partitions' stats come first, so this side works on them
    while the source walks the configdirectory (one stat per file on a big
    server's, where a partition's incremental listing is cheap to answer).
    """
    layout = cfg.source.layout
    roots: list[tuple[str, str]] = [(f"partition-{name}", path) for name, path in sorted(layout.partitions.items())]
    roots += [("config", layout.configdirectory), ("sieve", layout.sievedir)]
    exclude = ALWAYS_EXCLUDE + tuple(cfg.mirror.config_exclude)
    include = cfg.mirror.config_include if cfg.mirror.config_include is not None else DEFAULT_CONFIG_INCLUDE
    trees = []
    for name, root in roots:
        nested = tuple(rel for other_name, other in roots if other_name != name
                       for rel in [_inside(other, root)] if rel is not None)
        # Every tree is incremental: the configdirectory's and sievedir's files change in place, so
        # all of them are metadata (all_meta), walked every pass for what changed (TreeWorker._walk_changed).
        if name == "config":
            trees.append(Tree(name, root, prune=CONFIG_RUNTIME_DIRS + nested,
                              include=_glob_regex(tuple(include)), exclude=_glob_regex(exclude),
                              all_meta=True))
        elif name == "sieve":
            trees.append(Tree(name, root, prune=nested,
                              exclude=_glob_regex(ALWAYS_EXCLUDE), all_meta=True))
        else:
            trees.append(Tree(name, root, prune=PARTITION_SKIP_DIRS + nested,
                              exclude=_glob_regex(ALWAYS_EXCLUDE)))
    return trees
