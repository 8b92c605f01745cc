"""The pool: takes jobs from a Source and creates each exactly once, under failure.

The source is read in batches looked up in the ledger at once; a job the ledger records as
created ends there (``create_rules``), the others are each a task, bounded in number, that
``Creator.process`` works until it has an outcome (a second job of a name in flight waits for
the first). A crash leaves jobs in doubt (``submitting``): before anything is sent they are
matched against one listing of the server. Ledger writes are made whatever becomes of the
task that asked for them (the Ledger protocol), as arq shields ``finish_job``.

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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import orjson
import structlog

from batchsub.client import DliClient
from batchsub.create_rules import CreateAction, decide_create
from batchsub.creator import CreateParts, Creator, RunControl, RunStopped
from batchsub.errors import (
    ApiError,
    LedgerError,
    LedgerRefusedError,
)
from batchsub.jobs import (
    ErrorInfo,
    InvalidManifest,
    JobResult,
    JobSpec,
    LedgerRecord,
    LedgerState,
    ManifestItem,
    Outcome,
    RememberedJob,
)
from batchsub.ledgers.outage import Outage
from batchsub.limiter import RateLimiter
from batchsub.model import error_field, validate_spec
from batchsub.protocols import Ledger, Source
from batchsub.reconcile import Reconciler
from batchsub.retry import RetryBudget, RetryPolicy

log = structlog.get_logger("batchsub.submitter")

LOOKUP_BATCH = 256
_T = TypeVar("_T")


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
        self._log = log.bind()  # bound now: see Creator
        self._ledger = ledger
        self._reconciler = reconciler
        self._on_result = on_result
        # A finite source is read to its end after a stop, so that every manifest appears in
        # the report (as not sent); an endless one (drop folder, queue) stops being read.
        self._finish_source_on_stop = finish_source_on_stop
        self._project = client.project_id
        self._run = RunControl(endless=not finish_source_on_stop, on_stop=self._stop_reading)
        parts = CreateParts(client, ledger, limiter, policy, budget, reconciler)
        self._creator = Creator(
            self._run,
            parts,
            concurrency=concurrency,
            rng=rng or random.Random(),
            in_doubt_grace=in_doubt_grace,
            claim_window=claim_window,
            monotonic=monotonic,
        )
        self._reader: asyncio.Task[None] | None = None
        self._in_doubt_grace = in_doubt_grace
        self._outage = outage  # the ledger's: the source waits while the ledger is down
        # Jobs in progress (most of them asleep in a backoff or a grace period) are bounded
        # by a larger number than the requests in flight (``concurrency``), which bounds memory.
        self._job_slots = asyncio.Semaphore(concurrency * 4 + 16)
        self._group: asyncio.TaskGroup | None = None
        # Names being processed: a second job of the same name waits for the first. The
        # Event is made only when a second one comes (rare: duplicate drops, redeliveries).
        self._in_flight: dict[str, asyncio.Event | None] = {}

    @property
    def fatal(self) -> ErrorInfo | None:
        """What stopped the run, if an answer or the ledger did."""
        return self._run.fatal

    @property
    def creates_sent(self) -> int:
        """Create requests sent."""
        return self._creator.creates_sent

    @property
    def budget_exhausted(self) -> int:
        """Retries the retry budget refused (each then waited its full backoff)."""
        return self._creator.budget_exhausted

    def stop(self) -> None:
        """Stop taking new work: queued and unsent jobs end as unresolved, in-flight ones finish."""
        self._run.stop()

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
        return self._run.stopped

    async def run(self, source: Source) -> None:
        """Process every item of ``source``; returns when each has a result."""
        try:
            await self._recover_in_doubt()
        except LedgerError as exc:
            self._run.ledger_failed(exc)
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
        await self._run.pause(youngest + self._in_doubt_grace - time.time())
        try:
            remote = await self._creator.remote_snapshot()
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
                spec = record.spec()
                writes.append(
                    self._creator.write(spec, LedgerState.CREATED, job_id=job_id, adopted=True)
                )
                self._log.info("job.adopted", name=record.name, job_id=job_id, source=record.source)
            else:
                # Not there, and (unless a worker claimed it since we read it) not in flight.
                retry = self._creator.write(
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
                if self._run.stopped and not self._finish_source_on_stop:
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
            records, refused, lost = {}, {}, self._run.ledger_failed(exc)
        for item in batch:
            if isinstance(item, InvalidManifest):
                self._log.warning("job.invalid", source=item.source, error=item.error)
                await self._finish(
                    source,
                    item,
                    _invalid_result(item),
                )
                continue
            if isinstance(item, RememberedJob):  # its file is unchanged and every job exists
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
            known = _known_result(item, record)
            if (
                known is not None
                and known.outcome is Outcome.ALREADY_CREATED
                and (several := self._reconciler.ids_of(item.name))
            ):  # recorded once, but the server's list shows more than one of that name
                kept = several[0] if known.job_id is None else known.job_id
                known = self._creator.duplicated(item, kept, {kept, *several}, 0)
            if known is None and not item.validated and (problem := validate_spec(item)):
                # Never send what the model rejects, whatever the source checked.
                self._log.warning("job.invalid", source=item.source, error=problem.error)
                known = _invalid_result(problem)
            if known is not None:
                await self._finish(source, item, known)
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
            error = self._run.ledger_failed(exc)
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
            known = _known_result(job.spec, record)
            if known is not None:
                return known
            job = _Job(job.spec, record)
        self._in_flight[name] = None
        try:
            return await self._creator.process(job.spec, job.record)
        finally:
            waiting = self._in_flight.pop(name)
            if waiting is not None:
                waiting.set()

    async def _finish(self, source: Source, item: ManifestItem, result: JobResult) -> None:
        if isinstance(item, JobSpec) and restarts_on_exception(item):
            result = replace(result, restarts=True)
        self._on_result(result)
        await source.finish(item, result)

def restarts_on_exception(spec: JobSpec) -> bool:
    """True when the job's body sets ``restart_when_exception`` (DLI revives it after a failure)."""
    if b"restart_when_exception" not in spec.body:  # the common case, without parsing
        return False
    try:
        body = orjson.loads(spec.body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("restart_when_exception") is True


def _error_of(exc: ApiError) -> ErrorInfo:
    return ErrorInfo(str(exc), exc.code, exc.status)


def _known_result(spec: JobSpec, record: LedgerRecord | None) -> JobResult | None:
    """The result of a job the ledger records as created (as it is, or drifted), else None."""
    decision = decide_create(spec, record)
    if record is None or decision.action not in (CreateAction.EXISTS, CreateAction.DRIFTED):
        return None
    drifted = decision.action is CreateAction.DRIFTED
    return JobResult(
        spec.source,
        spec.name,
        Outcome.DRIFTED if drifted else Outcome.ALREADY_CREATED,
        job_id=record.job_id,
        error=decision.reason,
        adopted=record.adopted,
        drift=list(decision.drift),
    )


def _invalid_result(item: InvalidManifest) -> JobResult:
    """An invalid manifest's result, naming the field its error starts with."""
    field = error_field(item.source, item.error)
    return JobResult(item.source, item.name, Outcome.INVALID, error=item.error, error_field=field)
