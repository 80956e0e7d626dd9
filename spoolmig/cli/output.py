"""Terminal output for commands: tqdm progress (on a terminal only) and JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from spoolmig.progress import NullProgress, Progress


class TqdmProgress:
    """:class:`~spoolmig.progress.Progress` drawn with tqdm on stderr."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, label: str, total: int | None = None, unit: str = "it") -> None:
        from tqdm import tqdm

        self.finish()
        scale = unit == "B"
        self._bar = tqdm(
            total=total, desc=label, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
            leave=False, file=sys.stderr, dynamic_ncols=True,
        )

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(args: Any) -> Progress:
    """tqdm bars when stderr is a terminal and the user did not ask for quiet."""
    if getattr(args, "quiet", 0) or not sys.stderr.isatty():
        return NullProgress()
    return TqdmProgress()


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    json.dump(document, sys.stdout, indent=2, sort_keys=False, ensure_ascii=False)
    sys.stdout.write("\n")
