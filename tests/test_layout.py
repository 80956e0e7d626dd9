"""Layouts: our paths against Cyrus 3.6's mbpath, for many names and every hashing option."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmig.model import layout as L

from cyrus_tools import CyrusTools

META = Path(__file__).parent / "fixtures" / "meta"


# ------------------------------------------------------------------ dir_hash


@pytest.mark.parametrize(
    "name, basic, full",
    [("bob", "b", "E"), ("alice", "a", "L"), ("zed.sub", "z", "M"), ("folder", "f", "T"), ("a^b", "a", "K"),
     ("example.com", "e", "O"), ("ÄÖ", "q", "V"), ("Bob", "b", None), ("9x", "q", None), ("", "q", "A")],
)
def test_dir_hash_known_values(name: str, basic: str, full: str | None) -> None:
    # values verified with Cyrus 3.6.1 (shared/research/cyrus-formats.md §9.2)
    assert L.dir_hash(name, False) == basic
    if full is not None:
        assert L.dir_hash(name, True) == full


def test_examples_from_the_research() -> None:
    hashed = L.Layout(hashimapspool=True, virtdomains=True)
    assert L.mailbox_dir("user.bob.Sent", hashed) == "b/user/bob/Sent"
    assert L.mailbox_dir("shared", hashed) == "s/shared"
    assert L.mailbox_dir("example.com!user.bob", hashed) == "domain/e/example.com/b/user/bob"
    assert L.mailbox_dir("DELETED.user.bob.4A2B3C4D", hashed) == "u/DELETED/user/bob/4A2B3C4D"
    flat = L.Layout(virtdomains=True)
    assert L.mailbox_dir("user.bob.Sent", flat) == "user/bob/Sent"
    assert L.mailbox_dir("example.com!user.bob", flat) == "domain/example.com/user/bob"
    full = L.Layout(fulldirhash=True, virtdomains=True)
    assert L.quota_file("user.bob", L.Layout()) == "quota/b/user.bob"
    assert L.quota_file("user.bob", full) == "quota/E/user.bob"
    assert L.quota_file("user.zed.sub", full) == "quota/M/user.zed.sub"
    assert L.quota_file("shared.folder", full) == "quota/T/shared.folder"
    assert L.quota_file("example.com!", full) == "domain/O/example.com/quota/root"
    assert L.user_file("bob", "seen", L.Layout()) == "user/b/bob.seen"
    assert L.user_file("alice@example.com", "sub", L.Layout(virtdomains=True)) == \
        "domain/e/example.com/user/a/alice.sub"
    assert L.sieve_dir("bob", L.Layout()) == "b/bob"
    assert L.sieve_dir("alice@example.com", L.Layout(virtdomains=True)) == "domain/e/example.com/a/alice"
    assert L.sieve_dir(None, L.Layout()) == "global"


def test_generations_differ_where_the_sources_differ() -> None:
    """2.x hashes the raw level (`bob^smith`), 3.x the unescaped one (`bob.smith` → stops at '.')."""
    v2 = L.Layout(hashimapspool=True, fulldirhash=True, version=(2, 3))
    v3 = L.Layout(hashimapspool=True, fulldirhash=True, version=(3, 6))
    assert L.mailbox_dir("user.bob^smith", v2) == f"{L.dir_hash('bob^smith', True)}/user/bob^smith"
    assert L.mailbox_dir("user.bob^smith", v3) == "E/user/bob^smith"
    # 2.x splits the domain only with virtdomains; 3.x always
    assert L.mailbox_dir("a!b.c", L.Layout(version=(2, 3))) == "a!b/c"
    assert L.mailbox_dir("a!b.c", L.Layout(version=(3, 6))) == "domain/a/b/c"
    # 3.x re-prints the DELETED stamp with %X
    assert L.mailbox_dir("DELETED.user.bob.0004a2b", L.Layout(version=(3, 6))) == "DELETED/user/bob/4A2B"
    assert L.mailbox_dir("DELETED.user.bob.0004a2b", L.Layout(version=(2, 5))) == "DELETED/user/bob/0004a2b"


def test_uuid_paths_match_relocate_by_id() -> None:
    doc = json.loads((META / "layout" / "mbpath-uuid.json").read_text())
    spool = doc["data"].split("/spool/")[0] + "/spool/"
    conf = doc["user"]["seen"].split("/conf/")[0] + "/conf/"
    assert doc["data"][len(spool):] == L.uuid_dir("0f1e2d3c4b5a6978")
    for suffix in ("seen", "sub", "dav", "counters", "conversations", "xapianactive"):
        assert doc["user"][suffix][len(conf):] == L.uuid_user_file("0f1e2d3c4b5a6978", suffix)
    assert doc["user"]["sieve"] == "/usr/sieve/" + L.uuid_sieve_dir("0f1e2d3c4b5a6978")
    # and the files relocate_by_id really wrote are where we say
    assert (META / "layout" / "relocated" / L.uuid_user_file("0f1e2d3c4b5a6978", "seen")).exists()
    assert (META / "layout" / "relocated" / "spool" / L.uuid_dir("0f1e2d3c4b5a6978") / "cyrus.header").exists()


# ------------------------------------------------------------------ reverse


_level = st.text(alphabet=st.sampled_from("abcXYZ09 ^_-&Ä"), min_size=1, max_size=8)
_names = st.builds(
    lambda dom, top, levels: (f"{dom}!" if dom else "") + ".".join([*top, *levels]),
    st.sampled_from([None, "example.com", "b.org"]),
    st.sampled_from([["user", "bob"], ["user", "a^b"], ["shared"], ["Public"], ["user", "zed"]]),
    st.lists(_level, max_size=3),
)
_layouts = st.builds(L.Layout, hashimapspool=st.booleans(), fulldirhash=st.booleans(), virtdomains=st.booleans(),
                     version=st.sampled_from([(2, 2), (2, 3), (2, 5), (3, 0), (3, 6)]))


@settings(max_examples=400, deadline=None)
@given(_names, _layouts)
def test_reverse_mapping_inverts_forward(name: str, layout: L.Layout) -> None:
    rel = L.mailbox_dir(name, layout)
    found = L.parse_mailbox_dir(rel, layout)
    assert found is not None and found.name is not None
    assert L.mailbox_dir(found.name, layout) == rel
    if "!" not in name or layout.virtdomains or layout.mbname_rules:
        assert found.name == name


@pytest.mark.parametrize("rel", ["../etc/passwd", "b/user/bob/../..", "/abs/path", "x/user/bob", "b/user.bob",
                                 "", "uuid/0/x/0f1e"])
def test_reverse_mapping_refuses_paths_cyrus_would_not_make(rel: str) -> None:
    assert L.parse_mailbox_dir(rel, L.Layout(hashimapspool=True)) is None


def test_reverse_mapping_of_uuid_dirs() -> None:
    assert L.parse_mailbox_dir("uuid/0/f/0f1e2d3c4b5a6978", L.Layout(version=(3, 6))) == \
        L.MailboxDir(uniqueid="0f1e2d3c4b5a6978")


# ------------------------------------------------------------------ live: mbpath


def _mbpath(tmp: Path, options: dict[str, str], names: list[str]) -> dict[str, dict]:
    """Create `names` (legacy dirs) in a scratch 3.6 config; mbpath -j for all in one run."""
    cyrus = CyrusTools(tmp, unixhierarchysep="no", altnamespace="no", sievedir=str(tmp / "sieve"), **options)
    doc = {n: {"mbtype": "el", "partition": "default", "acl": {}, "uniqueid": f"{i:016x}"}
           for i, n in enumerate(names)}
    cyrus.run("ctl_mboxlist", "-u", input=json.dumps(doc).encode())
    out = cyrus.run("mbpath", "-7", "-j", "--", *names).stdout.decode()
    dec, pos, found = json.JSONDecoder(), 0, {}
    while out[pos:].strip():
        pos += len(out[pos:]) - len(out[pos:].lstrip())
        obj, end = dec.raw_decode(out, pos)
        pos = end
        found[obj["mbname"]["intname"]] = obj
    return {"spool": str(cyrus.spool) + "/", "conf": str(cyrus.configdir) + "/", "sieve": str(tmp / "sieve") + "/",
            "found": found}


_live_level = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0189 ^_-&+Äé"), min_size=1, max_size=10)
_live_names = st.lists(
    st.builds(lambda dom, top, levels: (f"{dom}!" if dom else "") + ".".join([*top, *levels]),
              st.sampled_from([None, None, "example.com", "mail.b-org.net"]),
              st.one_of(st.builds(lambda u: ["user", u], _live_level), st.builds(lambda s: [s], _live_level)),
              st.lists(_live_level, max_size=2)),
    min_size=20, max_size=40, unique=True,
)
_CONFIGS = [dict(hashimapspool=h, fulldirhash=f, virtdomains=v)
            for h in ("true", "false") for f in ("true", "false") for v in ("on", "off")]


@pytest.mark.cyrus
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(names=_live_names)
def test_paths_agree_with_mbpath(tmp_path_factory: pytest.TempPathFactory, names: list[str]) -> None:
    names = [n for n in names if not n.startswith(("user.", "DELETED.")) or n.count(".") >= 1]
    # mbpath reports a user's sieve directory only when the user's INBOX exists: user.carol makes sure
    # one does whatever hypothesis draws (a draw of only subfolders like user.0.0 checked no sieve path).
    names += ["user.bob^smith.Sent", "DELETED.user.bob.4A2B3C4D", "example.com!DELETED.user.zed.0001F",
              "example.com!user.al^ice", "user.carol", "user.carol.Trash"]
    names = sorted(set(names))
    checked_users = checked_sieve = 0
    for options in _CONFIGS:
        virt = options["virtdomains"] == "on"
        run_names = names if virt else [n for n in names if "!" not in n]
        got = _mbpath(tmp_path_factory.mktemp("mbpath"), options, run_names)
        layout = L.Layout(hashimapspool=options["hashimapspool"] == "true",
                          fulldirhash=options["fulldirhash"] == "true", virtdomains=virt, version=(3, 6))
        assert set(got["found"]) == set(run_names)
        for name, obj in got["found"].items():
            where = f"{name!r} with {options}"
            assert obj["data"].startswith(got["spool"]), where
            rel = obj["data"][len(got["spool"]):]
            assert L.mailbox_dir(name, layout) == rel, where
            assert L.parse_mailbox_dir(rel, layout).name == name.replace(".0001F", ".1F"), where
            user = obj.get("user")
            if user and obj["mbname"].get("userid"):
                userid = obj["mbname"]["userid"]
                for suffix in ("seen", "sub", "counters"):
                    assert user[suffix] == got["conf"] + L.user_file(userid, suffix, layout), where
                checked_users += 1
                if user.get("sieve"):
                    assert user["sieve"] == got["sieve"] + L.sieve_dir(userid, layout), where
                    checked_sieve += 1
    assert checked_users and checked_sieve  # the per-user comparisons really ran


@pytest.mark.cyrus
def test_full_dir_hash_agrees_with_cyrus_on_many_names(tmp_path: Path) -> None:
    """One mbpath run over 300 shared top-level names: the hash letter is Cyrus's dir_hash_c."""
    import random

    rng = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-+&Äéß"
    names = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16))) for _ in range(300)})
    names = [n for n in names if n.strip() == n and n not in ("user", "DELETED")]
    got = _mbpath(tmp_path, dict(hashimapspool="true", fulldirhash="true"), names)
    letters = {name: obj["data"][len(got["spool"])] for name, obj in got["found"].items()}
    assert len(letters) == len(names)
    assert letters == {n: L.dir_hash(n, True) for n in names}
    assert len(set(letters.values())) == 23  # every bucket A..W was hit


def test_nothing_touches_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    L.mailbox_dir("user.bob", L.Layout(hashimapspool=True))
    L.parse_mailbox_dir("b/user/bob", L.Layout(hashimapspool=True))
    assert os.listdir(tmp_path) == []


@pytest.mark.cyrus
def test_metapartition_mirrors_the_data_path(tmp_path: Path) -> None:
    meta_root = tmp_path / "meta"
    meta_root.mkdir()
    names = ["user.bob", "user.bob.Sent", "shared.x^y"]
    got = _mbpath(tmp_path / "c", {"hashimapspool": "true", "metapartition-default": str(meta_root),
                                   "metapartition_files": "header index"}, names)
    layout = L.Layout(hashimapspool=True, version=(3, 6))
    for name in names:
        obj = got["found"][name]
        assert obj["meta"] == f"{meta_root}/{L.metadata_dir(name, layout)}"
        assert obj["data"] == got["spool"] + L.mailbox_dir(name, layout)
