"""Quota files: one file per quota root under ``<configdir>/quota/`` (quotalegacy db).

Implements formats/seen-sub-quota.md §3. Authority: lib/cyrusdb_quotalegacy.c
(file ⇄ value: ``myfetch``/``mystore``, 2.2.13 and 3.6.1) and imap/quota_db.c
(``quota_parseval``, ``quota_write`` 2.5.17/3.6.1). Two contents exist:

* ``legacy`` (2.0–2.4): ``used LF limit LF`` — bytes used, limit in KiB,
  −1 = unlimited. (2.5+ also parses ``used limit [extra] RES used limit …``.)
* ``dlist`` (2.5+): ``%(S (used [limit]) M (…) AS (…) NF (…) [SCAN %(…)] [MODSEQ n]) LF``;
  a missing limit means unlimited.

An empty file means "no data". Parsing works on the file's bytes; the file
name (the quota root) and its path come from :mod:`spoolmig.model.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spoolmig.errors import FormatError
from spoolmig.formats import dlist

__all__ = ["Quota", "RESOURCES", "parse", "build", "UNLIMITED"]

#: quota_db_names (3.6.1) and what they count.
RESOURCES = {"S": "STORAGE", "M": "MESSAGE", "AS": "X-ANNOTATION-STORAGE", "NF": "X-NUM-FOLDERS"}
UNLIMITED = -1


@dataclass
class Quota:
    """Usage and limits per resource key (``S``, ``M``, ``AS``, ``NF``); limit None = unlimited."""

    form: Literal["legacy", "dlist", "empty"]
    used: dict[str, int] = field(default_factory=dict)
    limit: dict[str, int | None] = field(default_factory=dict)
    modseq: int | None = None
    #: the parsed dlist, for a byte-exact rebuild of an unchanged quota
    raw: bytes | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "form": self.form,
            "resources": {name: {"used": self.used.get(k, 0), "limit": self.limit.get(k)}
                          for k, name in RESOURCES.items() if k in self.used or k in self.limit},
            "modseq": self.modseq,
        }


def parse(buf: bytes, *, file: str = "quota") -> Quota:
    """Read a quota file as quotalegacy + quota_parseval do."""
    if not buf:
        return Quota(form="empty")
    if not buf.endswith(b"\n"):
        raise FormatError(file, len(buf), "quota file does not end in a line feed (Cyrus: I/O error)")
    body = buf[:-1]
    if body[:1] == b"%":
        return _parse_dlist(body, file, buf)
    text = body.replace(b"\n", b" ", 1)
    fields = text.split()
    q = Quota(form="legacy", raw=buf)
    res = "S"
    i = 0
    while True:
        if i + 2 > len(fields):
            raise FormatError(file, 0, f"quota file: expected 'used limit', found {body[:40]!r}")
        try:
            used, limit = int(fields[i]), int(fields[i + 1])
        except ValueError:
            raise FormatError(file, 0, f"quota file: non-numeric usage or limit in {body[:40]!r}") from None
        q.used[res] = used
        q.limit[res] = None if limit < 0 else limit
        i += 2
        if i < len(fields) and fields[i].lstrip(b"-").isdigit():
            i += 1  # leftover 'extra' usage of an interrupted quota -f
        if i == len(fields):
            return q
        name = fields[i].decode("ascii", "replace").upper()
        if name not in RESOURCES:
            raise FormatError(file, 0, f"quota file: unknown resource {name!r}")
        res = name
        i += 1


def _parse_dlist(body: bytes, file: str, buf: bytes) -> Quota:
    value = dlist.loads(body, file=file)
    if not isinstance(value, dlist.KvList):
        raise FormatError(file, 0, "quota dlist is not a %(...) list")
    q = Quota(form="dlist", raw=buf)
    for key in RESOURCES:
        item = value.get(key)
        if item is None:
            continue
        if not isinstance(item, list) or isinstance(item, dlist.KvList):
            raise FormatError(file, 0, f"quota resource {key} is not a (used limit) list")
        nums = [_num(v, file, key) for v in item[:2]]
        if nums:
            q.used[key] = nums[0]
        q.limit[key] = nums[1] if len(nums) > 1 else None
    if "MODSEQ" in value:
        q.modseq = _num(value.get("MODSEQ"), file, "MODSEQ")
    return q


def _num(v: object, file: str, what: str) -> int:
    if not isinstance(v, bytes) or not v.isdigit():
        raise FormatError(file, 0, f"quota {what}: {v!r} is not a number")
    return int(v)


def build(q: Quota, *, form: Literal["legacy", "dlist"] | None = None) -> bytes:
    """The file content; an unchanged parsed quota gives back its bytes.

    ``legacy`` can hold only STORAGE (what 2.0–2.4 know).
    """
    form = form or ("dlist" if q.form == "empty" else q.form)
    if q.raw is not None and form == q.form and parse(q.raw) == q:
        return q.raw
    if form == "legacy":
        extra = set(q.used) | {k for k, v in q.limit.items() if v is not None}
        if extra - {"S"}:
            raise ValueError(f"the legacy quota form holds STORAGE only, not {sorted(extra - {'S'})}")
        limit = q.limit.get("S")
        return b"%d\n%d\n" % (q.used.get("S", 0), UNLIMITED if limit is None else limit)
    kv = dlist.KvList()
    for key in RESOURCES:
        item: list[dlist.Value] = [q.used.get(key, 0)]
        if q.limit.get(key) is not None:
            item.append(q.limit[key])
        kv.append((key.encode(), item))
    if q.modseq is not None:
        kv.append((b"MODSEQ", q.modseq))
    return dlist.dumps(kv) + b"\n"
