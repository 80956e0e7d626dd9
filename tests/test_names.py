"""Mailbox names: internal, external, 3.6 dbname, owner, parent/child, modified UTF-7."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.model.names import MailboxName, decode_mutf7, encode_mutf7

sys.path.insert(0, str(Path(__file__).parent))
from cyrus_tools import CyrusTools  # noqa: E402
from mboxlist_fixtures import oracle, shown_records  # noqa: E402


@pytest.mark.parametrize("internal, owner, external_slash, external_dot", [
    ("user.bob", "bob", "user/bob", "user.bob"),
    ("user.bob.Sent Items", "bob", "user/bob/Sent Items", "user.bob.Sent Items"),
    ("user.bob^smith.a^b", "bob.smith", "user/bob.smith/a.b", None),
    ("example.com!user.alice.Sent", "alice@example.com", "user/alice/Sent@example.com",
     "user.alice.Sent@example.com"),
    ("example.com!shared", None, "shared@example.com", "shared@example.com"),
    ("shared.folder", None, "shared/folder", "shared.folder"),
    ("DELETED.user.bob.Trash.4A2B3C4D", "bob", "DELETED/user/bob/Trash/4A2B3C4D", "DELETED.user.bob.Trash.4A2B3C4D"),
])
def test_spellings(internal: str, owner: str | None, external_slash: str, external_dot: str | None) -> None:
    n = MailboxName.parse(internal)
    assert n.internal() == internal
    assert n.owner == owner
    assert n.external("/") == external_slash
    assert MailboxName.from_external(external_slash, sep="/") == n
    if external_dot is None:
        with pytest.raises(ValueError):
            n.external(".")
    else:
        assert n.external(".") == external_dot
        assert MailboxName.from_external(external_dot, sep=".") == n


def test_deleted_name_parts() -> None:
    n = MailboxName.parse("example.com!DELETED.user.alice.Old.4A2B3C4E")
    assert n.is_deleted and n.deleted == 0x4A2B3C4E and n.domain == "example.com"
    assert n.localpart == "alice" and n.levels == ("Old",)
    assert not MailboxName.parse("DELETED.x").is_deleted  # needs two more levels, as in Cyrus
    assert MailboxName.parse("Trash.4A", deletedprefix="Trash").internal() == "Trash.4A"


def test_parent_child() -> None:
    sent = MailboxName.parse("user.bob.Sent.2024")
    assert sent.parent() == MailboxName.parse("user.bob.Sent")
    assert sent.parent().parent() == MailboxName.parse("user.bob")
    assert MailboxName.parse("user.bob").parent() is None
    assert MailboxName.parse("shared.a").parent() == MailboxName.parse("shared")
    assert MailboxName.parse("shared").parent() is None
    assert MailboxName.parse("user.bob").is_ancestor_of(sent)
    assert not MailboxName.parse("user.bob").is_ancestor_of(MailboxName.parse("user.bob2"))
    assert not MailboxName.parse("user.bob").is_ancestor_of(MailboxName.parse("example.com!user.bob.x"))
    assert MailboxName.parse("user.bob").child("a.b").internal() == "user.bob.a^b"


def test_moving_a_user_into_a_domain() -> None:
    n = MailboxName.parse("user.bob.Sent")
    moved = n.with_owner("bob@example.com")
    assert moved.internal() == "example.com!user.bob.Sent" and moved.owner == "bob@example.com"
    with pytest.raises(ValueError):
        MailboxName.parse("shared").with_owner("bob")


def test_dbnames_from_cyrus() -> None:
    """Cyrus 3.6 stored these N keys for the names of the JSON document it loaded."""
    doc = json.loads(oracle("v2-3.6", "undump.json"))
    keys = {k[1:].decode() for k, _ in shown_records("v2-3.6") if k[:1] == b"N"}
    assert {MailboxName.parse(name).dbname() for name in doc} == keys
    assert {MailboxName.from_dbname(k).internal() for k in keys} == set(doc)


# ------------------------------------------------------------------ mUTF-7


@pytest.mark.parametrize("encoded, text", [
    # RFC 3501 section 5.1.3 example
    ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"),
    ("&AMk-t&AOk-", "\u00c9t\u00e9"),
    ("a&-b", "a&b"),
    ("&2D3eAA-", "\U0001f600"),
])
def test_mutf7(encoded: str, text: str) -> None:
    assert decode_mutf7(encoded) == text
    assert encode_mutf7(text) == encoded


@pytest.mark.parametrize("bad", ["&AMk", "&Jjo!-", "&AGE-", "&A-"])
def test_bad_mutf7(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(bad)
    assert decode_mutf7(bad, strict=False).startswith(bad[:1]) or bad[0] == "&"


def test_display() -> None:
    assert MailboxName.parse("user.bob.&AMk-t&AOk-").display() == "user/bob/\u00c9t\u00e9"
    assert MailboxName.parse("user.bob.&broken").display() == "user/bob/&broken"


@given(st.text(max_size=30))
@settings(max_examples=500, deadline=None)
def test_mutf7_round_trip(text: str) -> None:
    encoded = encode_mutf7(text)
    assert encoded.isascii()
    assert decode_mutf7(encoded) == text


# ------------------------------------------------------------------ properties

_level = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="!^@/"), min_size=1,
                 max_size=8).filter(lambda s: s != "user" and s != "DELETED")
_names = st.builds(
    MailboxName,
    domain=st.none() | st.from_regex(r"[a-z]{1,6}\.(com|org)", fullmatch=True),
    localpart=st.none() | _level,
    levels=st.lists(_level, max_size=3).map(tuple),
    deleted_suffix=st.none() | st.from_regex(r"[1-9A-F][0-9A-F]{7}", fullmatch=True),
).filter(lambda n: (n.localpart is not None or n.levels) and (n.deleted_suffix is None or n.localpart is not None
                                                                or len(n.levels) >= 1))


@given(_names)
@settings(max_examples=400, deadline=None)
def test_name_round_trips(n: MailboxName) -> None:
    assert MailboxName.parse(n.internal()) == n
    assert MailboxName.from_dbname(n.dbname()) == n
    assert MailboxName.from_external(n.external("/"), sep="/") == n
    if n.parent() is not None:
        assert n.parent().is_ancestor_of(n)


def test_names_against_cyrus(tmp_path: Path) -> None:
    """Names with every special character survive Cyrus's own intname→dbname→intname (ctl_mboxlist -u/-d)."""
    names = ["user.a b.c^d", "example.org!user.x.y", "shared.50%.q\"r", "DELETED.user.z.w.5A2B3C4D",
             "example.org!DELETED.shared.s.5A2B3C4E", "user.&AMk-t&AOk-.&ZeVnLIqe-"]
    doc = {n: {"mbtype": "e", "partition": "default", "acl": {}, "uniqueid": f"u{i}"} for i, n in enumerate(names)}
    tools = CyrusTools(tmp_path, virtdomains="userid")
    tools.run("ctl_mboxlist", "-u", input=json.dumps(doc).encode())
    assert set(json.loads(tools.run("ctl_mboxlist", "-d").stdout)) == set(names)
    shown = tools.show(tools.configdir / "mailboxes.db", "twoskip")
    keys = {line.split(b"\t", 1)[0][1:].decode() for line in shown.splitlines() if line.startswith(b"N")}
    assert keys == {MailboxName.parse(n).dbname() for n in names}
