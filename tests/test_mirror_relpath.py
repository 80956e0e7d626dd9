"""check_relpath's one-regex fast path refuses exactly what the component-by-component rules refuse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.mirror import trees


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
