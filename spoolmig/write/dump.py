"""The mailbox list as each Cyrus version's ``ctl_mboxlist -d`` prints it, and ``-u`` input for a target.

Implements ``formats/dump.md``. Dialects (imap/ctl_mboxlist.c ``dump_cb`` of
each release):

==================  ==========================================================
versions            one line per mailbox (``acl`` = stored TAB form)
==================  ==========================================================
2.0 – 2.3.3         ``name TAB partition TAB acl``
2.3.4 – 2.3.9       ``name TAB mbtype SP partition TAB acl``
2.3.10 – 2.4.x      ``name TAB mbtype SP partition SP acl``
2.5.x               same, partition without server (``(null)`` when absent)
3.0 – 3.4           ``name TAB mbtype SP [server!]partition SP acl``;
                    3.2+ leave out intermediate (``i``) entries
3.6+                one JSON document (:func:`render_json`)
==================  ==========================================================

In 2.0–2.4 ``partition`` is the stored field, i.e. ``server!partition`` for
remote entries. ``mbtype`` is the 2.0–3.4 number. Lines come in the
database's order.

``-u`` input (:func:`render_undump`) is the dump dialect of the target,
which every version's ``ctl_mboxlist -u`` reads back; for 3.6+ it is the JSON
document with each entry's uniqueid (3.6 skips entries without one) and full
name history. :func:`parse_dump` reads any dialect back, which is how a 2.2
dump is turned into 2.3.4+ input without the digit-partition pitfall (2.3.4+
takes a leading digit in the partition column for an mbtype, so every line
we write carries an explicit mbtype).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from spoolmig.errors import FormatError
from spoolmig.formats.mailboxes_db import (
    CyrusVersion,
    HistoryItem,
    MailboxEntry,
    MbType,
    iter_acl_pairs,
    parse_version,
    to_bytes,
    to_str,
)

__all__ = ["Dialect", "DumpResult", "dialect_for", "parse_dump", "render_dump", "render_json", "render_undump"]


@dataclass(frozen=True)
class Dialect:
    """One ``ctl_mboxlist -d`` output format."""

    name: str
    json: bool = False
    #: mbtype column present
    mbtype: bool = True
    #: separator between partition and ACL
    acl_sep: str = " "
    #: ``server!`` printed before the partition (3.0+), or partition only (2.5)
    server: str = "field"  # "field" (2.x stored field), "none" (2.5), "prefix" (3.0+)
    #: intermediate entries left out (3.2+)
    skip_intermediate: bool = False
    #: 2.0-3.4 mbtype bits this version knows (mboxlist.h); dlist letters it lacks read as 0
    known_bits: int = 0x7FF


DIALECTS = {
    "2.2": Dialect("2.2", mbtype=False, acl_sep="\t", known_bits=0x0F),
    "2.3.4": Dialect("2.3.4", acl_sep="\t", known_bits=0x0F),
    "2.3.10": Dialect("2.3.10", known_bits=0x1F),
    "2.5": Dialect("2.5", server="none", known_bits=0x7F),
    "3.0": Dialect("3.0", server="prefix", known_bits=0xFF),
    "3.2": Dialect("3.2", server="prefix", skip_intermediate=True),
    "3.6": Dialect("3.6", json=True, skip_intermediate=True),
}


def dialect_for(version: CyrusVersion | str) -> Dialect:
    """The dump dialect of a Cyrus version (``"2.3"`` means 2.3.10+)."""
    v = parse_version(version) if isinstance(version, str) else version
    if v < (2, 3, 4):
        return DIALECTS["2.2"]
    if v < (2, 3, 10):
        return DIALECTS["2.3.4"]
    if v < (2, 5, 0):
        return DIALECTS["2.3.10"]
    if v < (3, 0, 0):
        return DIALECTS["2.5"]
    if v < (3, 2, 0):
        return DIALECTS["3.0"]
    if v < (3, 5, 0):
        return DIALECTS["3.2"]
    return DIALECTS["3.6"]


@dataclass
class DumpResult:
    """Rendered text plus what could not be said in the dialect."""

    text: bytes
    warnings: list[str] = field(default_factory=list)
    #: entries printed
    count: int = 0


# ---------------------------------------------------------------- rendering


def render_dump(entries: Iterable[MailboxEntry], version: CyrusVersion | str) -> DumpResult:
    """What ``ctl_mboxlist -d`` of ``version`` prints for these entries (in their order)."""
    dialect = dialect_for(version)
    entries = list(entries)
    if dialect.json:
        return render_json(entries, for_undump=False)
    out: list[bytes] = []
    warnings: list[str] = []
    for e in entries:
        if dialect.skip_intermediate and e.mbtype.has("i"):
            continue
        out.append(_line(e, dialect, warnings))
    return DumpResult(b"".join(out), warnings, len(out))


def _number(e: MailboxEntry, d: Dialect | None = None) -> int:
    """The mbtype a version prints: a stored 2.x number as is; type letters it does not know read as 0."""
    if e.raw_mbtype is not None:
        return e.raw_mbtype
    n = e.mbtype.legacy_number()
    return n & d.known_bits if d is not None else n


def _line(e: MailboxEntry, d: Dialect, warnings: list[str]) -> bytes:
    if e.raw_mbtype is None and e.mbtype.legacy_number() & ~d.known_bits:
        warnings.append(f"mailbox {e.name!r}: type {e.mbtype.letters()!r} does not exist in {d.name}; "
                        f"shown as {_number(e, d)}")
    if "\t" in e.name or "\n" in e.name:
        warnings.append(f"mailbox {e.name!r}: its name holds a TAB or newline; the line is ambiguous")
    if d.server == "field":
        partition = f"{e.server}!{e.partition or ''}" if e.server else (e.partition or "")
    elif d.server == "none":
        partition = e.partition if e.partition is not None else "(null)"
    else:
        partition = (f"{e.server}!" if e.server else "") + (e.partition if e.partition is not None else "(null)")
    head = f"{e.name}\t"
    if d.mbtype:
        head += f"{_number(e, d)} "
    return to_bytes(f"{head}{partition}{d.acl_sep}{e.acl or ''}\n")


def render_json(entries: Sequence[MailboxEntry], *, for_undump: bool) -> DumpResult:
    """3.6 ``ctl_mboxlist -d`` JSON, byte for byte as jansson prints it.

    With ``for_undump`` the document is ``-u`` input: name histories are
    included (3.6.1's dump prints ``[]``: it reads only ``N`` records) and
    entries without a uniqueid are reported, since ``-u`` skips them.
    """
    items: list[str] = []
    warnings: list[str] = []
    for e in entries:
        if e.mbtype.has("i") and not for_undump:
            continue
        if for_undump and not e.uniqueid:
            warnings.append(f"mailbox {e.name!r}: no uniqueid; 3.6 ctl_mboxlist -u skips it")
        if _jstr(e.name) is None:
            warnings.append(f"mailbox {e.name!r}: name is not UTF-8; 3.6 prints an empty item for it (invalid JSON)")
        items.append(_json_entry(e, for_undump))
    body = ",\n".join(items)
    return DumpResult(("{\n" + body + "\n}\n").encode("utf-8", "surrogateescape"), warnings, len(items))


def _mbtype36(e: MailboxEntry) -> MbType:
    """The type 3.6 shows: entries from name-keyed databases get ``l`` (legacy dirs) on upgrade."""
    if e.source_format in ("legacy", "extended", "dlist"):
        return e.mbtype.with_flags(add="l")
    return e.mbtype


def _json_entry(e: MailboxEntry, with_history: bool) -> str:
    obj: list[tuple[str, str]] = []

    def put(key: str, value: str | None) -> None:
        text = _jstr(value)
        if text is not None:
            obj.append((_jkey(key), text))

    put("name", e.name)
    put("mtime", str(e.mtime))
    put("uidvalidity", str(e.uidvalidity))
    put("createdmodseq", str(e.createdmodseq))
    put("foldermodseq", str(e.foldermodseq))
    put("mbtype", _mbtype36(e).letters())
    put("partition", e.partition)
    put("server", e.server)
    obj.append(('"acl"', _jobject(_acl_object(e.acl))))
    put("uniqueid", e.uniqueid)
    put("legacy_specialuse", e.legacy_specialuse)
    history = [_json_history(h) for h in e.history] if with_history else []
    obj.append(('"name_history"', "[" + ", ".join(history) + "]"))
    name = _jstr(e.name)
    if name is None:
        return ""  # jansson refuses the key: Cyrus prints nothing for this entry
    return f"{name}: {_jobject(obj)}"


def _json_history(h: HistoryItem) -> str:
    obj = []
    for key, value in (
        ("name", h.name), ("mtime", str(h.mtime)), ("uidvalidity", str(h.uidvalidity)),
        ("createdmodseq", str(h.createdmodseq)), ("foldermodseq", str(h.foldermodseq)),
        ("mbtype", h.mbtype.letters()), ("partition", h.partition),
    ):
        text = _jstr(value)
        if text is not None:
            obj.append((_jkey(key), text))
    return _jobject(obj)


def _acl_object(acl: str | None) -> list[tuple[str, str]]:
    """``acl_to_json``: later duplicates replace the value in the first one's place."""
    found: dict[str, str] = {}
    for ident, rights in iter_acl_pairs(acl or ""):
        k, v = _jstr(ident), _jstr(rights)
        if k is not None and v is not None:
            found[k] = v
    return list(found.items())


def _jkey(key: str) -> str:
    return f'"{key}"'


def _jobject(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


#: Strings jansson prints verbatim between quotes (no escapes, no surrogates from undecodable bytes).
_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f\ud800-\udfff]*')
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jstr(value: str | None) -> str | None:
    """A JSON string as jansson dumps it (``\\u%04X`` for controls, UTF-8 kept); None for NULL or bad UTF-8."""
    if value is None:
        return None
    if _JSON_PLAIN.fullmatch(value):
        return '"' + value + '"'
    try:
        to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = []
    for ch in value:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ------------------------------------------------------------------ -u input


def render_undump(
    entries: Iterable[MailboxEntry], version: CyrusVersion | str, *, legacy_lines: bool = False
) -> DumpResult:
    """Input for ``ctl_mboxlist -u`` of ``version`` that recreates ``entries``.

    Args:
        entries: the target's mailboxes.
        version: the target Cyrus version.
        legacy_lines: for 3.6+, the ``-u -L`` line form instead of JSON.
    """
    entries = list(entries)
    dialect = dialect_for(version)
    if dialect.json:
        if legacy_lines:
            return _render_legacy36(entries)
        return render_json(entries, for_undump=True)
    warnings: list[str] = []
    out = []
    for e in entries:
        if "\t" in e.name or "\n" in e.name or "\r" in (e.acl or "") or "\n" in (e.acl or ""):
            warnings.append(f"mailbox {e.name!r}: a TAB/newline in the name or ACL cannot be undumped")
            continue
        if not dialect.mbtype and _number(e):
            warnings.append(f"mailbox {e.name!r}: type {_number(e)} is lost ({dialect.name} -u stores 0)")
        if " " in (e.partition or "") or "\t" in (e.partition or ""):
            warnings.append(f"mailbox {e.name!r}: partition {e.partition!r} contains a blank")
        out.append(_line(e, dialect, warnings))
    return DumpResult(b"".join(out), warnings, len(out))


def _render_legacy36(entries: list[MailboxEntry]) -> DumpResult:
    """3.6 ``-u -L``: ``name TAB n36 SP [server!]partition SP acl>uniqueid mtime uidvalidity foldermodseq createdmodseq``."""
    out = []
    warnings: list[str] = []
    for e in entries:
        mb = _mbtype36(e)
        partition = (f"{e.server}!" if e.server else "") + (e.partition or "")
        acl = e.acl or ""
        if ">" in acl:
            warnings.append(f"mailbox {e.name!r}: '>' in the ACL cannot be written as a -L line")
            continue
        head = f"{e.name}\t{mb.number_v2()} {partition} "
        tail = ""
        if e.uniqueid:
            tail = f">{e.uniqueid} {e.mtime} {e.uidvalidity} {e.foldermodseq} {e.createdmodseq}"
            if e.legacy_specialuse:
                tail += f" {e.legacy_specialuse}"
        else:
            warnings.append(f"mailbox {e.name!r}: no uniqueid; reconstruct must supply one")
        out.append(to_bytes(head + acl + tail + "\n"))
    return DumpResult(b"".join(out), warnings, len(out))


# ------------------------------------------------------------------ reading


def parse_dump(text: bytes, version: CyrusVersion | str, *, file: str = "<dump>") -> list[MailboxEntry]:
    """Read ``ctl_mboxlist -d`` output of ``version`` back into entries.

    Lines are read the way that version's own ``-u`` reads them, except
    that a 2.0–2.3.3 dump is read as what it is (name, partition, ACL), never
    with the 2.3.4+ "leading digit is an mbtype" heuristic.

    Raises:
        FormatError: a line lacks a field (names the line number).
    """
    dialect = dialect_for(version)
    if dialect.json:
        return _parse_json(text, file)
    entries = []
    for lineno, raw in enumerate(text.split(b"\n"), 1):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, tab, rest = line.partition(b"\t")
        if not tab:
            raise FormatError(file, None, f"line {lineno}: no TAB after the mailbox name")
        number = 0
        if dialect.mbtype:
            digits = len(rest) - len(rest.lstrip(b"0123456789"))
            if not digits:
                raise FormatError(file, None, f"line {lineno}: no mailbox type after the name")
            number = int(rest[:digits])
            rest = rest[digits:]
            if rest[:1] == b" ":
                rest = rest[1:]
        seps = b"\t" if dialect.acl_sep == "\t" else b" \t"
        cut = next((i for i, c in enumerate(rest) if c in seps), -1)
        if cut < 0:
            raise FormatError(file, None, f"line {lineno}: no ACL separator after the partition")
        partition, acl = to_str(rest[:cut]), to_str(rest[cut + 1 :])
        server = None
        if "!" in partition and dialect.server in ("field", "prefix"):
            server, partition = partition.split("!", 1)
        entries.append(MailboxEntry(
            name=to_str(name), mbtype=MbType.from_legacy_number(number), partition=partition,
            server=server, acl=acl, raw_mbtype=number if dialect.mbtype else None,
        ))
    return entries


def _parse_json(text: bytes, file: str) -> list[MailboxEntry]:
    try:
        doc = json.loads(text.decode("utf-8", "surrogateescape"))
    except ValueError as error:
        raise FormatError(file, None, f"not a ctl_mboxlist JSON document: {error}") from None
    if not isinstance(doc, dict):
        raise FormatError(file, None, "not a ctl_mboxlist JSON document: top level is not an object")
    entries = []
    for name, obj in doc.items():
        if not isinstance(obj, dict):
            raise FormatError(file, None, f"mailbox {name!r}: entry is not an object")

        def num(key: str, o: dict = obj) -> int:
            v = o.get(key, "0")
            if not isinstance(v, str) or not v.isdigit():
                raise FormatError(file, None, f"mailbox {name!r}: {key} is not a decimal string")
            return int(v)

        try:
            history = tuple(
                HistoryItem(
                    name=h.get("name", ""), mtime=num("mtime", h), uidvalidity=num("uidvalidity", h),
                    createdmodseq=num("createdmodseq", h), foldermodseq=num("foldermodseq", h),
                    mbtype=MbType.from_letters(h.get("mbtype", "e")), partition=h.get("partition"),
                )
                for h in obj.get("name_history", [])
            )
            mbtype = MbType.from_letters(obj.get("mbtype", "e"))
        except (ValueError, AttributeError) as error:
            raise FormatError(file, None, f"mailbox {name!r}: {error}") from None
        acl = "".join(f"{k}\t{v}\t" for k, v in obj.get("acl", {}).items())
        entries.append(MailboxEntry(
            name=name, mbtype=mbtype, partition=obj.get("partition"), server=obj.get("server"), acl=acl,
            uniqueid=obj.get("uniqueid"), uidvalidity=num("uidvalidity"), mtime=num("mtime"),
            createdmodseq=num("createdmodseq"), foldermodseq=num("foldermodseq"),
            legacy_specialuse=obj.get("legacy_specialuse"), history=history, source_format="v2",
        ))
    return entries
