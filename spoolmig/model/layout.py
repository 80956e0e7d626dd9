"""Where Cyrus keeps a mailbox and a user's files: name → path, and path → name.

Implements formats/layout.md. Every path is returned *relative* to the root it
hangs from (a partition root, the configdirectory, the sievedir), as a
POSIX string, so the caller decides which tree (source replica, target) it
lives in. Names are Cyrus *internal* names (``user.bob.Sent``,
``example.com!user.alice``, ``^`` for a dot inside a level); 8-bit bytes in a
name are carried as surrogate escapes (``bytes.decode('utf-8',
'surrogateescape')``) and hashed as the bytes Cyrus would see.

The rules differ between Cyrus generations (see formats/layout.md §4):

* 2.2–2.5 (``mailbox_hash_mbox``/``mboxname_hash`` on the raw name): the
  ``domain!`` split happens only with ``virtdomains``; the hash character is
  ``dir_hash_c`` of the text after the first ``.``; ``^`` is hashed as is.
* 3.0+ (``mboxname_hash`` over an ``mbname_t``): the ``!`` split always
  happens and the ``defaultdomain`` is dropped; each level is unescaped
  (``^`` → ``.``) before hashing, so under ``fulldirhash`` a user
  ``bob^smith`` hashes like ``bob``; DELETED timestamps are re-printed in
  upper-case hex.
* 3.5+: mailboxes without the ``l`` (legacy dirs) flag live in
  ``uuid/<c1>/<c2>/<uniqueid>`` and their per-user files in
  ``user/uuid/<c1>/<c2>/<uniqueid>/<suffix>.db``.

Nothing here touches the disk; the reverse mapping only parses and checks the
hash characters of a relative path, so a path from source data can be judged
without trusting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = [
    "Layout",
    "dir_hash",
    "mailbox_dir",
    "uuid_dir",
    "metadata_dir",
    "user_file",
    "user_dir",
    "uuid_user_file",
    "quota_file",
    "sieve_dir",
    "uuid_sieve_dir",
    "MailboxDir",
    "parse_mailbox_dir",
    "META_FILES",
    "USER_SUFFIXES",
]

#: Per-user files in <configdir>/user/..: seen, subscriptions, mailbox keys
#: (2.3+), and the 3.x additions. Migrating needs the first three.
USER_SUFFIXES = ("seen", "sub", "mboxkey", "counters", "conversations", "dav", "xapianactive")

#: cyrus.* files a ``metapartition_files`` setting can move to a
#: metapartition, by the option value that names them (imapoptions 2.3.16,
#: 2.5.17, 3.6.1). ``expunge`` exists only up to 2.3 (2.4 merges it).
META_FILES = {
    "header": "cyrus.header",
    "index": "cyrus.index",
    "cache": "cyrus.cache",
    "expunge": "cyrus.expunge",
    "squat": "cyrus.squat",
    "annotations": "cyrus.annotations",
    "lock": "cyrus.lock",
    "dav": "cyrus.dav",
    "archivecache": "cyrus.cache",
}

_UUID_DIR = "uuid"


@dataclass(frozen=True)
class Layout:
    """The imapd.conf options that decide paths, and the Cyrus generation.

    ``version`` is (major, minor) of the Cyrus whose rules apply: the source
    version when reading a replica, the target version when writing.
    """

    hashimapspool: bool = False
    fulldirhash: bool = False
    virtdomains: bool = False
    version: tuple[int, int] = (2, 3)
    deletedprefix: str = "DELETED"
    defaultdomain: str | None = None

    @property
    def mbname_rules(self) -> bool:
        """3.0+ builds paths from a parsed mbname_t (see module docstring)."""
        return self.version >= (3, 0)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def dir_hash(name: str, full: bool) -> str:
    """Cyrus's ``dir_hash_c`` (lib/util.c, identical 2.2–3.12).

    Basic: the first character lower-cased, ``q`` unless it is ASCII a–z.
    Full: a shift/xor hash of the bytes up to the first ``.``, as ``A``–``W``.
    """
    data = _bytes(name)
    if full:
        n = 0
        for b in data:
            if b == 0x2E:  # '.'
                break
            n = (((n << 3) ^ (n >> 5)) ^ b) & 0xFFFFFFFF
        return chr(ord("A") + n % 23)
    if not data:
        return "q"
    c = data[0]
    if 0x41 <= c <= 0x5A:
        c += 0x20
    return chr(c) if 0x61 <= c <= 0x7A else "q"


def _split_domain(name: str, layout: Layout) -> tuple[str | None, str]:
    """(domain, rest) of an internal name, as the layout's Cyrus splits it."""
    if "!" not in name or not (layout.virtdomains or layout.mbname_rules):
        return None, name
    domain, rest = name.split("!", 1)
    if layout.mbname_rules and layout.defaultdomain is not None and domain == layout.defaultdomain:
        return None, rest
    return domain, rest


def _domain_prefix(domain: str, layout: Layout, *, hashed: bool) -> str:
    if hashed:
        return f"domain/{dir_hash(domain, layout.fulldirhash)}/{domain}"
    return f"domain/{domain}"


def _levels_3x(rest: str, layout: Layout) -> list[str]:
    """The directory levels 3.0+ prints for the domain-less part of a name.

    Mirrors ``mbname_from_intname`` + ``mboxname_hash``: a DELETED name keeps
    its prefix and gets its timestamp re-printed with ``%X``; levels are
    unescaped for hashing (the caller) and re-escaped (``.`` → ``^``) here.
    """
    boxes = [b for b in rest.split(".") if b] if rest else []  # strarray_split drops empties
    if len(boxes) > 2 and boxes[0] == layout.deletedprefix:
        stamp = _strtoul16(boxes[-1])
        # mbname_isdeleted() is the number: 0 (garbage) loses both prefix and stamp
        boxes = [boxes[0], *boxes[1:-1], f"{stamp:X}"] if stamp else boxes[1:-1]
    return boxes


def _strtoul16(text: str) -> int:
    """C ``strtoul(text, NULL, 16)``: the longest hex prefix, 0 if none."""
    m = re.match(r"\s*[+]?(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]*)", text)
    digits = m.group(1) if m else ""
    return int(digits, 16) & 0xFFFFFFFF if digits else 0


def mailbox_dir(name: str, layout: Layout) -> str:
    """Directory of a name-based ("legacy dirs") mailbox, relative to its partition root.

    >>> mailbox_dir("user.bob.Sent", Layout(hashimapspool=True))
    'b/user/bob/Sent'
    """
    if not name:
        raise ValueError("empty mailbox name")
    domain, rest = _split_domain(name, layout)
    parts: list[str] = []
    if domain is not None:
        parts.append(_domain_prefix(domain, layout, hashed=layout.hashimapspool))
    if layout.mbname_rules:
        boxes = _levels_3x(rest, layout)
        if layout.hashimapspool and boxes:
            idx = boxes[1] if len(boxes) > 1 else boxes[0]
            parts.append(dir_hash(idx.replace("^", "."), layout.fulldirhash))
        parts.extend(boxes)
    else:
        if layout.hashimapspool:
            dot = rest.find(".")
            parts.append(dir_hash(rest if dot < 0 else rest[dot + 1 :], layout.fulldirhash))
        parts.extend(rest.split("."))
    return "/".join(parts)


def uuid_dir(uniqueid: str) -> str:
    """Directory of a 3.5+ mailbox without legacy dirs (``mboxname_id_hash``)."""
    _check_uniqueid(uniqueid)
    return f"{_UUID_DIR}/{uniqueid[0]}/{uniqueid[1]}/{uniqueid}"


def metadata_dir(name: str, layout: Layout, *, uniqueid: str | None = None) -> str:
    """Directory of the cyrus.* files relative to the metapartition root.

    A metapartition mirrors the data partition's relative layout exactly
    (``mboxname_metapath``), so this is the data directory; it exists as its
    own function so callers say which root they join it to.
    """
    return uuid_dir(uniqueid) if uniqueid is not None else mailbox_dir(name, layout)


def _check_uniqueid(uniqueid: str) -> None:
    if len(uniqueid) < 2 or "/" in uniqueid or uniqueid in (".", "..") or "\x00" in uniqueid:
        raise ValueError(f"unusable uniqueid {uniqueid!r}")


def _split_userid(userid: str, layout: Layout) -> tuple[str | None, str]:
    """(domain, localpart) of a userid such as ``bob`` or ``bob@example.com``."""
    if "@" in userid and (layout.virtdomains or layout.mbname_rules):
        local, domain = userid.rsplit("@", 1)
        if layout.mbname_rules and domain == layout.defaultdomain:
            return None, local
        return domain, local
    return None, userid


def user_dir(userid: str, layout: Layout) -> str:
    """Directory of a user's files below the configdirectory (always hashed)."""
    domain, local = _split_userid(userid, layout)
    prefix = f"{_domain_prefix(domain, layout, hashed=True)}/" if domain is not None else ""
    return f"{prefix}user/{dir_hash(local, layout.fulldirhash)}"


def user_file(userid: str, suffix: str, layout: Layout) -> str:
    """``<user dir>/<localpart>.<suffix>`` (``seen_getpath``, ``mboxlist_hash_usersubs``,
    ``mboxname_conf_getpath_legacy``): e.g. ``user/b/bob.seen``."""
    _domain, local = _split_userid(userid, layout)
    return f"{user_dir(userid, layout)}/{local}.{suffix}"


def uuid_user_file(inbox_uniqueid: str, suffix: str) -> str:
    """3.5+ per-user file of a non-legacy user: ``user/uuid/c/0/<id>/<suffix>.db``."""
    return f"user/{uuid_dir(inbox_uniqueid)}/{suffix}.db"


def quota_file(root: str, layout: Layout) -> str:
    """Quota file of a quota root below the configdirectory (``hash_quota``).

    The hash is of the text after the first ``.`` (all versions); a
    whole-domain root ``example.com!`` is ``domain/<H>/example.com/quota/root``.
    """
    prefix = ""
    if layout.virtdomains and "!" in root:
        domain, root = root.split("!", 1)
        prefix = _domain_prefix(domain, layout, hashed=True) + "/"
        if not root:
            return prefix + "quota/root"
    if not root:
        raise ValueError("empty quota root")
    dot = root.find(".")
    return f"{prefix}quota/{dir_hash(root if dot < 0 else root[dot + 1:], layout.fulldirhash)}/{root}"


def sieve_dir(userid: str | None, layout: Layout) -> str:
    """A user's sieve directory below the sievedir; ``None`` = global scripts.

    With virtdomains the directory is named by the localpart inside the
    domain's tree, otherwise by the whole userid (``user_sieve_path_byname``
    3.6; timsieved ``actions_setuser`` 2.2).
    """
    if userid is None:
        return "global"
    domain, local = _split_userid(userid, layout)
    if domain is not None and layout.virtdomains:
        return f"{_domain_prefix(domain, layout, hashed=True)}/{dir_hash(local, layout.fulldirhash)}/{local}"
    name = local if layout.virtdomains else userid
    return f"{dir_hash(name, layout.fulldirhash)}/{name}"


def uuid_sieve_dir(inbox_uniqueid: str) -> str:
    """3.5+ sieve directory of a non-legacy user."""
    return uuid_dir(inbox_uniqueid)


# --------------------------------------------------------------------------
# Reverse: relative directory → mailbox


@dataclass(frozen=True)
class MailboxDir:
    """What a directory below a partition root stands for.

    Exactly one of ``name`` (a name-based directory) and ``uniqueid`` (a 3.5+
    uuid directory) is set.
    """

    name: str | None = None
    uniqueid: str | None = None


_HEX_STAMP = re.compile(r"[0-9A-F]+")


def parse_mailbox_dir(relpath: str, layout: Layout) -> MailboxDir | None:
    """The mailbox a directory holds, or None if the layout cannot have made it.

    Used to find "offline" mailboxes (a directory with a cyrus.header that
    mailboxes.db does not list). The result is checked by rebuilding the path
    forward with :func:`mailbox_dir`: a directory whose hash letters do not
    match its name is not one Cyrus would use, and is refused.
    """
    parts = PurePosixPath(relpath).parts
    if not parts or any(p in ("", ".", "..") or "/" in p for p in parts):
        return None
    if parts[0] == _UUID_DIR and len(parts) == 4:
        uid = parts[3]
        if len(uid) >= 2 and parts[1] == uid[0] and parts[2] == uid[1]:
            return MailboxDir(uniqueid=uid)
        return None
    rest = list(parts)
    domain = None
    if rest[0] == "domain" and (layout.virtdomains or layout.mbname_rules):
        take = 3 if layout.hashimapspool else 2
        if len(rest) <= take:
            return None
        domain = rest[take - 1]
        rest = rest[take:]
    if layout.hashimapspool:
        if len(rest) < 2 or len(rest[0]) != 1:
            return None
        rest = rest[1:]
    if any("." in level for level in rest):
        return None  # a '.' can never appear in a level: it is the separator
    name = ".".join(rest)
    if domain is not None:
        name = f"{domain}!{name}"
    try:
        if mailbox_dir(name, layout) != "/".join(parts):
            return None
    except ValueError:
        return None
    return MailboxDir(name=name)
