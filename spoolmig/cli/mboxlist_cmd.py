"""`spoolmig mboxlist FILE [--as VERSION]`: a mailboxes.db as some Cyrus version's `ctl_mboxlist -d` prints it.

Heavy modules are imported inside the run function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``mboxlist`` to the parser."""
    p = subparsers.add_parser(
        "mboxlist", parents=[common], help="print a mailboxes.db as `ctl_mboxlist -d` of a Cyrus version",
        description="Read a mailboxes.db of any Cyrus version (2.x legacy values, 2.5-3.4 dlist values, 3.6 "
        "N/I records; skiplist, twoskip or flat) and print the mailbox list the way `ctl_mboxlist -d` of "
        "VERSION prints it: tab-separated lines up to 3.4, the JSON document from 3.6 on. Without --as, "
        "the dialect of the oldest version that could have written FILE. Non-mailbox keys ($RACL, $RUNQ, "
        "3.6 reverse-ACL keys) are skipped and counted on stderr.",
        epilog="examples:\n  spoolmig mboxlist /var/lib/imap/mailboxes.db\n"
        "  spoolmig mboxlist mailboxes.db --as 2.3.9\n  spoolmig mboxlist mailboxes.db --as 3.6 > mailboxes.json\n"
        "  spoolmig mboxlist mailboxes.db --as 3.6 --undump   # input for ctl_mboxlist -u (with name history)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="the mailboxes.db (never modified)")
    p.add_argument("--as", dest="version", metavar="VERSION",
                   help="Cyrus version whose dialect to print: 2.2, 2.3.3, 2.3.9, 2.3 (=2.3.10+), 2.4, 2.5, "
                   "3.0, 3.2, 3.4, 3.6 ...")
    p.add_argument("-M", "--mbox", action="store_true",
                   help="read FILE in mailbox key order (a 2.3.8-3.4 server with improved_mboxlist_sort), "
                   "like cyr_dbtool -M")
    p.add_argument("--undump", action="store_true",
                   help="print input for VERSION's `ctl_mboxlist -u` (3.6+: JSON with name history)")
    p.add_argument("--legacy-lines", action="store_true",
                   help="with --undump for 3.6+: the `ctl_mboxlist -u -L` line form instead of JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spoolmig.errors import UsageError
    from spoolmig.formats import cyrusdb, mailboxes_db
    from spoolmig.write import dump

    if args.legacy_lines and not args.undump:
        raise UsageError("--legacy-lines needs --undump")
    target = mailboxes_db.parse_version(args.version) if args.version else None
    with cyrusdb.open_file(args.file) as db:
        listing = mailboxes_db.read(db.records(order="mbox" if args.mbox else None), file=args.file)
        backend = db.backend
    version = target or listing.versions[0]
    if args.undump:
        result = dump.render_undump(listing.entries, version, legacy_lines=args.legacy_lines)
    else:
        result = dump.render_dump(listing.entries, version)
    for warning in result.warnings:
        log.warning("%s", warning)
    if listing.skipped:
        log.warning("%s: skipped %d non-mailbox key(s), e.g. %r (%s)", args.file, len(listing.skipped),
                    listing.skipped[0].key[:40], listing.skipped[0].reason)
    if listing.id_only:
        log.warning("%s: %d uniqueid record(s) without a mailbox name record (not listed)", args.file,
                    len(listing.id_only))
    if args.json:
        from spoolmig.cli.output import emit_json

        emit_json(_summary(args.file, backend, listing, version, result))
    else:
        sys.stdout.buffer.write(result.text)
        sys.stdout.buffer.flush()
    return 1 if result.warnings else 0


def _summary(file: str, backend: str, listing: Any, version: tuple[int, int, int], result: Any) -> dict[str, Any]:
    from spoolmig.formats.mailboxes_db import to_str, version_text
    from spoolmig.write.dump import dialect_for

    return {
        "file": file,
        "backend": backend,
        "layout": listing.layout,
        "written_by": {"from": version_text(listing.versions[0]), "to": version_text(listing.versions[1]),
                       "evidence": listing.evidence},
        "dialect": dialect_for(version).name,
        "as": version_text(version),
        "mailboxes": len(listing.entries),
        "printed": result.count,
        "skipped": [{"key": to_str(s.key), "reason": s.reason} for s in listing.skipped],
        "warnings": result.warnings,
        "text": to_str(result.text),
    }
