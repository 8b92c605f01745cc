"""Real filesystem conditions for tests: bind mounts, a full disk, a briefly unwritable folder.

Mounting needs root (and a kernel that lets this container mount); a test that needs it skips
with the reason when it cannot.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*argv: str) -> bool:
    done = subprocess.run(argv, capture_output=True, check=False, timeout=10)
    return done.returncode == 0


@functools.cache
def can_mount() -> bool:
    """True when this process may mount (a tmpfs, a bind mount) and unmount again."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as where:
        if not _run("mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", where):
            return False
        return _run("umount", where)


def need_mount() -> None:
    """Skip the calling test unless mounts are possible here."""
    if not can_mount():
        pytest.skip("needs root and permission to mount (tmpfs, bind mounts)")


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` also reachable at ``target`` (created), for the block; skips if impossible."""
    need_mount()
    target.mkdir(parents=True, exist_ok=True)
    if not _run("mount", "--bind", str(source), str(target)):
        pytest.skip(f"cannot bind-mount {source}")
    try:
        yield target
    finally:
        _run("umount", "-l", str(target))


@contextlib.contextmanager
def full_disk(where: Path, size_kib: int = 64, free_kib: int = 0) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` at ``where``, filled up but for ``free_kib``; skips if it
    cannot be mounted."""
    need_mount()
    where.mkdir(parents=True, exist_ok=True)
    if not _run("mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(where)):
        pytest.skip("cannot mount a tmpfs")
    try:
        filler = where / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"x" * 4096)
                out.flush()
        os.truncate(filler, max(0, filler.stat().st_size - free_kib * 1024))
        yield where
    finally:
        _run("umount", "-l", str(where))


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """Nothing can be created in or moved out of ``folder`` during the block, root or not.

    chmod 0500 stops anyone but root; root is stopped by the immutable attribute (chattr +i),
    where the filesystem has it.
    """
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or not _run("chattr", "+i", str(folder)):
        pytest.skip("root needs chattr +i to make a folder unwritable, and it is not available")
    try:
        yield
    finally:
        _run("chattr", "-i", str(folder))


def odd_entries(folder: Path) -> dict[str, str]:
    """Entries named like manifests that no one can read, made in ``folder``: a symlink loop,
    a dangling symlink and a FIFO (and a symlinked directory, which is no manifest).

    Returns each one's name and the problem every command reports for it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loop.json").symlink_to("loop.json")
    (folder / "dangling.json").symlink_to("missing.json")
    os.mkfifo(folder / "fifo.json")
    (folder / "a-folder").mkdir()
    (folder / "folder-link.json").symlink_to("a-folder", target_is_directory=True)
    return {
        "loop.json": "cannot read: Too many levels of symbolic links",
        "dangling.json": "cannot read: dangling symlink (its target missing.json does not exist)",
        "fifo.json": "not a regular file (a FIFO)",
    }
