"""The parts the start and wait benchmarks drive: plain creates, a starter, a waiter.

Everything talks real HTTP to a ``batchsub simulator`` process (``procs.Simulator``), under
one ``RateLimiter`` paced at the server's limit; the start ledger is the in-memory one (the
benchmarks measure API calls and wall time, not ledger commits).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from procs import PROJECT, TOKEN

from batchsub.answers import AnswerKind
from batchsub.auth import TokenAuth
from batchsub.client import DliClient, make_session
from batchsub.ledgers.memory import MemoryStartLedger
from batchsub.lifecycle.starter import Starter, StartJob
from batchsub.lifecycle.status_reader import StatusReader
from batchsub.lifecycle.waiter import Waiter, WaitSettings
from batchsub.limiter import RateLimiter
from batchsub.retry import RetryingCaller, RetryPolicy


@dataclass
class Parts:
    """A client of the simulator and what shares its limiter."""

    url: str
    client: DliClient
    limiter: RateLimiter
    policy: RetryPolicy
    reader: StatusReader
    ledger: MemoryStartLedger

    def starter(self, **fields: Any) -> Starter:
        """A starter over the shared parts."""
        fields.setdefault("in_doubt_grace", 2.0)
        return Starter(
            client=self.client,
            reader=self.reader,
            ledger=self.ledger,
            limiter=self.limiter,
            policy=self.policy,
            **fields,
        )

    def waiter(self, **settings: Any) -> Waiter:
        """A waiter over the shared reader, its polls paced by the shared limiter."""
        return Waiter(
            self.reader,
            WaitSettings(**settings),
            rate=self.limiter,
            ledger=self.ledger,
            project_id=PROJECT,
        )

    def stats(self) -> dict[str, Any]:
        """``GET /_simulator/stats`` of the project (not counted as a DLI call)."""
        with urllib.request.urlopen(f"{self.url}/_simulator/stats?project_id={PROJECT}") as resp:
            found: dict[str, Any] = json.load(resp)
        return found


@asynccontextmanager
async def parts(url: str, rate: float, concurrency: int = 16) -> AsyncIterator[Parts]:
    """The parts for a simulator at ``url`` whose server limit is ``rate`` requests/s."""
    session = make_session(concurrency)
    try:
        client = DliClient(session, url, PROJECT, TokenAuth(TOKEN), timeout=10.0)
        limiter = RateLimiter(rate)
        policy = RetryPolicy(base_delay=0.2, max_delay=5.0)
        reader = StatusReader(client, RetryingCaller(limiter, policy))
        yield Parts(url, client, limiter, policy, reader, MemoryStartLedger())
    finally:
        await session.close()


async def create_jobs(
    p: Parts, count: int, concurrency: int = 16, offset: int = 0
) -> list[StartJob]:
    """Plain creates through the client under the limiter (a 429 is sent again); fresh jobs."""
    names = iter(range(offset, offset + count))
    made: dict[int, StartJob] = {}

    async def worker() -> None:
        for index in names:
            name = f"bench-{index:05d}"
            body = orjson.dumps({"name": name, "queue_name": "q1", "cu_number": 2})
            while True:
                await p.limiter.acquire()
                answer = await p.client.create(body)
                if answer.kind is AnswerKind.CREATED and answer.job_id is not None:
                    made[index] = StartJob(answer.job_id, name, fresh=True)
                    break
                if not answer.throttled:
                    raise RuntimeError(f"create {name}: {answer}")
                p.limiter.on_throttled(answer.error.message if answer.error else None)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return [made[i] for i in range(offset, offset + count)]


def clock() -> float:
    """Seconds, for wall times."""
    return time.perf_counter()


def quiet() -> None:
    """Only warnings and errors from batchsub's loggers (a line per job would swamp the page)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
