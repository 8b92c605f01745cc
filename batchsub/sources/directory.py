"""A directory of manifest files, read recursively in a stable order and streamed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog

from batchsub.errors import ConfigError, LedgerError, one_line
from batchsub.jobs import EXISTING_OUTCOMES, InvalidManifest, JobResult, ManifestItem, RememberedJob
from batchsub.manifest import MANIFEST_SUFFIXES, parse_manifest_file
from batchsub.parse_pool import ParserPool
from batchsub.protocols import FileIndex
from batchsub.sources._tally import Tally
from batchsub.text import printable

log = structlog.get_logger("batchsub.directory")


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A directory under the root that could not be listed."""

    path: Path
    error: OSError

    def invalid(self) -> InvalidManifest:
        """The invalid manifest a run reports for it."""
        where = printable(str(self.path))
        return InvalidManifest(where, f"{where}: cannot list directory: {one_line(self.error)}")


def _is_manifest(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MANIFEST_SUFFIXES


def _scan(directory: str) -> Iterator[str | _Unreadable]:
    """Manifest paths under ``directory``, depth first, sorted by name in each directory.

    That is sorted by relative path compared component by component.

    Names starting with "." are skipped, symlinked directories are not followed (no loops),
    symlinked files are. Every other entry with a manifest's name is yielded, whatever it is
    (a dangling symlink, a symlink loop, a FIFO): reading it says what is wrong, the same way
    in every command. Sorting per directory keeps memory to one directory's listing.
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
        if _is_real_dir(entry):
            yield from _scan(path)
        elif _is_manifest(entry.name) and not _is_dir(entry):
            yield path


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:  # rare (a d_type of "unknown" and a failed lstat): read as a file
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A directory, or a symlink to one (not followed); False when the link leads nowhere."""
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop, an unreachable target: the read reports it
        return False


def _check_root(root: Path) -> None:
    if not root.exists():
        raise ConfigError(f"manifest directory {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"manifest directory {root} is not a directory")


def scan_manifests(root: Path) -> Iterator[Path | InvalidManifest]:
    """Every ``.json``, ``.yaml`` and ``.yml`` entry under ``root``, in a stable order, and an
    InvalidManifest for each directory that cannot be listed.

    Paths are ``root / relative`` as ``root`` was given. Raises ConfigError if ``root`` is not
    a directory.
    """
    _check_root(root)
    for found in _scan(str(root)):  # str(Path) is normalised: no trailing or doubled "/"
        yield found.invalid() if isinstance(found, _Unreadable) else Path(found)


def iter_manifest_paths(root: Path) -> Iterator[Path]:
    """One path per item ``scan_manifests`` yields: what a run counts before it starts."""
    for found in scan_manifests(root):
        yield found if isinstance(found, Path) else Path(found.source)


class DirectorySource:
    """Manifests under a directory, recursively, sorted by relative path, streamed.

    A job name seen before (in this run) is yielded as an InvalidManifest naming both files:
    the first definition wins. Only the names seen are kept in memory.
    """

    def __init__(
        self, root: Path, *, validate: bool = True, parser: ParserPool | None = None
    ) -> None:
        _check_root(root)
        self.root = root
        # False: jobs are only shape-checked here; the submitter validates what it sends.
        self.validate = validate
        # Child processes that read and parse a chunk of files ahead; None: read here.
        self._parser = parser
        self._index: FileIndex | None = None
        self._project = ""
        # Files read whose jobs are not all done: (path, fingerprint) of each.
        self._open: Tally[tuple[str, str]] = Tally()
        self._done: list[tuple[str, str, Sequence[str]]] = []  # to remember, batched
        self._exhausted = False

    def use_index(self, index: FileIndex, project_id: str) -> None:
        """Skip files the index says are unchanged and fully created; remember new ones."""
        self._index, self._project = index, project_id

    async def items(self) -> AsyncIterator[ManifestItem]:
        """Yield every job and invalid manifest under the root, one file at a time."""
        _check_root(self.root)
        self._exhausted = False
        seen: dict[str, str] = {}
        chunks = _chunks(_scan(str(self.root)), _INDEX_CHUNK, first=_FIRST_CHUNK)
        ahead = await self._prepare(next(chunks, None))
        try:
            while ahead is not None:
                current = ahead
                # The next chunk is parsed (in a child) while this one is sent.
                ahead = await self._prepare(next(chunks, None))
                parsed = await current.parsed if current.parsed is not None else {}
                for count, found in enumerate(current.paths, start=1):
                    if count % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let the HTTP pool run
                    items, tracked = self._read(found, current, parsed)
                    shown = [_first_definition(item, seen) for item in items]
                    if tracked is not None:
                        self._open.track(tracked, shown)
                    for item in shown:
                        yield item
        finally:
            if ahead is not None and ahead.parsed is not None:
                ahead.parsed.cancel()  # stopped early: that parse is not wanted
        self._exhausted = True
        await self._flush(final=not self._open)

    async def _prepare(self, paths: list[str | _Unreadable] | None) -> _Chunk | None:
        """Look a chunk up in the index, and start parsing its other files in the children."""
        if paths is None:
            return None
        fingerprints = self._fingerprints(paths)
        known = await self._known(fingerprints)
        parsed: asyncio.Future[dict[str, list[ManifestItem]]] | None = None
        if self._parser is not None and self._parser.in_children:
            wanted = [p for p in paths if isinstance(p, str) and printable(p) not in known]
            parsed = asyncio.ensure_future(self._parse(self._parser, wanted))
        return _Chunk(paths, fingerprints, known, parsed)

    async def _parse(self, parser: ParserPool, paths: list[str]) -> dict[str, list[ManifestItem]]:
        items = await parser.parse(paths, validate=self.validate)
        return dict(zip(paths, items, strict=True))

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        """Remember a file once every job in it exists; the files stay where they are."""
        done = self._open.finish(item, result)
        if done is not None:
            (path, fingerprint), results = done
            names = [r.name for r in results if r.name is not None]
            if len(names) == len(results) and all(
                r.outcome in EXISTING_OUTCOMES for r in results
            ):
                self._done.append((path, fingerprint, names))
        await self._flush(final=self._exhausted and not self._open)

    def _read(
        self, found: str | _Unreadable, chunk: _Chunk, parsed: dict[str, list[ManifestItem]]
    ) -> tuple[list[ManifestItem], tuple[str, str] | None]:
        """The items of one file, and the file if its outcome is to be tracked for the index."""
        if isinstance(found, _Unreadable):
            return [found.invalid()], None
        # The file as every output shows it, and as the index knows it: valid UTF-8.
        shown = printable(found)
        if shown in chunk.known:
            return list(chunk.known[shown]), None
        # Taken before reading (for the index lookup): a change during the read makes the
        # next fingerprint differ, so a half-read edit is never remembered.
        fingerprint = chunk.fingerprints.get(shown, "")
        items = parsed.get(found)
        if items is None:
            items = parse_manifest_file(found, shown, validate=self.validate)
        if not fingerprint:
            return items, None
        return items, (shown, fingerprint)

    def _fingerprints(self, chunk: list[str | _Unreadable]) -> dict[str, str]:
        if self._index is None:
            return {}
        return {printable(p): fp for p in chunk if isinstance(p, str) and (fp := _fingerprint(p))}

    async def _known(self, fingerprints: dict[str, str]) -> dict[str, list[RememberedJob]]:
        if not fingerprints or self._index is None:
            return {}
        try:
            return await self._index.remembered_files(self._project, fingerprints)
        except LedgerError as exc:  # the index only saves reading: read the files instead
            log.warning("index.unavailable", error=str(exc))
            return {}

    async def _flush(self, *, final: bool) -> None:
        if self._index is not None and self._done and (final or len(self._done) >= _INDEX_CHUNK):
            done, self._done = self._done, []
            try:
                await self._index.remember_files(self._project, done)
            except LedgerError as exc:  # not remembered: the next run reads them again
                log.warning("index.not_written", files=len(done), error=str(exc))


@dataclass(slots=True)
class _Chunk:
    """Up to _INDEX_CHUNK paths, what the index knows of them, and their parse under way."""

    paths: list[str | _Unreadable]
    fingerprints: dict[str, str]
    known: dict[str, list[RememberedJob]]
    parsed: asyncio.Future[dict[str, list[ManifestItem]]] | None


_INDEX_CHUNK = 256  # files per index lookup and per index write
# The first chunk is short: the first requests leave once it is parsed, not 256 files later.
_FIRST_CHUNK = 32
_YIELD_EVERY = 4  # files between pauses: answers waiting on the loop are not held up long


def _fingerprint(path: str) -> str:
    """Size, mtime, ctime and inode: any write, copy or rename-over changes one of them.

    ctime cannot be set by a user (``touch -d``, ``cp -p`` set mtime, not ctime), so an edit
    that restores the old size and mtime still shows. Empty when the file cannot be stat'ed.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _chunks(
    found: Iterator[str | _Unreadable], size: int, *, first: int
) -> Iterator[list[str | _Unreadable]]:
    """Lists of ``size`` paths, the first one only ``first`` long."""
    chunk: list[str | _Unreadable] = []
    wanted = first
    for item in found:
        chunk.append(item)
        if len(chunk) >= wanted:
            yield chunk
            chunk, wanted = [], size
    if chunk:
        yield chunk


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
