"""Stage 1: list, stat and read the files of a local or SSH source.

paramiko is imported only in :mod:`spoolmig.transport.ssh`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spoolmig.transport.base import Entry, Fetched, Source

if TYPE_CHECKING:
    from spoolmig.config import SourceConfig

__all__ = ["Entry", "Fetched", "Source", "open_source"]


def open_source(cfg: SourceConfig) -> Source:
    """The Source a configuration's ``[source]`` names (local folder or ``ssh://``).

    The SSH module (and so paramiko) is imported only when an SSH source is
    asked for: local-only commands stay fast to start.
    """
    if cfg.url.scheme == "local":
        from spoolmig.transport.local import LocalSource

        return LocalSource(cfg.url.path)
    if cfg.url.scheme == "ssh":
        from spoolmig.transport.ssh import SshSource

        return SshSource.from_config(cfg)
    raise ValueError(f"unknown source scheme {cfg.url.scheme!r}")
