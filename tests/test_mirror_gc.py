"""The collector during a pass: rarer collections, set-up objects frozen, everything given back afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_mirror_support import Wrapper, assert_mirrors, load_config, make_server

from spoolmig.errors import MirrorError, TransportError
from spoolmig.mirror.engine import run_pass
from spoolmig.mirror.helpers import GC_YOUNG, fewer_collections
from spoolmig.transport.base import Fetched
from spoolmig.transport.local import LocalSource


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """Known thresholds, other than the pass's, put back after the test whatever happens."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    try:
        yield (700, 11, 12)
    finally:
        gc.set_threshold(*saved)


def _tracked(obj: object) -> bool:
    """Is ``obj`` in a generation the collector visits (not frozen)?"""
    return any(o is obj for o in gc.get_objects())


def test_fewer_collections_freezes_raises_gen0_and_gives_back(thresholds: tuple[int, int, int]) -> None:
    assert gc.get_freeze_count() == 0
    marker = [object()]
    assert _tracked(marker)
    with fewer_collections():
        assert gc.get_threshold() == (GC_YOUNG, 11, 12)
        assert gc.isenabled(), "the collector stays on"
        assert gc.get_freeze_count() > 0 and not _tracked(marker), "what lived before is frozen"
        young = [object()]
        assert _tracked(young), "what the pass makes is collected as usual"
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0 and _tracked(marker)


def test_fewer_collections_gives_back_after_an_error(thresholds: tuple[int, int, int]) -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_fewer_collections_leaves_someone_elses_freeze_alone(thresholds: tuple[int, int, int]) -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with fewer_collections():
            assert gc.get_threshold()[0] == GC_YOUNG
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


class _Watching(Wrapper):
    """Notes the collector's settings while files are fetched; can fail the fetch."""

    def __init__(self, inner: Any, seen: list[tuple[Any, ...]], fail: bool) -> None:
        super().__init__(inner)
        self.seen, self.fail = seen, fail

    def fetch(self, root: str, paths: Iterable[Any]) -> Iterator[Fetched | bytes]:
        self.seen.append((gc.get_threshold(), gc.isenabled(), gc.get_freeze_count()))
        if self.fail:
            raise TransportError("connection lost")
        return self.inner.fetch(root, paths)


@pytest.mark.parametrize("fail", [False, True], ids=["pass", "failing pass"])
def test_a_pass_fetches_with_fewer_collections_and_gives_back(tmp_path: Path, fail: bool,
                                                              thresholds: tuple[int, int, int]) -> None:
    server = make_server(tmp_path / "old")
    cfg = load_config(tmp_path, server, tmp_path / "mirror")
    seen: list[tuple[Any, ...]] = []

    def open_source() -> _Watching:
        return _Watching(LocalSource(cfg.source.url.path), seen, fail)

    if fail:
        with pytest.raises((TransportError, MirrorError)):
            run_pass(cfg, open_source)
    else:
        run_pass(cfg, open_source)
        assert_mirrors(server.root, cfg)
    assert seen and all(s == ((GC_YOUNG, 11, 12), True, s[2]) and s[2] > 0 for s in seen), seen
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0
