"""One job's create, exactly once: adopt it if the server has it, else claim, send, record.

``Creator.process`` takes a job the ledger does not record as created (``create_rules``) and
works until it has an outcome: a job the server lists by name is adopted; otherwise each try
commits its claim (``submitting``) before the request leaves, proves the claim live as the
last step before it is written (fencing: ``_still_ours``), classifies the answer and commits
the outcome. A lost answer leaves the job ``unknown``, looked up by name under a fresh claim
before it is ever sent again. Two job ids seen for one name make the job ``duplicated``.

``RunControl`` is what the submitter and every job share of the run: whether it goes on, and
why it stopped (a signal, a fatal answer, a ledger that failed for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from batchsub.answers import AnswerKind, CreateAnswer
from batchsub.client import DliClient
from batchsub.create_rules import CreateAction, decide_create
from batchsub.errors import (
    UNREADABLE,
    ApiError,
    FatalApiError,
    LedgerError,
    LedgerRefusedError,
    LedgerUnavailable,
)
from batchsub.jobs import Claim, ErrorInfo, JobResult, JobSpec, LedgerRecord, LedgerState, Outcome
from batchsub.limiter import RateLimiter
from batchsub.protocols import Ledger
from batchsub.reconcile import Reconciler
from batchsub.retry import RetryBudget, RetryPolicy

log = structlog.get_logger("batchsub.submitter")


class RunStopped(Exception):
    """Raised inside a job when the run stops (fatal answer or shutdown) before it was sent."""


class RunControl:
    """Whether the run goes on, shared by the submitter and every job.

    ``endless``: a daemon's run (a drop folder, a queue), which a ledger outage or an
    unreachable API does not end. ``on_stop`` is told once the run stops taking work.
    """

    def __init__(self, *, endless: bool, on_stop: Callable[[], None]) -> None:
        self.endless = endless
        self.fatal: ErrorInfo | None = None
        self.stopping = asyncio.Event()
        self._on_stop = on_stop
        self._log = log.bind()

    @property
    def stopped(self) -> bool:
        """True once a stop was asked for or a fatal answer arrived."""
        return self.stopping.is_set()

    def stop(self) -> None:
        """Take no more work."""
        self.stopping.set()
        self._on_stop()

    async def pause(self, delay: float) -> None:
        """A backoff that a stop cuts short: the job then ends as not sent (or in doubt)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stopping.wait()

    def check(self) -> None:
        """Raise RunStopped once the run has stopped."""
        if self.fatal is not None:
            raise RunStopped(f"not sent: run stopped after {self.fatal}")
        if self.stopping.is_set():
            raise RunStopped("not sent: run interrupted")

    def ledger_failed(self, exc: LedgerError) -> str:
        """A ledger call failed for good: the job's error. A one-shot run stops on it.

        An outage reaches here only past a one-shot run's limit, or when the run is stopping;
        a daemon stays up whatever the ledger says, and the job is tried again later.
        """
        daemon_outage = isinstance(exc, LedgerUnavailable) and self.endless
        refused = isinstance(exc, LedgerRefusedError)  # one job's values: the others go on
        if not daemon_outage and not refused and not self.stopped:
            self.fail(ErrorInfo(str(exc)))
        return str(exc)

    def fail(self, error: ErrorInfo) -> None:
        """Stop the run for ``error`` (the first one is kept): every further job would fail so."""
        if self.fatal is None:
            self.fatal = error
            self._log.error("run.fatal", error=str(error))
        self.stop()


@dataclass(frozen=True, slots=True)
class CreateParts:
    """What every job's create goes through: the API, the ledger, the pacing and retries."""

    client: DliClient
    ledger: Ledger
    limiter: RateLimiter
    policy: RetryPolicy
    budget: RetryBudget
    reconciler: Reconciler


class Creator:
    """Creates jobs through the DLI client, one ``process`` per job, recording every step."""

    def __init__(
        self,
        run: RunControl,
        parts: CreateParts,
        *,
        concurrency: int,
        rng: random.Random,
        in_doubt_grace: float,
        claim_window: float,
        monotonic: Callable[[], float],
    ) -> None:
        # Bound now (logging is configured by then): a call skips structlog's lazy proxy,
        # which every job's log line would pay otherwise (bench/results.md section 10).
        self._log = log.bind()
        self._run = run
        self._client, self._ledger, self._reconciler = parts.client, parts.ledger, parts.reconciler
        self._limiter, self._policy, self._budget = parts.limiter, parts.policy, parts.budget
        self._rng = rng
        self._project = parts.client.project_id
        self._in_doubt_grace = in_doubt_grace
        # Seconds a claim must still hold when its create leaves (``_still_ours``), on the
        # monotonic clock the ledger's claim deadlines use (not the loop's cached time).
        self._claim_window = claim_window
        self._monotonic = monotonic
        # Requests in flight are bounded by ``concurrency``; jobs in progress by the submitter.
        self._requests = asyncio.Semaphore(concurrency)
        self.creates_sent = 0

    @property
    def budget_exhausted(self) -> int:
        """Retries the retry budget refused (each then waited its full backoff)."""
        return self._budget.exhausted

    async def process(self, spec: JobSpec, record: LedgerRecord | None) -> JobResult:
        """Work ``spec`` (its ledger row: ``record``) until it has an outcome; never raises
        for the API (RunStopped: the run stopped first; LedgerError: the ledger failed)."""
        self._run.check()
        remote = await self.remote_snapshot()
        in_doubt = decide_create(spec, record).action is CreateAction.RECONCILE
        known_id = remote.get(spec.name)
        if known_id is None and in_doubt and record is not None:
            # Sent by a worker that died (or a run that crashed) moments ago: its create may
            # still be running on the server.
            await self._run.pause(record.updated_at + self._in_doubt_grace - time.time())
        if known_id is not None:
            # It exists on the server already: adopt it, never create a second one.
            return await self._adopt(spec, known_id, ours=in_doubt)
        attempts = record.attempts if record is not None else 0
        return await self._attempts(spec, in_doubt=in_doubt, known=attempts)

    async def _adopt(
        self, spec: JobSpec, job_id: int, *, ours: bool, attempts: int = 0
    ) -> JobResult:
        """Record a job found on the server as created, and its result.

        ``ours``: a request of ours may have made it; else it existed before (a job made by
        hand, or one behind a duplicate-name answer).
        """
        kept = await self.write(spec, LedgerState.CREATED, job_id=job_id, adopted=True)
        if kept is None:
            kept = job_id  # recorded as given
        ids = {job_id, kept, *self._reconciler.ids_of(spec.name)}
        if len(ids) > 1:
            return self.duplicated(spec, kept, ids, attempts)
        self._log.info("job.adopted", job_id=job_id)
        outcome = Outcome.CREATED if ours else Outcome.ALREADY_CREATED
        return JobResult(
            spec.source, spec.name, outcome, job_id=job_id, attempts=attempts, adopted=True
        )

    def duplicated(self, spec: JobSpec, kept: int, ids: set[int], attempts: int) -> JobResult:
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
            self._run.check()
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
                await self._run.pause(delay)

    async def _send(self, spec: JobSpec, claim: Claim) -> tuple[CreateAnswer, float] | None:
        """One create request under the request slots and the pacing; (answer, sent at).

        None, with nothing sent, when the claim cannot be proven live at the last moment.
        """
        async with self._requests:
            # Checked before and after the pacing wait: at a low rate, jobs queued for a
            # slot would otherwise each wait their turn before noticing a stop.
            if not self._run.stopped:
                await self._limiter.acquire()
            if self._run.stopped:
                # Never sent: say so, so that the next run needs no lookup for it.
                await self.write(spec, LedgerState.RETRYING, attempt=claim.attempt)
                self._run.check()
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
        renewed = await self._ledger.renew(self._project, spec, claim)
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
            if self._budget.exhausted % 50 == 1:
                self._log.warning(
                    "retry_budget.exhausted",
                    reason="more failures than successes: each retry waits its full backoff",
                    times=self._budget.exhausted,
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
                kept = await self.write(spec, LedgerState.CREATED, job_id=answer.job_id)
            except LedgerError as exc:
                # It exists, and the report says so. Its row stays ``submitting``: the next
                # run (or worker) looks it up by name and adopts it, never sends it again.
                note = (
                    f"created as job {answer.job_id}, not recorded: {self._run.ledger_failed(exc)}"
                )
                return JobResult(
                    spec.source, spec.name, Outcome.UNRESOLVED, job_id=answer.job_id, error=note
                )
            self._budget.refund()
            self._limiter.on_success()
            if kept is not None:  # another worker recorded another job of this name first
                return self.duplicated(spec, kept, {kept, answer.job_id}, attempt)
            self._log.info("job.created", job_id=answer.job_id, attempt=attempt)
            return JobResult(
                spec.source, spec.name, Outcome.CREATED, job_id=answer.job_id, attempts=attempt
            )
        error = answer.error or ErrorInfo("no error message")
        if kind is AnswerKind.FATAL:
            self._run.fail(error)  # first: no other request may leave while this one is written
            await self.write(spec, LedgerState.RETRYING, error=error, attempt=attempt)
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
            await self.write(spec, LedgerState.FAILED, error=error, attempt=attempt)
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
        await self.write(spec, state, error=error, attempt=attempt)
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
                await self.write(spec, LedgerState.UNKNOWN, error=error, attempt=claim.attempt)
            if isinstance(exc, FatalApiError):
                self._run.fail(_error_of(exc))
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
        await self.write(spec, LedgerState.FAILED, error=error, attempt=claim.attempt)
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
            await self._run.pause(self._in_doubt_grace)
            adopted = await self._adopt_if_exists(spec, attempts, ours=ours)
            if adopted is not None:
                return adopted
            # Looked up and not there: it is known not to exist, safe to send next run
            # (unless another worker claimed it since: ``known`` fences the write).
            await self.write(
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

    async def remote_snapshot(self) -> dict[str, int]:
        try:
            return await self._reconciler.snapshot()
        except FatalApiError as exc:
            self._run.fail(_error_of(exc))
            raise RunStopped(f"not sent: {exc}") from None
        except ApiError as exc:
            # Only a transient failure that outlasted every retry gets here: the API is
            # unreachable, or its job list unreadable (never taken for an empty one). A
            # one-shot run stops (every other job would wait as long); a daemon leaves this
            # job unresolved, to be tried again, and stays up.
            reason = str(exc) if exc.code == UNREADABLE else f"cannot reach the API: {exc}"
            if not self._run.endless:
                self._run.fail(ErrorInfo(reason))  # the reason names any code and status
            raise RunStopped(f"not sent: {reason}") from None

    async def _begin(self, spec: JobSpec) -> Claim | None:
        return await self._ledger.begin_attempt(self._project, spec)

    async def write(
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
        # An outcome the API already gave reaches the ledger even if we are being cancelled:
        # the ledger makes the write whatever becomes of this task (the Ledger protocol).
        return await self._ledger.record(
            self._project, spec, state, job_id=job_id, error=error, adopted=adopted, attempt=attempt
        )


def _error_of(exc: ApiError) -> ErrorInfo:
    return ErrorInfo(str(exc), exc.code, exc.status)
