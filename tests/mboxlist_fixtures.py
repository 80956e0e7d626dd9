"""Shared helpers for the mailboxes.db tests: fixture files and Cyrus's own output about them."""

from __future__ import annotations

import re
from pathlib import Path

from spoolmig.formats import cyrusdb, mailboxes_db

FIXTURES = Path(__file__).parent / "fixtures" / "mboxlist"
CASES = ["legacy-2.2", "legacy-2.3-mboxsort", "legacy-2.4", "legacy-extended", "dlist-2.5", "dlist-3.4", "v2-3.6",
         "v2-upgraded-3.4"]
NAME_KEYED = CASES[:6]


def db_path(case: str) -> Path:
    return FIXTURES / f"{case}.db"


def read(case: str) -> mailboxes_db.MailboxList:
    with cyrusdb.open_file(db_path(case)) as db:
        return mailboxes_db.read(db.records(), file=str(db_path(case)))


def shown_records(case: str) -> list[tuple[bytes, bytes]]:
    """What ``cyr_dbtool show`` printed (a literal's CRLF stays inside its value)."""
    text = (FIXTURES / f"{case}.show").read_bytes()
    return [tuple(line.split(b"\t", 1)) for line in re.split(rb"(?<!\r)\n", text) if line]  # type: ignore[misc]


def oracle(case: str, suffix: str = "ctl_mboxlist-d") -> bytes:
    return (FIXTURES / f"{case}.{suffix}").read_bytes()
