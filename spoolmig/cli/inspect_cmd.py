"""`spoolmig inspect PATH`: a readable summary of any Cyrus file.

The kind of file is decided from its bytes first (magic numbers) and its name
second (``cyrus.index``, ``*.seen``, ``*.sub``, ``quota/…``); a mailbox
directory is summarised through its cyrus.header and cyrus.index. Damaged
input surfaces as the format layer's one-line FormatError. Heavy modules are
imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
from typing import Any

#: kinds --kind accepts (detection is the default)
KINDS = ("header", "index", "mailboxes", "seen", "sub", "quota", "db")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``inspect`` to the parser."""
    p = subparsers.add_parser(
        "inspect", parents=[common], help="human summary of any Cyrus file",
        description="Summarise a Cyrus file: database kind and record counts, mailboxes.db version and a "
        "sample, cyrus.header fields, cyrus.index header and flag counts, seen/subscription/quota contents. "
        "A mailbox directory shows its cyrus.header and cyrus.index. The file is never modified.",
        epilog="examples:\n  spoolmig inspect /var/spool/imap/b/user/bob/cyrus.index\n"
        "  spoolmig inspect --json /var/lib/imap/user/b/bob.seen\n  spoolmig inspect /var/lib/imap/mailboxes.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="a Cyrus file or a mailbox directory")
    p.add_argument("--kind", choices=KINDS, help="skip detection")
    p.add_argument("--records", type=int, default=10, metavar="N",
                   help="list at most N records / mailboxes / entries (default 10; 0 = counts only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spoolmig.cli.output import emit_json
    from spoolmig.errors import LocalFileError

    path = args.path
    if os.path.isdir(path):
        docs = []
        for name in ("cyrus.header", "cyrus.index"):
            full = os.path.join(path, name)
            if os.path.exists(full):
                docs.append(inspect_file(full, None, args.records))
        if not docs:
            raise LocalFileError(f"{path}: a directory without cyrus.header or cyrus.index")
        doc: dict[str, Any] = {"path": path, "kind": "mailbox directory", "files": docs}
    else:
        doc = inspect_file(path, args.kind, args.records)
    if args.json:
        emit_json(doc)
    else:
        print(render(doc), end="")
    return 0


# ------------------------------------------------------------------ detection


def _read(path: str) -> bytes:
    from spoolmig.errors import LocalFileError

    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise LocalFileError(f"{path}: {error.strerror}") from None


def detect_kind(path: str, head: bytes) -> str:
    """The kind of a Cyrus file from its first bytes and its name."""
    from spoolmig.formats import header, index

    base = os.path.basename(path)
    parts = os.path.normpath(path).split(os.sep)
    if header.looks_like_header(head):
        return "header"
    if head.startswith(b"\xa1\x02\x8b\x0d"):  # skiplist / twoskip
        if base.startswith("mailboxes.db"):
            return "mailboxes"
        if base.endswith(".seen") or base == "seen.db":
            return "seen"
        if base.endswith(".sub") or base == "sub.db":
            return "sub"
        return "db"  # refined from the first record in inspect_file
    if base in ("cyrus.index", "cyrus.expunge") or base.startswith(("cyrus.index.", "cyrus.expunge.")):
        return "index"
    if base.endswith(".sub") or base == "sub.db":
        return "sub"
    if "quota" in parts[:-1] and not base.endswith(".db"):
        return "quota"
    if base.endswith(".seen") or base == "seen.db":
        return "seen"
    if base.startswith("mailboxes.db"):
        return "mailboxes"
    if index.looks_like_index(head) and b"\t" not in head[:64]:
        return "index"
    if head[:1] == b"%" or head[:1].isdigit() and head.count(b"\n") <= 2 and b"\t" not in head:
        return "quota"
    if not head or _looks_flat(head):
        return "db"
    from spoolmig.errors import UnsupportedFormat

    raise UnsupportedFormat(path, 0, "not a Cyrus file spoolmig recognises (try --kind)")


def _looks_flat(head: bytes) -> bool:
    """``key TAB value LF`` lines (2.5+ escapes NUL, so none may appear)."""
    lines = head.split(b"\n")
    complete = lines[:-1] if len(head) >= 4096 else [line for line in lines if line]
    return b"\0" not in head and bool(complete) and all(b"\t" in line for line in complete)


_SEEN_VALUE = re.compile(rb"1 \d+ \d+ \d+ ")


def _refine_db(path: str, buf: bytes) -> str:
    """A database under an unusual name: its first record says what it holds."""
    from spoolmig.formats import cyrusdb

    for key, value in cyrusdb.records(buf, file=path):
        if _SEEN_VALUE.match(value):
            return "seen"
        if key.startswith((b"N", b"I")) and value.startswith(b"%(T ") or value.startswith(b"%(A %(") \
                or re.match(rb"\d+ \S+ ", value) and b"." in key:
            return "mailboxes"
        break
    return "db"


def inspect_file(path: str, kind: str | None, limit: int) -> dict[str, Any]:
    buf = _read(path)
    if kind is None:
        kind = detect_kind(path, buf[:4096])
        if kind == "db":
            kind = _refine_db(path, buf)
    summary = {
        "header": _header, "index": _index, "mailboxes": _mailboxes, "seen": _seen,
        "sub": _sub, "quota": _quota, "db": _db,
    }[kind](path, buf, limit)
    return {"path": path, "kind": kind, **summary}


# ------------------------------------------------------------------ per kind


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "backslashreplace")


def _when(t: int | None) -> str | None:
    if not t:
        return None
    try:
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return None


def _header(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    from spoolmig.formats import header

    h = header.parse(buf, file=path)
    return {"description": f"cyrus.header ({h.form} body)", "header": h.as_dict(),
            "file_crc": f"{header.file_crc(buf):08x}"}


def _index(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    from spoolmig.formats import index

    h = index.parse_header(buf, file=path)
    counts: dict[str, int] = {}
    user_flagged = bad_crc = 0
    listed = []
    first_uid = None
    for r in index.records(buf, file=path, header=h):
        first_uid = first_uid if first_uid is not None else r.uid
        for name in r.flag_names:
            counts[name] = counts.get(name, 0) + 1
        user_flagged += bool(r.user_flags)
        bad_crc += r.crc_ok is False
        if len(listed) < limit:
            listed.append({"uid": r.uid, "size": r.size, "internaldate": _when(r.internaldate),
                           "flags": r.flag_names, "user_flag_bits": r.user_flag_bits, "guid": r.guid_hex,
                           "modseq": r.modseq, "crc_ok": r.crc_ok})
    fields = h.as_dict()
    return {
        "description": f"cyrus.index version {h.minor_version} ({h.start_offset}-byte header, "
                       f"{h.record_size}-byte records)",
        "header": fields,
        "summary": {"records": h.num_records, "exists": h.exists, "first_uid": first_uid, "last_uid": h.last_uid,
                    "flag_counts": counts, "with_user_flags": user_flagged, "bad_record_crcs": bad_crc},
        "records": listed,
    }


def _open_db(path: str, buf: bytes) -> tuple[str, list[tuple[bytes, bytes]]]:
    from spoolmig.formats import cyrusdb

    backend = cyrusdb.detect(buf, file=path)
    return backend, list(cyrusdb.records(buf, file=path, backend=backend))


def _db(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    backend, recs = _open_db(path, buf)
    return {"description": f"{backend} database", "backend": backend, "count": len(recs),
            "records": [{"key": _text(k), "value": _text(v)} for k, v in recs[:limit]]}


def _mailboxes(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    backend, recs = _open_db(path, buf)
    try:
        from spoolmig.formats import mailboxes_db
    except ImportError:  # the mailboxes.db model is optional for this summary
        return {**_db(path, buf, limit), "description": f"mailboxes.db ({backend})"}
    mbl = mailboxes_db.read(recs, file=path)
    lo, hi = mbl.versions
    sample = [{"name": e.name, "type": e.mbtype.letters(), "partition": e.partition, "server": e.server,
               "acl": e.acl, "uniqueid": e.uniqueid, "uidvalidity": e.uidvalidity or None}
              for e in mbl.entries[:limit]]
    return {
        "description": f"mailboxes.db ({backend}, {mbl.layout} values)",
        "backend": backend, "records": len(recs), "layout": mbl.layout, "mailboxes": len(mbl.entries),
        "skipped_keys": len(mbl.skipped),
        "versions": [mailboxes_db.version_text(lo), mailboxes_db.version_text(hi)], "evidence": mbl.evidence,
        "sample": sample,
    }


def _seen(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    from spoolmig.formats import seen

    backend, recs = _open_db(path, buf)
    entries = []
    for key, value in recs[:limit]:
        v = seen.parse_value(value, file=path, key=key)
        entries.append({"uniqueid": _text(key), "lastread": _when(v.lastread), "lastuid": v.lastuid,
                        "lastchange": _when(v.lastchange), "seen": _text(v.seenuids)})
    for key, value in recs[limit:]:
        seen.parse_value(value, file=path, key=key)  # damaged values are errors even when not listed
    return {"description": f"seen database ({backend})", "backend": backend, "mailboxes": len(recs),
            "entries": entries}


def _sub(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    from spoolmig.formats import subs

    backend, recs = _open_db(path, buf)
    userid = _userid_from_path(path)
    s = subs.read(recs, userid=userid, file=path)
    return {"description": f"subscriptions ({backend}, version {s.version})", "backend": backend,
            "version": s.version, "count": len(s.names), "names": s.names[:limit]}


def _userid_from_path(path: str) -> str | None:
    """``…/user/b/bob.sub`` → bob; ``…/domain/e/example.com/user/b/bob.sub`` → bob@example.com."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    base = parts[-1]
    if not base.endswith(".sub"):
        return None
    user = base[: -len(".sub")]
    if len(parts) >= 6 and parts[-3] == "user" and parts[-6] == "domain":
        return f"{user}@{parts[-4]}"
    return user


def _quota(path: str, buf: bytes, limit: int) -> dict[str, Any]:
    from spoolmig.formats import quota

    q = quota.parse(buf, file=path)
    return {"description": f"quota file ({q.form} form)", "root": os.path.basename(path), **q.as_dict()}


# ------------------------------------------------------------------ text output


def render(doc: dict[str, Any], indent: str = "") -> str:
    """Plain text: one `name: value` line per field, nested blocks indented."""
    lines: list[str] = []
    if doc.get("kind") == "mailbox directory":
        lines.append(f"{doc['path']}: mailbox directory")
        return "\n".join(lines) + "\n" + "".join(render(d, "  ") for d in doc["files"])
    lines.append(f"{indent}{doc['path']}: {doc.get('description', doc['kind'])}")
    for key, value in doc.items():
        if key in ("path", "kind", "description"):
            continue
        _render_value(lines, key, value, indent + "  ")
    return "\n".join(lines) + "\n"


def _render_value(lines: list[str], key: str, value: Any, indent: str) -> None:
    if isinstance(value, dict):
        if not value:
            lines.append(f"{indent}{key}: (none)")
            return
        lines.append(f"{indent}{key}:")
        for k, v in value.items():
            _render_value(lines, str(k), v, indent + "  ")
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        lines.append(f"{indent}{key}: ({len(value)} shown)")
        for item in value:
            lines.append(indent + "  - " + ", ".join(f"{k}={_scalar(v)}" for k, v in item.items() if v is not None))
    elif isinstance(value, list):
        lines.append(f"{indent}{key}: " + (", ".join(_scalar(v) for v in value) if value else "(none)"))
    else:
        lines.append(f"{indent}{key}: {_scalar(value)}")


def _scalar(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v.replace("\t", "\\t").replace("\n", "\\n")
    if isinstance(v, list):
        return "[" + " ".join(_scalar(x) for x in v) + "]"
    return str(v)
