"""Send run or stop calls for many jobs, ``batch_size`` ids a call, as ``Starter`` does.

Up to ``concurrency`` calls in flight, under the shared limiter; a call that did nothing
(429, no connection) is sent again after the retry policy's backoff; a call refused as a
whole (a 400) is halved, and later calls are no larger (the largest ``job_ids`` allowed is
undocumented). What the answer says of each job comes back as a ``Sent``; nothing is
concluded from an element's position alone: a job whose element failed is ``REFUSED``, one
whose answer was lost ``LOST``, and its status decides either way (the caller reads it).
The intent of every call is committed (``before``) before it leaves.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import structlog

from batchsub.answers import BatchAnswer, BatchKind
from batchsub.client import DliClient
from batchsub.jobs import ErrorInfo
from batchsub.limiter import RateLimiter
from batchsub.retry import RetryPolicy

log = structlog.get_logger("batchsub.lifecycle.stopper")


class SentKind(StrEnum):
    """What one call's answer says of one job."""

    TOOK = "took"  # every element of its call says DLI took it
    REFUSED = "refused"  # refused (its element failed, or a 400 for it): did it take anyway?
    LOST = "lost"  # no answer (or one for a gone job): read its status; not taken: send again
    NOT_SENT = "not_sent"  # given up before it left (the retries ran out, a fatal answer)


@dataclass(frozen=True, slots=True)
class Sent:
    """One job's part of a call: the kind, and the message or error behind it."""

    kind: SentKind
    message: str | None = None


class BatchSender:
    """Sends ``stop`` or ``run`` calls for job ids, ``batch_size`` at a time."""

    def __init__(
        self,
        client: DliClient,
        limiter: RateLimiter,
        policy: RetryPolicy,
        *,
        batch_size: int = 100,
        concurrency: int = 4,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self._concurrency = concurrency
        self._client = client
        self._limiter = limiter
        self._policy = policy
        self.batch_size = batch_size
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.fatal: ErrorInfo | None = None
        self.calls = 0

    async def send(
        self,
        call: Literal["stop", "run"],
        job_ids: Sequence[int],
        *,
        flag: bool,
        before: Callable[[Sequence[int]], Awaitable[None]],
    ) -> dict[int, Sent]:
        """Send ``call`` for every id (``flag``: trigger_savepoint / resume_savepoint)."""
        results: dict[int, Sent] = {}
        ids = list(job_ids)
        groups = [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
        slots = asyncio.Semaphore(self._concurrency)

        async def one(group: list[int]) -> None:
            async with slots:
                await self._group(call, group, flag, before, results)

        async with asyncio.TaskGroup() as tasks:
            for group in groups:
                tasks.create_task(one(group))
        return results

    async def _group(
        self,
        call: Literal["stop", "run"],
        group: list[int],
        flag: bool,
        before: Callable[[Sequence[int]], Awaitable[None]],
        results: dict[int, Sent],
    ) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        begun = loop.time()
        while True:
            if self.fatal is not None:
                results.update({i: Sent(SentKind.NOT_SENT, str(self.fatal)) for i in group})
                return
            await before(group)
            await self._limiter.acquire()
            self.calls += 1
            sent_at = loop.time()
            if call == "stop":
                answer = await self._client.stop_jobs(group, trigger_savepoint=flag)
            else:
                answer = await self._client.run_jobs(group, resume_savepoint=flag)
            if answer.kind is not BatchKind.RETRY_SAFE:
                break
            error = answer.error or ErrorInfo("no error message")
            if answer.throttled:
                self._limiter.on_throttled(error.message, answer.retry_after, sent_at=sent_at)
                delay = answer.retry_after or 0.0
            else:
                failures += 1
                delay = self._policy.delay(failures, retry_after=answer.retry_after, rng=self._rng)
                if not self._policy.should_retry(failures, loop.time() - begun, delay):
                    reason = f"not sent after {failures} failed calls: {error}"
                    results.update({i: Sent(SentKind.NOT_SENT, reason) for i in group})
                    return
            log.info(f"{call}.retry", jobs=len(group), delay=round(delay, 3), error=str(error))
            await self._sleep(delay)
        await self._read(call, group, answer, flag, before, results)

    async def _read(
        self,
        call: Literal["stop", "run"],
        group: list[int],
        answer: BatchAnswer,
        flag: bool,
        before: Callable[[Sequence[int]], Awaitable[None]],
        results: dict[int, Sent],
    ) -> None:
        error = str(answer.error or ErrorInfo("no error message"))
        if answer.kind is BatchKind.ANSWERED:
            self._limiter.on_success()
            failed = [element.message for element in answer.elements if not element.ok]
            if not failed:
                results.update({i: Sent(SentKind.TOOK) for i in group})
                return
            # Which element is whose is unsure: every job of the call is confirmed, and one
            # that did not take gets the message (the one at its place when they all differ).
            for job_id, element in zip(group, answer.elements, strict=True):
                message = failed[0] if len(set(failed)) == 1 else element.message
                results[job_id] = Sent(SentKind.REFUSED, message or "refused")
            return
        if answer.kind is BatchKind.FATAL:
            self.fatal = answer.error or ErrorInfo("fatal answer")
            log.error("run.fatal", error=error)
            results.update({i: Sent(SentKind.LOST, error) for i in group})
            return
        if answer.kind is BatchKind.REFUSED and len(group) > 1:
            half = -(-len(group) // 2)
            self.batch_size = min(self.batch_size, half)
            log.warning(f"{call}.call_refused", jobs=len(group), batch_size=half, error=error)
            for part in (group[:half], group[half:]):
                await self._group(call, part, flag, before, results)
            return
        if answer.kind is BatchKind.REFUSED:
            results[group[0]] = Sent(SentKind.REFUSED, error)
            return
        # Lost, or a job of the call is gone: the statuses say what was done.
        results.update({i: Sent(SentKind.LOST, error) for i in group})
