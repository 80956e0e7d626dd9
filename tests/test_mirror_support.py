"""Helpers shared by the mirror tests (no tests here).

The expected replica is computed here from the mirroring rules written out
plainly (which top-level config entries, which partition directories are
skipped), independently of spoolmig.mirror.trees, and compared with what is
on disk entry by entry: kind, size, mtime_ns, mode, content digest or
symlink target.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from spoolgen import SyntheticServer

from spoolmig import config
from spoolmig.fileio import TEMP_MARK
from spoolmig.transport.base import Entry, Fetched, KnownPaths, Names, changed_only
from spoolmig.transport.local import LocalSource

CONFIG_KEEP = {b"mailboxes.db", b"annotations.db", b"quotas.db", b"user", b"domain", b"quota"}
PARTITION_SKIP = {b"stage.", b"sync.", b"lost+found"}


def make_server(root: Path, *, users: int = 4, messages: int = 40, seed: int = 7) -> SyntheticServer:
    server = SyntheticServer(root, seed=seed, min_size=200, max_size=3000)
    server.populate(users=users, folders_per_user=2, messages=messages, shared=1)
    return server


def load_config(tmp: Path, server: SyntheticServer, mirror: Path, *, mirror_extra: str = "",
                url: str | None = None, extra_source: str = "") -> config.Config:
    text = server.config_toml(mirror, url=url, extra_source=extra_source) + mirror_extra
    path = tmp / "migration.toml"
    path.write_text(text)
    return config.load(path)


def local_factory(cfg: config.Config):  # noqa: ANN201
    return lambda: LocalSource(cfg.source.url.path)


def scan(top: bytes, keep=lambda rel: True) -> dict[bytes, tuple[Any, ...]]:  # noqa: ANN001
    """Every entry below ``top``: rel → (kind, size, mtime_ns, mode, digest or target)."""
    out: dict[bytes, tuple[Any, ...]] = {}
    if not os.path.isdir(top):
        return out

    def visit(rel: bytes) -> None:
        full = top + b"/" + rel if rel else top
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(full))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("f", st.st_size, st.st_mtime_ns, mode, hashlib.sha256(open(full, "rb").read()).hexdigest())
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", st.st_mtime_ns, mode)
            for name in sorted(os.listdir(full)):
                child = rel + b"/" + name if rel else name
                if keep(child):
                    visit(child)

    visit(b"")
    return out


def expected_replica(server_root: Path, cfg: config.Config) -> dict[str, dict[bytes, tuple[Any, ...]]]:
    """What the replica must hold, tree by tree, computed from the source."""
    layout = cfg.source.layout
    root = os.fsencode(server_root)
    conf = root + os.fsencode(layout.configdirectory)
    sieve_rel = os.fsencode(os.path.relpath(layout.sievedir, layout.configdirectory))

    def keep_config(rel: bytes) -> bool:
        first = rel.split(b"/")[0]
        return first in CONFIG_KEEP and rel != sieve_rel and not rel.endswith(b".NEW")

    trees = {"config": scan(conf, keep_config),
             "sieve": scan(root + os.fsencode(layout.sievedir), lambda rel: not rel.endswith(b".NEW"))}
    for name, path in layout.partitions.items():
        trees[f"partition-{name}"] = scan(
            root + os.fsencode(path),
            lambda rel: rel.split(b"/")[0] not in PARTITION_SKIP and not rel.endswith(b".NEW"))
    return trees


def actual_replica(mirror: Path, trees: Iterable[str]) -> dict[str, dict[bytes, tuple[Any, ...]]]:
    return {t: scan(os.fsencode(mirror / t)) for t in trees}


def assert_mirrors(server_root: Path, cfg: config.Config, *, dir_mtimes: bool = True) -> None:
    want = expected_replica(server_root, cfg)
    got = actual_replica(Path(cfg.mirror.path), want)
    for tree in want:
        w, g = want[tree], got[tree]
        if not dir_mtimes:
            w = {k: (v[0], v[2]) if v[0] == "d" else v for k, v in w.items()}
            g = {k: (v[0], v[2]) if v[0] == "d" else v for k, v in g.items()}
        missing = sorted(set(w) - set(g))
        extra = sorted(set(g) - set(w))
        wrong = sorted(k for k in set(w) & set(g) if w[k] != g[k])
        assert not (missing or extra or wrong), (
            f"{tree}: missing {missing[:5]}, extra {extra[:5]}, "
            f"different {[(k, w[k], g[k]) for k in wrong[:5]]}")


def temporaries(mirror: Path) -> list[str]:
    found = []
    for dirpath, dirs, files in os.walk(mirror):
        found += [os.path.join(dirpath, n) for n in files + dirs if n.startswith(TEMP_MARK)]
    return found


def assert_state_matches_disk(mirror: Path) -> None:
    """Every trusted state row is on disk as recorded, every replica entry has a row."""
    conn = sqlite3.connect(mirror / ".spoolmig" / "state.sqlite")
    try:
        rows = conn.execute("SELECT tree, path, kind, size, mtime_ns, mode, link, stale FROM files").fetchall()
        totals = conn.execute("SELECT files, bytes FROM totals").fetchone()
        marks = conn.execute("SELECT tree, path FROM marks").fetchall()
    finally:
        conn.close()
    assert marks == [], f"directories left marked by a pass that ended: {marks[:5]}"
    recorded = [r[3] for r in rows if r[2] == "f" and r[3] >= 0]
    assert totals == (len(recorded), sum(recorded)), "the totals triggers lost count"
    known = set()
    for tree, path, kind, size, mtime_ns, mode, link, stale in rows:
        full = os.fsencode(mirror / tree) + (b"/" + path if path else b"")
        known.add((tree, path))
        # a directory too fresh to trust is recorded without its mtime (-1), not stale
        assert not stale, f"stale row left: {tree} {path!r}"
        st = os.lstat(full)
        if kind == "f":
            assert stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (
                size, mtime_ns, mode), (tree, path)
        elif kind == "l":
            assert os.readlink(full) == link
        else:
            assert stat.S_ISDIR(st.st_mode)
    for tree in {r[0] for r in rows}:
        for rel in scan(os.fsencode(mirror / tree)):
            assert (tree, rel) in known, f"on disk but not in the state: {tree} {rel!r}"


def tree_digest(top: Path) -> str:
    """A digest of everything below ``top`` (names, kinds, sizes, mtimes, modes, contents)."""
    digest = hashlib.sha256()
    if not top.exists():
        return "absent"
    for rel, value in sorted(scan(os.fsencode(top)).items()):
        digest.update(repr((rel, value)).encode())
    return digest.hexdigest()


class Wrapper:
    """A Source that delegates to another; tests override single methods."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def describe(self) -> str:
        return self.inner.describe()

    def walk(self, root: str, **kw: Any) -> Iterator[Entry]:
        return self.inner.walk(root, **kw)

    def list_dirs(self, root: str, dirs: Iterable[bytes], **kw: Any) -> Iterator[Entry | Names]:
        return self.inner.list_dirs(root, dirs, **kw)

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        return self.inner.stat(root, paths)

    def stat_changed(self, root: str, known: KnownPaths) -> Iterator[Entry | bytes]:
        return changed_only(self.stat(root, known.paths()))  # through stat: what tests override

    def fetch(self, root: str, paths: Iterable[Any]) -> Iterator[Fetched | bytes]:
        return self.inner.fetch(root, paths)

    def checksum(self, root: str, paths: Iterable[bytes]) -> Iterator[tuple[bytes, str | None]]:
        return self.inner.checksum(root, paths)

    def cyrus_processes(self) -> list[str]:
        return self.inner.cyrus_processes()

    def close(self) -> None:
        self.inner.close()


class Recording(Wrapper):
    """Records which directories were listed and which files fetched."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.listed: list[tuple[str, bytes]] = []
        self.fetched: list[tuple[str, bytes]] = []
        self.stated: list[tuple[str, bytes]] = []
        #: (root, a cheap walk?, since) of every walk.
        self.walks: list[tuple[str, bool, int | None]] = []
        #: What the walks yielded: (root, path, kind).
        self.walked: list[tuple[str, bytes, str]] = []

    def walk(self, root: str, **kw: Any) -> Iterator[Entry]:
        self.walks.append((root, bool(kw.get("only_dirs_and")), kw.get("since")))
        for entry in self.inner.walk(root, **kw):
            self.walked.append((root, entry.path, entry.kind))
            yield entry

    def list_dirs(self, root: str, dirs: Iterable[bytes], **kw: Any) -> Iterator[Entry | Names]:
        dirs = list(dirs)
        self.listed += [(root, d) for d in dirs]
        return self.inner.list_dirs(root, dirs, **kw)

    def stat(self, root: str, paths: Iterable[bytes]) -> Iterator[Entry | bytes]:
        paths = list(paths)
        self.stated += [(root, p) for p in paths]
        return self.inner.stat(root, paths)

    def fetch(self, root: str, paths: Iterable[Any]) -> Iterator[Fetched | bytes]:
        paths = list(paths)
        self.fetched += [(root, p.path if isinstance(p, Entry) else p) for p in paths]
        return self.inner.fetch(root, paths)


@pytest.fixture
def no_freshness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust every directory mtime (tests that count exactly which directories are listed)."""
    from spoolmig.mirror import worker

    monkeypatch.setattr(worker.TreeWorker, "_freshness_limit", lambda self, clock_ns: None)


def listed_clocks(cfg: config.Config) -> dict[str, str]:
    """The state's "listed:<tree>" values: the clock of each tree's last clean listing, and what it is good for."""
    with sqlite3.connect(Path(cfg.mirror.path) / ".spoolmig" / "state.sqlite") as conn:
        return dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'listed:%'").fetchall())


def wait_past_since(cfg: config.Config) -> None:
    """With UNCHANGED_MARGIN_NS at -1 s: until a change has a ctime after the next pass's "since"."""
    since = max(int(v.split(" ", 1)[0]) for v in listed_clocks(cfg).values()) + 1_000_000_000
    while time.time_ns() < since + 50_000_000:
        time.sleep(0.05)
