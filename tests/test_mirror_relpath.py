"""The fast paths of both check_relpath functions refuse exactly what the component-by-component rules refuse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.mirror import trees
from spoolmig.transport._common import check_relpath as transport_check
from spoolmig.transport._common import plain_relpaths


def _by_components(path: bytes) -> bool:
    """The rules spelled out: is ``path`` unsafe?"""
    if path == b"":
        return False
    if b"\0" in path or path.startswith(b"/"):
        return True
    return any(part in (b"", b".", b"..") or part.startswith(trees._TEMP) for part in path.split(b"/"))


pieces = st.sampled_from([b"a", b".", b"/", b"\0", b"..", trees._TEMP, b"x.", b"\n", b"-", b"\xff", b" "])


@settings(max_examples=3000)
@given(st.lists(pieces, max_size=10).map(b"".join))
def test_fast_path_agrees_with_the_rules(path: bytes) -> None:
    assert (trees.check_relpath(path) is not None) == _by_components(path)


def test_each_refusal_names_its_reason() -> None:
    assert trees.check_relpath(b"user/a/1.") is None
    assert "NUL" in (trees.check_relpath(b"a\0b") or "")
    assert "absolute" in (trees.check_relpath(b"/etc/passwd") or "")
    assert "'..'" in (trees.check_relpath(b"user/../x") or "")
    assert "temporary" in (trees.check_relpath(b"user/" + trees._TEMP + b"1") or "")


def _transport_refuses(path: bytes) -> bool:
    try:
        transport_check(path)
    except ValueError:
        return True
    return False


@settings(max_examples=3000)
@given(st.lists(pieces, max_size=10).map(b"".join))
def test_the_transports_fast_path_agrees_with_the_rules(path: bytes) -> None:
    """The transport's own check (no temporary-name rule: that is the replica's) skips splitting when it can."""
    unsafe = path != b"" and (b"\0" in path or path.startswith(b"/")
                              or any(part in (b"", b".", b"..") for part in path.split(b"/")))
    assert _transport_refuses(path) == unsafe


@settings(max_examples=2000)
@given(st.lists(st.lists(pieces, max_size=6).map(b"".join), max_size=6))
def test_paths_vouched_for_together_pass_the_check_one_by_one(paths: list[bytes]) -> None:
    """plain_relpaths may send paths to be checked one by one when in doubt, never pass an unsafe or empty one."""
    if plain_relpaths(paths):
        assert all(p and not _transport_refuses(p) for p in paths)


def test_plain_paths_are_vouched_for_and_anything_else_is_left_to_the_check() -> None:
    assert plain_relpaths([b"user/a", b"user/a/cyrus.index", b"user/a/1."])
    assert plain_relpaths([])
    for doubtful in (b"", b"/etc", b".x", b"a/.b", b"a//b", b"a/", b"a\0b"):
        assert not plain_relpaths([b"user/a", doubtful]), doubtful
    assert not plain_relpaths([b"user/a", "str"])  # type: ignore[list-item]
