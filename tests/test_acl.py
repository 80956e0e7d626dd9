"""ACLs: TAB and dlist forms, RFC 2086 → 4314 conversion (checked against a real Cyrus 3.6 imapd), identifiers."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmig.formats import dlist
from spoolmig.model.acl import Acl, AclEntry, convert_rights, mask_to_rights, rights_mask

sys.path.insert(0, str(Path(__file__).parent))
from cyrus_tools import CYRUS_BIN, CyrusTools  # noqa: E402


@pytest.mark.parametrize("rights, deleteright, expected", [
    ("lrswipcda", "c", "lrswipkxtea"),       # the 2.2 owner default
    ("lrswipcd", "c", "lrswipkxte"),
    ("lrswipcda", "d", "lrswipkxtea"),       # x moves from c to d: same total
    ("lrswipc", "d", "lrswipk"),
    ("lrswipd", "d", "lrswipxte"),
    ("lrswipcd", "a", "lrswipkte"),          # deleteright a: only a grants x
    ("lrswipcda", "a", "lrswipkxtea"),
    ("lrs", "c", "lrs"),
    ("c", "c", "kx"),
    ("d", "c", "te"),
    ("lrsk c", "c", "lrsk"),                 # a macro with an explicit member counts for nothing
    ("cx", "c", "x"),
    ("dt", "c", "t"),
    ("lrswipkxtecdan", "c", "lrswipkxtean"),  # 2.5+ owner default: n is kept, never added
    ("lrswipkxtecda", "c", "lrswipkxtea"),
    ("0129", "c", "0129"),
    ("lrsQ?", "c", "lrs"),                    # unknown letters: Cyrus ignores them
    ("", "c", ""),
])
def test_convert_rights(rights: str, deleteright: str, expected: str) -> None:
    assert convert_rights(rights, deleteright) == expected


def test_macros_like_cyrus_prints_them() -> None:
    mask, _ = rights_mask("lrswipcda")
    assert mask_to_rights(mask, macros=True) == "lrswipkxtecda"
    assert mask_to_rights(rights_mask("lrsk")[0], macros=True) == "lrskc"
    assert mask_to_rights(rights_mask("x")[0], macros=True, deleteright="d") == "xd"


def test_unknown_letters_reported() -> None:
    converted, problems = Acl.parse("bob\tlrsQ\t").to_rfc4314()
    assert converted.render() == "bob\tlrs\t"
    assert [p.kind for p in problems] == ["unknown-rights"]


_rights = st.text(st.sampled_from("lrswipcdakxten0123456789"), max_size=14)


@given(_rights, st.sampled_from("cda"))
@settings(max_examples=500, deadline=None)
def test_conversion_grants_exactly_the_same(rights: str, deleteright: str) -> None:
    converted = convert_rights(rights, deleteright)
    assert rights_mask(converted, deleteright)[0] == rights_mask(rights, deleteright)[0]
    assert convert_rights(converted, deleteright) == converted
    assert "c" not in converted and "d" not in converted
    assert list(converted) == sorted(converted, key="lrswipkxtean0123456789".index)


# ----------------------------------------------------------------- forms


def test_tab_form_round_trip_and_cyrus_split() -> None:
    text = "bob\tlrswipcda\t-bob\tw\tgroup:staff\tlrs\tanyone\tp\t"
    acl = Acl.parse(text)
    assert acl.render() == text
    assert [e.negative for e in acl] == [False, True, False, False]
    assert acl.entries[1].principal == "bob" and acl.entries[2].is_group
    assert acl.get("-bob") == "w"
    assert Acl.parse("bob\tlrs").render() == "bob\tlrs\t"  # the last pair may lack its TAB
    tail = Acl.parse("bob\tlrs\tjunk")
    assert tail.render() == "bob\tlrs\t" and tail.garbage == "junk"
    assert Acl.parse("").render() == "" and len(Acl.parse("")) == 0


def test_dlist_form() -> None:
    acl = Acl.parse("bob\tlrs\tcaf\u00e9\tl\t")
    kv = acl.to_kvlist()
    assert dlist.dumps(kv) == b"%(bob lrs {5+}\r\ncaf\xc3\xa9 l)"
    assert Acl.from_kvlist(dlist.loads(dlist.dumps(kv))) == acl


_acl_text = st.characters(blacklist_characters="\t\x00", blacklist_categories=("Cs",))


@given(st.lists(st.tuples(st.text(_acl_text, min_size=1, max_size=8), st.text(_acl_text, max_size=8)), max_size=5))
@settings(max_examples=300, deadline=None)
def test_forms_round_trip(pairs: list[tuple[str, str]]) -> None:
    acl = Acl(tuple(AclEntry(i, r) for i, r in pairs))
    assert Acl.parse(acl.render()) == acl
    assert Acl.from_kvlist(dlist.loads(dlist.dumps(acl.to_kvlist()))) == acl


# ----------------------------------------------------------------- identifiers


def test_rewrite_identifiers_into_a_domain() -> None:
    acl = Acl.parse("bob\tlrswipcda\t-bob\tw\tgroup:staff\tlrs\tanyone\tp\tanonymous\tl\tadmin\ta\tcarol\tlr\t")
    moved, problems = acl.rewrite_identifiers(
        {"bob": "bob@example.com", "carol": "carol@example.com"}, mailbox_domain="example.com", admins={"admin"})
    assert moved.render() == ("bob@example.com\tlrswipcda\t-bob@example.com\tw\tgroup:staff\tlrs\tanyone\tp\t"
                              "anonymous\tl\tadmin\ta\tcarol@example.com\tlr\t")
    assert problems == []


def test_cross_domain_entries_reported() -> None:
    acl = Acl.parse("bob\tlrs\tdave@other.org\tlr\t")
    _, problems = acl.rewrite_identifiers({"bob": "bob@example.com"}, mailbox_domain=None)
    assert {p.identifier for p in problems} == {"bob@example.com", "dave@other.org"}
    assert all(p.kind == "cross-domain" and "refuses" in p.message for p in problems)
    # An unqualified user on a domain mailbox is another domain too.
    _, problems = Acl.parse("eve\tlr\t").rewrite_identifiers({}, mailbox_domain="example.com")
    assert [p.identifier for p in problems] == ["eve"]
    # ... unless it is the default domain's user and the mailbox is in the default domain.
    _, problems = Acl.parse("eve\tlr\t").rewrite_identifiers({}, mailbox_domain=None, default_domain="example.com")
    assert problems == []


# ------------------------------------------------------------ against imapd


def _imapd_myrights(_tmp: Path, acls: list[dict[str, str]], deleteright: str) -> list[str]:
    # pytest's tmp_path lies under a 0700 directory of root: the cyrus user needs its own.
    with tempfile.TemporaryDirectory(prefix="spoolmig-imapd-") as name:
        os.chmod(name, 0o755)
        return _myrights_in(Path(name), acls, deleteright)


def _myrights_in(tmp: Path, acls: list[dict[str, str]], deleteright: str) -> list[str]:
    """MYRIGHTS of user 'tester' on one shared mailbox per ACL, from a real Cyrus 3.6 imapd.

    imapd runs on stdin/stdout (-X) as the cyrus user, with a password check
    that accepts anything; MYRIGHTS prints cyrus_acl_masktostr of what
    cyrus_acl_myrights computed from the stored ACL string.
    """
    tools = CyrusTools(tmp, sasl_pwcheck_method="alwaystrue", allowplaintext="yes", admins="admin",
                       deleteright=deleteright, unixhierarchysep="no", altnamespace="no")
    doc = {f"shared.m{i}": {"mbtype": "e", "partition": "default", "acl": acl, "uniqueid": f"u{i}"}
           for i, acl in enumerate(acls)}
    tools.run("ctl_mboxlist", "-u", input=json.dumps(doc).encode())
    subprocess.run(["chown", "-R", "cyrus", str(tmp)], check=True)
    script = b"a LOGIN tester x\r\n" + b"".join(b"m%d MYRIGHTS shared.m%d\r\n" % (i, i) for i in range(len(acls)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYRUS_")}
    env.update(CYRUS_SERVICE="imap", CYRUS_ID="1")
    gid = subprocess.run(["id", "-g", "cyrus"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(
        ["setpriv", "--reuid=cyrus", f"--regid={gid}", "--clear-groups", str(CYRUS_BIN / "imapd"), "-C",
         str(tools.conf), "-X"],
        input=script + b"z LOGOUT\r\n", capture_output=True, env=env, timeout=60, check=True).stdout.decode()
    found = dict(re.findall(r"\* MYRIGHTS shared\.m(\d+) (\S*)\r\n", out))
    # Without any of l r i k x a Cyrus pretends the mailbox does not exist (printmyrights).
    found.update((n, "") for n in re.findall(r"\r\nm(\d+) NO Mailbox does not exist", out))
    assert len(found) == len(acls), out
    return [found[str(i)] for i in range(len(acls))]


def _shown(mask: int, deleteright: str) -> str:
    """What MYRIGHTS shows for ``mask`` (nothing when the mailbox is invisible)."""
    visible = rights_mask("lrikxa")[0]
    return mask_to_rights(mask, macros=True, deleteright=deleteright) if mask & visible else ""


@pytest.mark.parametrize("deleteright", ["c", "d", "a"])
def test_conversion_matches_cyrus_imapd(tmp_path: Path, deleteright: str) -> None:
    """Cyrus grants the same rights for the old string and for our conversion, and we predict both."""
    rng = random.Random(2086 + ord(deleteright))
    letters = "lrswipcdakxten09"
    samples = ["lrswipcda", "lrswipcd", "lrsc", "lrsd", "c", "d", "cx", "dt", "lrsk c", "lrswipkxtecdan",
               "lrswipkxtecda", "a", "l"] + ["".join(rng.sample(letters, rng.randint(1, 9))) for _ in range(40)]
    acls = []
    for rights in samples:
        acls.append({"tester": rights})
        acls.append({"tester": convert_rights(rights, deleteright)})
    got = _imapd_myrights(tmp_path, acls, deleteright)
    for k, rights in enumerate(samples):
        original, converted = got[2 * k], got[2 * k + 1]
        assert original == converted, (rights, convert_rights(rights, deleteright))
        assert original == _shown(rights_mask(rights, deleteright)[0], deleteright)


def test_negative_rights_match_cyrus_imapd(tmp_path: Path) -> None:
    cases = [
        "tester\tlrswipcda\t-tester\tw\t",
        "tester\tlrswipcda\t-tester\tc\t",
        "anyone\tlrs\t-tester\tr\t",
        "anyone\tlrswi\ttester\tp\t-anyone\ti\t",
        "-tester\tlrs\ttester\tlrswipkxte\t",
    ]
    got = _imapd_myrights(tmp_path, [dict(_pairs(c)) for c in cases], "c")
    for text, cyrus in zip(cases, got):
        mask = Acl.parse(text).effective_mask({"tester", "anyone"})
        assert _shown(mask, "c") == cyrus, text


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(e.identifier, e.rights) for e in Acl.parse(text)]
