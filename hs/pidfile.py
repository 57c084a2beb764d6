"""Synapse's `pid_file`: the running process's PID in a file, for init scripts and monitoring.

The file is locked (flock) for as long as the process runs, so a second process started on the same
file refuses to start, while a file left behind by a killed process (whose lock died with it) is
simply taken over. A clean exit removes it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class PidFileInUse(Exception):
    """Another running process holds the PID file."""


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the file and write our PID into it; raises PidFileInUse if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise PidFileInUse(f"pid_file {self.path} is held by running process {holder or '?'}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the file (while still holding the lock, so no other process's file is removed)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
