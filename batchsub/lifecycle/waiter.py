"""Wait until started jobs are healthy, or have failed, or the wait has run out.

Healthy means ``job_running`` continuously for ``healthy_for`` seconds: seen running, and
seen running again at least ``healthy_for`` later, with nothing in between saying otherwise.
A job seen in any other status restarts its clock, and so does a running job whose
``restart_times`` or ``start_time`` moved between two sightings (it went through
``job_running_exception`` and came back unseen). The list's ``duration`` is not trusted to
shorten the wait: what it counts across restarts is undocumented.

Failed: ``job_submit_fail``, ``job_running_exception``, ``job_cancel_fail``,
``job_arrearage_stopped``, with DLI's ``status_desc`` as the reason; for a job whose body
sets ``restart_when_exception``, ``job_running_exception`` only restarts its clock. A job
stopped while waited for (``job_cancel_success``, or back to ``job_init`` after it ran) is
``stopped``; ``job_finish`` is ``finished`` (the Terraform provider counts it a success);
one deleted is ``gone``. ``wait_timeout`` counts from when a job is tracked.

Polling: one loop for every tracked job, each round one ``StatusReader.read`` (list pages).
The interval doubles from ``poll_min`` to ``poll_max`` while no status changes and drops back
on a change; a round is pulled in to the next moment a job may become healthy or time out;
and rounds never take more than ``poll_share`` of the limiter's rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import structlog

from batchsub.answers import JobStatus
from batchsub.errors import ApiError, FatalApiError
from batchsub.jobs import StatusSeen
from batchsub.lifecycle.status_reader import Sighting, StatusReader
from batchsub.lifecycle.statuses import (
    EXCEPTION,
    FAILED,
    FINISHED,
    INIT,
    RUNNING,
    STOPPED,
    failure_reason,
)
from batchsub.protocols import RateView, StartLedger

log = structlog.get_logger("batchsub.lifecycle.waiter")


class Health(StrEnum):
    """How a wait ended for one job."""

    HEALTHY = "healthy"  # job_running continuously for healthy_for
    FINISHED = "finished"  # job_finish: it ended on its own
    FAILED = "failed"  # a failure status; the reason is DLI's status_desc
    STOPPED = "stopped"  # stopped while waited for
    GONE = "gone"  # deleted while waited for
    TIMED_OUT = "timed_out"  # wait_timeout ran out first


GOOD_HEALTH = frozenset({Health.HEALTHY, Health.FINISHED})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The end of the wait for one job."""

    job_id: int
    name: str
    health: Health
    status: str | None  # the last DLI status seen
    reason: str | None = None
    running_at: float | None = None  # epoch seconds it was first seen running


@dataclass(frozen=True, slots=True)
class Watched:
    """A job to wait for, and what was seen of it already (``job_submitting`` after a run).

    ``restarts``: its body sets ``restart_when_exception``, so ``job_running_exception`` is a
    passage (its clock restarts), not the end; if it never comes back the wait times out.
    """

    job_id: int
    name: str
    last: JobStatus | None = None
    restarts: bool = False


@dataclass(frozen=True, slots=True)
class WaitSettings:
    """How long to wait and how often to look."""

    healthy_for: float = 30.0
    wait_timeout: float = 1200.0
    poll_min: float = 1.0
    poll_max: float = 15.0
    poll_share: float = 0.2  # most of the limiter's rate the polls may take

    def __post_init__(self) -> None:
        if not (self.healthy_for >= 0 and self.wait_timeout > 0):
            raise ValueError("healthy_for must be >= 0 and wait_timeout > 0")
        if not 0 < self.poll_min <= self.poll_max:
            raise ValueError("poll intervals must satisfy 0 < poll_min <= poll_max")
        if not 0 < self.poll_share <= 1:
            raise ValueError("poll_share must be in (0, 1]")


class PollInterval:
    """The pause between rounds: doubles while nothing changes, back to the minimum on change."""

    def __init__(self, minimum: float, maximum: float, factor: float = 2.0) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self._factor = factor
        self.current = minimum

    def after(self, changed: bool) -> float:
        """The next pause, after a round that did (or did not) see a change."""
        if changed:
            self.current = self._minimum
        else:
            self.current = min(self._maximum, self.current * self._factor)
        return self.current


@dataclass(slots=True)
class _Watch:
    job: Watched
    since: float  # when tracking began: the timeout counts from it
    last: JobStatus | None
    running_since: float | None = None  # the current stretch of job_running began by then
    ever_running: bool = False
    running_at: float | None = None  # epoch seconds, first seen running


class Waiter:
    """Tracks started jobs and polls their statuses until each has a verdict.

    ``track`` adds jobs (a wave, or each batch as it is started); ``wait`` returns the
    verdicts of the jobs asked for once they all have one. Time is the reader's clock.
    """

    def __init__(
        self,
        reader: StatusReader,
        settings: WaitSettings,
        *,
        rate: RateView | None = None,
        ledger: StartLedger | None = None,
        project_id: str = "",
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        self._reader = reader
        self._settings = settings
        self._rate = rate
        self._ledger = ledger
        self._project = project_id
        self._clock = reader.clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._on_verdict = on_verdict
        self._interval = PollInterval(settings.poll_min, settings.poll_max)
        self._watches: dict[int, _Watch] = {}
        self._verdicts: dict[int, Verdict] = {}
        self._futures: dict[int, asyncio.Future[Verdict]] = {}
        self._task: asyncio.Task[None] | None = None
        self._fresh = False  # jobs tracked since the last round: a change
        self._last_cost = 0  # calls the last round took
        self._pull_in = True  # False after a failed round: back off, whatever is due
        self.rounds = 0
        self.looked_at = 0  # jobs asked about, over every round: what detail calls would cost

    @property
    def running(self) -> int:
        """Jobs seen running now, or healthy."""
        now = sum(1 for w in self._watches.values() if w.running_since is not None)
        return now + sum(1 for v in self._verdicts.values() if v.health is Health.HEALTHY)

    def track(self, jobs: Iterable[Watched]) -> None:
        """Wait for these jobs too (a job tracked already is not tracked twice)."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            if job.job_id in self._futures:
                continue
            self._watches[job.job_id] = _Watch(job, self._clock(), job.last)
            self._futures[job.job_id] = loop.create_future()
            self._fresh = True
        if self._watches and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._poll())

    async def wait(self, job_ids: Iterable[int] | None = None) -> dict[int, Verdict]:
        """The verdicts of these jobs (every tracked job by default), once all have one.

        Raises what stopped the polling: ``FatalApiError`` (a refused credential), or a
        ``LedgerError`` from recording what it saw.
        """
        ids = list(self._futures) if job_ids is None else list(job_ids)
        unknown = [i for i in ids if i not in self._futures]
        if unknown:
            raise KeyError(f"jobs not tracked: {unknown[:5]}")
        verdicts = await asyncio.gather(*(self._futures[i] for i in ids))
        return dict(zip(ids, verdicts, strict=True))

    async def close(self) -> None:
        """Stop polling; jobs without a verdict keep none."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _poll(self) -> None:
        try:
            while self._watches:
                await self._sleep(self._delay())
                await self._round()
        except asyncio.CancelledError:
            for job_id in self._watches:
                self._futures[job_id].cancel()
            self._watches.clear()
            raise
        except Exception as exc:  # a fatal answer, or the ledger failed: every wait says so
            for job_id in self._watches:
                self._futures[job_id].set_exception(exc)
            self._watches.clear()

    def _delay(self) -> float:
        """Seconds until the next round (see the module docstring)."""
        now = self._clock()
        settings = self._settings
        due = math.inf
        for watch in self._watches.values():
            due = min(due, watch.since + settings.wait_timeout)
            if watch.running_since is not None:
                due = min(due, watch.running_since + settings.healthy_for)
        delay = self._interval.current
        if self._pull_in:
            delay = min(delay, max(0.0, due - now))
        rate = self._rate.rate if self._rate is not None else 0.0
        if rate > 0 and self._last_cost:
            delay = max(delay, self._last_cost / (settings.poll_share * rate))
        return delay

    async def _round(self) -> None:
        self.rounds += 1
        wanted = {job_id: watch.last for job_id, watch in self._watches.items()}
        self.looked_at += len(wanted)
        calls = self._reader.list_calls + self._reader.detail_calls
        self._pull_in = True
        try:
            seen = await self._reader.read(wanted)
        except FatalApiError:
            raise
        except ApiError as exc:
            log.warning("wait.poll_failed", error=str(exc), waiting=len(wanted))
            seen, self._pull_in = {}, False
        self._last_cost = self._reader.list_calls + self._reader.detail_calls - calls
        changed, writes = self._fresh, []
        self._fresh = False
        for job_id, sighting in seen.items():
            watch = self._watches[job_id]
            moved, verdict = self._observe(watch, sighting)
            changed = changed or moved
            if moved and sighting is not None:
                failure = verdict.reason if verdict and verdict.health is Health.FAILED else None
                writes.append(StatusSeen(watch.job.name, job_id, sighting.status.status, failure))
            if verdict is not None:
                self._conclude(verdict)
        self._expire()
        self._interval.after(changed)
        await self._record(writes)

    def _observe(self, watch: _Watch, sighting: Sighting | None) -> tuple[bool, Verdict | None]:
        """Apply one sighting: (did the status change, the verdict it brings if any)."""
        job = watch.job
        if sighting is None:
            return True, Verdict(job.job_id, job.name, Health.GONE, None, "the job was deleted")
        seen, last = sighting.status, watch.last
        watch.last = seen
        status = seen.status
        moved = last is None or last.status != status
        if status == RUNNING:
            bounced = last is not None and last.status == RUNNING and _restarted(last, seen)
            if watch.running_since is None or bounced:
                watch.running_since = sighting.answered
                watch.ever_running = True
                watch.running_at = watch.running_at or self._wall_clock()
                return True, self._healthy(watch) if self._settings.healthy_for == 0 else None
            if sighting.asked - watch.running_since >= self._settings.healthy_for:
                return moved, self._healthy(watch)
            return moved, None
        watch.running_since = None
        if status == EXCEPTION and job.restarts:
            return moved, None
        health = _ending(status, watch.ever_running)
        if health is None:
            return moved, None
        reason = failure_reason(status, seen.status_desc) if health is not Health.FINISHED else None
        return True, Verdict(job.job_id, job.name, health, status, reason, watch.running_at)

    def _healthy(self, watch: _Watch) -> Verdict:
        job = watch.job
        return Verdict(job.job_id, job.name, Health.HEALTHY, RUNNING, None, watch.running_at)

    def _expire(self) -> None:
        now = self._clock()
        timeout = self._settings.wait_timeout
        for watch in list(self._watches.values()):
            if now - watch.since < timeout:
                continue
            last = watch.last
            status = last.status if last is not None else None
            doing = (
                f"still {failure_reason(last.status, last.status_desc)}"
                if last
                else "no status seen"
            )
            if watch.running_since is not None:
                doing = f"running for {now - watch.running_since:.0f} s, not yet healthy"
            job = watch.job
            reason = f"{doing} after {timeout:g} s"
            verdict = Verdict(job.job_id, job.name, Health.TIMED_OUT, status, reason)
            self._conclude(replace(verdict, running_at=watch.running_at))

    def _conclude(self, verdict: Verdict) -> None:
        del self._watches[verdict.job_id]
        self._verdicts[verdict.job_id] = verdict
        self._futures[verdict.job_id].set_result(verdict)
        log.info(
            "wait.verdict",
            job=verdict.name,
            job_id=verdict.job_id,
            health=verdict.health.value,
            status=verdict.status,
            reason=verdict.reason,
        )
        if self._on_verdict is not None:
            self._on_verdict(verdict)

    async def _record(self, writes: Sequence[StatusSeen]) -> None:
        if writes and self._ledger is not None:
            await asyncio.shield(self._ledger.record_status(self._project, writes))


def _restarted(before: JobStatus, now: JobStatus) -> bool:
    """Whether a job seen running twice went down and up again in between."""
    return any(
        old is not None and new is not None and old != new
        for old, new in (
            (before.restart_times, now.restart_times),
            (before.start_time, now.start_time),
        )
    )


def _ending(status: str, ever_running: bool) -> Health | None:
    """The verdict a status other than running brings; None: keep waiting."""
    if status in FAILED:
        return Health.FAILED
    if status == FINISHED:
        return Health.FINISHED
    if status == STOPPED or (status == INIT and ever_running):
        return Health.STOPPED
    return None
