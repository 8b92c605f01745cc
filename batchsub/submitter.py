"""The pool: takes jobs from a Source and creates each exactly once, under failure.

Per job: look it up in the ledger; claim it (commit the intent, ``submitting``); send under
the shared rate limiter; classify the answer; commit the outcome. A job whose answer was lost
is ``unknown`` and is reconciled (looked up by name, under a fresh claim) before it is ever
sent again. Ledger writes are shielded from cancellation, as arq's ``finish_job`` is.

Fencing: the claim is taken before the job waits for a request slot and its pacing turn (a
commit's latency inside the slot would idle it), and proven live again as the last step
before the request is written (``_still_ours``): it must outlast ``claim_window`` (the
request's timeout and margins) on the monotonic clock, else it is renewed, and a claim that
is no longer ours is never used. A claim numbered other than the ledger's count + 1 means
another worker claimed the job meanwhile: it is looked up before it is sent. Two job ids
seen for one name (a late answer, or the server's list) make the job ``duplicated``.

A ledger outage is waited out inside the ledger (``batchsub.ledgers.outage``): meanwhile no
job is claimed and the source is not read further, and outcomes wait in memory until they
can be written. A ledger call that fails for good (past a one-shot run's outage limit, or a
ledger error that is not an outage) stops a one-shot run; a daemon's job ends unresolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from batchsub.client import UNREADABLE, AnswerKind, CreateAnswer, DliClient
from batchsub.errors import (
    ApiError,
    FatalApiError,
    LedgerError,
    LedgerRefusedError,
    LedgerUnavailable,
)
from batchsub.jobs import (
    IN_DOUBT_STATES,
    Claim,
    ErrorInfo,
    InvalidManifest,
    JobResult,
    JobSpec,
    LedgerRecord,
    LedgerState,
    ManifestItem,
    Outcome,
    SettledJob,
)
from batchsub.ledgers.outage import Outage
from batchsub.limiter import RateLimiter, RetryBudget
from batchsub.manifest import diff_fields, error_field, validate_spec
from batchsub.protocols import Ledger, Source
from batchsub.reconcile import Reconciler
from batchsub.retry import RetryPolicy

log = structlog.get_logger("batchsub.submitter")

LOOKUP_BATCH = 256
_T = TypeVar("_T")


class RunStopped(Exception):
    """Raised inside a job when the run stops (fatal answer or shutdown) before it was sent."""


@dataclass(slots=True)
class _Job:
    spec: JobSpec
    record: LedgerRecord | None


class Submitter:
    """Creates the jobs of a Source through the DLI client, recording every step in the ledger."""

    def __init__(
        self,
        *,
        client: DliClient,
        ledger: Ledger,
        limiter: RateLimiter,
        policy: RetryPolicy,
        budget: RetryBudget,
        reconciler: Reconciler,
        concurrency: int,
        on_result: Callable[[JobResult], None],
        rng: random.Random | None = None,
        finish_source_on_stop: bool = True,
        in_doubt_grace: float = 5.0,
        claim_window: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        outage: Outage | None = None,
    ) -> None:
        # Bound now (logging is configured by then): a call skips structlog's lazy proxy,
        # a fifth of the cost of the log line every job writes.
        self._log = log.bind()
        self._client = client
        self._ledger = ledger
        self._limiter = limiter
        self._policy = policy
        self._budget = budget
        self._reconciler = reconciler
        self._concurrency = concurrency
        self._on_result = on_result
        # A finite source is read to its end after a stop, so that every manifest appears in
        # the report (as not sent); an endless one (drop folder, queue) stops being read.
        self._finish_source_on_stop = finish_source_on_stop
        self._rng = rng or random.Random()
        self._project = client.project_id
        self.fatal: ErrorInfo | None = None
        self._stopping = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.creates_sent = 0
        self._in_doubt_grace = in_doubt_grace
        # Seconds a claim must still hold when its create leaves (``_still_ours``), on the
        # monotonic clock the ledger's claim deadlines use (not the loop's cached time).
        self._claim_window = claim_window
        self._monotonic = monotonic
        self._outage = outage  # the ledger's: the source waits while the ledger is down
        # Requests in flight are bounded by ``concurrency``; jobs in progress (most of them
        # asleep in a backoff or a grace period) by a larger number, which bounds memory.
        self._requests = asyncio.Semaphore(concurrency)
        self._job_slots = asyncio.Semaphore(concurrency * 4 + 16)
        self._group: asyncio.TaskGroup | None = None
        # Names being processed: a second job of the same name waits for the first. The
        # Event is made only when a second one comes (rare: duplicate drops, redeliveries).
        self._in_flight: dict[str, asyncio.Event | None] = {}

    @property
    def budget_exhausted(self) -> int:
        """Retries the retry budget refused (each then waited its full backoff)."""
        return self._budget.exhausted

    def stop(self) -> None:
        """Stop taking new work: queued and unsent jobs end as unresolved, in-flight ones finish."""
        self._stopping.set()
        self._stop_reading()

    def _stop_reading(self) -> None:
        # An endless source waits for its next item (a file, a message): cancel that wait
        # rather than wait for one. A finite source is read to its end for the report.
        if not self._finish_source_on_stop and self._reader is not None:
            self._reader.cancel()
        if self._outage is not None:
            self._outage.stop_waiting()  # jobs waiting to be claimed end now, as not sent

    @property
    def stopped(self) -> bool:
        """True once a stop was asked for or a fatal answer arrived."""
        return self._stopping.is_set()

    async def run(self, source: Source) -> None:
        """Process every item of ``source``; returns when each has a result."""
        try:
            await self._recover_in_doubt()
        except LedgerError as exc:
            self._ledger_failed(exc)
        async with asyncio.TaskGroup() as group:
            self._group = group
            await self._feed(source)

    async def _recover_in_doubt(self) -> None:
        # A crash (even kill -9) leaves jobs in ``submitting``: they may exist. Match them
        # against one listing of the server before anything is sent.
        doubtful = await self._ledger.in_doubt(self._project)
        if not doubtful:
            return
        self._log.info("recover.start", in_doubt=len(doubtful))
        # A create sent just before a crash may still be running on the server.
        youngest = max(record.updated_at for record in doubtful)
        await self._pause(youngest + self._in_doubt_grace - time.time())
        try:
            remote = await self._remote_snapshot()
        except RunStopped as exc:
            # The jobs stay in doubt: each is looked up by name before it is sent.
            self._log.warning("recover.cannot_list", error=str(exc), in_doubt=len(doubtful))
            return
        adopted = 0
        writes = []
        for record in doubtful:
            job_id = remote.get(record.name)
            if job_id is not None:
                adopted += 1
                writes.append(
                    self._write(record.spec(), LedgerState.CREATED, job_id=job_id, adopted=True)
                )
                self._log.info("job.adopted", name=record.name, job_id=job_id, source=record.source)
            else:
                # Not there, and (unless a worker claimed it since we read it) not in flight.
                retry = self._write(
                    record.spec(), LedgerState.RETRYING, error=record.error, attempt=record.attempts
                )
                writes.append(retry)
        await asyncio.gather(*writes)  # queued together: one group commit, not one each
        self._log.info("recover.done", adopted=adopted, to_send=len(doubtful) - adopted)

    async def _feed(self, source: Source) -> None:
        # Items are pumped into a small buffer so that a burst is looked up in the ledger in
        # batches while a trickle (a drop folder, a queue) is dispatched at once.
        buffer: asyncio.Queue[ManifestItem | None] = asyncio.Queue(maxsize=LOOKUP_BATCH)
        pump = self._reader = asyncio.create_task(self._pump(source, buffer))
        try:
            while (first := await buffer.get()) is not None:
                batch = [first]
                ended = False
                while len(batch) < LOOKUP_BATCH and not buffer.empty():
                    item = buffer.get_nowait()
                    if item is None:
                        ended = True
                        break
                    batch.append(item)
                await self._dispatch(batch, source)
                if ended:
                    break
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if not pump.cancelled():
            pump.result()  # re-raise a source failure

    async def _pump(self, source: Source, buffer: asyncio.Queue[ManifestItem | None]) -> None:
        try:
            async for item in source.items():
                if self._stopping.is_set() and not self._finish_source_on_stop:
                    break
                await buffer.put(item)
                if self._outage is not None and self._outage.problem is not None:
                    # Take no more files or messages while no job could be claimed.
                    await self._outage.ready()
        finally:
            await buffer.put(None)

    async def _dispatch(self, batch: list[ManifestItem], source: Source) -> None:
        names = [item.name for item in batch if isinstance(item, JobSpec)]
        lost: str | None = None
        try:
            records, refused = await self._look_up(names)
        except LedgerError as exc:
            records, refused, lost = {}, {}, self._ledger_failed(exc)
        for item in batch:
            if isinstance(item, InvalidManifest):
                self._log.warning("job.invalid", source=item.source, error=item.error)
                await self._finish(source, item, _invalid_result(item))
                continue
            if isinstance(item, SettledJob):  # its file is unchanged and every job exists
                result = JobResult(
                    item.source,
                    item.name,
                    Outcome.ALREADY_CREATED,
                    job_id=item.job_id,
                    adopted=item.adopted,
                )
                await self._finish(source, item, result)
                continue
            if lost is not None:
                await self._finish(
                    source, item, JobResult(item.source, item.name, Outcome.UNRESOLVED, error=lost)
                )
                continue
            if item.name in refused:
                await self._finish(source, item, self._refused(item, refused[item.name]))
                continue
            record = records.get(item.name)
            settled = _settled_result(item, record)
            if (
                settled is not None
                and settled.outcome is Outcome.ALREADY_CREATED
                and (several := self._reconciler.ids_of(item.name))
            ):  # recorded once, but the server's list shows more than one of that name
                kept = several[0] if settled.job_id is None else settled.job_id
                settled = self._duplicated(item, kept, {kept, *several}, 0)
            if settled is None and not item.validated and (problem := validate_spec(item)):
                # Never send what the model rejects, whatever the source checked.
                self._log.warning("job.invalid", source=item.source, error=problem.error)
                settled = _invalid_result(problem)
            if settled is not None:
                await self._finish(source, item, settled)
                continue
            await self._job_slots.acquire()
            assert self._group is not None
            self._group.create_task(self._run_job(_Job(item, record), source))

    async def _look_up(
        self, names: list[str]
    ) -> tuple[dict[str, LedgerRecord], dict[str, LedgerRefusedError]]:
        """The ledger's records of ``names``, and the names it refuses to look up, with why."""
        if not names:
            return {}, {}
        try:
            return await self._ledger.get_many(self._project, names), {}
        except LedgerRefusedError as exc:
            if len(names) == 1:
                return {}, {names[0]: exc}
        # One name the ledger cannot hold must not fail the others: each is looked up alone.
        records: dict[str, LedgerRecord] = {}
        refused: dict[str, LedgerRefusedError] = {}
        for name in dict.fromkeys(names):
            try:
                records.update(await self._ledger.get_many(self._project, [name]))
            except LedgerRefusedError as exc:
                refused[name] = exc
        return records, refused

    def _refused(self, spec: JobSpec, exc: LedgerRefusedError) -> JobResult:
        """A job the ledger refuses to hold: failed, with why, and never sent."""
        error = f"not sent: the ledger refuses this job: {exc}"
        self._log.warning("job.refused_by_ledger", job=spec.name, error=str(exc))
        return JobResult(spec.source, spec.name, Outcome.FAILED, error=error)

    async def _run_job(self, job: _Job, source: Source) -> None:
        spec = job.spec
        structlog.contextvars.bind_contextvars(job=spec.name, source=spec.source)
        try:
            result = await self._one_at_a_time(job)
        except RunStopped as exc:
            result = JobResult(spec.source, spec.name, Outcome.UNRESOLVED, error=str(exc))
        except LedgerRefusedError as exc:
            result = self._refused(spec, exc)
        except LedgerError as exc:
            error = self._ledger_failed(exc)
            result = JobResult(spec.source, spec.name, Outcome.UNRESOLVED, error=error)
        finally:
            self._job_slots.release()
        await self._finish(source, spec, result)

    async def _one_at_a_time(self, job: _Job) -> JobResult:
        # The same name twice in flight (a drop folder, a queue redelivery) would be sent
        # twice: the second waits for the first, then goes by what the ledger says.
        name = job.spec.name
        while name in self._in_flight:
            busy = self._in_flight[name]
            if busy is None:
                busy = self._in_flight[name] = asyncio.Event()
            await busy.wait()
            record = (await self._ledger.get_many(self._project, [name])).get(name)
            settled = _settled_result(job.spec, record)
            if settled is not None:
                return settled
            job = _Job(job.spec, record)
        self._in_flight[name] = None
        try:
            return await self._process(job)
        finally:
            waiting = self._in_flight.pop(name)
            if waiting is not None:
                waiting.set()

    async def _finish(self, source: Source, item: ManifestItem, result: JobResult) -> None:
        self._on_result(result)
        await source.settle(item, result)

    async def _process(self, job: _Job) -> JobResult:
        spec = job.spec
        self._check_running()
        remote = await self._remote_snapshot()
        in_doubt = job.record is not None and job.record.state in IN_DOUBT_STATES
        known_id = remote.get(spec.name)
        if known_id is None and in_doubt and job.record is not None:
            # Sent by a worker that died (or a run that crashed) moments ago: its create may
            # still be running on the server.
            await self._pause(job.record.updated_at + self._in_doubt_grace - time.time())
        if known_id is not None:
            # It exists on the server already: adopt it, never create a second one.
            return await self._adopt(spec, known_id, ours=in_doubt)
        attempts = job.record.attempts if job.record is not None else 0
        return await self._attempts(spec, in_doubt=in_doubt, known=attempts)

    async def _adopt(
        self, spec: JobSpec, job_id: int, *, ours: bool, attempts: int = 0
    ) -> JobResult:
        """Record a job found on the server as created, and its result.

        ``ours``: a request of ours may have made it; else it existed before (a job made by
        hand, or one behind a duplicate-name answer).
        """
        kept = await self._write(spec, LedgerState.CREATED, job_id=job_id, adopted=True)
        if kept is None:
            kept = job_id  # recorded as given
        ids = {job_id, kept, *self._reconciler.ids_of(spec.name)}
        if len(ids) > 1:
            return self._duplicated(spec, kept, ids, attempts)
        self._log.info("job.adopted", job_id=job_id)
        outcome = Outcome.CREATED if ours else Outcome.ALREADY_CREATED
        return JobResult(
            spec.source, spec.name, outcome, job_id=job_id, attempts=attempts, adopted=True
        )

    def _duplicated(self, spec: JobSpec, kept: int, ids: set[int], attempts: int) -> JobResult:
        """Two jobs (or more) of one name exist: name them all, never hide one."""
        others = sorted(ids - {kept})
        self._log.error("job.duplicate", job=spec.name, job_id=kept, duplicate_job_ids=others)
        also = ", ".join(str(i) for i in others)
        error = (
            f"{len(ids)} jobs named {spec.name!r} exist: job_id {kept} (recorded in the ledger)"
            f" and {also}; delete the extra one in DLI"
        )
        return JobResult(
            spec.source,
            spec.name,
            Outcome.DUPLICATED,
            job_id=kept,
            error=error,
            attempts=attempts,
            duplicate_job_ids=others,
        )

    async def _attempts(self, spec: JobSpec, *, in_doubt: bool, known: int) -> JobResult:
        """Claim, (look up,) send and record until the job has an outcome.

        ``known``: the attempt count the ledger showed; a claim numbered otherwise means
        another worker claimed the job meanwhile, and may have sent it.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        failures = 0
        attempts = 0
        last: CreateAnswer | None = None
        maybe_ours = in_doubt  # an earlier request of ours may have created it
        while True:
            self._check_running()
            # The intent is committed before the request slot is taken: a commit's latency
            # inside the slot would cost every request that much of the pool. The claim is
            # proven live again just before the request leaves (``_send``).
            claim = await self._begin(spec)
            if claim is None:
                return JobResult(
                    spec.source,
                    spec.name,
                    Outcome.UNRESOLVED,
                    error="claimed by another batchsub worker",
                )
            in_doubt = in_doubt or claim.attempt != known + 1
            known = claim.attempt
            if in_doubt:
                # Looked up under our claim: nobody else can send it between lookup and send.
                adopted = await self._adopt_if_exists(spec, attempts, ours=maybe_ours, claim=claim)
                if adopted is not None:
                    return adopted
                if last is not None and last.kind is AnswerKind.DUPLICATE:
                    return await self._phantom_duplicate(spec, last, attempts, claim)
                in_doubt = False
            sent = await self._send(spec, claim)
            if sent is None:
                in_doubt = True  # another worker may have taken the job over, and sent it
                continue
            answer, sent_at = sent
            attempts += 1
            last = answer
            done = await self._record_answer(spec, answer, claim.attempt, sent_at)
            if done is not None:
                return done
            in_doubt = answer.kind in (AnswerKind.IN_DOUBT, AnswerKind.DUPLICATE)
            maybe_ours = maybe_ours or answer.kind is AnswerKind.IN_DOUBT
            if answer.kind is AnswerKind.DUPLICATE:
                continue  # look it up at once: the server says it exists
            delay = 0.0
            if not answer.throttled:
                failures += 1
                delay = self._backoff(failures, answer)
            if answer.kind is AnswerKind.IN_DOUBT:
                # A timeout or a gateway error does not stop the create on the server: give
                # it time to finish, or the lookup misses the job it is still making.
                delay = max(delay, self._in_doubt_grace)
            elapsed = loop.time() - started
            if not self._policy.should_retry(failures, elapsed, delay):
                return await self._give_up(
                    spec, last, in_doubt=in_doubt, attempts=attempts, ours=maybe_ours, known=known
                )
            self._log.info(
                "job.retry",
                attempt=claim.attempt,
                delay=round(delay, 3),
                error=str(answer.error),
                kind=answer.kind.value,
            )
            if delay:
                await self._pause(delay)

    async def _send(self, spec: JobSpec, claim: Claim) -> tuple[CreateAnswer, float] | None:
        """One create request under the request slots and the pacing; (answer, sent at).

        None, with nothing sent, when the claim cannot be proven live at the last moment.
        """
        async with self._requests:
            # Checked before and after the pacing wait: at a low rate, jobs queued for a
            # slot would otherwise each wait their turn before noticing a stop.
            if not self.stopped:
                await self._limiter.acquire()
            if self.stopped:
                # Never sent: say so, so that the next run needs no lookup for it.
                await self._write(spec, LedgerState.RETRYING, attempt=claim.attempt)
                self._check_running()
            if not await self._still_ours(spec, claim):
                return None
            self.creates_sent += 1
            sent_at = asyncio.get_running_loop().time()
            return await self._client.create(spec.body), sent_at

    async def _still_ours(self, spec: JobSpec, claim: Claim) -> bool:
        """Fencing: may a create leave now under ``claim``? The last step before it is sent.

        The claim must outlast the request (its timeout, and the margin of ``claim_window``)
        on the monotonic clock; a worker frozen, or kept waiting for a slot or its pacing
        turn, past that point renews it first, and sends nothing if it is not ours any more.
        """
        if claim.covers(self._monotonic(), self._claim_window):
            return True
        renewed = await _durably(self._ledger.renew(self._project, spec, claim))
        if renewed is not None and renewed.covers(self._monotonic(), self._claim_window):
            self._log.info("job.claim_renewed", attempt=claim.attempt)
            return True
        self._log.warning(
            "job.claim_lost",
            attempt=claim.attempt,
            reason="taken over" if renewed is None else "the ledger answered too late",
        )
        return False

    def _backoff(self, failures: int, answer: CreateAnswer) -> float:
        delay = self._policy.delay(failures, retry_after=answer.retry_after, rng=self._rng)
        if not self._budget.try_spend(timeout=answer.timed_out):
            # The API keeps failing: stop hammering it. Every retry now waits its whole
            # backoff (no jitter below it) until successes refill the budget.
            delay = max(delay, self._policy.ceiling(failures))
            if self.budget_exhausted % 50 == 1:
                self._log.warning(
                    "retry_budget.exhausted",
                    reason="more failures than successes: each retry waits its full backoff",
                    times=self.budget_exhausted,
                )
        return delay

    async def _record_answer(
        self, spec: JobSpec, answer: CreateAnswer, attempt: int, sent_at: float
    ) -> JobResult | None:
        """Commit what the answer says, fenced by the claim it was sent under (``attempt``)."""
        kind = answer.kind
        if kind is AnswerKind.CREATED:
            assert answer.job_id is not None
            try:
                kept = await self._write(spec, LedgerState.CREATED, job_id=answer.job_id)
            except LedgerError as exc:
                # It exists, and the report says so. Its row stays ``submitting``: the next
                # run (or worker) looks it up by name and adopts it, never sends it again.
                note = f"created as job {answer.job_id}, not recorded: {self._ledger_failed(exc)}"
                return JobResult(
                    spec.source, spec.name, Outcome.UNRESOLVED, job_id=answer.job_id, error=note
                )
            self._budget.refund()
            self._limiter.on_success()
            if kept is not None:  # another worker recorded another job of this name first
                return self._duplicated(spec, kept, {kept, answer.job_id}, attempt)
            self._log.info("job.created", job_id=answer.job_id, attempt=attempt)
            return JobResult(
                spec.source, spec.name, Outcome.CREATED, job_id=answer.job_id, attempts=attempt
            )
        error = answer.error or ErrorInfo("no error message")
        if kind is AnswerKind.FATAL:
            self._fail_run(error)  # first: no other request may leave while this one is written
            await self._write(spec, LedgerState.RETRYING, error=error, attempt=attempt)
            return JobResult(
                spec.source,
                spec.name,
                Outcome.UNRESOLVED,
                error=f"not created: {error}",
                attempts=attempt,
                error_code=error.code,
                http_status=error.http_status,
            )
        if kind is AnswerKind.PERMANENT:
            await self._write(spec, LedgerState.FAILED, error=error, attempt=attempt)
            self._log.warning("job.failed", attempt=attempt, error=str(error))
            return JobResult(
                spec.source,
                spec.name,
                Outcome.FAILED,
                error=str(error),
                attempts=attempt,
                error_code=error.code,
                http_status=error.http_status,
            )
        if answer.throttled:
            self._limiter.on_throttled(error.message, answer.retry_after, sent_at=sent_at)
            self._log.info("rate.throttled", rate=round(self._limiter.rate, 2), error=str(error))
        state = LedgerState.RETRYING if kind is AnswerKind.RETRY_SAFE else LedgerState.UNKNOWN
        await self._write(spec, state, error=error, attempt=attempt)
        return None

    async def _adopt_if_exists(
        self, spec: JobSpec, attempts: int, *, ours: bool, claim: Claim | None = None
    ) -> JobResult | None:
        """Look the job up by name; adopt it if it exists. Under ``claim`` if one is held:
        a failed lookup then releases it, leaving the job in doubt."""
        try:
            job_id = await self._reconciler.find(spec.name)
        except ApiError as exc:
            if claim is not None:
                error = ErrorInfo(f"could not be looked up: {exc}", exc.code, exc.status)
                await self._write(spec, LedgerState.UNKNOWN, error=error, attempt=claim.attempt)
            if isinstance(exc, FatalApiError):
                self._fail_run(_error_of(exc))
            raise RunStopped(f"answer lost and the job could not be looked up: {exc}") from None
        if job_id is None:
            self._log.info("job.not_found", attempts=attempts)
            return None
        return await self._adopt(spec, job_id, ours=ours, attempts=attempts)

    async def _phantom_duplicate(
        self, spec: JobSpec, last: CreateAnswer, attempts: int, claim: Claim
    ) -> JobResult:
        # Sending again would only get the same answer; a person has to look.
        error = ErrorInfo(
            f"the API says a job named {spec.name!r} exists, "
            f"but listing jobs does not show it ({last.error})",
            code=last.error.code if last.error else None,
            http_status=last.error.http_status if last.error else None,
        )
        await self._write(spec, LedgerState.FAILED, error=error, attempt=claim.attempt)
        self._log.warning("job.failed", error=str(error))
        return JobResult(
            spec.source,
            spec.name,
            Outcome.FAILED,
            error=str(error),
            attempts=attempts,
            error_code=error.code,
            http_status=error.http_status,
        )

    async def _give_up(
        self,
        spec: JobSpec,
        last: CreateAnswer | None,
        *,
        in_doubt: bool,
        attempts: int,
        ours: bool,
        known: int,
    ) -> JobResult:
        cause = last.error if last else None
        error = str(cause) if cause else "unknown error"
        if in_doubt:
            await self._pause(self._in_doubt_grace)
            adopted = await self._adopt_if_exists(spec, attempts, ours=ours)
            if adopted is not None:
                return adopted
            # Looked up and not there: it is known not to exist, safe to send next run
            # (unless another worker claimed it since: ``known`` fences the write).
            await self._write(
                spec, LedgerState.RETRYING, error=last.error if last else None, attempt=known
            )
        self._log.warning("job.gave_up", attempts=attempts, error=error)
        return JobResult(
            spec.source,
            spec.name,
            Outcome.FAILED,
            error=f"gave up after {attempts} attempts: {error}",
            attempts=attempts,
            error_code=cause.code if cause else None,
            http_status=cause.http_status if cause else None,
        )

    async def _remote_snapshot(self) -> dict[str, int]:
        try:
            return await self._reconciler.snapshot()
        except FatalApiError as exc:
            self._fail_run(_error_of(exc))
            raise RunStopped(f"not sent: {exc}") from None
        except ApiError as exc:
            # Only a transient failure that outlasted every retry gets here: the API is
            # unreachable, or its job list unreadable (never taken for an empty one). A
            # one-shot run stops (every other job would wait as long); a daemon leaves this
            # job unresolved, to be tried again, and stays up.
            reason = str(exc) if exc.code == UNREADABLE else f"cannot reach the API: {exc}"
            if self._finish_source_on_stop:
                self._fail_run(ErrorInfo(reason))  # the reason names any code and status
            raise RunStopped(f"not sent: {reason}") from None

    async def _begin(self, spec: JobSpec) -> Claim | None:
        return await _durably(self._ledger.begin_attempt(self._project, spec))

    async def _write(
        self,
        spec: JobSpec,
        state: LedgerState,
        *,
        job_id: int | None = None,
        error: ErrorInfo | None = None,
        adopted: bool = False,
        attempt: int | None = None,
    ) -> int | None:
        """Commit a state; for ``created``, the job_id kept instead of ``job_id``, if any."""
        # Shielded: an outcome the API already gave must reach the ledger even if we are
        # being cancelled; the cancellation is re-raised after the write.
        return await _durably(
            self._ledger.record(
                self._project,
                spec,
                state,
                job_id=job_id,
                error=error,
                adopted=adopted,
                attempt=attempt,
            )
        )

    async def _pause(self, delay: float) -> None:
        # A backoff that a stop cuts short: the job then ends as not sent (or in doubt).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    def _check_running(self) -> None:
        if self.fatal is not None:
            raise RunStopped(f"not sent: run stopped after {self.fatal}")
        if self._stopping.is_set():
            raise RunStopped("not sent: run interrupted")

    def _ledger_failed(self, exc: LedgerError) -> str:
        """A ledger call failed for good: the job's error. A one-shot run stops on it.

        An outage reaches here only past a one-shot run's limit, or when the run is stopping;
        a daemon stays up whatever the ledger says, and the job is tried again later.
        """
        daemon_outage = isinstance(exc, LedgerUnavailable) and not self._finish_source_on_stop
        refused = isinstance(exc, LedgerRefusedError)  # one job's values: the others go on
        if not daemon_outage and not refused and not self.stopped:
            self._fail_run(ErrorInfo(str(exc)))
        return str(exc)

    def _fail_run(self, error: ErrorInfo) -> None:
        if self.fatal is None:
            self.fatal = error
            self._log.error("run.fatal", error=str(error))
        self._stopping.set()
        self._stop_reading()


def _error_of(exc: ApiError) -> ErrorInfo:
    return ErrorInfo(str(exc), exc.code, exc.status)


async def _durably(write: Awaitable[_T]) -> _T:
    """Await a ledger write that a cancellation of the caller must not abort.

    A future is a write the ledger queued at the call (SQLite): it commits whatever happens
    to the caller, so it is awaited as is. A coroutine (PostgreSQL) is shielded.
    """
    if isinstance(write, asyncio.Future):
        queued: _T = await write
        return queued
    return await asyncio.shield(write)


def _invalid_result(item: InvalidManifest) -> JobResult:
    """An invalid manifest's result, naming the field its error starts with."""
    field = error_field(item.source, item.error)
    return JobResult(item.source, item.name, Outcome.INVALID, error=item.error, error_field=field)


def _settled_result(spec: JobSpec, record: LedgerRecord | None) -> JobResult | None:
    """The result for a job the ledger already settles (created before), else None."""
    if record is None or record.state is not LedgerState.CREATED:
        return None
    if record.body_hash != spec.body_hash:
        drift = diff_fields(record.body, spec.body)
        return JobResult(
            spec.source,
            spec.name,
            Outcome.DRIFTED,
            job_id=record.job_id,
            error="manifest changed since the job was created: " + ", ".join(drift),
            adopted=record.adopted,
            drift=drift,
        )
    return JobResult(
        spec.source,
        spec.name,
        Outcome.ALREADY_CREATED,
        job_id=record.job_id,
        adopted=record.adopted,
    )
