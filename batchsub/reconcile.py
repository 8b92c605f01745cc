"""Find out whether a job exists on the server, by its exact name.

DLI's create call takes no idempotency key, so a create whose answer was lost may or may not
have made the job. Before such a job is ever sent again it is looked up here; a job found is
adopted, not duplicated. The first lookup of a run lists every Flink Jar job once (a snapshot),
so that jobs made before batchsub, or by a crashed run, are adopted with few list calls.

A daemon runs for months, and jobs made by hand meanwhile must be adopted too (the API may
accept a second job of the same name): a snapshot older than ``refresh_after`` catches up
before it is used, listing newest first until it reaches jobs it already knew (one call,
usually). Catching up sees no deletions, so every ``relist_after`` the whole list is read
again: a job made by hand and deleted since is then no longer adopted. An endpoint whose list
gives no creation times gets only those full listings.

The server's list is never assumed empty: a listing that fails (after the caller's retries),
whatever the answer was, fails every lookup waiting for it, and the next one lists again.

A name the list shows more than once (a duplicate made by hand, or by a worker that lost its
claim) is adopted as its oldest job, and every job_id seen for it is kept (``ids_of``) so that
the submitter reports all of them; a full listing forgets those deleted since.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import structlog

from batchsub.answers import JobPage, RemoteJob
from batchsub.client import LIST_PAGE_SIZE, DliClient
from batchsub.errors import ApiError
from batchsub.retry import RetryingCaller

log = structlog.get_logger("batchsub.reconcile")

BATCH_WINDOW = 0.05  # seconds lookups wait for others to share their list calls
FULL_LISTING_FROM = 5  # names at once from which a full listing may take fewer calls
# A catch-up listing reads back this far before the newest job it knew: jobs created while it
# listed, or stamped by a server clock that stepped back, are not missed.
CATCH_UP_OVERLAP_MS = 120_000


class Reconciler:
    """Answers "does a job with this exact name exist, and with which job_id?"."""

    def __init__(
        self,
        client: DliClient,
        caller: RetryingCaller,
        *,
        batch_window: float = BATCH_WINDOW,
        refresh_after: float = 60.0,
        relist_after: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._caller = caller
        self._snapshot: dict[str, int] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._listings = 0  # listings (or catch-ups) finished, ended by a failure or not
        self._failure: ApiError | None = None  # how the last one failed
        self._refresh_after = refresh_after
        self._clock = clock
        self._relist_after = relist_after
        self._snapshot_at = 0.0
        self._listed_at = 0.0  # when the whole list was last read
        self._newest_ms: int | None = None  # newest create_time in the snapshot
        self._no_create_times = False  # the list gave jobs without creation times
        self._batch_window = batch_window
        self._waiting: dict[str, list[asyncio.Future[int | None]]] = {}
        self._batch: asyncio.Task[None] | None = None
        self._several: dict[str, set[int]] = {}  # names listed with more than one job_id
        self.list_calls = 0

    def ids_of(self, name: str) -> list[int]:
        """Every job_id the listings showed for ``name``, when they showed more than one."""
        return sorted(self._several.get(name, ()))

    def _ids(self, jobs: list[RemoteJob], *, every_job: bool = False) -> dict[str, int]:
        """Name -> oldest job_id, noting names with several; ``every_job``: a full listing."""
        found = _lowest_ids(jobs)
        if every_job:
            self._several = {}
        if len(found) < len(jobs):
            for job in jobs:
                if job.job_id != found[job.name]:
                    self._several.setdefault(job.name, {found[job.name]}).add(job.job_id)
        return found

    async def snapshot(self) -> dict[str, int]:
        """Name -> job_id of every Flink Jar job: listed once, then caught up when stale."""
        if self._snapshot is not None and not self._stale():  # every job asks: no lock
            return self._snapshot
        listings = self._listings
        async with self._snapshot_lock:
            if self._listings != listings and self._failure is not None:
                # The listing this caller waited for failed (after its own retries): share
                # its failure rather than list again, once per waiting job. (A fresh traceback
                # each time: hundreds of waiters would otherwise stack theirs on one object.)
                raise self._failure.with_traceback(None)
            try:
                await self._list_or_catch_up()
            except ApiError as exc:
                # The server's list is never assumed empty: nothing is created meanwhile.
                self._failure = exc
                raise
            else:
                self._failure = None
            finally:
                self._listings += 1
            assert self._snapshot is not None
            return self._snapshot

    async def _list_or_catch_up(self) -> None:
        if self._snapshot is None:
            self._snapshot_at = self._listed_at = self._clock()
            jobs = await self._list_all(name=None)
            self._snapshot = self._ids(jobs, every_job=True)
            self._track_newest(jobs)
            log.info("remote.listed", jobs=len(self._snapshot), list_calls=self.list_calls)
        elif self._stale():
            await self._catch_up(self._snapshot)

    def _track_newest(self, jobs: list[RemoteJob]) -> None:
        """Remember the newest creation time listed; without any, stop catching up."""
        self._newest_ms = max(filter(None, (self._newest_ms, _newest(jobs))), default=None)
        if not jobs or self._newest_ms is not None or self._no_create_times:
            return
        # Catching up newest first needs creation times; without them it would read every
        # page each time. Read the whole list only every relist_after instead.
        self._no_create_times = True
        self._refresh_after = max(self._refresh_after, self._relist_after)
        log.warning(
            "remote.no_create_time",
            effect="jobs made outside batchsub are seen at each full listing, "
            f"every {self._relist_after:g} s",
        )

    def _stale(self) -> bool:
        return self._clock() - self._snapshot_at >= self._refresh_after

    async def _catch_up(self, snapshot: dict[str, int]) -> None:
        """Add the jobs made since the snapshot (newest first, back to ones it knew), or
        read the whole list again when it is ``relist_after`` old (drops deleted jobs)."""
        started = self._clock()
        calls = self.list_calls
        if started - self._listed_at >= self._relist_after or self._newest_ms is None:
            # Also when no job had a creation time yet: an empty project takes one call.
            jobs = await self._list_all(name=None)
            fresh = self._ids(jobs, every_job=True)
            gone = snapshot.keys() - fresh.keys()
            added = len(fresh.keys() - snapshot.keys())
            snapshot.clear()
            snapshot.update(fresh)
            self._listed_at = started
            if gone:
                log.info("remote.jobs_gone", jobs=len(gone))
        else:
            jobs = await self._newer_than(self._newest_ms - CATCH_UP_OVERLAP_MS)
            added = 0
            for name, job_id in self._ids(jobs).items():
                if snapshot.get(name, job_id + 1) > job_id:
                    added += name not in snapshot
                    snapshot[name] = job_id
        self._track_newest(jobs)
        self._snapshot_at = started
        log.info("remote.caught_up", new_jobs=added, list_calls=self.list_calls - calls)

    async def _newer_than(self, threshold_ms: int) -> list[RemoteJob]:
        """Newest first, up to the first page holding a job older than ``threshold_ms``."""

        def reached(page: JobPage) -> bool:
            return any(j.create_time is None or j.create_time < threshold_ms for j in page.jobs)

        return await self._list_all(name=None, newest_first=True, until=reached)

    async def list_jobs(self) -> dict[str, int]:
        """Name -> oldest job_id of every Flink Jar job now (paged); raises any ApiError."""
        return self._ids(await self._list_all(name=None), every_job=True)

    async def find(self, name: str) -> int | None:
        """The job_id of the job named exactly ``name`` now, or None (a fresh listing).

        Lookups asked for within ``batch_window`` of each other are answered together: by
        one name query each while they are few, by one listing of every job when that takes
        fewer calls (an outage leaves many jobs in doubt at once).
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, []).append(future)
        if self._batch is None:
            self._batch = asyncio.create_task(self._answer_batch())
        return await future

    async def _answer_batch(self) -> None:
        await asyncio.sleep(self._batch_window)
        waiting, self._waiting, self._batch = self._waiting, {}, None
        futures = [future for group in waiting.values() for future in group]
        try:
            found = await self._look_up(list(waiting))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the failure of the shared lookup
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for name, group in waiting.items():
            for future in group:
                if not future.done():
                    future.set_result(found.get(name))

    async def _look_up(self, names: list[str]) -> dict[str, int]:
        if len(names) >= FULL_LISTING_FROM:
            first = await self._page(name=None, offset=0)
            pages = -(-first.total_count // LIST_PAGE_SIZE)
            if pages <= len(names):
                jobs = list(first.jobs)
                if first.jobs and len(first.jobs) < first.total_count:
                    jobs += await self._list_all(name=None, offset=len(first.jobs))
                log.info("remote.batch_lookup", names=len(names), list_calls=pages)
                wanted = set(names)
                return self._ids([job for job in jobs if job.name in wanted])
        found: dict[str, int] = {}
        for name in names:
            jobs = [job for job in await self._list_all(name=name) if job.name == name]
            found.update(self._ids(jobs))
            if len(jobs) > 1:
                log.warning("remote.duplicate_name", name=name, job_id=found[name])
        return found

    async def _page(self, *, name: str | None, offset: int, newest_first: bool = False) -> JobPage:
        self.list_calls += 1
        return await self._caller.call(
            "list_jobs",
            functools.partial(
                self._client.list_page, name=name, offset=offset, newest_first=newest_first
            ),
        )

    async def _list_all(
        self,
        *,
        name: str | None,
        offset: int = 0,
        newest_first: bool = False,
        until: Callable[[JobPage], bool] | None = None,
    ) -> list[RemoteJob]:
        """Every page from ``offset`` on, or up to the first page ``until`` accepts."""
        jobs: list[RemoteJob] = []
        while True:
            page = await self._page(name=name, offset=offset, newest_first=newest_first)
            jobs.extend(page.jobs)
            offset += len(page.jobs)
            if not page.jobs or offset >= page.total_count or (until and until(page)):
                return jobs


def _lowest_ids(jobs: list[RemoteJob]) -> dict[str, int]:
    # Several jobs may share a name (made by hand, or by a tool that duplicated them);
    # the oldest one is the one to adopt.
    found: dict[str, int] = {}
    for job in jobs:
        if job.name not in found or job.job_id < found[job.name]:
            found[job.name] = job.job_id
    return found


def _newest(jobs: list[RemoteJob]) -> int | None:
    """The latest creation time among ``jobs``; None if any lacks one (or there are none)."""
    times = [job.create_time for job in jobs]
    if not times or None in times:
        return None
    return max(t for t in times if t is not None)
