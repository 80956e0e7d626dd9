"""Run Cyrus's own tools (Debian cyrus-common, 3.6) against a private imapd.conf.

Shared by the tests and by scripts/make-fixtures: the ground truth for every
format is what these tools print. They run as root when CYRUS_USER and
CYRUS_GROUP say so; a private configdirectory keeps them away from any real
Cyrus installation on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CYRUS_BIN = Path("/usr/lib/cyrus/bin")


def available() -> bool:
    """Are Cyrus's tools installed (scripts/setup installs them)?"""
    return (CYRUS_BIN / "cyr_dbtool").exists()


class CyrusTools:
    """A scratch Cyrus configuration under ``root`` and a runner for its tools."""

    def __init__(self, root: str | os.PathLike[str], **options: str) -> None:
        self.root = Path(root)
        self.configdir = self.root / "conf"
        self.spool = self.root / "spool"
        (self.configdir / "db").mkdir(parents=True, exist_ok=True)
        (self.configdir / "socket").mkdir(exist_ok=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        settings = {
            "configdirectory": str(self.configdir),
            "partition-default": str(self.spool),
            "syslog_prefix": "spoolmig-test",
        }
        settings.update(options)
        self.conf = self.root / "imapd.conf"
        self.conf.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
        self.env = dict(os.environ, CYRUS_USER="root", CYRUS_GROUP="root")

    def run(
        self, tool: str, *args: str | os.PathLike[str], input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``tool -C <our conf> args...``; raise with its stderr when it fails."""
        cmd = [str(CYRUS_BIN / tool), "-C", str(self.conf), *map(str, args)]
        result = subprocess.run(cmd, input=input, capture_output=True, env=self.env, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(map(str, args))} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def dbtool(
        self, file: str | os.PathLike[str], backend: str, action: str, *args: str, input: bytes | None = None,
        create: bool = False, check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """``cyr_dbtool FILE BACKEND ACTION`` (``-n`` creates a missing file)."""
        extra = ["-n"] if create else []
        return self.run("cyr_dbtool", file, backend, action, *args, *extra, input=input, check=check)

    def show(self, file: str | os.PathLike[str], backend: str) -> bytes:
        """What a freshly restarted Cyrus serves: ``cyr_dbtool show`` on a copy.

        Cyrus rewrites a skiplist it opens without a current skipstamp, so the
        tool reads a copy and the caller's file stays byte-identical.
        """
        copy = self.root / "show-copy.db"
        shutil.copyfile(file, copy)
        try:
            return self.dbtool(copy, backend, "show").stdout
        finally:
            copy.unlink(missing_ok=True)
