"""An exclusive, crash-safe lock on a ledger file, so two batchsub processes never share one.

The lock is a ``fcntl.flock`` on the database file itself, so it is one lock per file however
the path is spelled: through a symlink, a symlinked directory, ``..``, a relative path, a hard
link or a bind mount all reach the same inode. The kernel drops a flock when its process dies,
even on ``kill -9``, so a crash never leaves a stale lock behind.

flock and the POSIX (``fcntl``) locks SQLite takes on the same file are independent on Linux,
so readers (``status``, ``report``) still read beside the writer. But closing *any* descriptor
of a file drops every POSIX lock the process holds on it: the locked descriptor stays open for
the ledger's whole life and is closed only after SQLite's connections.

The holder's pid is read from ``/proc/locks`` (by inode), else from the pid file
``{resolved path}.lock`` the holder writes; both are informative only.

A new database file is created here, mode 0600 whatever the umask, before SQLite opens it:
SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file, and the ledger holds
every request body. The mode of an existing file is left as its owner set it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from batchsub.errors import LedgerError, LedgerLockedError

FILE_MODE = 0o600  # the ledger holds request bodies, whose arguments may carry passwords


class LedgerLock:
    """A non-blocking exclusive flock on the ledger file, held until ``release()``.

    ``acquire()`` creates the file (empty, 0600) when it does not exist yet.
    """

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self.mode: int | None = None  # the file's permission bits, once acquired
        self.links = 1  # hard links to the file, once acquired
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The pid file: beside the file the path resolves to."""
        resolved = Path(os.path.realpath(self.ledger_path))
        return resolved.with_name(resolved.name + ".lock")

    def acquire(self) -> None:
        """Take the lock; LedgerLockedError if another process holds it, else LedgerError."""
        if self._fd is not None:
            return
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd, self.path)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LedgerLockedError(
                    f"ledger {self.ledger_path} is in use by another batchsub process "
                    f"(pid {holder or 'unknown'}); wait for it to finish or use another --ledger"
                ) from None
            raise LedgerError(f"cannot lock ledger {self.ledger_path}: {exc.strerror}") from exc
        self._fd = fd
        self._write_pid()

    def release(self) -> None:
        """Drop the lock; a no-op when it is not held. Call it after SQLite closed the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the flock too

    def _open(self) -> int:
        directory = self.ledger_path.parent
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block
        try:
            fd = os.open(self.ledger_path, flags, FILE_MODE)
        except FileNotFoundError:
            reason = f"directory {directory} does not exist"
        except NotADirectoryError:
            reason = f"{directory} is not a directory"
        except IsADirectoryError:
            reason = "it is a directory"
        except PermissionError:
            reason = f"directory {directory} is not writable, or the file is not"
        except OSError as exc:
            reason = f"cannot create it: {exc.strerror}"
        else:
            return self._check(fd)
        raise LedgerError(f"cannot open ledger {self.ledger_path}: {reason}")

    def _check(self, fd: int) -> int:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise LedgerError(f"cannot open ledger {self.ledger_path}: not a regular file")
            if info.st_size == 0:  # new (or empty): ours to create, whatever the umask said
                os.fchmod(fd, FILE_MODE)
                info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self.mode = stat.S_IMODE(info.st_mode)
        self.links = info.st_nlink
        return fd

    def _write_pid(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError:
            return  # the pid file is informative only; the flock is what counts
        try:
            os.fchmod(fd, FILE_MODE)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        finally:
            os.close(fd)


def _holder(fd: int, pid_file: Path) -> int | None:
    """The pid holding the flock on ``fd``'s file, or None if it cannot be told."""
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return _flock_owner(info.st_dev, info.st_ino) or _read_pid(pid_file)


def _flock_owner(dev: int, ino: int) -> int | None:
    """The pid of the exclusive flock on (dev, ino) in ``/proc/locks`` (Linux), or None."""
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 18400 fe:00:2146326 0 EOF" ("->" marks waiters)
                if fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"] and fields[5:6] == [wanted]:
                    return int(fields[4]) if fields[4].isdigit() and fields[4] != "0" else None
    except OSError:
        pass
    return None


def _read_pid(path: Path) -> int | None:
    """The pid the lock holder wrote, or None if it cannot be read (yet)."""
    try:
        text = path.read_bytes()[:32].decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
