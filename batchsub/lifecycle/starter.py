"""Start jobs that exist, each exactly once, under failure.

Per job: decide from the ledger and the job's DLI status (``start_rules.decide_start``);
commit the intent (``starting``) before the run call; send it under the shared limiter;
commit the outcome after it. The run answer is an array of ``{is_success, message}`` with no
job ids, in an order that only "probably follows job_ids", so nothing is concluded from an
element's position alone:

- every element a success: every job of the call started (order does not matter);
- any element a failure: each job's status says whether it started; a job that did not is
  given its element's message when the failures sit exactly where those jobs were sent (or
  all failures say the same), else it is sent again alone to hear its own answer;
- an answer lost (timeout, dropped connection, 5xx, DLI.0999): after ``in_doubt_grace`` the
  statuses say which jobs started (``decide_start`` on the in-doubt record); only those still
  in the status the start was decided on are sent again;
- 429 or no connection: nothing was done, sent again (429s slow the limiter, not counted);
- a 400 for the whole call: nothing was done; the call is halved (the largest ``job_ids``
  allowed is undocumented) and later calls are no larger; a single job refused has failed;
- DLI.16001: a job is gone; the statuses say which, and which of the others started.

Jobs are sent ``batch_size`` (default 100) ids per call, chosen over one id per call by
``bench/start_modes.py`` (``bench/results.md`` section 6): a hundredth of the run calls, so
a hundredth of the rate budget and of the wall time under a rate limit, and a lost answer
costs one grace and one status read for the whole call instead of for each job; neither way
ever ran a job twice. Run and stop are not retried by ``RetryingCaller``: their retries are
decided here, from the statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import structlog

from batchsub.answers import BatchAnswer, BatchElement, BatchKind
from batchsub.client import DliClient
from batchsub.errors import ApiError, FatalApiError
from batchsub.jobs import ErrorInfo, StartIntent, StartOutcome, StartRecord, StartState, StatusSeen
from batchsub.lifecycle.start_rules import StartAction, StartOptions, decide_start
from batchsub.lifecycle.status_reader import Seen, StatusReader
from batchsub.lifecycle.statuses import INIT
from batchsub.limiter import RateLimiter
from batchsub.protocols import StartLedger
from batchsub.retry import RetryPolicy

log = structlog.get_logger("batchsub.lifecycle.starter")
_T = TypeVar("_T")
GONE = "the job does not exist (DLI.16001)"


class StartKind(StrEnum):
    """What a start did for one job, as the report shows it."""

    STARTED = "started"  # a run of batchsub's took it (now, or an in-doubt start confirmed)
    ACTIVE = "active"  # already submitting or running: nothing sent
    NOT_STARTED = "not_started"  # left alone by the rules (stopped on purpose, unclear status)
    START_FAILED = "start_failed"  # refused, gone, or failed before (the error says)
    UNRESOLVED = "unresolved"  # not sent or not confirmed yet: a rerun decides it


@dataclass(frozen=True, slots=True)
class StartJob:
    """A job that exists, and what the ledger knows of its start.

    ``fresh``: created by this run's own request just now, so known to be ``job_init``
    without reading its status.
    """

    job_id: int
    name: str
    record: StartRecord | None = None
    fresh: bool = False


@dataclass(frozen=True, slots=True)
class StartResult:
    """The final word on one job's start in one run: the start fields of a report row."""

    job_id: int
    name: str
    kind: StartKind
    status: str | None = None  # the DLI status seen, when one was
    error: str | None = None
    attempts: int = 0  # run calls begun for it by this starter


@dataclass(slots=True)
class _Pending:
    job: StartJob
    status_before: str  # the status the start was decided on
    attempts: int  # the ledger's start_attempts as last written (the compare-and-set)
    sent: int = 0  # run calls begun by this starter

    @property
    def job_id(self) -> int:
        return self.job.job_id

    @property
    def name(self) -> str:
        return self.job.name


@dataclass(slots=True)
class _Call:
    """The jobs of one ``start`` call, and what became of them."""

    queue: deque[_Pending] = field(default_factory=deque)
    results: dict[int, StartResult] = field(default_factory=dict)


class Starter:
    """Starts existing jobs through the DLI client, recording every step in the ledger."""

    def __init__(
        self,
        *,
        client: DliClient,
        reader: StatusReader,
        ledger: StartLedger,
        limiter: RateLimiter,
        policy: RetryPolicy,
        options: StartOptions | None = None,
        batch_size: int = 100,
        concurrency: int = 4,
        in_doubt_grace: float = 5.0,
        resume_savepoint: bool = False,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self._client = client
        self._reader = reader
        self._ledger = ledger
        self._limiter = limiter
        self._policy = policy
        self._options = options or StartOptions()
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._grace = in_doubt_grace
        self._resume = resume_savepoint
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._project = client.project_id
        self._stopping = asyncio.Event()
        self.fatal: ErrorInfo | None = None
        self.runs_sent = 0

    @property
    def batch_size(self) -> int:
        """Job ids per run call now (lowered when DLI refuses a call as a whole)."""
        return self._batch_size

    def stop(self) -> None:
        """Send nothing more: jobs not sent yet, or not confirmed yet, end unresolved."""
        self._stopping.set()

    async def start(self, jobs: Sequence[StartJob]) -> list[StartResult]:
        """Start those of ``jobs`` the rules say to start; one result per job, in order.

        A job given twice is handled once (and has one result, given twice).
        """
        call, given = _Call(), jobs
        firsts: dict[int, StartJob] = {}
        for job in given:
            firsts.setdefault(job.job_id, job)
        jobs = list(firsts.values())
        await self._decide(jobs, call)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._concurrency, len(call.queue))):
                group.create_task(self._worker(call))
        return [call.results[job.job_id] for job in given]

    # --- deciding -------------------------------------------------------------------------

    async def _decide(self, jobs: Sequence[StartJob], call: _Call) -> None:
        """Queue the jobs to start; give every other job its result."""
        now = self._wall_clock()
        to_read: list[StartJob] = []
        for job in jobs:
            record = job.record
            state = record.state if record is not None else None
            if record is not None and state is StartState.STARTING and _claimed(record, now):
                self._result(call, job, StartKind.UNRESOLVED, error="claimed by another worker")
            elif job.fresh and state is None:
                attempts = record.attempts if record is not None else 0
                call.queue.append(_Pending(job, INIT, attempts))
            else:
                to_read.append(job)
        if not to_read:
            return
        # A start sent just before a crash (or by a worker that died) may still be on its way.
        doubtful = [
            j.record.updated_at
            for j in to_read
            if j.record is not None and j.record.state is StartState.STARTING
        ]
        youngest = max((at for at in doubtful if at is not None), default=None)
        if youngest is not None:
            await self._pause(youngest + self._grace - self._wall_clock())
        seen = await self._read_or_leave(to_read, call, "its status could not be read")
        if seen is not None:
            await self._by_status(to_read, seen, call)

    async def _by_status(self, jobs: Sequence[StartJob], seen: Seen, call: _Call) -> None:
        """Queue the jobs the rules start from the status seen; record what it says of the rest."""
        confirmed, statuses, failed = [], [], []
        for job in jobs:
            sighting = seen.get(job.job_id)
            status = sighting.status if sighting is not None else None
            decision = decide_start(job.record, status, self._options)
            action, shown = decision.action, status.status if status else None
            attempts = job.record.attempts if job.record is not None else 0
            if action is StartAction.START and status is not None:
                call.queue.append(_Pending(job, status.status, attempts))
                continue
            if status is not None:
                statuses.append(StatusSeen(job.name, job.job_id, status.status))
            if action is StartAction.CONFIRMED:
                confirmed.append(
                    StartOutcome(job.name, job.job_id, StartState.STARTED, None, shown)
                )
                self._result(call, job, StartKind.STARTED, shown)
            elif action is StartAction.ACTIVE:
                self._result(call, job, StartKind.ACTIVE, shown)
            elif action in (StartAction.FAILED_BEFORE, StartAction.GONE):
                error = decision.reason
                failed.append(
                    StartOutcome(job.name, job.job_id, StartState.START_FAILED, error, shown)
                )
                self._result(call, job, StartKind.START_FAILED, shown, error)
            else:
                self._result(call, job, StartKind.NOT_STARTED, shown, decision.reason)
        if statuses:
            await self._commit(self._ledger.record_status(self._project, statuses))
        outcomes = confirmed + [o for o in failed if _changes_state(o, jobs)]
        if outcomes:
            await self._commit(self._ledger.record_start(self._project, outcomes))

    # --- sending --------------------------------------------------------------------------

    async def _worker(self, call: _Call) -> None:
        while call.queue:
            size = min(self._batch_size, len(call.queue))
            group = [call.queue.popleft() for _ in range(size)]
            await self._run_group(group, call)

    async def _run_group(self, group: list[_Pending], call: _Call) -> None:
        """Send one call's jobs until each has started, failed, or cannot be decided now."""
        loop = asyncio.get_running_loop()
        begun_at = loop.time()
        failures = 0
        while group:
            if self._stopped():
                await self._not_sent(group, call, self._stop_reason())
                return
            group = await self._begin(group, call)
            if not group:
                return
            if self._stopped():  # checked again after the pacing wait, inside _send
                await self._not_sent(group, call, self._stop_reason())
                return
            answer, sent_at = await self._send(group)
            if answer is None:
                await self._not_sent(group, call, self._stop_reason())
                return
            again = await self._read_answer(group, answer, sent_at, call)
            if not again:
                return
            group = again
            delay = 0.0
            if not answer.throttled:
                failures += 1
                delay = self._policy.delay(failures, retry_after=answer.retry_after, rng=self._rng)
            if not self._policy.should_retry(failures, loop.time() - begun_at, delay):
                error = answer.error or ErrorInfo("no error message")
                reason = f"not started after {failures} failed calls: {error}"
                await self._not_sent(group, call, reason)
                return
            log.info("start.retry", jobs=len(group), delay=round(delay, 3), error=str(answer.error))
            await self._pause(delay)

    async def _begin(self, group: list[_Pending], call: _Call) -> list[_Pending]:
        """Commit the intents; the jobs claimed (a job another worker holds is left to it)."""
        intents = [StartIntent(p.name, p.job_id, p.status_before, p.attempts) for p in group]
        claimed = await self._commit(self._ledger.begin_start(self._project, intents))
        for pending in group:
            if pending.name in claimed:
                pending.attempts += 1
                pending.sent += 1
            else:
                error = "claimed by another worker"
                self._result(call, pending.job, StartKind.UNRESOLVED, error=error, tries=pending)
        return [p for p in group if p.name in claimed]

    async def _send(self, group: list[_Pending]) -> tuple[BatchAnswer | None, float]:
        await self._limiter.acquire()
        if self._stopped():
            return None, 0.0
        self.runs_sent += 1
        sent_at = asyncio.get_running_loop().time()
        ids = [p.job_id for p in group]
        return await self._client.run_jobs(ids, resume_savepoint=self._resume), sent_at

    # --- reading the answer ---------------------------------------------------------------

    async def _read_answer(
        self, group: list[_Pending], answer: BatchAnswer, sent_at: float, call: _Call
    ) -> list[_Pending]:
        """Record what the answer says; the jobs known not started, to send again."""
        kind = answer.kind
        error = answer.error or ErrorInfo("no error message")
        if kind is BatchKind.ANSWERED:
            if all(element.ok for element in answer.elements):
                self._limiter.on_success()
                await self._outcomes(call, group, StartState.STARTED)
                return []
            await self._confirm(group, answer.elements, call)
            return []
        if kind is BatchKind.RETRY_SAFE:
            if answer.throttled:
                self._limiter.on_throttled(error.message, answer.retry_after, sent_at=sent_at)
            return group
        if kind is BatchKind.FATAL:
            self._fail(error)
            await self._not_sent(group, call, f"not started: {error}")
            return []
        if kind is BatchKind.REFUSED:
            return await self._refused(group, error, call)
        # A lost answer, or a gone job: the statuses say which jobs started, once they have
        # had time to leave job_init (how soon they do is undocumented).
        log.info("start.in_doubt", jobs=len(group), kind=kind.value, error=str(error))
        await self._pause(self._grace)
        return await self._reconcile(group, error, call)

    async def _refused(
        self, group: list[_Pending], error: ErrorInfo, call: _Call
    ) -> list[_Pending]:
        if len(group) == 1:
            await self._outcomes(call, group, StartState.START_FAILED, str(error))
            return []
        half = -(-len(group) // 2)
        self._batch_size = min(self._batch_size, half)
        log.warning("start.call_refused", jobs=len(group), batch_size=half, error=str(error))
        for part in (group[:half], group[half:]):
            await self._run_group(part, call)
        return []

    async def _reconcile(
        self, group: list[_Pending], error: ErrorInfo, call: _Call
    ) -> list[_Pending]:
        """After a lost answer (or a gone job): which jobs started; the rest to send again."""
        seen = await self._read_or_leave(
            [p.job for p in group], call, f"start in doubt ({error}); status unreadable", group
        )
        if seen is None:
            return []
        again, started, failed = [], [], []
        for pending in group:
            sighting = seen.get(pending.job_id)
            record = StartRecord(
                pending.name, pending.job_id, StartState.STARTING, last_status=pending.status_before
            )
            decision = decide_start(record, sighting.status if sighting else None, self._options)
            if decision.action is StartAction.START:
                again.append(pending)
            elif decision.action is StartAction.CONFIRMED:
                started.append(pending)
            elif decision.action is StartAction.GONE:
                failed.append(pending)
            else:  # a status it is not safe to judge from: left in doubt for a rerun
                self._result(
                    call, pending.job, StartKind.UNRESOLVED, error=decision.reason, tries=pending
                )
        await self._outcomes(call, started, StartState.STARTED, seen=seen)
        await self._outcomes(call, failed, StartState.START_FAILED, GONE)
        return again

    async def _confirm(
        self, group: list[_Pending], elements: Sequence[BatchElement], call: _Call
    ) -> None:
        """An answer with failures: the statuses say who started, then who gets which error."""
        seen = await self._read_or_leave([p.job for p in group], call, "status unreadable", group)
        if seen is None:
            return
        started, gone, refused = [], [], []
        for pending in group:
            sighting = seen.get(pending.job_id)
            if sighting is None:
                gone.append(pending)
            elif sighting.status.status != pending.status_before:
                started.append(pending)
            else:
                refused.append(pending)
        await self._outcomes(call, started, StartState.STARTED, seen=seen)
        await self._outcomes(call, gone, StartState.START_FAILED, GONE)
        failed_at = [i for i, element in enumerate(elements) if not element.ok]
        messages = {elements[i].message for i in failed_at}
        refused_at = [group.index(p) for p in refused]
        if refused_at == failed_at:
            for pending, index in zip(refused, failed_at, strict=True):
                await self._outcomes(
                    call, [pending], StartState.START_FAILED, elements[index].message
                )
        elif not refused:
            return  # every job started, whatever the elements said (someone else's start)
        elif len(messages) == 1:
            await self._outcomes(call, refused, StartState.START_FAILED, messages.pop())
        else:
            # The answer's order does not match the jobs: hear each one's own answer, once
            # their statuses have had time to show a start (the answer said some started).
            await self._pause(self._grace)
            again = await self._reconcile(refused, ErrorInfo("answer order unclear"), call)
            for pending in again:
                await self._run_group([pending], call)

    # --- recording ------------------------------------------------------------------------

    async def _outcomes(
        self,
        call: _Call,
        group: Iterable[_Pending],
        state: StartState | None,
        error: str | None = None,
        *,
        seen: Seen | None = None,
    ) -> None:
        """Commit one outcome for these jobs (None: known not started), and their results."""
        group = list(group)
        if not group:
            return
        outcomes = []
        for pending in group:
            sighting = seen.get(pending.job_id) if seen is not None else None
            status = sighting.status.status if sighting is not None else None
            outcomes.append(StartOutcome(pending.name, pending.job_id, state, error, status))
        # Only rows this starter moved to starting are written: a job it never sent keeps
        # the record it had.
        written = [o for p, o in zip(group, outcomes, strict=True) if p.sent or state is not None]
        if written:
            await self._commit(self._ledger.record_start(self._project, written))
        kind = _KINDS[state]
        for pending, outcome in zip(group, outcomes, strict=True):
            self._result(call, pending.job, kind, outcome.status, error, tries=pending)
            if error is None:
                log.info(_EVENTS[kind], job=pending.name, job_id=pending.job_id)
            else:
                log.warning(_EVENTS[kind], job=pending.name, job_id=pending.job_id, error=error)

    async def _not_sent(self, group: list[_Pending], call: _Call, reason: str) -> None:
        """These jobs are known not started and nothing is in flight for them."""
        await self._outcomes(call, group, None, reason)

    async def _read_or_leave(
        self,
        jobs: Sequence[StartJob],
        call: _Call,
        why: str,
        tries: Sequence[_Pending] = (),
    ) -> Seen | None:
        """The jobs' statuses, or None with every job left unresolved (its record as it is)."""
        try:
            return await self._reader.read({job.job_id: None for job in jobs})
        except ApiError as exc:
            if isinstance(exc, FatalApiError):
                self._fail(ErrorInfo(str(exc), exc.code, exc.status))
            sent = {p.job_id: p for p in tries}
            for job in jobs:
                self._result(
                    call,
                    job,
                    StartKind.UNRESOLVED,
                    error=f"{why}: {exc}",
                    tries=sent.get(job.job_id),
                )
            return None

    def _result(
        self,
        call: _Call,
        job: StartJob,
        kind: StartKind,
        status: str | None = None,
        error: str | None = None,
        *,
        tries: _Pending | None = None,
    ) -> None:
        attempts = tries.sent if tries is not None else 0
        call.results[job.job_id] = StartResult(job.job_id, job.name, kind, status, error, attempts)

    async def _commit(self, write: Awaitable[_T]) -> _T:
        """Await a ledger write; a cancellation of the caller waits for it, then goes on."""
        task = asyncio.ensure_future(write)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise

    # --- stopping -------------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._stopping.is_set()

    def _stop_reason(self) -> str:
        if self.fatal is not None:
            return f"not started: run stopped after {self.fatal}"
        return "not started: run interrupted"

    def _fail(self, error: ErrorInfo) -> None:
        if self.fatal is None:
            self.fatal = error
            log.error("run.fatal", error=str(error))
        self._stopping.set()

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until a stop."""
        if delay <= 0 or self._stopped():
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()


_KINDS = {
    StartState.STARTED: StartKind.STARTED,
    StartState.START_FAILED: StartKind.START_FAILED,
    None: StartKind.UNRESOLVED,
}
_EVENTS = {
    StartKind.STARTED: "job.started",
    StartKind.START_FAILED: "job.start_failed",
    StartKind.UNRESOLVED: "job.start_unresolved",
}


def _claimed(record: StartRecord, now: float) -> bool:
    """Whether another live worker holds this starting row (shared ledgers only)."""
    return record.claim_until is not None and record.claim_until > now


def _changes_state(outcome: StartOutcome, jobs: Sequence[StartJob]) -> bool:
    """A failure found now is written unless the ledger already says start_failed."""
    record = next((j.record for j in jobs if j.job_id == outcome.job_id), None)
    return record is None or record.state is not StartState.START_FAILED
