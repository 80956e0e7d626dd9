"""What one pass did, as data: counted by the engine, rendered by the CLI."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from spoolmig.mirror.state import PASS_FIGURES, PASS_TIMES

#: Warnings and differences kept verbatim in a report (the rest is counted).
MAX_LINES = 50


def show_path(tree: str, path: bytes) -> str:
    """A replica-relative path for messages (undecodable bytes escaped, newlines visible)."""
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return f"{tree}/{text}" if text else tree


@dataclass
class PassReport:
    """Figures of one pass (see :data:`spoolmig.mirror.state.PASS_FIGURES`)."""

    mode: str
    dry_run: bool = False
    pass_id: int | None = None
    source: str = ""
    figures: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PASS_FIGURES + PASS_TIMES, 0))
    warnings: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    #: --dry-run: a sample of what the pass would do ("fetch (new): partition-default/...").
    planned: list[str] = field(default_factory=list)
    differences_total: int = 0
    #: --final: the verified statement (None when not verified).
    statement: str | None = None
    duration: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                self.figures[name] += value

    def warn(self, message: str, *, count: str | None = None) -> None:
        """Record a warning; ``count`` names the figure it also increments."""
        with self._lock:
            if count:
                self.figures[count] += 1
            if len(self.warnings) < MAX_LINES:
                self.warnings.append(message)
            elif len(self.warnings) == MAX_LINES:
                self.warnings.append("(more warnings not shown)")

    def plan(self, message: str) -> None:
        with self._lock:
            self.planned.append(message)

    def differ(self, message: str) -> None:
        with self._lock:
            self.differences_total += 1
            if len(self.differences) < MAX_LINES:
                self.differences.append(message)

    @property
    def has_warnings(self) -> bool:
        f = self.figures
        return bool(self.warnings or f["files_changed_during"] or f["errors"])

    def exit_code(self) -> int:
        if self.mode == "final" and not self.dry_run and self.statement is None:
            return 13
        return 1 if self.has_warnings else 0

    def to_dict(self) -> dict[str, Any]:
        figures = {k: (round(v, 3) if k in PASS_TIMES else int(v)) for k, v in self.figures.items()}
        return {
            "pass": self.pass_id, "mode": self.mode, "dry_run": self.dry_run, "source": self.source,
            "duration_seconds": round(self.duration, 3), **figures,
            "warnings": self.warnings, "differences": self.differences, "planned": self.planned,
            "differences_total": self.differences_total, "statement": self.statement,
            "exit_code": self.exit_code(),
        }
