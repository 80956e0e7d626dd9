"""`spoolmig init`: print a commented configuration to start from."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``init`` to the parser."""
    p = subparsers.add_parser(
        "init",
        parents=[common],
        help="print a commented configuration template",
        description="Print a commented migration.toml to stdout; edit it, then run `spoolmig check`.",
        epilog="example: spoolmig init > migration.toml",
    )
    p.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    from spoolmig import config

    sys.stdout.write(config.template())
    return 0
