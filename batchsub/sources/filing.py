"""The drop folder's files: which names it reads, when a file has settled (stopped
changing), and moves that never overwrite a file already there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batchsub.manifest import MANIFEST_SUFFIXES

IGNORED_ENDINGS = (".tmp", ".part", ".swp", "~", ".error.json")


def is_manifest_name(name: str) -> bool:
    """True for a name the drop folder reads: a manifest suffix, not hidden, not partial."""
    if name.startswith(".") or name.endswith(IGNORED_ENDINGS):
        return False
    return os.path.splitext(name)[1].lower() in MANIFEST_SUFFIXES


Signature = tuple[int, int]  # (size, mtime in ns)


@dataclass(slots=True)
class _Seen:
    signature: Signature
    since: float  # clock time the file was first seen with this signature


class SettleTracker:
    """Decides when a file has stopped changing: the same size and mtime for ``settle_time``.

    Fed by scans (``observe``) with the clock time of the scan, so tests drive it with any time.
    """

    def __init__(self, settle_time: float) -> None:
        self.settle_time = settle_time
        self._seen: dict[str, _Seen] = {}

    def observe(self, name: str, signature: Signature, now: float) -> bool:
        """Record what a scan saw of ``name``; True when it has been unchanged long enough."""
        seen = self._seen.get(name)
        if seen is None or seen.signature != signature:
            seen = self._seen[name] = _Seen(signature, now)
        return now - seen.since >= self.settle_time

    def retain(self, names: Iterable[str]) -> None:
        """Forget files that are gone (a scan no longer lists them)."""
        keep = set(names)
        for name in [n for n in self._seen if n not in keep]:
            del self._seen[name]

    def forget(self, name: str) -> None:
        """Forget one file (claimed): a new file of that name starts its settle time afresh."""
        self._seen.pop(name, None)

    def next_due(self) -> float | None:
        """The earliest clock time at which a file not yet settled could be, or None."""
        return min((s.since + self.settle_time for s in self._seen.values()), default=None)


def signature_of(entry: os.DirEntry[str]) -> Signature | None:
    """(size, mtime_ns) of an entry in DIR with a manifest's name, None for anything else.

    Not only regular files: a dangling symlink, a symlink loop or a FIFO is claimed too, and
    reading it says what is wrong (it is filed under failed/), rather than it lying there
    unexplained. A directory, or a symlink to one, is not a manifest.
    """
    if not is_manifest_name(entry.name):
        return None
    try:
        if entry.is_dir():
            return None
    except OSError:
        pass  # a symlink loop: claimed, and reported when read
    try:
        stat = entry.stat()
    except OSError:
        try:
            stat = entry.stat(follow_symlinks=False)  # the link itself: it may still settle
        except OSError:
            return None  # gone since the listing
    return stat.st_size, stat.st_mtime_ns


def _candidates(name: str) -> Iterator[str]:
    """``name``, then ``stem.20240501T101500Z-N.suffix`` for N = 1, 2, ..."""
    yield name
    stem, suffix = os.path.splitext(name)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while True:
        yield f"{stem}.{stamp}-{n}{suffix}"
        n += 1


def error_file_name(name: str) -> str:
    """The name of the reason filed beside ``name`` in failed/: ``a.json`` -> ``a.error.json``."""
    return os.path.splitext(name)[0] + ".error.json"


def free_name(folder: Path, name: str, *, with_error_file: bool = False) -> str:
    """The first candidate name not taken in ``folder`` (nor its error.json, if asked)."""
    for candidate in _candidates(name):
        taken = os.path.lexists(folder / candidate) or (
            with_error_file and os.path.lexists(folder / error_file_name(candidate))
        )
        if not taken:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def move_no_clobber(src: Path, folder: Path, name: str) -> Path:
    """Move ``src`` into ``folder`` as ``name`` or, when taken, a suffixed name; never overwrite.

    A hard link then unlink refuses an existing target atomically; where hard links are not
    supported (some network filesystems), a rename after checking the name is free.
    """
    for candidate in _candidates(name):
        target = folder / candidate
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(src):
                raise
            if os.path.lexists(target):
                continue
            os.rename(src, target)
            return target
        os.unlink(src)
        return target
    raise AssertionError("unreachable")  # pragma: no cover
