"""Update existing jobs exactly once under failure, keeping a running job's state.

Per job, the steps of ``protocols.UpdateLedger``, each committed before the call it names:

- in place (only ``update_fields.IN_PLACE_FIELDS`` changed): PUT those fields, in any status;
- a job not running: PUT the full body;
- a running job (``restart``): stop it (``trigger_savepoint`` with ``savepoint``), wait until
  it is stopped, PUT the full body, run it again (``resume_savepoint`` with ``savepoint``).

Run and stop go ``batch_size`` ids a call (``stopper.BatchSender``); PUTs one job a call (the
API has no batch update), ``concurrency`` at a time; every call under the shared limiter.

A row left mid-step by a crash or a lost answer is settled before anything is sent again,
after ``in_doubt_grace`` from its last step:

- ``stopping``: a job seen running was not stopped and is sent a stop again; one stopping or
  stopped is not (never a second savepoint stop of a job already stopped);
- ``updating``: the job's detail, normalised (``detail_dialect``), says whether it holds the
  PUT body; only if not is the PUT sent again;
- ``restarting``: a job still in the stopped status the run found was not started and is
  run again; any other status means the run took (``start_rules.decide_start``).

Safety: a full body is PUT only to a job seen stopped (or not running when decided); a
running job is only ever sent the in-place fields. Nothing here creates a job: a job gone
is ``missing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson
import structlog

from batchsub.answers import JOB_GONE, JobStatus, Kind
from batchsub.client import DliClient
from batchsub.errors import ApiError, FatalApiError
from batchsub.jobs import (
    ErrorInfo,
    JobSpec,
    StartRecord,
    StartState,
    UpdateRecord,
    UpdateState,
    UpdateStep,
)
from batchsub.lifecycle import detail_dialect
from batchsub.lifecycle.apply_plan import ApplyDecision
from batchsub.lifecycle.start_rules import StartAction, StartOptions, decide_start
from batchsub.lifecycle.status_reader import Seen, StatusReader
from batchsub.lifecycle.statuses import FAILED, HALTED, INIT, RUNNING, STOPPED
from batchsub.lifecycle.stopper import BatchSender, Sent, SentKind
from batchsub.lifecycle.waiter import PollInterval
from batchsub.limiter import RateLimiter
from batchsub.protocols import UpdateLedger
from batchsub.retry import RetryingCaller, RetryPolicy

log = structlog.get_logger("batchsub.lifecycle.updater")
_T = TypeVar("_T")

# Stopped, so a full body may be PUT: every status that is not on its way up or down, or
# running, and not a failed stop (the job may still run).
STOPPED_LIKE = frozenset({INIT, *HALTED, *(FAILED - {"job_cancel_fail"})})


class UpdateKind(StrEnum):
    """What an update did for one job, as the report shows it."""

    UPDATED = "updated"  # the job holds the body (and runs again if it ran)
    FAILED = "failed"  # refused for good (the error says; a restarted job runs the old body)
    MISSING = "missing"  # the job is gone
    UNRESOLVED = "unresolved"  # not finished now: a rerun finishes it from the ledger


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """One job to update: a new decision (``spec`` and ``decision``), or a ledger row left
    unfinished (``record``), which is finished first whatever the manifest says now."""

    name: str
    job_id: int
    spec: JobSpec | None = None
    decision: ApplyDecision | None = None
    record: UpdateRecord | None = None


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The final word on one job's update in one run."""

    name: str
    job_id: int
    kind: UpdateKind
    restarted: bool = False  # stopped and run again by this update
    fields: tuple[str, ...] = ()  # the fields the PUT carried
    error: str | None = None
    status: str | None = None  # the last DLI status seen


@dataclass(slots=True)
class _Job:
    row: UpdateRecord
    last: JobStatus | None = None
    put_error: str | None = None  # a refused PUT of a restart: run again, then failed
    result: UpdateResult | None = None

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def job_id(self) -> int:
        return self.row.job_id


@dataclass(slots=True)
class _Run:
    jobs: dict[str, _Job] = field(default_factory=dict)

    def at(self, *states: UpdateState) -> list[_Job]:
        return [j for j in self.jobs.values() if j.result is None and j.row.state in states]


@dataclass(frozen=True, slots=True)
class UpdateTimes:
    """How long to wait for a stop, and how often to look meanwhile."""

    stop_timeout: float = 600.0
    poll_min: float = 1.0
    poll_max: float = 10.0


class Updater:
    """Carries updates out through the DLI client, recording every step in the ledger."""

    def __init__(
        self,
        *,
        client: DliClient,
        reader: StatusReader,
        caller: RetryingCaller,
        ledger: UpdateLedger,
        limiter: RateLimiter,
        policy: RetryPolicy,
        savepoint: bool = False,
        batch_size: int = 100,
        concurrency: int = 8,
        in_doubt_grace: float = 5.0,
        times: UpdateTimes | None = None,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._reader = reader
        self._caller = caller
        self._ledger = ledger
        self._limiter = limiter
        self._policy = policy
        self._savepoint = savepoint
        self._concurrency = max(1, concurrency)
        self._grace = in_doubt_grace
        self._times = times or UpdateTimes()
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._sender = BatchSender(client, limiter, policy, batch_size=batch_size, sleep=sleep)
        self._project = client.project_id
        self.fatal: ErrorInfo | None = None
        self.puts_sent = 0

    @property
    def calls(self) -> int:
        """Stop and run calls sent."""
        return self._sender.calls

    async def update(self, jobs: Sequence[UpdateJob]) -> list[UpdateResult]:
        """Carry out these updates; one result per job (resumed rows first, then new ones)."""
        run = _Run()
        resumed = [job for job in jobs if job.record is not None]
        claimed = set()
        if resumed:
            names = [job.name for job in resumed]
            claimed = await self._commit(self._ledger.claim_updates(self._project, names))
        for job in resumed:
            assert job.record is not None
            entry = run.jobs[job.name] = _Job(job.record)
            if job.name not in claimed:
                self._done(entry, UpdateKind.UNRESOLVED, "another worker is finishing it")
        await self._plan([j for j in jobs if j.record is None and j.name not in run.jobs], run)
        await self._settle_doubts(run)
        await self._stop(run)
        await self._wait_stopped(run)
        await self._put(run)
        await self._restart(run)
        await self._finish(run)
        return [j.result for j in run.jobs.values() if j.result is not None]

    # --- intents ---------------------------------------------------------------------------

    async def _plan(self, jobs: Sequence[UpdateJob], run: _Run) -> None:
        intents: list[UpdateRecord] = []
        for job in jobs:
            if job.spec is None or job.decision is None:
                continue
            decision = job.decision
            intents.append(
                UpdateRecord(
                    name=job.name,
                    job_id=job.job_id,
                    state=UpdateState.PLANNED,
                    body=job.spec.body,
                    body_hash=job.spec.body_hash,
                    put_body=orjson.dumps(decision.put_body, option=orjson.OPT_SORT_KEYS),
                    restart=decision.restart,
                    savepoint=decision.restart and self._savepoint,
                )
            )
        if not intents:
            return
        claimed = await self._commit(self._ledger.begin_update(self._project, intents))
        for intent in intents:
            entry = _Job(replace(intent, updated_at=self._wall_clock()))
            run.jobs[intent.name] = entry
            if intent.name not in claimed:
                self._done(entry, UpdateKind.UNRESOLVED, "an unfinished update of it is recorded")

    async def _settle_doubts(self, run: _Run) -> None:
        """Rows left mid-call by an earlier run: wait out the grace, then look."""
        doubtful = run.at(UpdateState.STOPPING, UpdateState.UPDATING, UpdateState.RESTARTING)
        if not doubtful:
            return
        youngest = max(j.row.updated_at for j in doubtful)
        await self._pause(youngest + self._grace - self._wall_clock())

    # --- stop ------------------------------------------------------------------------------

    async def _stop(self, run: _Run) -> None:
        """Stop the running jobs of restarts; a row left ``stopping`` is stopped again only
        if its job is still running."""
        jobs = [j for j in run.at(UpdateState.PLANNED, UpdateState.STOPPING) if j.row.restart]
        seen = await self._read(jobs, "its status could not be read")
        to_stop: list[_Job] = []
        for job in jobs:
            status = await self._status(job, seen)
            if status is None:
                continue
            if status == RUNNING:
                to_stop.append(job)
            elif job.row.state is UpdateState.STOPPING:
                continue  # stopping or stopped by the call sent before: waited for below
            elif status in STOPPED_LIKE:
                await self._fail(job, f"the job stopped ({status}) before it was updated")
            else:
                self._done(job, UpdateKind.UNRESOLVED, f"not updated: status {status}", status)
        attempts = 0
        while to_stop and self.fatal is None:
            attempts += 1
            sent = await self._send("stop", to_stop, UpdateState.STOPPING, self._savepoint)
            again: list[_Job] = []
            await self._pause_if_unsure(sent)
            seen = await self._read(
                [j for j in to_stop if sent[j.job_id].kind is not SentKind.TOOK]
            )
            for job in to_stop:
                answer = sent[job.job_id]
                if answer.kind is SentKind.TOOK or job.result is not None:
                    continue
                status = await self._status(job, seen)
                if status is None or status != RUNNING:
                    continue  # moved on: stopping (waited for below), or given its result
                if answer.kind is SentKind.LOST and attempts < self._policy.max_attempts:
                    again.append(job)  # not taken: still running after the grace
                else:
                    await self._fail(job, f"not stopped: {answer.message}", running=True)
            to_stop = again

    async def _wait_stopped(self, run: _Run) -> None:
        """Poll the jobs being stopped until each is stopped (``stopped`` committed)."""
        jobs = run.at(UpdateState.STOPPING)
        interval = PollInterval(self._times.poll_min, self._times.poll_max)
        deadline = self._reader.clock() + self._times.stop_timeout
        while jobs and self.fatal is None:
            seen = await self._read(jobs, "its status could not be read while it stopped")
            stopped, waiting = [], []
            for job in jobs:
                status = await self._status(job, seen)
                if status is None:
                    continue
                if status in STOPPED_LIKE:
                    stopped.append(job)
                elif status == "job_cancel_fail":
                    await self._fail(job, "the stop failed (job_cancel_fail)", running=True)
                else:
                    waiting.append(job)
            await self._steps(stopped, UpdateState.STOPPED)
            await self._steps(waiting, UpdateState.STOPPING)  # renews a shared ledger's lease
            jobs = waiting
            if not jobs:
                return
            if self._reader.clock() >= deadline:
                for job in jobs:
                    self._done(job, UpdateKind.UNRESOLVED, "not stopped in time", _shown(job))
                return
            await self._pause(interval.after(bool(stopped)))

    # --- PUT -------------------------------------------------------------------------------

    async def _put(self, run: _Run) -> None:
        """PUT every job that may take its body now; a row left ``updating`` is looked up."""
        ready = [
            j
            for j in run.at(UpdateState.PLANNED, UpdateState.STOPPED, UpdateState.UPDATING)
            if not (j.row.restart and j.row.state is UpdateState.PLANNED)
        ]
        queue = asyncio.Queue[_Job]()
        for job in ready:
            queue.put_nowait(job)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._concurrency, len(ready))):
                group.create_task(self._put_worker(queue))

    async def _put_worker(self, queue: asyncio.Queue[_Job]) -> None:
        while not queue.empty():
            job = queue.get_nowait()
            await self._put_one(job)

    async def _put_one(self, job: _Job) -> None:
        body: dict[str, Any] = orjson.loads(job.row.put_body)
        holds = await self._holds(job, body) if job.row.state is UpdateState.UPDATING else False
        failures = 0
        loop = asyncio.get_running_loop()
        begun = loop.time()
        while not holds and job.result is None:
            if self.fatal is not None:
                self._done(job, UpdateKind.UNRESOLVED, f"not updated: {self.fatal}", _shown(job))
                return
            await self._steps([job], UpdateState.UPDATING, sent=True)
            await self._limiter.acquire()
            self.puts_sent += 1
            answer = await self._client.update_job(job.job_id, body)
            error = answer.error or ErrorInfo("no error message")
            if answer.kind is Kind.OK:
                self._limiter.on_success()
                break
            if answer.kind is Kind.FATAL:
                self._stop_all(error)
                continue
            if answer.kind is Kind.REFUSED:
                if error.code == JOB_GONE:
                    await self._gone(job)
                else:
                    await self._put_refused(job, str(error))
                return
            if answer.throttled:
                self._limiter.on_throttled(error.message, answer.retry_after)
                await self._pause(answer.retry_after or 0.0)
                continue
            failures += 1
            delay = self._policy.delay(failures, retry_after=answer.retry_after)
            if not self._policy.should_retry(failures, loop.time() - begun, delay):
                self._done(job, UpdateKind.UNRESOLVED, f"update in doubt: {error}", _shown(job))
                return
            if answer.kind is Kind.IN_DOUBT:
                await self._pause(self._grace)
                holds = await self._holds(job, body)
            if not holds:
                await self._pause(delay)
        if job.result is None:
            await self._steps([job], UpdateState.UPDATED)

    async def _holds(self, job: _Job, body: dict[str, Any]) -> bool:
        """Whether the job's detail shows every field of the PUT body (after a lost answer)."""
        try:
            detail = await self._caller.call(
                "job_detail", functools.partial(self._client.job_detail_body, job.job_id)
            )
        except ApiError as exc:
            if exc.code == JOB_GONE:
                await self._gone(job)
                return True
            if isinstance(exc, FatalApiError):
                self._stop_all(ErrorInfo(str(exc), exc.code, exc.status))
            self._done(job, UpdateKind.UNRESOLVED, f"update in doubt; detail unreadable: {exc}")
            return True
        server = detail_dialect.normalise(detail)
        held = all(
            detail_dialect.held(server, key) == detail_dialect.held(body, key)
            for key in body
            if key in detail_dialect.MODEL_FIELDS
        )
        log.info("update.reconciled", job=job.name, job_id=job.job_id, held=held)
        return held

    async def _put_refused(self, job: _Job, error: str) -> None:
        if job.row.restart:
            # Stopped for nothing: it runs again on its old body, and the update has failed.
            job.put_error = f"update refused: {error}"
            await self._steps([job], UpdateState.UPDATED, error=job.put_error)
            return
        await self._fail(job, f"update refused: {error}")

    # --- restart ---------------------------------------------------------------------------

    async def _restart(self, run: _Run) -> None:
        """Run the restarted jobs again; a row left ``restarting`` is run again only if its job
        is still stopped."""
        fresh = [j for j in run.at(UpdateState.UPDATED) if j.row.restart]
        left = run.at(UpdateState.RESTARTING)
        to_run = list(fresh)
        if left:
            seen = await self._read(left, "its status could not be read")
            for job in left:
                status = await self._status(job, seen)
                if status is not None and self._not_started(status):
                    to_run.append(job)
                elif status is not None:
                    await self._started(job, status)
        attempts = 0
        while to_run and self.fatal is None:
            attempts += 1
            sent = await self._send("run", to_run, UpdateState.RESTARTING, self._savepoint)
            took = [j for j in to_run if sent[j.job_id].kind is SentKind.TOOK]
            await self._started_all(took, None)
            unsure = [j for j in to_run if j.result is None]  # the ones that took are done
            if not unsure:
                return
            await self._pause(self._grace)
            seen = await self._read(unsure)
            again = []
            for job in unsure:
                status = await self._status(job, seen)
                if status is None:
                    continue
                if not self._not_started(status):
                    await self._started(job, status)
                elif (
                    sent[job.job_id].kind is SentKind.LOST and attempts < self._policy.max_attempts
                ):
                    again.append(job)
                else:
                    message = sent[job.job_id].message
                    await self._fail(job, f"updated, but not started again: {message}")
            to_run = again

    def _not_started(self, status: str) -> bool:
        record = StartRecord("", 0, StartState.STARTING, last_status=STOPPED)
        seen = JobStatus(0, "", status)
        if status == INIT:
            record = replace(record, last_status=INIT)
        return decide_start(record, seen, StartOptions()).action is StartAction.START

    async def _started(self, job: _Job, status: str | None) -> None:
        await self._started_all([job], status)

    async def _started_all(self, jobs: Sequence[_Job], status: str | None) -> None:
        """DLI took the runs: done (one write), or failed when their PUT was refused."""
        done = [j for j in jobs if j.put_error is None and j.row.error is None]
        for job in jobs:
            if job.put_error is not None or job.row.error is not None:
                await self._fail(job, job.put_error or job.row.error or "update refused")
        await self._steps(done, UpdateState.DONE)
        for job in done:
            self._done(job, UpdateKind.UPDATED, status=status)

    async def _finish(self, run: _Run) -> None:
        """Updates with nothing more to do (in place, or a job not running): done."""
        done = [j for j in run.at(UpdateState.UPDATED) if not j.row.restart]
        await self._steps(done, UpdateState.DONE)
        for job in done:
            self._done(job, UpdateKind.UPDATED, status=_shown(job))
        for job in run.jobs.values():
            if job.result is None:
                reason = f"not finished: {self.fatal}" if self.fatal else "not finished"
                self._done(job, UpdateKind.UNRESOLVED, reason, _shown(job))

    # --- calls and the ledger --------------------------------------------------------------

    async def _send(
        self, call: Literal["stop", "run"], jobs: list[_Job], state: UpdateState, flag: bool
    ) -> dict[int, Sent]:
        by_id = {j.job_id: j for j in jobs}

        async def before(ids: Sequence[int]) -> None:
            await self._steps([by_id[i] for i in ids], state, sent=True)

        sent = await self._sender.send(call, list(by_id), flag=flag, before=before)
        if self._sender.fatal is not None:
            self._stop_all(self._sender.fatal)
        for job in jobs:
            if sent[job.job_id].kind is SentKind.NOT_SENT:
                self._done(job, UpdateKind.UNRESOLVED, sent[job.job_id].message, _shown(job))
        return sent

    async def _pause_if_unsure(self, sent: dict[int, Sent]) -> None:
        if any(s.kind in (SentKind.LOST, SentKind.REFUSED) for s in sent.values()):
            await self._pause(self._grace)

    async def _read(self, jobs: Iterable[_Job], why: str = "status unreadable") -> Seen:
        jobs = [j for j in jobs if j.result is None]
        if not jobs:
            return {}
        try:
            seen = await self._reader.read({j.job_id: j.last for j in jobs})
        except ApiError as exc:
            if isinstance(exc, FatalApiError):
                self._stop_all(ErrorInfo(str(exc), exc.code, exc.status))
            for job in jobs:
                self._done(job, UpdateKind.UNRESOLVED, f"{why}: {exc}", _shown(job))
            return {}
        for job in jobs:
            sighting = seen.get(job.job_id)
            if sighting is not None:
                job.last = sighting.status
        return seen

    async def _status(self, job: _Job, seen: Seen) -> str | None:
        """The status seen, or None with the job given its result (gone, or not read)."""
        if job.result is not None or job.job_id not in seen:
            return None
        sighting = seen[job.job_id]
        if sighting is None:
            await self._gone(job)
            return None
        return sighting.status.status

    async def _gone(self, job: _Job) -> None:
        error = f"job {job.job_id} does not exist (DLI.16001)"
        await self._steps([job], UpdateState.FAILED, error=error)
        self._done(job, UpdateKind.MISSING, error)

    async def _fail(self, job: _Job, error: str, *, running: bool = False) -> None:
        await self._steps([job], UpdateState.FAILED, error=error)
        self._done(job, UpdateKind.FAILED, error, RUNNING if running else _shown(job))

    async def _steps(
        self,
        jobs: Sequence[_Job],
        state: UpdateState,
        *,
        error: str | None = None,
        sent: bool = False,
    ) -> None:
        if not jobs:
            return
        steps = [
            UpdateStep(j.name, j.job_id, state, error or j.put_error or j.row.error, sent)
            for j in jobs
        ]
        await self._commit(self._ledger.record_update(self._project, steps))
        now = self._wall_clock()
        for job, step in zip(jobs, steps, strict=True):
            job.row = replace(job.row, state=state, error=step.error, updated_at=now)
        if state is not UpdateState.DONE:
            log.info("update.step", state=state.value, jobs=len(jobs))

    def _done(
        self, job: _Job, kind: UpdateKind, error: str | None = None, status: str | None = None
    ) -> None:
        if job.result is not None:
            return
        fields = tuple(sorted(orjson.loads(job.row.put_body)))
        job.result = UpdateResult(
            job.name, job.job_id, kind, job.row.restart and kind is UpdateKind.UPDATED,
            fields, error, status,
        )  # fmt: skip
        event = "job.updated" if kind is UpdateKind.UPDATED else f"job.update_{kind.value}"
        log.info(event, job=job.name, job_id=job.job_id, error=error)

    def _stop_all(self, error: ErrorInfo) -> None:
        if self.fatal is None:
            self.fatal = error
            log.error("run.fatal", error=str(error))

    async def _commit(self, write: Awaitable[_T]) -> _T:
        """Await a ledger write; a cancellation of the caller waits for it, then goes on."""
        task = asyncio.ensure_future(write)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise

    async def _pause(self, delay: float) -> None:
        if delay > 0 and self.fatal is None:
            await self._sleep(delay)


def _shown(job: _Job) -> str | None:
    return job.last.status if job.last is not None else None
