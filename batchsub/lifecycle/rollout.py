"""Between the submitter and the report: start each job once it exists, then wait until it runs.

The submitter hands every result to ``Rollout.take``. A job that exists (created now, before,
or adopted) is taken over: its report row waits until its start (``--start``) and its wait
(``--wait``) have ended; any other result goes to the report at once. Jobs are gathered into
batches of up to ``batch_size`` (waiting ``linger`` seconds for a batch to fill: a run call
takes 100 ids, so fewer calls), each batch's start records are read from the ledger in one
query, the ``Starter`` decides and sends (``start_rules``), and the started ones are tracked
by one shared ``Waiter`` (list pages, never a detail call per job). Once a job has its
verdict, its start record is read back for the times and its row is written.

``--wait`` without ``--start`` waits for the jobs already started: one status read decides
which those are (running or on their way up); a job never started, or stopped, is not waited
for and is reported ``not_started``. ``drain`` sends the batch being gathered at once and
returns when every job taken so far has its row: a wave ends there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from batchsub.client import DliClient
from batchsub.errors import ApiError, LedgerError
from batchsub.jobs import (
    BAD_HEALTH,
    BAD_STARTS,
    EXISTING_OUTCOMES,
    INTERRUPTED,
    ErrorInfo,
    JobResult,
    Outcome,
    StartRecord,
)
from batchsub.lifecycle.options import RolloutOptions
from batchsub.lifecycle.starter import Starter, StartJob, StartKind, StartResult
from batchsub.lifecycle.status_reader import StatusReader
from batchsub.lifecycle.statuses import ACTIVE, FAILED, INIT, Phase, failure_reason, phase
from batchsub.lifecycle.waiter import GOOD_HEALTH, Health, Verdict, Waiter, Watched
from batchsub.limiter import RateLimiter
from batchsub.protocols import StartLedger
from batchsub.retry import RetryingCaller, RetryPolicy

log = structlog.get_logger("batchsub.lifecycle.rollout")

_WAITED = frozenset({StartKind.STARTED, StartKind.ACTIVE})
_WAITED_VALUES = frozenset(kind.value for kind in _WAITED)
START_CONCURRENCY = 4  # batches being started at once (each one run call of 100 ids)


def is_failure(result: JobResult) -> bool:
    """True when a job did not end as asked: not created, start failed, not healthy, held."""
    if result.outcome not in EXISTING_OUTCOMES:
        return True
    return result.start in BAD_STARTS or result.health in BAD_HEALTH


class Rollout:
    """Starts and waits for the jobs the submitter hands over; ``on_row`` gets their results.

    Start ``run()`` as a task before the first ``take``, ``close()`` once no more results
    come, then await the task. ``stop()`` (a signal) sends nothing more and stops waiting.
    """

    def __init__(
        self,
        options: RolloutOptions,
        *,
        client: DliClient,
        caller: RetryingCaller,
        limiter: RateLimiter,
        policy: RetryPolicy,
        ledger: StartLedger,
        on_row: Callable[[JobResult], None],
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options
        self._ledger = ledger
        self._project = client.project_id
        self._on_row = on_row
        self._on_phase = on_phase or (lambda phase: None)
        self.reader = StatusReader(client, caller)
        self.starter: Starter | None = None
        if options.start:
            self.starter = Starter(
                client=client,
                reader=self.reader,
                ledger=ledger,
                limiter=limiter,
                policy=policy,
                options=options.rules,
                batch_size=options.batch_size,
                in_doubt_grace=options.in_doubt_grace,
                resume_savepoint=options.resume_savepoint,
            )
        self.waiter: Waiter | None = None
        if options.wait:
            self.waiter = Waiter(
                self.reader, options.waiting, rate=limiter, ledger=ledger, project_id=self._project
            )
        self._gathered: list[JobResult] = []
        self._due = 0.0  # loop time the batch being gathered is sent by
        self._wake = asyncio.Event()
        self._flush = False
        self._closed = False
        self._stopping = asyncio.Event()
        self._busy = asyncio.Semaphore(START_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        self._taken = 0
        self._rows = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.fatal: ErrorInfo | None = None
        self.failures = 0  # rows written that are failures (``is_failure``)

    @property
    def runs_sent(self) -> int:
        """Run calls sent."""
        return self.starter.runs_sent if self.starter is not None else 0

    @property
    def status_calls(self) -> int:
        """List and detail calls made to read statuses (starting and waiting)."""
        return self.reader.list_calls + self.reader.detail_calls

    def take(self, result: JobResult) -> bool:
        """Take over a job that exists (its row comes later); False: report it now."""
        if result.outcome not in EXISTING_OUTCOMES or result.job_id is None or self._closed:
            return False
        loop = asyncio.get_running_loop()
        if not self._gathered:
            self._due = loop.time() + self.options.linger
            loop.call_later(self.options.linger, self._wake.set)
        self._gathered.append(result)
        self._taken += 1
        self._idle.clear()
        if len(self._gathered) >= self.options.batch_size:
            self._wake.set()
        return True

    def close(self) -> None:
        """No more results will come: send what is gathered."""
        self._closed = True
        self._wake.set()

    async def drain(self) -> None:
        """Send what is gathered now; return once every job taken so far has its row."""
        self._flush = True
        self._wake.set()
        await self._idle.wait()
        self._flush = False

    def stop(self) -> None:
        """Send no more run calls and stop waiting: the jobs left end unresolved."""
        self._stopping.set()
        if self.starter is not None:
            self.starter.stop()
        self._wake.set()

    async def run(self) -> None:
        """Send each batch as it fills (or lingers out) until ``close``; then finish them all."""
        loop = asyncio.get_running_loop()
        size = self.options.batch_size
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                now_or_never = self._closed or self._flush or loop.time() >= self._due
                while len(self._gathered) >= size or (self._gathered and now_or_never):
                    batch = self._gathered[:size]
                    del self._gathered[:size]
                    self._spawn(batch)
                if self._closed and not self._gathered:
                    break
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            if self.waiter is not None:
                await self.waiter.close()

    def _spawn(self, batch: list[JobResult]) -> None:
        task = asyncio.create_task(self._handle(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, batch: list[JobResult]) -> None:
        """Start one batch, wait for it, and write its rows, whatever fails on the way."""
        rows: dict[int, JobResult] = {r.job_id: r for r in batch if r.job_id is not None}
        try:
            records = await self._records(list(rows.values()))
            async with self._busy:
                if self.starter is not None:
                    started = await self._start(records, rows)
                else:
                    started = await self._already_started(rows)
            if self.waiter is not None and started:
                await self._wait(started, rows)
            records = await self._records([rows[i] for i in started])
            for job_id in started:
                record = records.get(rows[job_id].name or "")
                if record is not None and record.job_id == job_id:
                    rows[job_id] = _with_times(rows[job_id], record)
        except (ApiError, LedgerError) as exc:
            log.error("rollout.failed", error=str(exc), jobs=len(batch))
            if self.fatal is None:
                self.fatal = ErrorInfo(str(exc))
            rows = {job_id: _unfinished(row, str(exc)) for job_id, row in rows.items()}
        finally:
            for result in batch:  # the same job twice (a name given twice): a row each
                done = rows.get(result.job_id) if result.job_id is not None else None
                self._write(result if done is None else _start_fields(result, done))

    async def _records(self, batch: Sequence[JobResult]) -> dict[str, StartRecord]:
        names = [r.name for r in batch if r.name is not None]
        return await self._ledger.start_records(self._project, names) if names else {}

    async def _start(
        self, records: dict[str, StartRecord], rows: dict[int, JobResult]
    ) -> list[int]:
        """Start the batch; the rows get the start's result; the job ids to wait for."""
        assert self.starter is not None
        jobs = []
        for r in rows.values():
            assert r.job_id is not None and r.name is not None
            record = records.get(r.name)
            if record is not None and record.job_id != r.job_id:
                record = None  # about another job of that name: this one was never started
            fresh = r.outcome is Outcome.CREATED and not r.adopted
            jobs.append(StartJob(r.job_id, r.name, record, fresh=fresh))
        results = await self.starter.start(jobs)
        if self.starter.fatal is not None and self.fatal is None:
            self.fatal = self.starter.fatal
        waited = []
        for result in results:
            rows[result.job_id] = _with_start(rows[result.job_id], result)
            if result.kind is StartKind.STARTED:
                self._on_phase("started")
            if result.kind in _WAITED:
                waited.append(result.job_id)
        return waited

    async def _already_started(self, rows: dict[int, JobResult]) -> list[int]:
        """``--wait`` alone: the jobs on their way up or running, from one status read."""
        seen = await self.reader.read(dict.fromkeys(rows))
        waited = []
        for job_id, row in list(rows.items()):
            sighting = seen.get(job_id)
            if sighting is None:
                rows[job_id] = replace(
                    row, health=Health.GONE.value, start_error="the job does not exist"
                )
                continue
            status = sighting.status.status
            now = phase(status)
            if status in ACTIVE or now is Phase.UNSURE:
                rows[job_id] = replace(row, status=status)
                waited.append(job_id)
            elif status in FAILED:
                reason = failure_reason(status, sighting.status.status_desc)
                rows[job_id] = replace(
                    row, status=status, health=Health.FAILED.value, start_error=reason
                )
            else:
                why = "never started" if status == INIT else f"stopped ({status})"
                rows[job_id] = replace(
                    row,
                    start=StartKind.NOT_STARTED.value,
                    status=status,
                    start_error=f"not waited for: {why}; --start starts it",
                )
        return waited

    async def _wait(self, job_ids: list[int], rows: dict[int, JobResult]) -> None:
        """Wait for the verdicts of ``job_ids`` (or a stop); the rows get them."""
        assert self.waiter is not None
        self.waiter.track(
            Watched(job_id, rows[job_id].name or "", restarts=rows[job_id].restarts)
            for job_id in job_ids
        )
        verdicts = asyncio.ensure_future(self.waiter.wait(job_ids))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({verdicts, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not verdicts.done():
            verdicts.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await verdicts
            for job_id in job_ids:
                rows[job_id] = _unfinished(rows[job_id], "run stopped before it was healthy")
            return
        for job_id, verdict in verdicts.result().items():
            rows[job_id] = _with_verdict(rows[job_id], verdict)
            if verdict.health is Health.HEALTHY:
                self._on_phase("running")

    def _write(self, row: JobResult) -> None:
        self._rows += 1
        if is_failure(row):
            self.failures += 1
            if row.start in BAD_STARTS or row.health in BAD_HEALTH:
                self._on_phase("start failed")
        self._on_row(row)
        if self._rows == self._taken and not self._gathered:
            self._idle.set()


def _with_start(row: JobResult, result: StartResult) -> JobResult:
    bad = result.kind not in _WAITED
    return replace(
        row,
        start=result.kind.value,
        status=result.status or row.status,
        start_error=result.error if bad else None,
    )


def _with_verdict(row: JobResult, verdict: Verdict) -> JobResult:
    good = verdict.health in GOOD_HEALTH
    return replace(
        row,
        health=verdict.health.value,
        status=verdict.status or row.status,
        running_at=verdict.running_at or row.running_at,
        start_error=row.start_error if good else verdict.reason,
    )


def _with_times(row: JobResult, record: StartRecord) -> JobResult:
    return replace(
        row,
        started_at=record.started_at,
        running_at=row.running_at or record.running_at,
        status=row.status or record.last_status,
    )


def _unfinished(row: JobResult, why: str) -> JobResult:
    """A job whose start or wait could not end: unresolved if not started, else not healthy."""
    if row.start is None:
        return replace(row, start=StartKind.UNRESOLVED.value, start_error=why)
    if row.start in _WAITED_VALUES and row.health is None:
        return replace(row, health=INTERRUPTED, start_error=why)
    return row


def _start_fields(row: JobResult, done: JobResult) -> JobResult:
    """``row`` with the start and wait fields of ``done`` (the same job)."""
    return replace(
        row,
        start=done.start,
        health=done.health,
        status=done.status,
        started_at=done.started_at,
        running_at=done.running_at,
        start_error=done.start_error,
    )
