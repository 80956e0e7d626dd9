"""``spoolmig mirror`` and ``spoolmig status``: run a pass, show the history."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

MIRROR_DESCRIPTION = """\
Copy the source's spool, sieve scripts and the configdirectory files a
migration needs into the replica (mirror.path), file for file with sizes,
mtimes and modes. Run it again and again while the old server is live: each
pass lists only the mailbox directories whose mtime changed and stats only
the cyrus.* files (message files never change), walks the configdirectory
and sievedir for the files changed since the last clean pass, then fetches
what is new, re-fetches what changed and deletes what is gone
(mirror.delete).

A big fetch (a first copy: 20,000 files or 2 GiB and more) also runs in a
helper process per additional CPU core (up to 3), each with its own SSH
connection to the source.

A pass can be killed at any moment (kill -9, lost connection, full disk): the
next one completes the work. Files that change while they are copied are
kept and copied again on the next pass (exit status 1 says so).

In the maintenance window, with Cyrus stopped on the source, run
`spoolmig mirror --final`: it refuses while Cyrus runs or the source still
changes, compares every file, re-copies every cyrus.* and database file,
and ends with "replica equals source: N files, M bytes" or the differences.
"""

MIRROR_EPILOG = """\
examples:
  spoolmig mirror                      incremental pass (cron: add -q)
  spoolmig mirror --dry-run            what would be fetched and deleted
  spoolmig mirror --full               trust nothing: list and compare everything
  spoolmig mirror --final --checksum   maintenance window; also compare sha256
  spoolmig status                      history, churn and the final pass forecast

exit status: 0 done, 1 done with warnings (files changed during the pass),
7 connection lost, 9 another pass is running, 10 source not quiet (--final),
11 replica or state problem, 13 --final found differences.
"""

STATUS_DESCRIPTION = """\
Show the recorded passes (when, how long, what was new, changed and deleted),
the churn rate of the source (new and changed files and bytes per hour), and
a forecast of how long `spoolmig mirror --final` will take, from what the
passes measured: the time of a whole listing, the usual delta between passes
plus all metadata files, at the transfer rate passes achieved. Reads the
state only; safe to run while a pass runs.
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``mirror`` and ``status`` to the parser."""
    p = subparsers.add_parser(
        "mirror", parents=[common], help="copy the source into the replica (incremental, resumable)",
        description=MIRROR_DESCRIPTION, epilog=MIRROR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--final", action="store_true",
                   help="maintenance-window pass: refuse unless the source is quiet, re-copy all metadata, "
                        "verify the replica equals the source")
    p.add_argument("--full", action="store_true",
                   help="trust nothing: list every file on both sides instead of only changed directories")
    p.add_argument("--checksum", action="store_true",
                   help="with --final or --full: also compare sha256 of every file (reads all data twice)")
    p.add_argument("--dry-run", action="store_true",
                   help="report what would be fetched and deleted; change nothing, not even the state")
    p.add_argument("--jobs", type=int, metavar="N", default=None,
                   help="mirror partitions over N parallel connections (default: mirror.jobs, 1); "
                        "with N > 1 a big fetch gets no helper processes")
    p.add_argument("--quiet-wait", type=float, metavar="SECONDS", default=2.0,
                   help="--final: seconds between the two listings that must agree (default 2)")
    p.set_defaults(func=run_mirror)

    s = subparsers.add_parser(
        "status", parents=[common], help="pass history, churn rate and the final pass forecast",
        description=STATUS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--quiet-wait", type=float, metavar="SECONDS", default=2.0,
                   help="the --quiet-wait the final pass will use (part of the forecast)")
    s.set_defaults(func=run_status)


def run_mirror(args: argparse.Namespace) -> int:
    from spoolmig import config
    from spoolmig.cli.output import emit_json, make_progress
    from spoolmig.errors import UsageError
    from spoolmig.mirror.engine import Options, run_pass
    from spoolmig.transport import open_source

    if args.checksum and not (args.final or args.full):
        raise UsageError("--checksum needs --final or --full (it compares every file)")
    if args.final and args.full:
        raise UsageError("--final already compares everything; drop --full")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    cfg = config.load(args.config)
    options = Options(full=args.full, final=args.final, checksum=args.checksum, dry_run=args.dry_run,
                      jobs=args.jobs or cfg.mirror.jobs, quiet_wait=args.quiet_wait,
                      helpers=min(4, os.cpu_count() or 1))
    report = run_pass(cfg, lambda: open_source(cfg.source), options, make_progress(args))
    code = report.exit_code()
    if args.json:
        emit_json(report.to_dict())
    else:
        _print_report(report, quiet=args.quiet > 0)
    return code


def _interval(seconds: float) -> str:
    """A gap between passes in the unit a person thinks in."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _print_report(report: Any, *, quiet: bool) -> None:
    f = report.figures
    for line in report.warnings:
        print(f"spoolmig: warning: {line}", file=sys.stderr)
    if quiet:  # cron: silent on success, warnings (stderr) and differences only
        if report.mode == "final" and not report.dry_run and not report.statement:
            for line in report.differences:
                print(f"spoolmig: difference: {line}", file=sys.stderr)
        return
    out = sys.stdout
    verb = "would fetch" if report.dry_run else "fetched"
    print(f"{report.mode} pass{' (dry run)' if report.dry_run else ''} from {report.source}"
          f" in {report.duration:.1f} s", file=out)
    print(f"  listed {int(f['entries_listed'])} entries, re-listed {int(f['dirs_relisted'])} of"
          f" {int(f['dirs_total'])} directories ({f['list_seconds']:.1f} s)", file=out)
    print(f"  {verb}: {int(f['files_new'])} new ({_size(f['bytes_new'])}), {int(f['files_changed'])} changed"
          f" ({_size(f['bytes_changed'])})" + (f", {int(f['files_recopied'])} metadata re-copied"
                                                f" ({_size(f['bytes_recopied'])})" if f["files_recopied"] else ""),
          file=out)
    deleted = "would delete" if report.dry_run else "deleted"
    print(f"  {deleted}: {int(f['files_deleted'])} ({_size(f['bytes_deleted'])})"
          + (f"; {int(f['files_kept'])} gone from the source kept (mirror.delete = false)" if f["files_kept"] else ""),
          file=out)
    if f["files_linked"]:
        print(f"  {int(f['files_linked'])} files are hard links on the source: linked in the replica, not fetched",
              file=out)
    if f["files_vanished"]:
        print(f"  {int(f['files_vanished'])} files vanished from the source before they were copied", file=out)
    if f["checksum_mismatches"]:
        print(f"  {int(f['checksum_mismatches'])} files had a different sha256 and were copied again", file=out)
    if report.dry_run:
        for line in report.planned:
            print(f"  {line}", file=out)
    else:
        print(f"  replica: {int(f['replica_files'])} files, {_size(f['replica_bytes'])}", file=out)
    if report.mode == "final" and not report.dry_run:
        if report.statement:
            print(report.statement, file=out)
        else:
            print(f"replica differs from source ({report.differences_total} differences):", file=out)
            for line in report.differences:
                print(f"  {line}", file=out)
            if report.differences_total > len(report.differences):
                print(f"  ... and {report.differences_total - len(report.differences)} more", file=out)


def run_status(args: argparse.Namespace) -> int:
    from spoolmig import config
    from spoolmig.cli.output import emit_json
    from spoolmig.mirror.status import read_status

    cfg = config.load(args.config)
    status = read_status(cfg.mirror.path, quiet_wait=args.quiet_wait)
    if args.json:
        emit_json(status.to_dict())
        return 0
    if not status.passes:
        print(f"no pass recorded in {cfg.mirror.path} yet; run `spoolmig mirror`")
        return 0
    print(f"replica {cfg.mirror.path}: {status.replica['files']} files, {_size(status.replica['bytes'])}"
          f" ({_size(status.replica['metadata_bytes'])} metadata)")
    print()
    print(f"{'pass':>4}  {'started (UTC)':<20} {'mode':<11} {'outcome':<17} {'time':>8}"
          f" {'new':>8} {'changed':>8} {'deleted':>8} {'fetched':>10}")
    for p in status.passes:
        duration = f"{p['duration_seconds']:.1f}s" if p["duration_seconds"] is not None else "-"
        print(f"{p['id']:>4}  {p['started']:<20} {p['mode']:<11} {p['outcome']:<17} {duration:>8}"
              f" {p['files_new']:>8} {p['files_changed']:>8} {p['files_deleted']:>8} {_size(p['bytes_fetched']):>10}")
    print()
    churn = status.churn
    if churn:
        n = churn["intervals"]
        print(f"churn: {churn['files_per_hour']:.0f} new/changed files per hour,"
              f" {_size(churn['bytes_per_hour'])} per hour (over {n} interval{'s' if n != 1 else ''}"
              f" between passes, typically {_interval(churn['typical_interval_seconds'])})")
    else:
        print("churn: needs two finished passes")
    fc = status.forecast
    if fc and fc["seconds"] is not None:
        print(f"forecast for `spoolmig mirror --final`: about {fc['seconds']:.0f} s"
              f" (listing {fc['listing_seconds']:.1f} s, {_size(fc['transfer_bytes'])} to copy in"
              f" {fc['transfer_seconds']:.1f} s at {_size(fc['transfer_rate_bytes_per_second'])}/s,"
              f" verification {fc['verify_seconds']:.1f} s, quiet check {fc['quiet_check_seconds']:.1f} s)")
    else:
        print("forecast: needs a pass that copied data (to measure the transfer rate)")
    return 0
