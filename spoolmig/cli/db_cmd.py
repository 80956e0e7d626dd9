"""`spoolmig db show|check|recover`: Cyrus databases without a Cyrus installation.

Heavy modules are imported inside the run functions: ``db show`` is measured
against ``cyr_dbtool`` and its start-up time counts.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

BACKENDS = ("skiplist", "twoskip", "flat")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``db show``, ``db check`` and ``db recover`` to the parser."""
    db = subparsers.add_parser(
        "db", help="show, check or recover a Cyrus database (skiplist, twoskip, flat)",
        description="Read Cyrus's key-value databases (mailboxes.db, .seen, .sub, annotations, ...) the way "
        "a freshly restarted Cyrus serves them. The backend is detected from the file.",
    )
    sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    show = sub.add_parser(
        "show", parents=[common], help="print the records like `cyr_dbtool FILE <backend> show`",
        description="Print every committed record as `key TAB value LF`, byte for byte what\n"
        "`cyr_dbtool FILE <backend> show [PREFIX]` prints after a restart (uncommitted\n"
        "transactions rolled back). --json prints one object per record instead, with\n"
        "key_b64/value_b64 and, when printable UTF-8, key/value as text.",
        epilog="examples:\n  spoolmig db show /var/lib/imap/mailboxes.db\n  spoolmig db show mailboxes.db user.bob"
        "\n  spoolmig db show --json bob.seen",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", metavar="FILE", help="the database file (never modified)")
    show.add_argument("prefix", metavar="PREFIX", nargs="?", help="only keys starting with PREFIX")
    _order_options(show)
    show.set_defaults(func=run_show)

    check = sub.add_parser(
        "check", parents=[common], help="verify the structure; exit 0 only when sound",
        description="Verify the structure (header, record lengths, CRCs, pointers, key order, commits). "
        "Prints one line per problem with its offset and exits 4 when there is any.",
    )
    check.add_argument("file", metavar="FILE", help="the database file (never modified)")
    check.add_argument("--backend", choices=BACKENDS, help="skip detection")
    check.set_defaults(func=run_check)

    recover = sub.add_parser(
        "recover", parents=[common], help="salvage the intact committed records into a fresh database",
        description="Read every intact committed record of a damaged database, report on stderr what could "
        "not be read and where, and write a fresh, valid database to OUT (exit 1 when something was lost).",
        epilog="exit status: 0 nothing lost, 1 records or transactions could not be read (listed)\n"
        "example: spoolmig db recover mailboxes.db mailboxes.recovered.db --backend twoskip",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recover.add_argument("file", metavar="FILE", help="the damaged database (never modified)")
    recover.add_argument("out", metavar="OUT", help="where to write the recovered database")
    recover.add_argument("--backend", choices=BACKENDS, help="backend of OUT (default: that of FILE)")
    recover.add_argument("--from", dest="from_backend", choices=BACKENDS, help="backend of FILE (default: detect)")
    recover.add_argument("-M", "--mbox", action="store_true",
                         help="mailbox key order (improved_mboxlist_sort), like cyr_dbtool -M")
    recover.set_defaults(func=run_recover)


def _order_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, help="skip detection (like cyr_dbtool's backend argument)")
    p.add_argument("-M", "--mbox", action="store_true",
                   help="open with the mailbox key order (improved_mboxlist_sort), like cyr_dbtool -M")


def run_show(args: argparse.Namespace) -> int:
    from spoolmig.formats import cyrusdb

    prefix = os.fsencode(args.prefix) if args.prefix else b""
    out = sys.stdout.buffer
    with cyrusdb.open_file(args.file, backend=args.backend) as db:
        order = "mbox" if args.mbox else cyrusdb.default_order(db.backend)
        items = db.records(order=order)
        if prefix:
            items = _with_prefix(items, prefix)
        if args.json:
            _show_json(items, out)
            return 0
        chunk: list[bytes] = []
        size = 0
        for key, value in items:
            chunk += (key, b"\t", value, b"\n")
            size += len(key) + len(value)
            if size > 1 << 18:
                out.write(b"".join(chunk))
                chunk.clear()
                size = 0
        out.write(b"".join(chunk))
    out.flush()
    return 0


def _with_prefix(items: Any, prefix: bytes) -> Any:
    """Records whose key starts with ``prefix``: one contiguous run, as Cyrus's foreach stops after it."""
    seen = False
    for key, value in items:
        if key.startswith(prefix):
            seen = True
            yield key, value
        elif seen:
            return


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(ch.isprintable() or ch in "\t\n\r" for ch in text) else None


def _show_json(items: Any, out: Any) -> None:
    import base64
    import json

    for key, value in items:
        doc: dict[str, str] = {"key_b64": base64.b64encode(key).decode(), "value_b64": base64.b64encode(value).decode()}
        for name, data in (("key", key), ("value", value)):
            text = _text(data)
            if text is not None:
                doc[name] = text
        out.write(json.dumps(doc, ensure_ascii=False).encode() + b"\n")


def _where(file: str, offset: int | None) -> str:
    return f"{file}: " if offset is None else f"{file}: offset {offset} (0x{offset:x}): "


def run_check(args: argparse.Namespace) -> int:
    from spoolmig.errors import FormatError
    from spoolmig.formats import cyrusdb

    with cyrusdb.open_file(args.file, backend=args.backend) as db:
        report = cyrusdb.check(db.buf, file=db.file, backend=db.backend)
        backend = db.backend
    if args.json:
        from spoolmig.cli.output import emit_json

        emit_json({
            "file": args.file, "backend": backend, "sound": report.sound, "records": report.records,
            "problems": [{"offset": o, "problem": p} for o, p in report.problems],
            "notes": [{"offset": o, "note": p} for o, p in report.notes],
        })
    else:
        for offset, problem in report.problems:
            print(_where(args.file, offset) + problem)
        if report.sound:
            print(f"{args.file}: ok: {backend}, {report.records} records")
        if args.verbose or report.sound:
            for offset, note in report.notes:
                print("note: " + _where(args.file, offset) + note)
    return 0 if report.sound else FormatError.exit_code


def run_recover(args: argparse.Namespace) -> int:
    from spoolmig.errors import EXIT_WARNINGS, UsageError
    from spoolmig.fileio import atomic_write
    from spoolmig.formats import cyrusdb

    if os.path.realpath(args.out) == os.path.realpath(args.file) or (
        os.path.exists(args.out) and os.path.samefile(args.out, args.file)
    ):
        raise UsageError(f"{args.out}: refusing to overwrite the file being recovered")
    with cyrusdb.mapped(args.file) as buf:
        source = args.from_backend or (cyrusdb.guess_backend(buf, file=args.file) if len(buf) else "flat")
        target = args.backend or source
        items, report = cyrusdb.salvage(buf, file=args.file, backend=source,
                                        order="mbox" if args.mbox else None)
    # keep the order the file was written in (a server with improved_mboxlist_sort reads it that way)
    order = "mbox" if args.mbox or report.order == "mbox" else cyrusdb.default_order(target)
    if order != "mbox" and target != "flat":
        sk = cyrusdb.sort_key(order)
        items.sort(key=lambda kv: sk(kv[0]))
    atomic_write(args.out, cyrusdb.build(target, items, order=order))
    for offset, problem in report.problems:
        print("spoolmig: " + _where(args.file, offset) + problem, file=sys.stderr)
    if not args.quiet:
        for offset, note in report.notes:
            print("spoolmig: note: " + _where(args.file, offset) + note, file=sys.stderr)
    summary = (f"recovered {len(items)} records from {args.file} ({source}) into {args.out} ({target})"
               + (f"; {len(report.problems)} problems, see above" if report.problems else ""))
    if args.json:
        from spoolmig.cli.output import emit_json

        emit_json({"file": args.file, "out": args.out, "backend": target, "records": len(items),
                   "problems": [{"offset": o, "problem": p} for o, p in report.problems],
                   "notes": [{"offset": o, "note": p} for o, p in report.notes]})
    elif not args.quiet or report.problems:
        print("spoolmig: " + summary, file=sys.stderr)
    return EXIT_WARNINGS if report.problems else 0
