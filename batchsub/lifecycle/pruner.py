"""Delete the jobs batchsub created or adopted that no manifest names any more (``--prune``).

Only jobs the ledger records as created in this project are ever given here (the caller
lists them first); nothing else on the server is touched. Per job, in the update ledger's
row (``protocols.UpdateLedger``): the intent, then ``pruning`` committed before any call,
then ``pruned``. A job still running is stopped first (no savepoint: it is going away; stop
calls go 100 ids a call, ``stopper.BatchSender``), then deleted (``DELETE .../jobs/{id}``,
which takes a job in any state). A lost delete answer is settled by looking the job up: gone
means deleted; a job already gone is pruned without a call. A rerun finishes a ``pruning``
row the same way.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from batchsub.answers import JOB_GONE, Kind
from batchsub.client import DliClient
from batchsub.errors import ApiError
from batchsub.jobs import ErrorInfo, UpdateRecord, UpdateState, UpdateStep
from batchsub.lifecycle.status_reader import StatusReader
from batchsub.lifecycle.statuses import ACTIVE
from batchsub.lifecycle.stopper import BatchSender
from batchsub.limiter import RateLimiter
from batchsub.protocols import UpdateLedger
from batchsub.retry import RetryingCaller, RetryPolicy

log = structlog.get_logger("batchsub.lifecycle.pruner")


@dataclass(frozen=True, slots=True)
class PruneJob:
    """A job to delete: its ledger name and id, and the body it was created with."""

    name: str
    job_id: int
    body: bytes
    body_hash: str


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What became of one job: deleted (``pruned``), or why not."""

    name: str
    job_id: int
    pruned: bool
    error: str | None = None


class Pruner:
    """Stops and deletes orphaned jobs, recording each step in the update ledger."""

    def __init__(
        self,
        *,
        client: DliClient,
        reader: StatusReader,
        caller: RetryingCaller,
        ledger: UpdateLedger,
        limiter: RateLimiter,
        policy: RetryPolicy,
        batch_size: int = 100,
        in_doubt_grace: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._reader = reader
        self._caller = caller
        self._ledger = ledger
        self._limiter = limiter
        self._policy = policy
        self._grace = in_doubt_grace
        self._sleep = sleep
        self._sender = BatchSender(client, limiter, policy, batch_size=batch_size, sleep=sleep)
        self._project = client.project_id
        self.deletes_sent = 0
        self.fatal: ErrorInfo | None = None

    async def prune(self, jobs: Sequence[PruneJob]) -> list[PruneResult]:
        """Delete these jobs; one result per job."""
        results: dict[str, PruneResult] = {}
        intents = [
            UpdateRecord(j.name, j.job_id, UpdateState.PLANNED, j.body, j.body_hash, b"{}")
            for j in jobs
        ]
        claimed = await self._ledger.begin_update(self._project, intents) if intents else set()
        for job in jobs:
            if job.name not in claimed:
                results[job.name] = PruneResult(job.name, job.job_id, False, "an update holds it")
        todo = [j for j in jobs if j.name in claimed]
        if todo:
            await self._steps(todo, UpdateState.PRUNING, sent=True)
            try:
                seen = await self._reader.read({j.job_id: None for j in todo})
            except ApiError as exc:
                return self._left(jobs, results, f"status unreadable: {exc}")
            running = [
                j.job_id for j in todo if (s := seen.get(j.job_id)) and s.status.status in ACTIVE
            ]
            if running:

                async def nothing(ids: Sequence[int]) -> None:
                    return None

                await self._sender.send("stop", running, flag=False, before=nothing)
            for job in todo:
                if job.job_id in seen and seen[job.job_id] is None:
                    results[job.name] = PruneResult(job.name, job.job_id, True)
                else:
                    results[job.name] = await self._delete(job)
        done = [j for j in todo if results[j.name].pruned]
        await self._steps(done, UpdateState.PRUNED)
        failed = [j for j in todo if not results[j.name].pruned]
        for job in failed:
            error = results[job.name].error
            await self._commit([UpdateStep(job.name, job.job_id, UpdateState.FAILED, error)])
        return [results[j.name] for j in jobs]

    async def _delete(self, job: PruneJob) -> PruneResult:
        failures = 0
        loop = asyncio.get_running_loop()
        begun = loop.time()
        while self.fatal is None:
            await self._limiter.acquire()
            self.deletes_sent += 1
            answer = await self._client.delete_job(job.job_id)
            error = answer.error or ErrorInfo("no error message")
            if answer.kind is Kind.OK or error.code == JOB_GONE:
                log.info("job.pruned", job=job.name, job_id=job.job_id)
                return PruneResult(job.name, job.job_id, True)
            if answer.kind is Kind.FATAL:
                self.fatal = error
                break
            if answer.kind is Kind.REFUSED:
                return PruneResult(job.name, job.job_id, False, f"delete refused: {error}")
            if answer.kind is Kind.IN_DOUBT:
                await self._sleep(self._grace)
                if await self._gone(job):
                    return PruneResult(job.name, job.job_id, True)
            failures += 1
            delay = self._policy.delay(failures, retry_after=answer.retry_after)
            if not self._policy.should_retry(failures, loop.time() - begun, delay):
                return PruneResult(job.name, job.job_id, False, f"not deleted: {error}")
            await self._sleep(delay)
        return PruneResult(job.name, job.job_id, False, f"not deleted: {self.fatal}")

    async def _gone(self, job: PruneJob) -> bool:
        try:
            await self._caller.call(
                "job_detail", functools.partial(self._client.job_detail, job.job_id)
            )
        except ApiError as exc:
            return exc.code == JOB_GONE
        return False

    def _left(
        self, jobs: Sequence[PruneJob], results: dict[str, PruneResult], why: str
    ) -> list[PruneResult]:
        for job in jobs:
            results.setdefault(job.name, PruneResult(job.name, job.job_id, False, why))
        return [results[j.name] for j in jobs]

    async def _steps(
        self, jobs: Sequence[PruneJob], state: UpdateState, *, sent: bool = False
    ) -> None:
        if jobs:
            await self._commit([UpdateStep(j.name, j.job_id, state, None, sent) for j in jobs])

    async def _commit(self, steps: Sequence[UpdateStep]) -> None:
        await asyncio.shield(
            asyncio.ensure_future(self._ledger.record_update(self._project, steps))
        )
