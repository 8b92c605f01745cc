"""An exclusive, crash-safe lock on a ledger file, so two batchsub processes never share one.

The lock is a ``fcntl.flock`` on a sidecar file ``{ledger}.lock`` holding the owner's pid. The
kernel drops a flock when its process dies, even on ``kill -9``, so a crash never leaves a
stale lock behind. The sidecar file itself is never removed: unlinking a lock file races with
another process that has just opened it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from batchsub.errors import LedgerError, LedgerLockedError


class LedgerLock:
    """A non-blocking exclusive lock on ``{ledger_path}.lock``, held until ``release()``."""

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self.path = ledger_path.with_name(ledger_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; LedgerLockedError if another process holds it, else LedgerError."""
        if self._fd is not None:
            return
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LedgerLockedError(
                    f"ledger {self.ledger_path} is in use by another batchsub process "
                    f"(pid {holder or 'unknown'}); wait for it to finish or use another --ledger"
                ) from None
            raise LedgerError(f"cannot lock ledger {self.ledger_path}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing the descriptor drops the flock too
            raise LedgerError(f"cannot write lock file {self.path}: {exc.strerror}") from exc
        self._fd = fd

    def release(self) -> None:
        """Drop the lock; a no-op when it is not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the pid is informative only; the flock is what counts
        finally:
            os.close(fd)

    def _open(self) -> int:
        directory = self.path.parent
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            reason = f"directory {directory} does not exist"
        except NotADirectoryError:
            reason = f"{directory} is not a directory"
        except PermissionError:
            reason = f"directory {directory} is not writable"
        except OSError as exc:
            reason = f"cannot create {self.path}: {exc.strerror}"
        raise LedgerError(f"cannot open ledger {self.ledger_path}: {reason}")


def _read_pid(fd: int) -> int | None:
    """The pid the lock holder wrote, or None if it cannot be read (yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
