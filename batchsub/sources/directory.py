"""A directory of manifest files, read recursively in a stable order and streamed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from batchsub.errors import ConfigError, ManifestError
from batchsub.jobs import InvalidManifest, JobResult, ManifestItem
from batchsub.manifest import MANIFEST_SUFFIXES, parse_manifest_file

_YIELD_EVERY = 32  # files between pauses that let the HTTP pool run


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A directory under the root that could not be listed."""

    path: Path
    error: OSError


def _is_manifest(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MANIFEST_SUFFIXES


def _scan(directory: str) -> Iterator[str | _Unreadable]:
    """Manifest paths under ``directory``, depth first, sorted by name in each directory.

    That is sorted by relative path compared component by component.

    Names starting with "." are skipped, symlinked directories are not followed (no loops),
    symlinked files are. Sorting per directory keeps memory to one directory's listing.
    """
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield _Unreadable(Path(directory), exc)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        # The same string as str(root / relative): no "./" in front when root is ".".
        path = entry.name if directory == "." else entry.path
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _scan(path)
            elif _is_manifest(entry.name) and entry.is_file():
                yield path
        except OSError as exc:
            yield _Unreadable(Path(path), exc)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise ConfigError(f"manifest directory {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"manifest directory {root} is not a directory")


def iter_manifest_paths(root: Path) -> Iterator[Path]:
    """Every ``.json``, ``.yaml`` and ``.yml`` file under ``root``, in a stable order.

    Paths are ``root / relative`` as ``root`` was given. Raises ConfigError if ``root`` is not
    a directory and ManifestError if a directory under it cannot be listed.
    """
    _check_root(root)
    for found in _scan(str(root)):  # str(Path) is normalised: no trailing or doubled "/"
        if isinstance(found, _Unreadable):
            raise ManifestError(f"{found.path}: cannot list directory: {_reason(found.error)}")
        yield Path(found)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class DirectorySource:
    """Manifests under a directory, recursively, sorted by relative path, streamed.

    A job name seen before (in this run) is yielded as an InvalidManifest naming both files:
    the first definition wins. Only the names seen are kept in memory.
    """

    def __init__(self, root: Path, *, validate: bool = True) -> None:
        _check_root(root)
        self.root = root
        # False: jobs are only shape-checked here; the submitter validates what it sends.
        self.validate = validate

    async def items(self) -> AsyncIterator[ManifestItem]:
        """Yield every job and invalid manifest under the root, one file at a time."""
        _check_root(self.root)
        seen: dict[str, str] = {}
        for count, found in enumerate(_scan(str(self.root)), start=1):
            if isinstance(found, _Unreadable):
                where = str(found.path)
                yield InvalidManifest(
                    where, f"{where}: cannot list directory: {_reason(found.error)}"
                )
                continue
            for item in parse_manifest_file(found, found, validate=self.validate):
                yield _first_definition(item, seen)
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def settle(self, item: ManifestItem, result: JobResult) -> None:
        """Nothing to do: the files stay where they are."""


def _first_definition(item: ManifestItem, seen: dict[str, str]) -> ManifestItem:
    """``item``, or an InvalidManifest if its name was already defined (recorded in ``seen``).

    Names of invalid manifests count too: two files claiming one name is ambiguous either way.
    """
    if item.name is None:
        return item
    first = seen.setdefault(item.name, item.source)
    if first == item.source:
        return item
    shown = orjson.dumps(item.name).decode()
    return InvalidManifest(
        item.source,
        f"{item.source}: name: duplicate job name {shown} (first defined in {first})",
        item.name,
    )
