"""What `spoolmig check` concludes about a source, from a small sample of its bytes.

Pure: the caller (the CLI) lists and reads the source and hands over what it
found; this module turns it into findings — blockers, warnings, facts — and
the range of Cyrus versions the evidence allows. Nothing here does I/O, so
the same judgement applies to a live source and to a replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from spoolmig.errors import FormatError, UnsupportedFormat
from spoolmig.formats import cyrusdb, index, mailboxes_db
from spoolmig.formats.mailboxes_db import CyrusVersion, version_text
from spoolmig.model import layout as layouts

Level = Literal["blocker", "warning", "info"]

#: cyrus.index minor version -> the Cyrus releases that write it (research §8.2).
INDEX_WRITERS: dict[int, tuple[CyrusVersion, CyrusVersion]] = {
    3: ((2, 0, 0), (2, 1, 99)),
    4: ((2, 2, 0), (2, 2, 0)),
    5: ((2, 2, 1), (2, 2, 1)),
    6: ((2, 2, 2), (2, 2, 13)),
    7: ((2, 3, 0), (2, 3, 3)),
    8: ((2, 3, 4), (2, 3, 6)),
    9: ((2, 3, 7), (2, 3, 9)),
    10: ((2, 3, 10), (2, 3, 18)),
    12: ((2, 4, 0), (2, 4, 99)),
    13: ((2, 5, 0), (3, 0, 99)),
    14: ((3, 1, 0), (3, 1, 99)),
    15: ((3, 1, 0), (3, 1, 99)),
    16: ((3, 2, 0), (3, 2, 99)),
    17: ((3, 4, 0), (3, 8, 99)),
    19: ((3, 10, 0), (3, 99, 0)),
}


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    message: str


@dataclass
class Survey:
    """The verdict on one source."""

    source: str
    findings: list[Finding] = field(default_factory=list)
    #: Oldest and newest Cyrus version consistent with the evidence.
    versions: tuple[CyrusVersion, CyrusVersion] = ((2, 0, 0), (3, 99, 0))
    evidence: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    def add(self, level: Level, subject: str, message: str) -> None:
        self.findings.append(Finding(level, subject, message))

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "blocker"]

    def narrow(self, lo: CyrusVersion, hi: CyrusVersion, why: str) -> None:
        """Intersect the version range with what one piece of evidence allows."""
        old_lo, old_hi = self.versions
        new = (max(old_lo, lo), min(old_hi, hi))
        if new[0] > new[1]:
            self.add("warning", "version", f"conflicting evidence: {why} does not fit "
                     f"{version_text(old_lo)} – {version_text(old_hi)}")
            return
        if new != self.versions:
            self.evidence.append(why)
        self.versions = new

    def version_text(self) -> str:
        lo, hi = self.versions
        return version_text(lo) if lo == hi else f"{version_text(lo)} – {version_text(hi)}"


def judge_mailboxes_db(
    survey: Survey, data: bytes | None, *, file: str, partitions: Iterable[str]
) -> list[mailboxes_db.MailboxEntry]:
    """Backend, format generation, size and partitions of the source's mailboxes.db.

    Returns the mailboxes it lists (empty when it cannot be read).
    """
    if data is None:
        survey.add("blocker", "mailboxes.db", f"{file} not found: is configdirectory right?")
        return []
    try:
        backend = cyrusdb.detect(data, file=file)
        listing = mailboxes_db.read(cyrusdb.records(data, file=file, backend=backend), file=file)
    except UnsupportedFormat as error:
        survey.add("blocker", "mailboxes.db", str(error) + (f" ({error.hint})" if error.hint else ""))
        return []
    except FormatError as error:
        survey.add("blocker", "mailboxes.db", f"damaged: {error}")
        return []
    survey.facts["mailboxes_db_backend"] = backend
    survey.facts["mailboxes"] = len(listing.entries)
    survey.add("info", "mailboxes.db", f"{backend}, {listing.layout} values, {len(listing.entries)} mailboxes")
    lo, hi = listing.versions
    survey.narrow(lo, hi, "mailboxes.db: " + ("; ".join(listing.evidence) or f"{listing.layout} values"))
    known = set(partitions)
    used: dict[str, int] = {}
    for entry in listing.entries:
        if entry.partition and not entry.mbtype.has("r"):
            used[entry.partition] = used.get(entry.partition, 0) + 1
    survey.facts["partitions_used"] = used
    for part, count in sorted(used.items()):
        if part not in known:
            survey.add("blocker", f"partition {part}",
                       f"{count} mailboxes live on partition {part!r}, which [source] partitions does not list")
    remote = sum(1 for e in listing.entries if e.mbtype.has("r"))
    if remote:
        survey.add("warning", "mailboxes.db", f"{remote} remote (murder) mailboxes: their mail is on another server")
    if listing.skipped:
        survey.add("info", "mailboxes.db", f"{len(listing.skipped)} non-mailbox keys ignored ($RACL/$RUNQ/...)")
    return listing.entries


def judge_indexes(survey: Survey, samples: Mapping[str, bytes]) -> None:
    """Index minor versions seen in a sample of cyrus.index files."""
    minors: dict[int, int] = {}
    for file, data in samples.items():
        try:
            header = index.parse_header(data, file=file)
        except FormatError as error:
            survey.add("warning", "cyrus.index", f"damaged: {error}")
            continue
        minors[header.minor_version] = minors.get(header.minor_version, 0) + 1
    if not minors:
        return
    survey.facts["index_versions"] = minors
    newest = max(minors)
    if newest in INDEX_WRITERS:
        # Servers keep old indexes until a mailbox is opened, so only the newest
        # version seen bounds the server from below.
        survey.narrow(INDEX_WRITERS[newest][0], (3, 99, 0), f"cyrus.index version {newest} seen")
    if set(minors) & {3, 4, 5}:
        survey.add("warning", "cyrus.index", "indexes of version 3-5 (Cyrus 2.0-2.2.1): Cyrus 3.x cannot "
                   "read them; reconstruct them on the old server or let a 2.3/2.4 server upgrade them")
    listed = ", ".join(f"v{m}: {n}" for m, n in sorted(minors.items()))
    survey.add("info", "cyrus.index", f"sampled index versions {listed}")


def judge_layout(survey: Survey, entries: Iterable[mailboxes_db.MailboxEntry],
                 mailbox_dirs: Mapping[str, set[str]], *, hashimapspool: bool, fulldirhash: bool,
                 virtdomains: bool) -> None:
    """Do the mailboxes of mailboxes.db sit where the configured layout puts them?

    ``mailbox_dirs`` maps a partition name to the relative directories that
    hold a cyrus.header on the source.
    """
    lo, _hi = survey.versions
    lay = layouts.Layout(hashimapspool=hashimapspool, fulldirhash=fulldirhash, virtdomains=virtdomains,
                         version=(lo[0], lo[1]))
    checked = found = 0
    missing: list[str] = []
    for entry in entries:
        if entry.partition not in mailbox_dirs or entry.mbtype.has("r") or entry.mbtype.has("z"):
            continue
        checked += 1
        if layouts.mailbox_dir(entry.name, lay) in mailbox_dirs[entry.partition]:
            found += 1
        elif len(missing) < 3:
            missing.append(entry.name)
    if not checked:
        return
    survey.facts["mailboxes_found_on_disk"] = found
    if found == checked:
        survey.add("info", "layout", f"all {checked} mailboxes found where the configured layout puts them")
    elif found == 0:
        survey.add("blocker", "layout", "no mailbox found where the configured layout puts it: check "
                   "hashimapspool, fulldirhash and virtdomains in [source] (e.g. " + missing[0] + ")")
    else:
        survey.add("warning", "layout", f"{checked - found} of {checked} mailboxes have no directory with a "
                   f"cyrus.header where expected (e.g. {', '.join(missing)})")
    on_disk = sum(len(d) for d in mailbox_dirs.values())
    if on_disk > found:
        survey.add("info", "layout", f"{on_disk - found} mailbox directories on disk that mailboxes.db does "
                   "not name where expected (offline or deleted mailboxes)")


def judge_configured_version(survey: Survey, configured: str) -> None:
    """Does ``[source] version`` agree with the evidence?"""
    if configured == "auto":
        survey.add("info", "version", f"detected Cyrus {survey.version_text()}")
        return
    wanted = mailboxes_db.parse_version(configured)
    lo, hi = survey.versions
    same_series = (lo[:2] <= wanted[:2] <= hi[:2])
    if same_series:
        survey.add("info", "version", f"configured {configured}; the files fit Cyrus {survey.version_text()}")
    else:
        survey.add("warning", "version", f"configured {configured}, but the files look like Cyrus "
                   f"{survey.version_text()} ({'; '.join(survey.evidence)})")
