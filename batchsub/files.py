"""Writing a whole file: atomically when it is a regular file, as-is when it is a device.

Every file batchsub writes in one piece goes through ``atomic_file``: a temporary file beside
the target (mode 0600), fsync'ed, then renamed over it, so a reader never sees half of it.

A path the user names (``--report``, ``report --output``) goes through ``open_output``, which
first finds what the path leads to. ``-`` is standard output. A symlink is followed and its
final target replaced, so the link stays a link. A character device, a FIFO or anything that
is not a regular file (``/dev/stdout``, ``/dev/null``, a named pipe) is opened and written in
place: renaming over it would replace the device node itself. A path through ``/proc`` (where
``/dev/stdout`` leads, ``/proc/self/fd/1``) is written in place too: its "target" is an open
file of this process, and our own standard output is written through ``sys.stdout``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from batchsub.errors import OutputError, one_line

STDOUT = Path("-")
_MAX_LINKS = 40  # as the kernel's limit: a longer chain is a loop
_PROC = "/proc/"


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``target`` (a regular file, or nothing yet) once complete.

    Raises OSError; the temporary file is removed when anything fails.
    """
    folder, name = os.path.split(os.fspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomically(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` as the whole of ``target``, atomically (raises OSError)."""
    with atomic_file(target) as out:
        out.write(data)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a named path leads: the file to replace, or a file to write in place."""

    path: str  # the final target (symlinks followed), or the path as named when in place
    in_place: bool


def _resolve(named: Path) -> _Target:
    """Follow the symlinks of ``named`` one by one (its folders' too) to what it names."""
    path = os.path.abspath(named)
    for _ in range(_MAX_LINKS):
        folder = os.path.realpath(os.path.dirname(path))
        path = os.path.join(folder, os.path.basename(path))
        if (folder + "/").startswith(_PROC):
            return _Target(os.fspath(named), in_place=True)
        try:
            link = os.readlink(path)
        except OSError:  # not a symlink (or nothing there): the end of the chain
            break
        path = os.path.join(folder, link)  # an absolute link replaces the folder
    else:
        raise OSError(40, "Too many levels of symbolic links")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return _Target(path, in_place=False)  # created
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory")
    return _Target(path, in_place=not stat.S_ISREG(mode))


def check_output(named: Path, flag: str) -> None:
    """Fail now, in one line, if ``named`` surely cannot be written at the end.

    The target's folder must exist, the target must not be a folder, and a file must be
    creatable beside it (that catches a read-only folder even for root, who passes access()).
    """
    if named == STDOUT:
        return
    try:
        target = _resolve(named)
        if not target.in_place:
            folder = os.path.dirname(target.path)
            if not os.path.isdir(folder):
                raise OutputError(f"{flag} {named}: directory {folder} does not exist")
            fd, probe = tempfile.mkstemp(prefix=".batchsub-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{flag} {named}: cannot write it: {one_line(exc)}") from None


@contextlib.contextmanager
def open_output(named: Path, flag: str) -> Iterator[IO[bytes]]:
    """A binary stream whose content becomes ``named`` (see the module docstring).

    OSError becomes OutputError naming ``flag`` and the path; a closed standard output
    (BrokenPipeError) is left to the caller.
    """
    try:
        target = None if named == STDOUT else _resolve(named)
        with _stream(named, target) as out:
            yield out
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"{flag} {named}: cannot write it: {one_line(exc)}") from None


def is_stdout(named: Path | None) -> bool:
    """True when writing ``named`` writes this process's standard output."""
    if named is None:
        return False
    if named == STDOUT:
        return True
    try:
        return _resolve(named).in_place and _same_file(os.stat(named), sys.stdout)
    except (OSError, ValueError):
        return False


def _same_file(info: os.stat_result, stream: IO[str]) -> bool:
    mine = os.fstat(stream.fileno())
    return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)


@contextlib.contextmanager
def _stream(named: Path, target: _Target | None) -> Iterator[IO[bytes]]:
    if target is None or (target.in_place and is_stdout(named)):
        sys.stdout.flush()  # what was printed before comes first
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    elif target.in_place:
        # O_APPEND: a file reached through /proc (2>log, then /dev/stderr) is added to.
        fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as out:
            yield out
    else:
        with atomic_file(target.path) as out:
            yield out


@contextlib.contextmanager
def text_output(named: Path | None, flag: str) -> Iterator[IO[str]]:
    """UTF-8 text to ``named`` as ``open_output`` writes it, or to stdout when None."""
    with open_output(STDOUT if named is None else named, flag) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="", write_through=True)
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # the stream is open_output's to close (stdout: never)


@contextlib.contextmanager
def stdout_may_close() -> Iterator[None]:
    """A reader that stops early (``batchsub report | head``) is not an error."""
    try:
        yield
    except BrokenPipeError:
        # Python's documented idiom: point stdout at devnull so the flush at exit is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
