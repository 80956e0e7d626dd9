"""Progress as data: engines report through this protocol, only the CLI draws bars.

Library code never imports tqdm; :mod:`spoolmig.cli.output` provides the
tqdm-backed implementation, shown on a terminal only.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What long-running work reports while it runs."""

    def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
        """Begin a phase of ``total`` units (None when unknown)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the current phase are done."""

    def note(self, message: str) -> None:
        """A remark that should not disturb the bar."""

    def finish(self) -> None:
        """The current phase is over."""


class NullProgress:
    """Reports nowhere: the default for library calls and non-terminals."""

    def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass
