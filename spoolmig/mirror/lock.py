"""The mirror lock: one pass at a time on one replica (``<mirror>/.spoolmig/lock``).

``flock`` is released by the kernel when the holder dies, so a pass killed
with -9 never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from spoolmig.errors import LockedError

LOCK_FILE = "lock"


class MirrorLock:
    """An exclusive, non-blocking lock on a replica."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise LockedError(f"{self.path}: another spoolmig pass holds the mirror lock (pid {holder})",
                              hint="wait for it to finish; a killed pass releases the lock by itself") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MirrorLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
