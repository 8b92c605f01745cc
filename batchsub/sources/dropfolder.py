"""A drop folder: manifests dropped into a directory are claimed, sent, and filed by outcome.

The drop-folder protocol (``batchsub watch DIR``):

- Manifests are ``*.json``, ``*.yaml`` and ``*.yml`` files directly in DIR (subdirectories are
  not read). Names starting with ``.`` or ending in ``.tmp``, ``.part``, ``.swp``, ``~`` or
  ``.error.json`` are ignored.
- Write a manifest under a temporary name (``.a.json`` or ``a.json.part``) and rename it into
  place: a rename is atomic. A file written straight into DIR is read only once it has stopped
  changing: same size and modification time for the settle time (``--settle-time``, 1 s).
- A ready file is claimed by moving it (an atomic rename) to ``DIR/processing/`` before any of
  its jobs is sent. A file with the name of one still in ``processing/`` waits for it.
- When every job of the file exists (created now or before), it moves to ``DIR/done/``.
- When any job of it is invalid, failed for good or drifted (its manifest changed since the
  job was created), it moves to ``DIR/failed/`` with ``NAME.error.json`` beside it:
  ``{"file", "source", "failed_at", "reason", "jobs": [{"source", "name", "outcome",
  "error"}, ...]}``, one entry per job of the file, failed or not.
- When a job ends ``unresolved`` (the run is stopping, the job was busy elsewhere, or its answer
  was lost and it could not be looked up), the file moves back from ``processing/`` to DIR, to
  be claimed again: at once by the next start, or after ``retry_delay`` seconds by this one.
  Jobs of it that were created are in the ledger, so only the others are sent again.
- On shutdown, files whose jobs were not all sent move back to DIR; at start-up, files left in
  ``processing/`` by a crash move back to DIR too (``file.recovered``). The ledger makes
  sending their jobs again safe: a job created before is not created twice.
- A move out of ``processing/`` that fails (``done/`` briefly unwritable, a full disk) is
  retried with backoff, up to ``move_retry_max`` seconds apart, without a restart; its first
  failure and its recovery are logged (``file.cannot_move``, ``file.moved``), and
  ``stuck_files()`` lists it meanwhile (``/healthz``). A later file of its name waits.
- ``processing/``, ``done/`` or ``failed/`` (or DIR itself) removed while running is made
  again at the next scan (``folder.recreated``).
- A file dropped again after a fix (same name, once the earlier one has moved on) is a new
  claim. A name already taken in ``done/``, ``failed/`` or DIR is never overwritten: the file
  gets a suffix, ``NAME.20240501T101500Z-1.json``.

The Source streams forever: ``items()`` claims one file at a time, only when the consumer asks
for the next job, so unclaimed work stays in DIR. ``stop()`` ends it promptly, as does cancelling
the task that reads it; ``close()`` then files away what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog
from watchfiles import awatch

from batchsub.errors import ConfigError, one_line
from batchsub.files import write_atomically
from batchsub.jobs import BROKEN_OUTCOMES, EXISTING_OUTCOMES, JobResult, ManifestItem, Outcome
from batchsub.manifest import parse_manifest_file
from batchsub.sources._tally import Tally
from batchsub.sources.filing import (
    SettleTracker,
    Signature,
    error_file_name,
    free_name,
    is_manifest_name,
    move_no_clobber,
    signature_of,
)
from batchsub.text import iso_utc, printable

log = structlog.get_logger("batchsub.dropfolder")

PROCESSING = "processing"
DONE = "done"
FAILED = "failed"

_WATCH_DEBOUNCE_MS = 200  # group a burst of events into one scan, but never wait longer
_WATCH_STOP_GRACE = 2.0  # seconds the watcher thread gets to see its stop event
_WATCH_RESTART_MAX = 5.0  # seconds between restarts of a watcher that keeps failing


@dataclass(slots=True)
class _Claim:
    """One file in ``processing/``, and its jobs' results once every job has one."""

    name: str
    source: str  # the file as it appears in job sources: str(DIR / name)
    results: list[JobResult] = field(default_factory=list)  # once every job has one


@dataclass(slots=True)
class _Stuck:
    """A finished file whose move out of ``processing/`` failed: tried again at ``next_try``."""

    claim: _Claim
    error: str
    since: float  # wall clock time of the first failure
    attempts: int = 1
    next_try: float = 0.0


_MOVE_RETRY_FIRST = 0.5  # seconds before the first retry of a failed move; doubles each time


class DropFolderSource:
    """The Source of ``batchsub watch``: every manifest in DIR, then each one that arrives.

    ``items()`` yields until ``stop()`` (or the reading task is cancelled); ``finish()`` counts
    each job's result per file and moves the file when the last one is in. Call ``close()``
    after the run: it returns unfinished files to DIR.
    """

    def __init__(
        self,
        directory: Path,
        *,
        settle_time: float = 1.0,
        rescan_interval: float = 30.0,
        poll: bool = False,
        retry_delay: float | None = None,
        watch: bool = True,
        clock: Callable[[], float] = time.monotonic,
        move_retry_max: float = 30.0,
    ) -> None:
        self.directory = directory
        self.processing = directory / PROCESSING
        self.done = directory / DONE
        self.failed = directory / FAILED
        self._tracker = SettleTracker(settle_time)
        self._rescan_interval = rescan_interval
        self._poll = poll
        # A file sent back because a job was unresolved is not claimed again before this.
        self._retry_delay = rescan_interval if retry_delay is None else retry_delay
        self._watch_events = watch
        self._clock = clock
        self._claims: dict[str, _Claim] = {}  # by file name
        self._stuck: dict[str, _Stuck] = {}  # finished, but not moved out yet; by file name
        self._move_retry_max = move_retry_max
        self._folder_problems: dict[Path, str] = {}  # logged once until the folder is usable
        self._waiting: set[str] = set()  # names whose wait for processing/ was logged
        self._open: Tally[_Claim] = Tally()  # the jobs of each claim, until all have a result
        self._not_before: dict[str, float] = {}  # file name -> clock time
        self._unclaimed: set[str] = set()  # manifests seen in DIR by the last scan
        self._wake = asyncio.Event()
        self._watch_stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._prepared = False

    # --- life cycle ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create DIR and its ``processing/``, ``done/``, ``failed/``; recover crashed claims.

        Idempotent; ``items()`` calls it. Raises ConfigError when DIR cannot be used.
        """
        if self._prepared:
            return
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"drop folder {self.directory} is not a directory")
        try:
            for folder in (self.directory, self.processing, self.done, self.failed):
                folder.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise ConfigError(f"drop folder {self.directory}: {one_line(exc)}") from None
        self._prepared = True

    def stop(self) -> None:
        """Stop claiming files and end ``items()`` promptly (safe from a signal handler)."""
        self._stopping = True
        self._watch_stop.set()
        self._wake.set()

    async def close(self) -> None:
        """Stop, then move every file whose jobs did not all get a result back to DIR."""
        self.stop()
        await self._stop_watcher()
        for claim in list(self._claims.values()):
            self._give_back(claim, reason="run stopped before every job of it had a result")
        self._retry_moves(at_once=True)  # last try; what is left is recovered at the next start
        self._claims.clear()
        self._open.clear()
        with contextlib.suppress(OSError):
            self._unclaimed = {n for n in os.listdir(self.directory) if is_manifest_name(n)}

    def files_waiting(self) -> int:
        """Manifests in DIR not yet claimed (as of the last scan) plus those in processing/."""
        return len(self._unclaimed) + len(self._claims) + len(self._stuck)

    def stuck_files(self) -> list[str]:
        """One line per file whose move out of processing/ failed and is being retried."""
        return [
            f"{printable(name)}: {stuck.error} ({stuck.attempts} attempts since "
            f"{iso_utc(stuck.since, 'seconds')})"
            for name, stuck in sorted(self._stuck.items())
        ]

    # --- the Source protocol ------------------------------------------------------------------

    async def items(self) -> AsyncGenerator[ManifestItem, None]:
        """Yield the jobs of each ready file, claiming one file at a time, until stopped."""
        self.prepare()
        self._start_watcher()
        try:
            while not self._stopping:
                self._wake.clear()
                self._retry_moves()
                for name in self._scan():
                    if self._stopping:
                        return
                    for item in self._claim(name):
                        yield item
                await self._wait()
        finally:
            self._watch_stop.set()

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        """Count one job's result; move its file once every job of it has one."""
        done = self._open.finish(item, result)
        if done is not None:
            claim, results = done
            claim.results = results
            self._file_away(claim)

    # --- scanning -----------------------------------------------------------------------------

    def _scan(self) -> list[str]:
        """Names of settled manifests in DIR that may be claimed now, sorted."""
        self._ensure_folders()
        present: dict[str, Signature] = {}
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    signature = signature_of(entry)
                    if signature is not None:
                        present[entry.name] = signature
        except OSError as exc:
            log.error("watch.cannot_list", directory=str(self.directory), error=one_line(exc))
            return []
        now = self._clock()
        self._tracker.retain(present)
        self._unclaimed = set(present)
        for name in [n for n in self._not_before if n not in present]:
            del self._not_before[name]
        ready = [
            name
            for name, signature in present.items()
            if self._tracker.observe(name, signature, now)
            and self._not_before.get(name, now) <= now
            and not self._busy(name)  # same name still in processing/: wait for it
        ]
        return sorted(ready)

    def _busy(self, name: str) -> bool:
        """True while a file of this name is in processing/ (logged once when it is stuck)."""
        if name in self._claims:
            return True
        if name not in self._stuck:
            return False
        self._log_waiting(name)
        return True

    def _ensure_folders(self) -> bool:
        """Make DIR, processing/, done/ and failed/ again if removed; True if one was made."""
        made = False
        for folder in (self.directory, self.processing, self.done, self.failed):
            if folder.is_dir():
                if self._folder_problems.pop(folder, None) is not None:
                    log.info("folder.recovered", folder=str(folder))
                continue
            try:
                folder.mkdir(parents=True)
            except FileExistsError:  # something else is in the way
                self._folder_problem(folder, "exists but is not a directory")
                continue
            except OSError as exc:
                self._folder_problem(folder, one_line(exc))
                continue
            made = True
            log.warning("folder.recreated", folder=str(folder), reason="it had been removed")
        return made

    def _folder_problem(self, folder: Path, error: str) -> None:
        if self._folder_problems.get(folder) != error:
            self._folder_problems[folder] = error
            log.error("folder.unusable", folder=str(folder), error=error)

    async def _wait(self) -> None:
        """Sleep until a watch event, a file due to settle, the rescan interval, or stop()."""
        due = [self._clock() + self._rescan_interval, *self._not_before.values()]
        due += [stuck.next_try for stuck in self._stuck.values()]
        settling = self._tracker.next_due()
        if settling is not None:
            due.append(settling)
        delay = max(0.0, min(due) - self._clock())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _start_watcher(self) -> None:
        if self._watch_events and self._watcher is None and not self._stopping:
            self._watcher = asyncio.create_task(self._watch(), name="batchsub-dropfolder-watch")

    async def _watch(self) -> None:
        """Turn filesystem events into scans; the scan decides what is ready.

        The watcher dies on some events (watchfiles cannot decode a file name that is not
        UTF-8; an inotify limit; the folder removed): it is started again at once, with a scan
        for what it missed, and backs off only while it keeps failing. Rescans go on anyway.
        """
        failures = 0
        while not self._watch_stop.is_set():
            try:
                async for _ in awatch(
                    self.directory,
                    watch_filter=None,
                    debounce=_WATCH_DEBOUNCE_MS,
                    stop_event=self._watch_stop,
                    force_polling=self._poll,
                    recursive=False,
                ):
                    failures = 0
                    self._wake.set()
                return  # stopped
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.warning(
                        "watch.events_unavailable",
                        error=one_line(exc),
                        effect="the watcher is started again; rescans go on meanwhile",
                        failures=failures,
                    )
            self._wake.set()  # events may have been missed meanwhile
            delay = min(_WATCH_RESTART_MAX, 0.05 * 2 ** min(failures - 1, 10))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._watch_stop.wait()

    async def _stop_watcher(self) -> None:
        # The watcher thread sees the stop event within a step (50 ms); cancelling instead
        # would wait for its own timeout, because a worker thread cannot be interrupted.
        task, self._watcher = self._watcher, None
        if task is None:
            return
        self._watch_stop.set()
        done, _ = await asyncio.wait([task], timeout=_WATCH_STOP_GRACE)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- claiming and filing ------------------------------------------------------------------

    def _claim(self, name: str) -> list[ManifestItem]:
        """Move ``name`` into processing/ and parse it there; [] if it cannot be claimed."""
        self._tracker.forget(name)
        self._unclaimed.discard(name)
        target = self.processing / name
        try:
            if os.path.lexists(target):
                self._log_waiting(name)
                return []  # not ours to overwrite; recovered at the next start
            try:
                os.rename(self.directory / name, target)
            except FileNotFoundError:
                if not self._ensure_folders():  # processing/ removed meanwhile: made again
                    raise
                os.rename(self.directory / name, target)
        except FileNotFoundError:
            return []  # gone since the scan
        except OSError as exc:
            log.warning("file.unclaimable", file=name, error=one_line(exc))
            self._not_before[name] = self._clock() + self._retry_delay
            return []
        self._not_before.pop(name, None)
        self._waiting.discard(name)
        source = printable(str(self.directory / name))  # a name that is not UTF-8, escaped
        items = parse_manifest_file(target, source)
        claim = _Claim(name, source)
        self._claims[name] = claim
        self._open.track(claim, items)
        log.info(
            "file.claimed",
            file=name,
            jobs=len(items),
            names=[item.name for item in items[:20]],
        )
        if not items:  # pragma: no cover - a parsed file always has an item
            self._file_away(claim)
        return items

    def _log_waiting(self, name: str) -> None:
        """Say once (until it is claimed) that a file waits for its namesake in processing/."""
        if name not in self._waiting:
            self._waiting.add(name)
            log.warning("file.waiting", file=name, reason="processing/ holds a file of this name")

    def _file_away(self, claim: _Claim) -> None:
        """File a claim whose every job has a result; a failed move is retried later."""
        self._claims.pop(claim.name, None)
        error = self._try_move(claim)
        if error is not None and self._ensure_folders():  # done/ or failed/ had been removed
            error = self._try_move(claim)
        if error is not None:
            self._move_failed(claim, error)

    def _try_move(self, claim: _Claim) -> OSError | None:
        """Move the file out of processing/; None once moved, else why it could not be."""
        try:
            self._move_out(claim)
        except OSError as exc:
            return exc
        self._moved(claim.name)
        return None

    def _move_out(self, claim: _Claim) -> None:
        """Move a finished file to done/, failed/ or back to DIR, by its jobs' outcomes."""
        results = claim.results
        outcomes = {r.outcome for r in results}
        if outcomes & BROKEN_OUTCOMES:
            self._file_failed(claim, results)
        elif outcomes <= EXISTING_OUTCOMES:
            moved = move_no_clobber(self.processing / claim.name, self.done, claim.name)
            log.info("file.done", file=claim.name, moved_to=str(moved), jobs=len(results))
        else:
            self._give_back(claim, reason=_first_error(results, {Outcome.UNRESOLVED}), retry=True)

    def _move_failed(self, claim: _Claim, exc: OSError) -> None:
        name = claim.name
        if not os.path.lexists(self.processing / name):  # removed by hand (processing/ too?)
            self._stuck.pop(name, None)
            log.warning("file.vanished", file=name, error=one_line(exc), folder=PROCESSING)
            return
        now, stuck = self._clock(), self._stuck.get(name)
        if stuck is None:
            stuck = self._stuck[name] = _Stuck(claim, one_line(exc), time.time())
            log.error(
                "file.cannot_move",
                file=name,
                error=stuck.error,
                effect="it stays in processing/; the move is retried",
            )
        else:
            stuck.attempts += 1
            stuck.error = one_line(exc)
        delay = min(_MOVE_RETRY_FIRST * 2 ** (stuck.attempts - 1), self._move_retry_max)
        stuck.next_try = now + delay

    def _moved(self, name: str) -> None:
        stuck = self._stuck.pop(name, None)
        if stuck is not None:
            log.info("file.moved", file=name, attempts=stuck.attempts + 1, after=stuck.error)
            self._wake.set()  # a file of the same name may be waiting for it

    def _retry_moves(self, *, at_once: bool = False) -> None:
        """Try again the moves whose time has come (every one, ``at_once``)."""
        now = self._clock()
        for stuck in list(self._stuck.values()):
            if at_once or stuck.next_try <= now:
                error = self._try_move(stuck.claim)
                if error is not None:
                    self._move_failed(stuck.claim, error)

    def _file_failed(self, claim: _Claim, results: list[JobResult]) -> None:
        broken = [r for r in results if r.outcome in BROKEN_OUTCOMES]
        first = _first_error(broken, BROKEN_OUTCOMES)
        reason = f"{len(broken)} of {len(results)} jobs not created: {first}"
        name = free_name(self.failed, claim.name, with_error_file=True)
        report = {
            "file": printable(claim.name),
            "source": claim.source,
            "failed_at": iso_utc(time.time(), "microseconds"),
            "reason": reason,
            "jobs": [
                {"source": r.source, "name": r.name, "outcome": r.outcome.value, "error": r.error}
                for r in results
            ],
        }
        # The reason is written first: a file in failed/ always has its error.json beside it.
        error_file = self.failed / error_file_name(name)
        write_atomically(error_file, orjson.dumps(report) + b"\n")
        try:
            moved = move_no_clobber(self.processing / claim.name, self.failed, name)
        except OSError:
            with contextlib.suppress(OSError):  # a retry writes it again, under a free name
                error_file.unlink()
            raise
        log.warning(
            "file.failed",
            file=claim.name,
            moved_to=str(moved),
            reason=reason,
            failed=[r.name for r in broken[:20]],
        )

    def _give_back(self, claim: _Claim, *, reason: str, retry: bool = False) -> None:
        """Move a file back to DIR; OSError when ``retry`` (the caller retries), else logged:
        on shutdown, the next start recovers what is left in processing/."""
        try:
            moved = move_no_clobber(self.processing / claim.name, self.directory, claim.name)
        except OSError as exc:
            if retry:
                raise
            log.error("file.cannot_move", file=claim.name, error=one_line(exc))
            return
        self._not_before[moved.name] = self._clock() + self._retry_delay
        log.info("file.returned", file=claim.name, moved_to=str(moved), reason=reason)

    def _recover(self) -> None:
        with os.scandir(self.processing) as entries:
            names = sorted(e.name for e in entries if not e.is_dir(follow_symlinks=False))
        for name in names:
            moved = move_no_clobber(self.processing / name, self.directory, name)
            log.info("file.recovered", file=name, moved_to=str(moved))


def _first_error(results: list[JobResult], outcomes: Iterable[Outcome]) -> str:
    wanted = set(outcomes)
    for result in results:
        if result.outcome in wanted:
            return result.error or result.outcome.value
    return "no error message"

