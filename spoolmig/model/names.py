"""Cyrus mailbox names: internal ⇄ external ⇄ 3.6 dbname, owner, parent/child, display.

Every Cyrus version keeps one *internal* spelling (imap/mboxname.c):
``[domain!][DELETED.]user.<localpart>[.<box>…][.<HEX>]`` or a shared
``<box>[.<box>…]``, with ``.`` as the hierarchy separator and ``^`` standing
for a literal dot inside a level (only possible with ``unixhierarchysep``).
Names are modified UTF-7 (RFC 3501 §5.1.3) on the wire; :func:`decode_mutf7`
turns them into text for people.

:class:`MailboxName` holds the parts with dots unescaped, the way Cyrus's
``mbname_t`` does, so each spelling is one method away:

>>> n = MailboxName.parse("example.com!user.bob^smith.Sent")
>>> n.owner, n.external("/"), n.dbname() == "example.com\\x1duser\\x1fbob.smith\\x1fSent"
('bob.smith@example.com', 'user/bob.smith/Sent@example.com', True)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

from spoolmig.formats.mailboxes_db import DEFAULT_DELETEDPREFIX, strtoul16, dbname_to_intname, intname_to_dbname

__all__ = ["MailboxName", "decode_mutf7", "encode_mutf7", "dbname_to_intname", "intname_to_dbname"]


@dataclass(frozen=True)
class MailboxName:
    """The parts of one mailbox name (``levels`` hold real dots, not ``^``).

    Attributes:
        domain: the virtual domain (``example.com``) or None.
        localpart: the user of a ``user.`` mailbox (``bob``), None for shared ones.
        levels: folder levels below the user (or the whole shared name).
        deleted_suffix: for a delayed-delete name its last level, the deletion
            time in upper-case hex (kept as spelled, so names round-trip).
        deletedprefix: the server's ``deletedprefix`` (``DELETED``).
    """

    domain: str | None = None
    localpart: str | None = None
    levels: tuple[str, ...] = ()
    deleted_suffix: str | None = None
    deletedprefix: str = DEFAULT_DELETEDPREFIX

    @property
    def deleted(self) -> int:
        """The deletion time (Unix seconds) of a delayed-delete name, else 0 (as Cyrus's strtoul reads it)."""
        return strtoul16(self.deleted_suffix) if self.deleted_suffix is not None else 0

    # ---------------------------------------------------------------- parsing
    @classmethod
    def parse(cls, name: str, *, deletedprefix: str = DEFAULT_DELETEDPREFIX) -> MailboxName:
        """Split an internal name the way ``mbname_from_intname`` (3.6) does.

        Empty levels vanish, as in Cyrus (``strtok``); a ``DELETED.`` name needs
        at least two more levels, the last being the hex deletion time.
        """
        domain = None
        if "!" in name:
            domain, name = name.split("!", 1)
        levels = [level.replace("^", ".") for level in name.split(".") if level]
        suffix = None
        if len(levels) > 2 and levels[0] == deletedprefix:
            suffix = levels[-1]
            levels = levels[1:-1]
        localpart = None
        if len(levels) > 1 and levels[0] == "user":
            localpart = levels[1]
            levels = levels[2:]
        return cls(domain, localpart, tuple(levels), suffix, deletedprefix)

    @classmethod
    def from_dbname(cls, dbname: str, *, deletedprefix: str = DEFAULT_DELETEDPREFIX) -> MailboxName:
        """A 3.6 mailboxes.db name (``example.com<1D>user<1F>bob``)."""
        return cls.parse(dbname_to_intname(dbname, deletedprefix=deletedprefix), deletedprefix=deletedprefix)

    @classmethod
    def from_external(
        cls, name: str, *, sep: str = ".", deletedprefix: str = DEFAULT_DELETEDPREFIX, virtdomains: bool = True
    ) -> MailboxName:
        """An admin's external name: ``user/bob/Sent@example.com`` (``sep="/"``) or ``user.bob.Sent``.

        With ``sep="/"`` a dot is an ordinary character; with ``sep="."`` a level
        cannot contain one. ``@domain`` at the end names the domain when
        ``virtdomains`` is on.
        """
        domain = None
        if virtdomains and "@" in name:
            name, domain = name.rsplit("@", 1)
        if sep == ".":
            return cls.parse((f"{domain}!" if domain else "") + name, deletedprefix=deletedprefix)
        internal = ".".join(level.replace(".", "^") for level in name.split(sep))
        return cls.parse((f"{domain}!" if domain else "") + internal, deletedprefix=deletedprefix)

    # ---------------------------------------------------------------- output
    def _parts(self) -> list[str]:
        parts: list[str] = []
        if self.deleted_suffix is not None:
            parts.append(self.deletedprefix)
        if self.localpart is not None:
            parts += ["user", self.localpart]
        parts += list(self.levels)
        if self.deleted_suffix is not None:
            parts.append(self.deleted_suffix)
        return parts

    def internal(self) -> str:
        """The internal name (``mbname_intname``): dots inside levels become ``^``."""
        body = ".".join(p.replace(".", "^") for p in self._parts())
        return f"{self.domain}!{body}" if self.domain is not None else body

    def __str__(self) -> str:
        return self.internal()

    def external(self, sep: str = "/") -> str:
        """The admin's external name (standard namespace): ``user/bob.smith/Sent@example.com``.

        Raises:
            ValueError: ``sep`` is ``.`` and a level contains a dot (such a
                name only exists with ``unixhierarchysep``).
        """
        parts = self._parts()
        if sep == "." and any("." in p for p in parts):
            raise ValueError(f"{self.internal()!r} has a dot inside a level: no '.'-separated external name")
        body = sep.join(parts)
        return f"{body}@{self.domain}" if self.domain is not None else body

    def dbname(self) -> str:
        """The 3.6 mailboxes.db name: 0x1D after the domain, 0x1F between levels."""
        return intname_to_dbname(self.internal(), deletedprefix=self.deletedprefix)

    def display(self, sep: str = "/") -> str:
        """The external name with modified UTF-7 decoded, for people (never for Cyrus)."""
        return decode_mutf7(self.external(sep), strict=False)

    # ---------------------------------------------------------------- relations
    @property
    def is_user(self) -> bool:
        return self.localpart is not None

    @property
    def is_inbox(self) -> bool:
        return self.localpart is not None and not self.levels

    @property
    def is_deleted(self) -> bool:
        return self.deleted_suffix is not None

    @property
    def owner(self) -> str | None:
        """The userid owning the mailbox (``mboxname_to_userid``): ``bob`` or ``bob@example.com``."""
        if self.localpart is None:
            return None
        return f"{self.localpart}@{self.domain}" if self.domain is not None else self.localpart

    def parent(self) -> MailboxName | None:
        """The mailbox one level up, or None at the top (a user's INBOX has no parent mailbox)."""
        if not self.levels:
            return None
        return replace(self, levels=self.levels[:-1]) if (self.levels[:-1] or self.localpart) else None

    def child(self, level: str) -> MailboxName:
        return replace(self, levels=(*self.levels, level))

    def is_ancestor_of(self, other: MailboxName) -> bool:
        """Is ``other`` strictly below this mailbox (same domain, user and deletion state)?"""
        return (
            self.domain == other.domain
            and self.localpart == other.localpart
            and self.deleted_suffix == other.deleted_suffix
            and len(other.levels) > len(self.levels)
            and other.levels[: len(self.levels)] == self.levels
        )

    def with_owner(self, userid: str) -> MailboxName:
        """The same folder for another user; ``bob@example.com`` also moves it into that domain."""
        if self.localpart is None:
            raise ValueError(f"{self.internal()!r} is not a user mailbox")
        localpart, _, domain = userid.partition("@")
        return replace(self, localpart=localpart, domain=domain or None)

    def with_domain(self, domain: str | None) -> MailboxName:
        return replace(self, domain=domain)




# ------------------------------------------------------------ modified UTF-7


def decode_mutf7(text: str, *, strict: bool = True) -> str:
    """RFC 3501 modified UTF-7 → text (``&AMk-t&AOk-`` → ``Été``).

    Args:
        strict: raise ValueError on a malformed ``&…-`` run; otherwise keep it as is.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            if strict:
                raise ValueError(f"unterminated '&' run in {text!r}")
            out.append(text[i:])
            break
        run = text[i + 1 : end]
        if not run:
            out.append("&")
        else:
            try:
                out.append(_decode_run(run))
            except ValueError:
                if strict:
                    raise
                out.append(text[i : end + 1])
        i = end + 1
    return "".join(out)


def _decode_run(run: str) -> str:
    if not all(ch.isascii() and (ch.isalnum() or ch in "+,") for ch in run):
        raise ValueError(f"bad modified base64 run {run!r}")
    b64 = run.replace(",", "/")
    raw = base64.b64decode(b64 + "=" * (-len(b64) % 4))
    if len(raw) % 2:
        raise ValueError(f"odd UTF-16 length in {run!r}")
    text = raw.decode("utf-16-be", errors="strict")
    if any(0x20 <= ord(ch) <= 0x7E for ch in text):
        raise ValueError(f"printable ASCII encoded in base64 run {run!r}")
    return text


def encode_mutf7(text: str) -> str:
    """Text → RFC 3501 modified UTF-7 (the inverse of :func:`decode_mutf7`)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)
