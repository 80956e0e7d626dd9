"""One exception hierarchy for the whole tool; every error owns its exit code.

Only :func:`spoolmig.cli.main` catches these broadly: it prints ``str(error)``
as one line on stderr (plus the hint, if any) and exits with ``exit_code``.
Library code raises them and never prints.

Exit codes (also shown by ``spoolmig --help``):

====  =======================================================================
code  meaning
====  =======================================================================
0     success
1     finished, with warnings (files changed during a pass, records skipped)
2     bad command line or usage
3     bad configuration file
4     damaged or unreadable Cyrus file (names file, offset, problem)
5     a format spoolmig cannot read (Berkeley DB, unknown file)
6     local file missing or not accessible
7     connection to the source failed or was lost
8     SSH host key unknown or changed (refused, never auto-accepted)
9     another pass holds the mirror lock
10    the source is not quiet (``--final`` refused)
11    the replica or state is inconsistent
12    a conversion conflict (two mailboxes map to one name, ...)
13    verification found differences
130   interrupted (Ctrl-C)
====  =======================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNINGS = 1


class SpoolmigError(Exception):
    """Base of every error spoolmig reports to a person."""

    exit_code = 2
    #: A short suggestion of what to do next, printed after the message.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(SpoolmigError):
    """The command line asks for something impossible."""

    exit_code = 2


class ConfigError(SpoolmigError):
    """The configuration file is missing, malformed or inconsistent."""

    exit_code = 3


class FormatError(SpoolmigError):
    """A Cyrus file is damaged: the message names the file, offset and problem.

    ``offset`` is the absolute byte offset in the file where the problem was
    found (None when the problem is not tied to one place).
    """

    exit_code = 4

    def __init__(
        self,
        file: str,
        offset: int | None,
        problem: str,
        *,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.offset = offset
        self.problem = problem
        where = f"{file}: " if offset is None else f"{file}: offset {offset} (0x{offset:x}): "
        super().__init__(where + problem, hint=hint)


class UnsupportedFormat(FormatError):
    """A file in a format spoolmig does not read (e.g. Berkeley DB)."""

    exit_code = 5


class LocalFileError(SpoolmigError):
    """A local file cannot be opened or read."""

    exit_code = 6


class TransportError(SpoolmigError):
    """The source could not be reached or the connection was lost."""

    exit_code = 7


class HostKeyError(TransportError):
    """The source's SSH host key is unknown or changed; it is never auto-accepted."""

    exit_code = 8


class LockedError(SpoolmigError):
    """Another spoolmig pass holds the mirror lock."""

    exit_code = 9


class SourceNotQuiet(SpoolmigError):
    """``--final`` refused: Cyrus still runs or the source is still changing."""

    exit_code = 10


class MirrorError(SpoolmigError):
    """The replica or its state is inconsistent or cannot be written."""

    exit_code = 11


class PlanError(SpoolmigError):
    """A conversion conflict found before anything is written."""

    exit_code = 12


class VerifyError(SpoolmigError):
    """Verification found differences."""

    exit_code = 13


#: The table printed by ``spoolmig --help``: (code, meaning).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "finished with warnings"),
    (UsageError.exit_code, "bad command line"),
    (ConfigError.exit_code, "bad configuration file"),
    (FormatError.exit_code, "damaged or unreadable Cyrus file"),
    (UnsupportedFormat.exit_code, "unsupported format (e.g. Berkeley DB)"),
    (LocalFileError.exit_code, "local file missing or not accessible"),
    (TransportError.exit_code, "connection to the source failed"),
    (HostKeyError.exit_code, "SSH host key unknown or changed"),
    (LockedError.exit_code, "another pass holds the mirror lock"),
    (SourceNotQuiet.exit_code, "source not quiet (--final refused)"),
    (MirrorError.exit_code, "replica or state inconsistent"),
    (PlanError.exit_code, "conversion conflict"),
    (VerifyError.exit_code, "verification found differences"),
    (130, "interrupted"),
)
