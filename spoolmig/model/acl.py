"""Cyrus ACLs: the TAB and dlist forms, RFC 2086 → RFC 4314 rights, identifier rewriting.

Stored ACLs are ``id TAB rights TAB id TAB rights TAB …`` (mailboxes.db
≤ 3.4, cyrus.header ≤ 3.4) or a dlist kvlist ``%(id rights …)`` (2.5+
mailboxes.db, 3.6 cyrus.header). An identifier starting with ``-`` holds
negative rights.

Rights conversion follows lib/acl.c ``cyrus_acl_strtomask`` of 2.3.16 and
3.6.1, which agree: ``c`` and ``d`` are macros; ``c`` means ``k`` (plus ``x``
when ``deleteright`` is ``c``, the default), ``d`` means ``t e`` (plus ``x``
when ``deleteright`` is ``d``); another ``deleteright`` letter grants ``x``
itself; a macro counts only when none of its member rights is also given.
:func:`convert_rights` spells the result with explicit letters in Cyrus's
order (``lrswipkxtean0123456789``), without the ``c``/``d`` macros Cyrus
itself would append and without adding anything: ``lrswipcda`` →
``lrswipkxtea``. 2.2 servers knew only ``lrswipcda0-9`` and the same
``deleteright`` rule, so the function serves them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spoolmig.formats.dlist import KvList
from spoolmig.formats.mailboxes_db import split_acl

__all__ = ["Acl", "AclEntry", "AclProblem", "convert_rights", "rights_mask", "mask_to_rights"]

# lib/acl.h (2.3+): bit values never reach the disk, only the order matters.
_BITS = {
    "l": 1 << 0, "r": 1 << 1, "s": 1 << 2, "w": 1 << 3, "i": 1 << 4, "p": 1 << 5, "k": 1 << 6,
    "x": 1 << 7, "t": 1 << 8, "e": 1 << 9, "a": 1 << 10, "n": 1 << 11,
    **{str(d): 1 << (12 + d) for d in range(10)},
}
#: cyrus_acl_masktostr order (without the macros).
CANONICAL_ORDER = "lrswipkxtean0123456789"
SPECIAL_IDS = frozenset({"anyone", "anonymous"})


def rights_mask(rights: str, deleteright: str = "c") -> tuple[int, str]:
    """``cyrus_acl_strtomask``: the rights a Cyrus 2.3+ server grants for ``rights``.

    Returns:
        (mask, unknown letters Cyrus ignores).
    """
    result = 0
    legacy_create = legacy_delete = 0
    unknown = []
    dr = deleteright[:1]
    for ch in rights:
        nomatch = False
        if ch == "c":
            legacy_create = _BITS["k"]
        elif ch == "d":
            legacy_delete = _BITS["t"] | _BITS["e"]
        elif ch in _BITS:
            result |= _BITS[ch]
        else:
            nomatch = True
        if dr and ch == dr:
            if dr == "c":
                legacy_create |= _BITS["x"]
            elif dr == "d":
                legacy_delete |= _BITS["x"]
            else:
                result |= _BITS["x"]
        elif nomatch:
            unknown.append(ch)
    if not result & legacy_create:
        result |= legacy_create
    if not result & legacy_delete:
        result |= legacy_delete
    return result, "".join(unknown)


def mask_to_rights(mask: int, *, macros: bool = False, deleteright: str = "c") -> str:
    """Explicit letters in Cyrus's order; ``macros`` adds ``c``/``d`` as ``cyrus_acl_masktostr`` does.

    With ``macros`` the result is what Cyrus 2.3+ prints (MYRIGHTS, GETACL,
    rewritten ACLs): ``c`` when any of its members is set, ``d`` likewise,
    placed before ``a``.
    """
    if not macros:
        return "".join(ch for ch in CANONICAL_ORDER if mask & _BITS[ch])
    create = _BITS["k"] | (_BITS["x"] if deleteright[:1] == "c" else 0)
    delete = _BITS["t"] | _BITS["e"] | (_BITS["x"] if deleteright[:1] == "d" else 0)
    head = "".join(ch for ch in "lrswipkxte" if mask & _BITS[ch])
    tail = "".join(ch for ch in "an0123456789" if mask & _BITS[ch])
    return head + ("c" if mask & create else "") + ("d" if mask & delete else "") + tail


def convert_rights(rights: str, deleteright: str = "c") -> str:
    """RFC 2086 letters → the RFC 4314 letters Cyrus grants for them (``lrswipcda`` → ``lrswipkxtea``)."""
    return mask_to_rights(rights_mask(rights, deleteright)[0])


@dataclass(frozen=True)
class AclEntry:
    """One ``identifier rights`` pair; a leading ``-`` on the identifier makes it negative."""

    identifier: str
    rights: str

    @property
    def negative(self) -> bool:
        return self.identifier.startswith("-")

    @property
    def principal(self) -> str:
        """The identifier without the negative sign."""
        return self.identifier[1:] if self.negative else self.identifier

    @property
    def is_group(self) -> bool:
        return self.principal.startswith("group:")


@dataclass(frozen=True)
class AclProblem:
    """Something about one ACL entry a person must decide on."""

    identifier: str
    kind: str  # "cross-domain", "unknown-rights", "garbage"
    message: str


@dataclass(frozen=True)
class Acl:
    """An ordered ACL, as stored (Cyrus appends new identifiers at the end)."""

    entries: tuple[AclEntry, ...] = ()
    #: Text after the last complete pair that Cyrus ignores (kept for reporting).
    garbage: str = ""

    # ---------------------------------------------------------------- forms
    @classmethod
    def parse(cls, text: str) -> Acl:
        """The TAB form, split as Cyrus splits it (a final pair may lack its TAB)."""
        pairs, garbage = split_acl(text)
        return cls(tuple(AclEntry(ident, rights) for ident, rights in pairs), garbage)

    def render(self) -> str:
        """The TAB form, every pair followed by a TAB (``cyrus_acl_set``)."""
        return "".join(f"{e.identifier}\t{e.rights}\t" for e in self.entries)

    @classmethod
    def from_kvlist(cls, kv: KvList) -> Acl:
        """The dlist form ``%(id rights …)`` (values decoded as UTF-8, surrogateescape)."""
        entries = []
        for ident, rights in kv:
            if not isinstance(rights, bytes):
                raise ValueError(f"ACL rights of {ident!r} are not a string")
            entries.append(AclEntry(_s(ident), _s(rights)))
        return cls(tuple(entries))

    def to_kvlist(self) -> KvList:
        return KvList((_b(e.identifier), _b(e.rights)) for e in self.entries)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, identifier: str) -> str | None:
        """Rights of the first entry for ``identifier`` (``-bob`` for negative ones)."""
        return next((e.rights for e in self.entries if e.identifier == identifier), None)

    # ---------------------------------------------------------------- rights
    def to_rfc4314(self, deleteright: str = "c") -> tuple[Acl, list[AclProblem]]:
        """Every entry's rights as explicit RFC 4314 letters (see :func:`convert_rights`).

        Entries whose rights become empty are kept (an empty right set is what
        Cyrus stores for them too). Unknown letters are dropped, as Cyrus
        ignores them, and reported.
        """
        out = []
        problems = []
        for e in self.entries:
            mask, unknown = rights_mask(e.rights, deleteright)
            if unknown:
                problems.append(AclProblem(e.identifier, "unknown-rights",
                                           f"{e.identifier}: rights {e.rights!r} contain letters Cyrus ignores: {unknown!r}"))
            out.append(AclEntry(e.identifier, mask_to_rights(mask)))
        if self.garbage:
            problems.append(AclProblem("", "garbage", f"text after the last ACL pair is ignored: {self.garbage!r}"))
        return Acl(tuple(out)), problems

    def effective_mask(self, identifiers: Iterable[str], deleteright: str = "c") -> int:
        """Rights of someone matching ``identifiers``: positive union minus negative union (acl_afs.c)."""
        ids = set(identifiers)
        plus = minus = 0
        for e in self.entries:
            if e.principal in ids:
                mask = rights_mask(e.rights, deleteright)[0]
                if e.negative:
                    minus |= mask
                else:
                    plus |= mask
        return plus & ~minus

    # ------------------------------------------------------------ identifiers
    def rewrite_identifiers(
        self,
        users: Mapping[str, str],
        *,
        mailbox_domain: str | None,
        default_domain: str | None = None,
        admins: Iterable[str] = (),
    ) -> tuple[Acl, list[AclProblem]]:
        """Rename users (``bob`` → ``bob@example.com``) in an ACL of a mailbox in ``mailbox_domain``.

        ``anyone``, ``anonymous``, ``group:…`` identifiers and the ``admins``
        stay as they are; negative entries follow their user. An identifier
        whose domain is not the mailbox's (``default_domain`` standing for
        unqualified names) is reported: Cyrus 2.3–3.4 refuse to set such a
        cross-domain entry (``mboxlist_setacl``: IMAP_INVALID_IDENTIFIER).
        """
        admin_set = set(admins)
        out = []
        problems = []
        home = (mailbox_domain or default_domain or "").lower()
        for e in self.entries:
            principal = e.principal
            if principal in SPECIAL_IDS or e.is_group or principal in admin_set:
                out.append(e)
                continue
            new = users.get(principal, principal)
            sign = "-" if e.negative else ""
            out.append(AclEntry(sign + new, e.rights))
            _, at, dom = new.partition("@")
            user_domain = (dom if at else (default_domain or "")).lower()
            if user_domain != home:
                where = mailbox_domain or "(no domain)"
                problems.append(AclProblem(
                    sign + new, "cross-domain",
                    f"{sign + new}: identifier of domain {user_domain or '(none)'} in an ACL of a mailbox in {where}; "
                    "Cyrus refuses cross-domain ACL entries",
                ))
        return Acl(tuple(out), self.garbage), problems


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")
