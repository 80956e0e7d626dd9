"""Subscription files: ``<configdir>/user/<h>/<user>.sub`` (flat db in every version).

Implements formats/seen-sub-quota.md §2. Authority: imap/mboxlist.c
(``mboxlist_opensubs``, ``mboxlist_changesub`` 2.2.13; ``mboxlist_upgrade_subs``,
``mboxlist_dbname_to_key`` 3.6.1). The records come from
:mod:`spoolmig.formats.cyrusdb`; this module gives them meaning.

* 2.0–3.4 (``version 1``): key = internal mailbox name, value empty.
* 3.6+ (``version 2``, written when a 3.6 server first opens the file): a
  version record ``\\x1FVER\\x1F`` = ``2``, and keys ``N`` + dbname, where a
  dbname starting with the user's own INBOX dbname has that prefix replaced
  by ``INBOX`` (``Nuser\\x1Fbob\\x1FSent`` → ``NINBOX\\x1FSent`` for bob).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from spoolmig.errors import FormatError

__all__ = ["Subscriptions", "read", "build_records", "VERSION_KEY"]

VERSION_KEY = b"\x1fVER\x1f"
_INBOX = b"INBOX"


@dataclass
class Subscriptions:
    """One user's subscriptions as internal names (2.x spelling)."""

    version: int
    names: list[str] = field(default_factory=list)


def _mbdb():  # part A's module: names ⇄ dbnames (imported late: optional at import time)
    from spoolmig.formats import mailboxes_db

    return mailboxes_db


def inbox_dbname(userid: str) -> bytes:
    """The 3.6 dbname of a user's INBOX (``mbname_dbname(mbname_from_userid())``)."""
    local, _, domain = userid.partition("@")
    intname = f"{domain}!user.{local.replace('.', '^')}" if domain else f"user.{local.replace('.', '^')}"
    return _mbdb().to_bytes(_mbdb().intname_to_dbname(intname))


def read(records: Iterable[tuple[bytes, bytes]], *, userid: str | None = None, file: str = "sub") -> Subscriptions:
    """Subscriptions from the flat db's records.

    ``userid`` is needed only for a version-2 file that uses ``INBOX`` keys.
    """
    pairs = list(records)
    version = 1
    for key, value in pairs:
        if key == VERSION_KEY:
            if value != b"2":
                raise FormatError(file, None, f"subscription db version {value!r}, only 2 is known")
            version = 2
    mb = _mbdb()
    subs = Subscriptions(version=version)
    for key, _value in pairs:
        if key == VERSION_KEY:
            continue
        if version == 1:
            subs.names.append(mb.to_str(key))
            continue
        if key[:1] != b"N":
            raise FormatError(file, None, f"subscription key {key[:40]!r} lacks the N prefix of version 2")
        dbname = key[1:]
        if dbname.startswith(_INBOX):
            if userid is None:
                raise FormatError(file, None, "version-2 subscriptions use INBOX keys: the owner's userid is needed")
            dbname = inbox_dbname(userid) + dbname[len(_INBOX):]
        subs.names.append(mb.dbname_to_intname(mb.to_str(dbname)))
    return subs


def build_records(subs: Subscriptions, *, userid: str | None = None) -> list[tuple[bytes, bytes]]:
    """Records of a subscription db in ``subs.version``'s form (order: the db layer's job)."""
    mb = _mbdb()
    if subs.version == 1:
        return [(mb.to_bytes(name), b"") for name in subs.names]
    inbox = inbox_dbname(userid) if userid else None
    out = [(VERSION_KEY, b"2")]
    for name in subs.names:
        dbname = mb.to_bytes(mb.intname_to_dbname(name))
        if inbox is not None and dbname.startswith(inbox):  # Cyrus's plain prefix test
            dbname = _INBOX + dbname[len(inbox):]
        out.append((b"N" + dbname, b""))
    return out
