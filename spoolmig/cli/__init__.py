"""The command line: argparse, exit codes, terminal output. No business logic.

Each command group lives in its own ``*_cmd.py`` module exposing
``register(subparsers, common)``; :func:`main` wires them together and is the
only place that turns exceptions into one-line messages and exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from spoolmig import __version__
from spoolmig.errors import EXIT_CODES, LocalFileError, SpoolmigError

from . import check_cmd, config_cmd, db_cmd, inspect_cmd, mboxlist_cmd, mirror_cmd

log = logging.getLogger("spoolmig")

#: Command groups in the order ``--help`` lists them.
COMMAND_MODULES = (config_cmd, check_cmd, mirror_cmd, db_cmd, mboxlist_cmd, inspect_cmd)

DESCRIPTION = """\
Move a Cyrus IMAP server (2.2-3.4) to a new machine at the filesystem level.

spoolmig mirrors the old server's spool and metadata over SSH in repeated
incremental passes while it stays in service, then converts the copy for the
new server, keeping UIDs, UIDVALIDITY, flags and seen state.

typical use:
  spoolmig init > migration.toml     write a commented configuration to edit
  spoolmig check                     connect and look at the source
  spoolmig mirror                    run again and again over days (cron-safe)
  spoolmig status                    pass history and forecast of the final pass
  spoolmig mirror --final            in the maintenance window, Cyrus stopped

stand-alone tools (no Cyrus installation needed):
  spoolmig db show FILE              print a skiplist/twoskip/flat db like cyr_dbtool
  spoolmig mboxlist FILE --as 2.3    mailboxes.db as ctl_mboxlist -d of a version
  spoolmig inspect PATH              summary of any Cyrus file
"""


def _epilog() -> str:
    rows = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    return "exit codes:\n" + rows


def common_options() -> argparse.ArgumentParser:
    """Options every command accepts (added to each subcommand's parser)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--config",
        metavar="FILE",
        default="migration.toml",
        help="migration configuration (default: ./migration.toml)",
    )
    group.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    group.add_argument(
        "-q", "--quiet", action="count", default=0, help="less output: no progress bars, errors only"
    )
    group.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeat for debug)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoolmig",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spoolmig {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for module in COMMAND_MODULES:
        module.register(subparsers, common)
    return parser


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("spoolmig: %(message)s"))
    root = logging.getLogger("spoolmig")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (see ``spoolmig --help``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except SpoolmigError as error:
        _report(str(error), error.hint)
        return error.exit_code
    except KeyboardInterrupt:
        _report("interrupted", None)
        return 130
    except BrokenPipeError:
        # stdout closed early (`spoolmig db show FILE | head`): not an error.
        _silence_stdout()
        return 0
    except OSError as error:
        # A local file problem no command translated: still one line, no traceback.
        wrapped = LocalFileError(_describe_oserror(error))
        _report(str(wrapped), None)
        return wrapped.exit_code
    except Exception as error:  # noqa: BLE001 - the one place that catches all
        if os.environ.get("SPOOLMIG_DEBUG"):
            raise
        _report(f"internal error: {type(error).__name__}: {error} (set SPOOLMIG_DEBUG=1 for details)", None)
        return 70


def _describe_oserror(error: OSError) -> str:
    if error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def _report(message: str, hint: str | None) -> None:
    line = message.replace("\n", "\\n")
    print(f"spoolmig: error: {line}", file=sys.stderr)
    if hint:
        print(f"spoolmig: hint: {hint}", file=sys.stderr)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
