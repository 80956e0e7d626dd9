"""The fast paths of both check_relpath functions refuse exactly what the component-by-component rules refuse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.mirror import trees
from spoolmig.transport._common import check_relpath as transport_check


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
