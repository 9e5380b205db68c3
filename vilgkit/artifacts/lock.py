"""The writer lock of a run directory: one process writes it (``fcntl.flock`` on ``.vilgkit.lock``,
with the holder's pid, host and command written into the file for the next one's error)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from vilgkit.artifacts.files import ArtifactError
from vilgkit.errors import VilgkitError


class RunDirBusyError(VilgkitError):
    """Another process holds the run directory's writer lock."""


class WriterLock:
    """The writer-lock methods of :class:`~vilgkit.artifacts.RunDir` (which supplies ``path`` and
    ``lock_path``); a process holds at most one lock per directory, released at exit by the OS."""

    path: Path
    lock_path: Path

    def lock(self, command: str = "vilgkit run") -> bool:
        """Take the run's writer lock for this process (until :meth:`unlock` or exit).

        Returns ``True`` when this call took it, ``False`` when this process already held it.

        Raises:
            RunDirBusyError: another process holds it (its pid, host and command are named).
            ArtifactError: the run directory cannot be written.
        """
        key = str(self.path.resolve())
        if key in _LOCKS:
            return False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ArtifactError(f"cannot write to the run directory {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirBusyError(
                f"{self.path} is being written by another vilgkit process ({holder}); wait for it to finish, "
                "or use another run_dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        _LOCKS[key] = fd
        return True

    def unlock(self) -> None:
        """Release the lock if this process holds it."""
        fd = _LOCKS.pop(str(self.path.resolve()), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def locked(self, command: str = "vilgkit run") -> Iterator[Self]:
        """Hold the lock for a block (re-entrant within a process)."""
        took = self.lock(command)
        try:
            yield self
        finally:
            if took:
                self.unlock()

    def holds_lock(self) -> bool:
        return str(self.path.resolve()) in _LOCKS


_LOCKS: dict[str, int] = {}


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, {info['command']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"
