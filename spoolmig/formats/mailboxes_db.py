"""mailboxes.db entries of every Cyrus version ⇄ one record type, :class:`MailboxEntry`.

Implements ``formats/mailboxes-db.md``. Works on ``(key, value)`` byte pairs
as the database layer (``spoolmig.formats.cyrusdb``) yields them, in the
database's key order; it never opens files itself.

Three value formats exist (``ValueFormat``):

* ``legacy`` — 2.0–2.4, and entries 2.5–3.4 have not rewritten yet:
  ``<mbtype> SP <partition> SP <acl>`` (``server!partition`` for remote
  entries), key = internal name. Also the never-released ``(uniqueid X …)``
  prefix form (``extended``) that 2.5–3.4 still parse.
* ``dlist`` — 2.5–3.4: ``%(A %(id rights …) I … P … S … T … V … C … F … M …)``.
* ``v2`` — 3.6+: keys ``N<dbname>`` and ``I<uniqueid>`` with dlist values
  whose ``T`` always comes first; dbnames use 0x1D after the domain and 0x1F
  between levels (:func:`dbname_to_intname`).

Mailbox types are held version-neutrally in :class:`MbType` (a kind letter
plus flag letters, as 3.6 spells them) because every version numbers and
spells them differently.

Names, partitions and ACLs are ``str`` decoded from the stored bytes as UTF-8
with ``surrogateescape``, so any byte string survives a round trip
(:func:`to_bytes` gives the bytes back).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from spoolmig.errors import FormatError, UsageError
from spoolmig.formats import dlist
from spoolmig.formats.dlist import KvList

__all__ = [
    "DEFAULT_DELETEDPREFIX", "HistoryItem", "MailboxEntry", "MailboxList", "MbType", "SkippedKey",
    "ValueFormat", "CyrusVersion", "dbname_to_intname", "encode_dlist_value", "encode_legacy_value",
    "encode_v2_records", "build_records", "intname_to_dbname", "parse_value", "parse_version", "read",
    "to_bytes", "to_str", "strtoul16", "iter_acl_pairs", "version_text",
]

ValueFormat = Literal["legacy", "extended", "dlist", "v2"]

DEFAULT_DELETEDPREFIX = "DELETED"
DB_DOMAINSEP = "\x1d"
DB_HIERSEP = "\x1f"


def to_str(b: bytes) -> str:
    """Stored bytes → str, losslessly (UTF-8 with surrogateescape)."""
    return b.decode("utf-8", "surrogateescape")


def to_bytes(s: str) -> bytes:
    """Inverse of :func:`to_str`."""
    return s.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------ versions

CyrusVersion = tuple[int, int, int]


def parse_version(text: str) -> CyrusVersion:
    """``"2.3.3"`` → (2, 3, 3); a bare ``"2.3"`` means 2.3.10 and later (DESIGN.md).

    Raises:
        UsageError: not a Cyrus version spoolmig knows (2.0 – 3.x).
    """
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.(\d+))?\s*", text)
    if not m:
        raise UsageError(f"not a Cyrus version: {text!r} (expected e.g. 2.3, 2.3.9, 3.6)")
    major, minor = int(m.group(1)), int(m.group(2))
    if m.group(3) is not None:
        patch = int(m.group(3))
    else:
        patch = 10 if (major, minor) == (2, 3) else 0
    if not (2, 0) <= (major, minor) <= (3, 99):
        raise UsageError(f"Cyrus version {text} is outside 2.0 – 3.x")
    return (major, minor, patch)


def version_text(v: CyrusVersion) -> str:
    return f"{v[0]}.{v[1]}.{v[2]}"


# ------------------------------------------------------------ mailbox types

#: 3.6 kind letters (mboxlist_mbtype_to_string 3.6.1) and their 3.6 numbers.
_KIND_V2 = {"e": 0x0, "n": 0x1, "s": 0x2, "p": 0x3, "f": 0x5, "b": 0x8, "c": 0x9, "a": 0xA}
#: 3.6 flag letters in print order and their 3.6 bits.
_FLAG_V2 = {"d": 1 << 7, "m": 1 << 6, "r": 1 << 4, "z": 1 << 5, "i": 1 << 8, "l": 1 << 9}
_FLAG_ORDER = "dmrzil"

#: 2.0–3.4 numeric bits (imap/mboxlist.h of 2.2.13 … 3.4.0): letter, is-kind.
_LEGACY_BITS: dict[int, tuple[str, bool]] = {
    1 << 0: ("r", False), 1 << 1: ("z", False), 1 << 2: ("n", True), 1 << 3: ("m", False),
    1 << 4: ("d", False), 1 << 5: ("c", True), 1 << 6: ("a", True), 1 << 7: ("b", True),
    1 << 8: ("i", False), 1 << 9: ("s", True), 1 << 10: ("p", True),
}
#: 2.5–3.4 T letter print order (mboxlist_mbtype_to_string of 3.4.0; 2.5/3.0 print subsets).
_V1_LETTER_ORDER = "dmnrzcbaisp"


@dataclass(frozen=True)
class MbType:
    """A mailbox type: ``kind`` (3.6 letter: e n s p f b c a) and ``flags`` (subset of ``dmrzil``).

    ``unknown`` keeps numeric bits no Cyrus version defines (2.x values are
    free-form numbers) so they print back unchanged.
    """

    kind: str = "e"
    flags: str = ""
    unknown: int = 0

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def with_flags(self, add: str = "", remove: str = "") -> MbType:
        now = (set(self.flags) | set(add)) - set(remove)
        return dataclasses.replace(self, flags="".join(f for f in _FLAG_ORDER if f in now))

    # 2.0 – 3.4 numbers ------------------------------------------------------
    @classmethod
    def from_legacy_number(cls, n: int) -> MbType:
        kind, flags, unknown = "e", set(), 0
        for bit in range(32):
            b = 1 << bit
            if not n & b:
                continue
            letter = _LEGACY_BITS.get(b)
            if letter is None:
                unknown |= b
            elif letter[1]:
                if kind != "e":
                    unknown |= b  # two kinds at once: keep the bit as it is
                else:
                    kind = letter[0]
            else:
                flags.add(letter[0])
        return cls(kind, "".join(f for f in _FLAG_ORDER if f in flags), unknown)

    def legacy_number(self) -> int:
        """The 2.0–3.4 number (``l`` has no bit there and is dropped)."""
        n = self.unknown
        for b, (letter, is_kind) in _LEGACY_BITS.items():
            if (self.kind == letter) if is_kind else (letter in self.flags):
                n |= b
        return n

    # 2.5 – 3.4 letters ------------------------------------------------------
    @classmethod
    def from_letters_v1(cls, text: str) -> MbType:
        """2.5–3.4 ``T`` letters (order-free; the kind is one of the letters)."""
        n = 0
        by_letter = {letter: b for b, (letter, _k) in _LEGACY_BITS.items()}
        for ch in text:
            if ch not in by_letter:
                raise ValueError(f"unknown 2.5-3.4 mailbox type letter {ch!r}")
            n |= by_letter[ch]
        return cls.from_legacy_number(n)

    def letters_v1(self) -> str:
        n = self.legacy_number()
        out = []
        for ch in _V1_LETTER_ORDER:
            b = next(b for b, (letter, _k) in _LEGACY_BITS.items() if letter == ch)
            if n & b:
                out.append(ch)
        return "".join(out)

    # 3.6 letters and numbers --------------------------------------------------
    @classmethod
    def from_letters(cls, text: str) -> MbType:
        """3.6 ``T``: kind letter first (absent in a legacy email entry), then flags."""
        kind = "e"
        rest = text
        if text and text[0] in "abcenps":
            kind, rest = text[0], text[1:]
        flags = set()
        for ch in rest:
            if ch == "f" and kind == "e":
                kind = "f"  # 3.6 parses 'f' as a flag that ORs MBTYPE_SIEVE into the type
            elif ch in _FLAG_ORDER:
                flags.add(ch)
            else:
                raise ValueError(f"unknown 3.6 mailbox type letter {ch!r}")
        return cls(kind, "".join(f for f in _FLAG_ORDER if f in flags))

    def letters(self) -> str:
        return self.kind + self.flags

    def number_v2(self) -> int:
        """The 3.6 number (what ``ctl_mboxlist -u -L`` reads)."""
        n = _KIND_V2[self.kind]
        for f in self.flags:
            n |= _FLAG_V2[f]
        return n


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class HistoryItem:
    """A former name of a mailbox (3.6 ``I`` record ``H`` list)."""

    name: str
    mtime: int = 0
    uidvalidity: int = 0
    createdmodseq: int = 0
    foldermodseq: int = 0
    mbtype: MbType = MbType()
    partition: str | None = None


@dataclass(frozen=True)
class MailboxEntry:
    """One mailbox as any version of mailboxes.db stores it.

    ``name`` is the internal name in the 2.x spelling every version's dump
    uses (``example.com!user.bob^smith.Sent``). ``acl`` is the ACL in TAB form
    exactly as stored (None: the value has no ACL at all).
    """

    name: str
    mbtype: MbType = MbType()
    partition: str | None = None
    server: str | None = None
    acl: str | None = ""
    uniqueid: str | None = None
    uidvalidity: int = 0
    mtime: int = 0
    createdmodseq: int = 0
    foldermodseq: int = 0
    legacy_specialuse: str | None = None
    history: tuple[HistoryItem, ...] = ()
    #: The value format it was read from (None when built in memory).
    source_format: ValueFormat | None = None
    #: 2.x numeric mbtype exactly as stored (legacy values only).
    raw_mbtype: int | None = None
    #: dlist keys no Cyrus version defines, kept for reporting: (key, dlist text).
    unknown_keys: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class SkippedKey:
    """A key that is not a mailbox (``$RACL…``, ``$RUNQ…``, 3.6 ``A…`` reverse-ACL keys)."""

    key: bytes
    reason: str


@dataclass
class MailboxList:
    """Everything :func:`read` found in one mailboxes.db."""

    file: str
    #: ``legacy`` (2.0–2.4 values only), ``dlist`` (2.5–3.4; may still hold legacy values) or ``v2`` (3.6+).
    layout: Literal["legacy", "dlist", "v2", "empty"]
    entries: list[MailboxEntry] = field(default_factory=list)
    skipped: list[SkippedKey] = field(default_factory=list)
    #: 3.6: ``I`` records whose mailbox has no ``N`` record (uniqueid → entry).
    id_only: dict[str, MailboxEntry] = field(default_factory=dict)
    #: Oldest and newest Cyrus version consistent with what the file holds.
    versions: tuple[CyrusVersion, CyrusVersion] = ((2, 0, 0), (3, 99, 0))
    #: Why the range is what it is (human-readable evidence).
    evidence: list[str] = field(default_factory=list)


# --------------------------------------------------------------- dbnames (3.6)


def intname_to_dbname(name: str, *, deletedprefix: str = DEFAULT_DELETEDPREFIX) -> str:
    """3.6 ``mboxname_to_dbname``: ``example.com!user.bob^s.Sent`` → ``example.com<1D>user<1F>bob.s<1F>Sent``.

    Follows Cyrus exactly: empty levels vanish (strtok), a ``DELETED.`` name
    keeps its prefix and re-prints its hex suffix in upper case.
    """
    domain = None
    if "!" in name:
        domain, name = name.split("!", 1)
    boxes = [b.replace("^", ".") for b in name.split(".") if b]
    return _dbname_from_parts(domain, *_split_parts(boxes, deletedprefix), deletedprefix)


def dbname_to_intname(dbname: str, *, deletedprefix: str = DEFAULT_DELETEDPREFIX) -> str:
    """3.6 ``mboxname_from_dbname``: the inverse of :func:`intname_to_dbname`."""
    if (
        DB_DOMAINSEP not in dbname and "!" not in dbname and not dbname.startswith(deletedprefix)
        and dbname and dbname[0] != DB_HIERSEP and dbname[-1] != DB_HIERSEP and DB_HIERSEP * 2 not in dbname
    ):
        # The common case (no domain, not deleted, no empty level): a plain substitution.
        return dbname.replace(".", "^").replace(DB_HIERSEP, ".")
    domain = None
    if DB_DOMAINSEP in dbname:
        domain, dbname = dbname.split(DB_DOMAINSEP, 1)
    boxes = [b for b in dbname.split(DB_HIERSEP) if b]
    deleted, localpart, boxes = _split_parts(boxes, deletedprefix)
    out = f"{domain}!" if domain is not None else ""
    parts: list[str] = []
    if deleted:
        parts.append(deletedprefix)
    if localpart is not None:
        parts.append("user")
        parts.append(localpart.replace(".", "^"))
    parts.extend(b.replace(".", "^") for b in boxes)
    if deleted:
        parts.append(f"{deleted:X}")
    return out + ".".join(parts)


def _split_parts(boxes: list[str], dp: str) -> tuple[int, str | None, list[str]]:
    deleted = 0
    boxes = list(boxes)
    if len(boxes) > 2 and boxes[0] == dp:
        boxes.pop(0)
        deleted = strtoul16(boxes.pop())
    localpart = None
    if len(boxes) > 1 and boxes[0] == "user":
        boxes.pop(0)
        localpart = boxes.pop(0)
    return deleted, localpart, boxes


def _dbname_from_parts(domain: str | None, deleted: int, localpart: str | None, boxes: list[str], dp: str) -> str:
    out = f"{domain}{DB_DOMAINSEP}" if domain is not None else ""
    parts: list[str] = []
    if deleted:
        parts.append(dp)
    if localpart is not None:
        parts.append("user" + DB_HIERSEP + localpart)
    parts.extend(boxes)
    if deleted:
        parts.append(f"{deleted:X}")
    return out + DB_HIERSEP.join(parts)


def strtoul16(text: str) -> int:
    """C ``strtoul(text, NULL, 16)`` truncated to 32 bits, as Cyrus stores the deletion time."""
    m = re.match(r"\s*[+-]?(?:0[xX])?([0-9a-fA-F]*)", text)
    digits = m.group(1) if m else ""
    return int(digits, 16) & 0xFFFFFFFF if digits else 0


# ------------------------------------------------------------------ parsing


def parse_value(name: str, value: bytes, *, file: str = "mailboxes.db") -> MailboxEntry:
    """One 2.0–3.4 value (legacy, extended or dlist) for mailbox ``name``.

    Raises:
        FormatError: the value is empty or malformed; the message names the mailbox.
    """
    if not value:
        raise FormatError(file, None, f"mailbox {name!r}: empty value")
    if value[:1] == b"%":
        return _parse_dlist(name, value, file, v2=False)
    return _parse_legacy(name, value, file)


_LEGACY = re.compile(rb"([0-9]+) ([^ ]*) (.*)", re.DOTALL)


def _parse_legacy(name: str, value: bytes, file: str) -> MailboxEntry:
    uniqueid = specialuse = None
    fmt: ValueFormat = "legacy"
    rest = value
    if rest[:1] == b"(":
        # Pre-2.5 development form "(uniqueid X specialuse Y) mbtype partition acl".
        close = rest.find(b")")
        if close < 0:
            raise FormatError(file, None, f"mailbox {name!r}: unterminated '(' in value {value[:40]!r}")
        words = rest[1:close].split(b" ")
        for k, v in zip(words[::2], words[1::2]):
            if k == b"uniqueid":
                uniqueid = to_str(v)
            elif k == b"specialuse":
                specialuse = to_str(v)
        rest = rest[close + 1 :].lstrip(b" ")
        fmt = "extended"
    m = _LEGACY.fullmatch(rest)
    if not m:
        raise FormatError(
            file, None, f"mailbox {name!r}: value is neither dlist nor 'mbtype partition acl': {value[:60]!r}"
        )
    number = int(m.group(1))
    if number > 0x7FFFFFFF:
        raise FormatError(file, None, f"mailbox {name!r}: mailbox type {number} out of range")
    partition = to_str(m.group(2))
    server = None
    if "!" in partition:
        server, partition = partition.split("!", 1)
    return MailboxEntry(
        name=name, mbtype=MbType.from_legacy_number(number), partition=partition, server=server,
        acl=to_str(m.group(3)), uniqueid=uniqueid, legacy_specialuse=specialuse,
        source_format=fmt, raw_mbtype=number,
    )


_KNOWN_V1 = {"A", "I", "P", "S", "T", "V", "C", "F", "M"}
_KNOWN_V2 = _KNOWN_V1 | {"N", "H"}


def _parse_dlist(name: str | None, value: bytes, file: str, *, v2: bool) -> MailboxEntry:
    what = f"mailbox {name!r}" if name is not None else "mailbox record"
    try:
        kv = dlist.loads(value, file=file)
    except FormatError as error:
        raise FormatError(file, None, f"{what}: {error.problem}") from None
    if not isinstance(kv, KvList):
        raise FormatError(file, None, f"{what}: value is not a dlist kvlist: {value[:60]!r}")
    fields: dict[bytes, object] = {}
    unknown: list[tuple[str, bytes]] = []
    known = _KNOWN_V2_B if v2 else _KNOWN_V1_B
    for key, item in kv:
        if key not in known or key in fields:
            unknown.append((to_str(key), dlist.dumps(item)))
            continue
        fields[key] = item
    strings: dict[bytes, str] = {}
    for key, item in fields.items():
        if key in (b"A", b"H"):
            continue
        if not isinstance(item, bytes):
            raise FormatError(file, None, f"{what}: {to_str(key)} is a list, expected a string")
        strings[key] = to_str(item)

    def number(key: bytes, bits: int = 64) -> int:
        t = strings.get(key)
        if t is None:
            return 0
        if not t.isdigit() or len(t) > 20 or int(t) >= 1 << bits:
            raise FormatError(file, None, f"{what}: {key.decode()} is not a number: {t[:30]!r}")
        return int(t)

    acl = _acl_from_kvlist(fields[b"A"], file, what) if b"A" in fields else None
    try:
        mbtype = (_mbtype_v2 if v2 else _mbtype_v1)(strings.get(b"T", ""))
    except ValueError as error:
        raise FormatError(file, None, f"{what}: {error}") from None
    history: tuple[HistoryItem, ...] = ()
    if v2 and b"H" in fields:
        history = tuple(_history(fields[b"H"], file, what))
    entry_name = name
    if entry_name is None:
        dbname = strings.get(b"N")
        entry_name = dbname_to_intname(dbname) if dbname is not None else ""
    return MailboxEntry(
        name=entry_name, mbtype=mbtype, partition=strings.get(b"P"), server=strings.get(b"S"), acl=acl,
        uniqueid=strings.get(b"I"), uidvalidity=number(b"V", 32), mtime=number(b"M"),
        createdmodseq=number(b"C"), foldermodseq=number(b"F"), history=history,
        source_format="v2" if v2 else "dlist", unknown_keys=tuple(unknown),
    )


_KNOWN_V1_B = {k.encode() for k in _KNOWN_V1}
_KNOWN_V2_B = {k.encode() for k in _KNOWN_V2}


@functools.lru_cache(maxsize=256)
def _mbtype_v2(letters: str) -> MbType:
    return MbType.from_letters(letters)


@functools.lru_cache(maxsize=256)
def _mbtype_v1(letters: str) -> MbType:
    return MbType.from_letters_v1(letters)


def _acl_from_kvlist(item: object, file: str, what: str) -> str:
    """``%(id rights …)`` → ``id TAB rights TAB …`` (parseentry_cb)."""
    if not isinstance(item, KvList):
        raise FormatError(file, None, f"{what}: A (the ACL) is not a kvlist")
    parts = []
    for ident, rights in item:
        if not isinstance(rights, bytes) and rights is not None:
            raise FormatError(file, None, f"{what}: ACL rights of {to_str(ident)!r} are a list")
        parts.append(f"{to_str(ident)}\t{to_str(rights or b'')}\t")
    return "".join(parts)


def _history(item: object, file: str, what: str) -> list[HistoryItem]:
    if not isinstance(item, list) or isinstance(item, KvList):
        raise FormatError(file, None, f"{what}: H (name history) is not a list")
    out = []
    for h in item:
        if not isinstance(h, KvList):
            raise FormatError(file, None, f"{what}: a name history item is not a kvlist")
        sub = _parse_dlist("", dlist.dumps(h), file, v2=True)
        n = h.get("N")
        if not isinstance(n, bytes):
            raise FormatError(file, None, f"{what}: a name history item has no name")
        out.append(HistoryItem(
            name=dbname_to_intname(to_str(n)), mtime=sub.mtime, uidvalidity=sub.uidvalidity,
            createdmodseq=sub.createdmodseq, foldermodseq=sub.foldermodseq, mbtype=sub.mbtype,
            partition=sub.partition,
        ))
    return out


def read(records: Iterable[tuple[bytes, bytes]], *, file: str = "mailboxes.db") -> MailboxList:
    """Every mailbox in a mailboxes.db, in key order, with the version evidence.

    Args:
        records: committed ``(key, value)`` pairs in the database's order.
        file: named in errors.

    Raises:
        FormatError: a mailbox record is malformed (names the mailbox).
    """
    records = list(records)
    layout = _detect_layout(records)
    result = MailboxList(file=file, layout=layout)
    if layout == "v2":
        _read_v2(records, result)
    else:
        for key, value in records:
            if key[:1] == b"$":
                result.skipped.append(SkippedKey(key, _dollar_reason(key)))
                continue
            if not key:
                raise FormatError(file, None, "a record with an empty key")
            result.entries.append(parse_value(to_str(key), value, file=file))
    _version_evidence(result)
    return result


def _dollar_reason(key: bytes) -> str:
    if key.startswith(b"$RACL"):
        return "reverse-ACL cache ($RACL, reverseacls: yes)"
    if key.startswith(b"$RUNQ"):
        return "run queue ($RUNQ)"
    return "not a mailbox ('$' key)"


def _detect_layout(records: list[tuple[bytes, bytes]]) -> Literal["legacy", "dlist", "v2", "empty"]:
    """v2 when every non-'$' key is an N/I record with a 3.6 dlist (``%(T``) or a reverse-ACL key.

    Stricter than Cyrus's own test (the first decisive record), which takes a
    legacy file whose first key starts with ``N`` for a 3.6 one.
    """
    mailbox_records = [(k, v) for k, v in records if k[:1] != b"$"]
    if not mailbox_records:
        return "empty"
    v2 = True
    for key, value in mailbox_records:
        kind = key[:1]
        if kind == b"A" and key[2:3] == b"\x1e" or kind in (b"N", b"I") and value.startswith(b"%(T "):
            continue
        v2 = False
        break
    if v2 and any(k[:1] == b"N" for k, _ in mailbox_records):
        return "v2"
    if any(v[:1] == b"%" for _, v in mailbox_records):
        return "dlist"
    return "legacy"


_I_NAME = re.compile(rb"%\(T [^ ()]+ N ([^ ()\"{%]+) ")


def _read_v2(records: list[tuple[bytes, bytes]], result: MailboxList) -> None:
    """N records are the mailboxes; I records add name history (and are checked to point back)."""
    file = result.file
    ids: dict[bytes, bytes] = {}
    names: list[tuple[bytes, MailboxEntry]] = []
    for key, value in records:
        kind = key[:1]
        if kind == b"$":
            result.skipped.append(SkippedKey(key, _dollar_reason(key)))
        elif kind == b"A":
            result.skipped.append(SkippedKey(key, "reverse-ACL record (3.6 'A' key)"))
        elif kind == b"N":
            entry = _parse_dlist(dbname_to_intname(to_str(key[1:])), value, file, v2=True)
            names.append((key[1:], entry))
        elif kind == b"I":
            ids[key[1:]] = value
    claimed: set[bytes] = set()
    for dbname, entry in names:
        uid = to_bytes(entry.uniqueid) if entry.uniqueid else None
        value = ids.get(uid) if uid is not None else None
        if value is None:
            result.entries.append(entry)
            continue
        m = _I_NAME.match(value)
        if m is not None and value.endswith(b" H ())"):
            # The usual record: no history; only check that it names this mailbox.
            if m.group(1) == dbname:
                claimed.add(uid)  # type: ignore[arg-type]
        else:
            ident = _parse_dlist(None, value, file, v2=True)
            if intname_to_dbname(ident.name) == to_str(dbname):
                entry = dataclasses.replace(entry, history=ident.history)
                claimed.add(uid)  # type: ignore[arg-type]
        result.entries.append(entry)
    for uid, value in ids.items():
        if uid not in claimed:
            ident = _parse_dlist(None, value, file, v2=True)
            result.id_only[to_str(uid)] = dataclasses.replace(ident, uniqueid=to_str(uid))


def _version_evidence(result: MailboxList) -> None:
    """Narrow the range of Cyrus versions that could have written this file."""
    lo, hi = (2, 0, 0), (3, 99, 0)
    ev = result.evidence

    def at_least(v: CyrusVersion, why: str) -> None:
        nonlocal lo
        if v > lo:
            lo = v
            ev.append(f"{why} -> {version_text(v)} or later")

    def at_most(v: CyrusVersion, why: str) -> None:
        nonlocal hi
        if v < hi:
            hi = v
            ev.append(f"{why} -> {version_text(v)} or earlier")

    if result.layout == "v2":
        at_least((3, 5, 0), "3.6 key layout (N/I records)")
    elif result.layout == "dlist":
        at_least((2, 5, 0), "dlist values")
        at_most((3, 4, 99), "name-keyed records")
    elif result.layout == "legacy":
        at_most((3, 4, 99), "name-keyed records")
    for e in result.entries:
        if e.mbtype.has("d") and e.source_format == "legacy":
            at_least((2, 4, 0), f"deleted-mailbox type bit on {e.name!r}")
        if e.createdmodseq:
            at_least((3, 2, 0), "createdmodseq (C) present")
        if e.foldermodseq and e.source_format == "dlist":
            at_least((3, 0, 0), "foldermodseq (F) present")
        if e.source_format == "dlist" and (e.mbtype.kind == "b"):
            at_least((3, 0, 0), "collection type letter b")
        if e.source_format == "dlist" and (e.mbtype.kind in "sp" or e.mbtype.has("i")):
            at_least((3, 2, 0), "type letters i/s/p")
        if e.name.split("!")[-1].startswith(DEFAULT_DELETEDPREFIX + "."):
            at_least((2, 3, 0), f"delayed-delete name {e.name!r}")
        rights = set("".join((e.acl or "").split("\t")[1::2]))
        if rights & set("kxte"):
            at_least((2, 3, 0), "RFC 4314 rights k/x/t/e in ACLs")
        if "n" in rights:
            at_least((2, 5, 0), "annotation right n in ACLs")
    if result.skipped and any(s.key.startswith(b"$RACL") for s in result.skipped):
        at_least((3, 0, 0), "$RACL keys")
    if lo > hi:
        ev.append("conflicting evidence: the file mixes versions")
        hi = lo
    result.versions = (lo, hi)


# ------------------------------------------------------------------ writing


def encode_legacy_value(entry: MailboxEntry) -> bytes:
    """2.0–2.4 ``mboxlist_makeentry``: ``"%d %s %s"`` (``server!partition`` when remote)."""
    number = entry.raw_mbtype if entry.raw_mbtype is not None else entry.mbtype.legacy_number()
    partition = entry.partition or ""
    if entry.server:
        partition = f"{entry.server}!{partition}"
    return b"%d %s %s" % (number, to_bytes(partition), to_bytes(entry.acl or ""))


def split_acl(acl: str) -> tuple[list[tuple[str, str]], str]:
    """TAB form → (identifier, rights) pairs and the unpaired tail Cyrus ignores.

    Split as ``_write_acl`` / ``mailbox_acl_to_dlist`` split it: a final pair
    may lack its TAB; text without a TAB after the last pair is the tail.
    """
    pairs: list[tuple[str, str]] = []
    p = acl
    while p:
        tab = p.find("\t")
        if tab < 0:
            return pairs, p
        ident, rest = p[:tab], p[tab + 1 :]
        tab2 = rest.find("\t")
        if tab2 < 0:
            rights, p = rest, ""
        else:
            rights, p = rest[:tab2], rest[tab2 + 1 :]
        pairs.append((ident, rights))
    return pairs, ""


def _acl_kvlist(acl: str) -> KvList:
    """TAB form → ``%(id rights …)`` (see :func:`split_acl`)."""
    return KvList((to_bytes(ident), to_bytes(rights)) for ident, rights in split_acl(acl)[0])


def encode_dlist_value(entry: MailboxEntry, version: CyrusVersion = (3, 4, 0), *, mtime: int | None = None) -> bytes:
    """2.5–3.4 ``mboxlist_entry_cstring``: A I P S T V [C] [F] M, in that order.

    ``M`` is the entry's mtime (Cyrus writes the current time; pass ``mtime``
    to choose one, 0 in the entry means now).
    """
    kv = KvList()
    if entry.acl is not None:
        kv.append((b"A", _acl_kvlist(entry.acl)))
    if entry.uniqueid:
        kv.append((b"I", to_bytes(entry.uniqueid)))
    if entry.partition is not None:
        kv.append((b"P", to_bytes(entry.partition)))
    if entry.server is not None:
        kv.append((b"S", to_bytes(entry.server)))
    letters = entry.mbtype.letters_v1()
    if letters:
        kv.append((b"T", letters.encode()))
    if entry.uidvalidity:
        kv.append((b"V", entry.uidvalidity))
    if entry.createdmodseq and version >= (3, 2, 0):
        kv.append((b"C", entry.createdmodseq))
    if entry.foldermodseq and version >= (3, 0, 0):
        kv.append((b"F", entry.foldermodseq))
    kv.append((b"M", _mtime(entry, mtime)))
    return dlist.dumps(kv, literal_plus=version >= (3, 0, 0))


def _mtime(entry: MailboxEntry, mtime: int | None) -> int:
    if mtime is not None:
        return mtime
    return entry.mtime or int(time.time())


def encode_v2_records(
    entry: MailboxEntry, *, mtime: int | None = None, deletedprefix: str = DEFAULT_DELETEDPREFIX
) -> list[tuple[bytes, bytes]]:
    """3.6 ``mboxlist_entry_dlist``: the ``N`` record and, with a uniqueid, the ``I`` record."""
    dbname = to_bytes(intname_to_dbname(entry.name, deletedprefix=deletedprefix))

    def common(kv: KvList) -> None:
        if entry.partition is not None:
            kv.append((b"P", to_bytes(entry.partition)))
        if entry.server is not None:
            kv.append((b"S", to_bytes(entry.server)))
        if entry.uidvalidity:
            kv.append((b"V", entry.uidvalidity))
        if entry.createdmodseq:
            kv.append((b"C", entry.createdmodseq))
        if entry.foldermodseq:
            kv.append((b"F", entry.foldermodseq))
        kv.append((b"M", _mtime(entry, mtime)))
        if entry.acl is not None:
            kv.append((b"A", _acl_kvlist(entry.acl)))

    n = KvList([(b"T", entry.mbtype.letters().encode())])
    if entry.uniqueid:
        n.append((b"I", to_bytes(entry.uniqueid)))
    common(n)
    out = [(b"N" + dbname, dlist.dumps(n))]
    if entry.uniqueid:
        i = KvList([(b"T", entry.mbtype.letters().encode()), (b"N", dbname)])
        common(i)
        history: list[dlist.Value] = []
        for h in entry.history:
            item = KvList([(b"N", to_bytes(intname_to_dbname(h.name, deletedprefix=deletedprefix)))])
            for key, val in ((b"M", h.mtime), (b"V", h.uidvalidity), (b"C", h.createdmodseq), (b"F", h.foldermodseq)):
                if val:
                    item.append((key, val))
            item.append((b"T", h.mbtype.letters().encode()))
            if h.partition is not None:
                item.append((b"P", to_bytes(h.partition)))
            history.append(item)
        i.append((b"H", history))
        out.append((b"I" + to_bytes(entry.uniqueid), dlist.dumps(i)))
    return out


def build_records(
    entries: Iterable[MailboxEntry], version: CyrusVersion, *, mtime: int | None = None
) -> list[tuple[bytes, bytes]]:
    """All records a Cyrus ``version`` mailboxes.db holds for ``entries`` (unsorted).

    2.0–2.4 → legacy values; 2.5–3.4 → dlist values; 3.5+ → N and I records.
    The caller sorts them with the target's comparator (``cyrusdb.build``).
    """
    out: list[tuple[bytes, bytes]] = []
    for e in entries:
        if version >= (3, 5, 0):
            out.extend(encode_v2_records(e, mtime=mtime))
        elif version >= (2, 5, 0):
            out.append((to_bytes(e.name), encode_dlist_value(e, version, mtime=mtime)))
        else:
            out.append((to_bytes(e.name), encode_legacy_value(e)))
    return out


def iter_acl_pairs(acl: str) -> Iterator[tuple[str, str]]:
    """``id TAB rights TAB …`` pairs the way Cyrus splits them (trailing garbage dropped)."""
    yield from split_acl(acl)[0]
