"""Read the statuses of many jobs at once from list pages, in as few calls as it can.

Never one detail call per job: a list page carries 100 jobs with their statuses. Pages come
newest first (ordered by creation time), and the jobs a start or a wait asks about are
usually the newest, so a listing stops as soon as it has seen every job it looks for, or has
reached jobs older than the oldest of them. Jobs last seen in one status are looked for in a
listing filtered by that status (the straggler still ``job_submitting`` costs one page, not a
page per hundred running jobs); a job not found there has moved on, and is looked for in the
next status of the life cycle, then in an unfiltered listing, or by its detail when that
takes fewer calls. Every call goes through the shared ``RetryingCaller`` (limiter and retry).

Jobs never seen yet (no creation time to stop at) are listed newest first until all are
seen, unless they are fewer than the pages the project's jobs fill: then each is asked for
by its detail, which never costs more.

A listing can shift while it is paged (jobs created, or leaving a filtered status): a job may
then be missed, never misread, and a missed job is looked for again by the next step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from batchsub.answers import JOB_GONE, JobStatus, StatusPage
from batchsub.client import LIST_PAGE_SIZE, DliClient
from batchsub.errors import ApiError
from batchsub.retry import RetryingCaller

# Statuses in life-cycle order: a job not found in one is looked for in the next ones.
_LIFE_CYCLE = (
    "job_init",
    "job_submitting",
    "job_downloading",
    "job_arrearage_recovering",
    "job_running",
    "job_savepointing",
    "job_canceling",
)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A status seen, with when the page was asked for and when it came back (reader clock)."""

    status: JobStatus
    asked: float
    answered: float


Seen = dict[int, Sighting | None]  # job_id -> what was seen; None: the job does not exist


class StatusReader:
    """Reads job statuses for the starter and the waiter, counting the calls it makes."""

    def __init__(
        self,
        client: DliClient,
        caller: RetryingCaller,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._caller = caller
        self.clock = clock  # sightings are stamped with it; the waiter keeps time by it too
        self._positions: dict[int, int] = {}  # offset a job had in the last unfiltered listing
        self._total: int | None = None  # jobs in the project, as the last unfiltered page said
        self.list_calls = 0
        self.detail_calls = 0

    async def read(self, wanted: Mapping[int, JobStatus | None]) -> Seen:
        """The status now of each wanted job, given what was seen of it last (None: nothing).

        Raises ``ApiError`` when a call fails for good (after the caller's retries).
        """
        seen: Seen = {}
        unknown = {i for i, last in wanted.items() if last is None or last.create_time is None}
        if unknown and self._total is not None and len(unknown) <= _pages(self._total):
            # Fewer jobs than the pages a listing might need to reach them: ask each.
            for job_id in sorted(unknown):
                seen[job_id] = await self._detail(job_id)
        elif unknown:
            await self._sweep(None, unknown, wanted, seen)
        groups: dict[str, set[int]] = {}
        for job_id, last in wanted.items():
            if job_id not in seen and last is not None:
                groups.setdefault(last.status, set()).add(job_id)
        moved: set[int] = set()
        for status in sorted(groups, key=_life_cycle_rank):
            look_for = {i for i in groups[status] | moved if i not in seen}
            if look_for:
                await self._sweep(status, look_for, wanted, seen)
            moved |= {i for i in groups[status] if i not in seen}
        left = [i for i in wanted if i not in seen]
        if left and len(left) > self._listing_cost(left):
            await self._sweep(None, set(left), wanted, seen)
            left = [i for i in left if i not in seen]
        for job_id in left:
            seen[job_id] = await self._detail(job_id)
        return seen

    def _listing_cost(self, job_ids: Collection[int]) -> int:
        """Pages an unfiltered newest-first listing would take to reach all of these jobs.

        A job not in the last unfiltered listing is taken for one made since (the newest).
        """
        deepest = max((self._positions.get(i, 0) for i in job_ids), default=0)
        return _pages(deepest + 1)

    async def _sweep(
        self,
        status: str | None,
        look_for: set[int],
        wanted: Mapping[int, JobStatus | None],
        seen: Seen,
    ) -> None:
        """Page newest first until every job of ``look_for`` is seen, or none can be left."""
        oldest = _oldest(look_for, wanted)
        offset = 0
        while True:
            asked = self.clock()
            page = await self._page(status, offset)
            answered = self.clock()
            if status is None:
                self._total = page.total_count
            for index, job in enumerate(page.jobs):
                if status is None:
                    self._positions[job.job_id] = offset + index
                if job.job_id in wanted:
                    seen[job.job_id] = Sighting(job, asked, answered)
            offset += len(page.jobs)
            if look_for <= seen.keys() or not page.jobs or offset >= page.total_count:
                return
            last = page.jobs[-1].create_time
            if oldest is not None and last is not None and last < oldest:
                return  # every later page is older still

    async def _page(self, status: str | None, offset: int) -> StatusPage:
        self.list_calls += 1
        return await self._caller.call(
            "list_statuses",
            functools.partial(self._client.status_page, status=status, offset=offset),
        )

    async def _detail(self, job_id: int) -> Sighting | None:
        self.detail_calls += 1
        asked = self.clock()
        try:
            job = await self._caller.call(
                "job_detail", functools.partial(self._client.job_detail, job_id)
            )
        except ApiError as exc:
            if exc.code == JOB_GONE:
                return None
            raise
        return Sighting(job, asked, self.clock())


def _pages(jobs: int) -> int:
    """List pages that hold this many jobs (at least one)."""
    return max(1, -(-jobs // LIST_PAGE_SIZE))


def _life_cycle_rank(status: str) -> tuple[int, str]:
    rank = _LIFE_CYCLE.index(status) if status in _LIFE_CYCLE else len(_LIFE_CYCLE)
    return rank, status


def _oldest(job_ids: Collection[int], wanted: Mapping[int, JobStatus | None]) -> int | None:
    """The oldest creation time among these jobs; None when any of them has none."""
    times = [last.create_time if (last := wanted.get(i)) else None for i in job_ids]
    if not times or None in times:
        return None
    return min(t for t in times if t is not None)
