"""`spoolmig check`: connect to the source and say whether a migration can start.

The CLI does the I/O (one cheap listing per partition, mailboxes.db and a
sample of cyrus.index files); :mod:`spoolmig.model.survey` judges.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spoolmig.transport.base import Source

#: How many cyrus.index files are read to date the server.
INDEX_SAMPLE = 24
#: Indexes larger than this are not sampled (the header is all we need).
INDEX_SAMPLE_MAX_BYTES = 4 << 20

EPILOG = """\
what it looks at:
  the configdirectory, sievedir and every partition exist; mailboxes.db's
  backend and format (Berkeley DB is a blocker: dump it with the old server's
  ctl_mboxlist -d); the Cyrus version the files were written by (mailboxes.db
  values, a sample of cyrus.index versions) against [source] version; whether
  mailboxes sit where hashimapspool/fulldirhash/virtdomains say; 2.3
  cyrus.expunge files; whether Cyrus is running (fine for mirror passes).

exit status: 0 ready, 1 ready with warnings, 3 blockers found (the configuration
does not fit the source), 7/8 the source could not be reached or its host key
was refused.
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``check`` to the parser."""
    p = subparsers.add_parser(
        "check",
        parents=[common],
        help="connect to the source; detect version, layout and db kinds; list blockers",
        description="Connect to the source named in the configuration and check that a migration "
        "can start. Reads only: nothing is written anywhere.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run_check)


def _read_whole(source: Source, root: str, path: bytes) -> bytes | None:
    from spoolmig.transport.base import Fetched

    for item in source.fetch(root, [path]):
        if isinstance(item, Fetched):
            chunks = []
            while chunk := item.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
    return None


def _exists(source: Source, root: str) -> bool:
    from spoolmig.transport.base import Entry

    return any(isinstance(e, Entry) and e.kind == "d" for e in source.stat(root, [b""]))


def _partition_scan(source: Source, root: str, progress: object) -> tuple[set[str], list[tuple[int, int, bytes]], int]:
    """Mailbox dirs (holding a cyrus.header), cyrus.index (size, mtime, path), cyrus.expunge count."""
    dirs: set[str] = set()
    indexes: list[tuple[int, int, bytes]] = []
    expunge = 0
    patterns = [b"cyrus.header", b"cyrus.index", b"cyrus.expunge"]
    for entry in source.walk(root, only_dirs_and=patterns, prune=[b"stage."]):
        progress.advance()  # type: ignore[attr-defined]
        if entry.kind != "f":
            continue
        parent, _, base = entry.path.rpartition(b"/")
        if base == b"cyrus.header":
            dirs.add(parent.decode("utf-8", "surrogateescape"))
        elif base == b"cyrus.index":
            indexes.append((entry.size, entry.mtime_ns, entry.path))
        elif base == b"cyrus.expunge":
            expunge += 1
    return dirs, indexes, expunge


def _sample(indexes: list[tuple[int, int, bytes]]) -> Iterator[bytes]:
    """The smallest indexes (cheap) and the most recently written (newest version)."""
    usable = [i for i in indexes if 0 < i[0] <= INDEX_SAMPLE_MAX_BYTES]
    half = INDEX_SAMPLE // 2
    chosen = {i[2] for i in sorted(usable)[:half]}
    chosen |= {i[2] for i in sorted(usable, key=lambda i: -i[1])[:half]}
    return iter(sorted(chosen))


def run_check(args: argparse.Namespace) -> int:
    from spoolmig import config
    from spoolmig.cli.output import emit_json, make_progress
    from spoolmig.model import survey as judge
    from spoolmig.transport import open_source

    cfg = config.load(args.config)
    lay = cfg.source.layout
    progress = make_progress(args)
    source = open_source(cfg.source)
    try:
        report = judge.Survey(source.describe())
        report.add("info", "source", f"connected to {source.describe()}")
        processes = source.cyrus_processes()
        if processes:
            report.add("info", "cyrus", f"Cyrus is running ({len(processes)} processes): fine for mirror "
                       "passes; `mirror --final` will refuse until it is stopped")
        config_ok = _exists(source, lay.configdirectory)
        if not config_ok:
            report.add("blocker", "configdirectory", f"{lay.configdirectory} does not exist on the source")
        if not _exists(source, lay.sievedir):
            report.add("warning", "sievedir", f"{lay.sievedir} does not exist: no sieve scripts will be copied")
        data = _read_whole(source, lay.configdirectory, b"mailboxes.db") if config_ok else None
        entries = judge.judge_mailboxes_db(report, data, file=f"{lay.configdirectory}/mailboxes.db",
                                           partitions=lay.partitions)
        mailbox_dirs: dict[str, set[str]] = {}
        samples: dict[str, bytes] = {}
        expunge_files = 0
        for name, root in lay.partitions.items():
            if not _exists(source, root):
                report.add("blocker", f"partition {name}", f"{root} does not exist on the source")
                continue
            progress.start(f"listing partition {name}", unit="entries")
            dirs, indexes, expunge = _partition_scan(source, root, progress)
            progress.finish()
            mailbox_dirs[name] = dirs
            expunge_files += expunge
            report.add("info", f"partition {name}", f"{root}: {len(dirs)} mailbox directories")
            for path in _sample(indexes):
                content = _read_whole(source, root, path)
                if content is not None:
                    samples[f"{root}/{path.decode('utf-8', 'surrogateescape')}"] = content
        judge.judge_indexes(report, samples)
        if expunge_files:
            report.add("warning", "cyrus.expunge", f"{expunge_files} cyrus.expunge files (2.3 delayed "
                       "expunge): 2.4+ merges them into cyrus.index when a mailbox is opened")
        judge.judge_layout(report, entries, mailbox_dirs, hashimapspool=lay.hashimapspool,
                           fulldirhash=lay.fulldirhash, virtdomains=lay.virtdomains)
        judge.judge_configured_version(report, lay.version)
    finally:
        progress.finish()
        source.close()

    if args.json:
        emit_json({
            "source": report.source,
            "versions": [judge.version_text(report.versions[0]), judge.version_text(report.versions[1])],
            "evidence": report.evidence,
            "findings": [{"level": f.level, "subject": f.subject, "message": f.message}
                         for f in report.findings],
            "facts": {k: v for k, v in report.facts.items()},
        })
    elif not args.quiet or report.blockers:
        marks = {"blocker": "BLOCKER", "warning": "warning", "info": "ok"}
        for f in report.findings:
            if args.quiet and f.level != "blocker":
                continue
            print(f"{marks[f.level]:>8}  {f.subject}: {f.message}")
        verdict = ("not ready: fix the blockers above" if report.blockers
                   else "ready to mirror: run `spoolmig mirror`")
        print(f"\n{verdict}")
        sys.stdout.flush()
    if report.blockers:
        return 3
    return 1 if any(f.level == "warning" for f in report.findings) else 0
