"""A rig for the start and wait tests: a simulator on a fake clock, and the parts over it.

One fake clock drives everything: the simulator's job timelines, the status reader (and so
the waiter), the starter's grace and the in-memory ledger's stamps. Sleeping moves it, so a
test waits out a 30 s health check in milliseconds, while every call is real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from batchsub.auth import TokenAuth
from batchsub.client import DliClient
from batchsub.http_server import serve_app
from batchsub.ledgers.memory import MemoryStartLedger
from batchsub.lifecycle.start_rules import StartOptions
from batchsub.lifecycle.starter import Starter, StartJob
from batchsub.lifecycle.status_reader import StatusReader
from batchsub.lifecycle.waiter import Verdict, Waiter, WaitSettings
from batchsub.limiter import RateLimiter
from batchsub.retry import RetryingCaller, RetryPolicy
from batchsub.simulator import RunningSimulator, SimulatorConfig, create_app
from tests.support import PROJECT, TOKEN, FakeClock

EPOCH = 1_700_000_000.0
QUICK = {"start_seconds": (1.0, 2.0), "stop_seconds": (0.5, 0.5)}


def fake_sleep(clock: FakeClock, log: list[float] | None = None) -> Callable[[float], Any]:
    """A sleep that moves ``clock`` (and yields once), noting each delay in ``log``."""

    async def sleep(delay: float) -> None:
        if log is not None:
            log.append(delay)
        clock.now += max(0.0, delay)
        await asyncio.sleep(0)

    return sleep


@dataclass
class Rig:
    """A simulator, a client to it, and a reader and ledger the starters and waiters share."""

    sim: RunningSimulator
    http: aiohttp.ClientSession
    clock: FakeClock
    ledger: MemoryStartLedger
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    policy: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=6)
    )
    sleeps: list[float] = field(default_factory=list)
    client: DliClient = field(init=False)
    reader: StatusReader = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.client_for(TOKEN)
        self.reader = StatusReader(
            self.client, RetryingCaller(self.limiter, self.policy), clock=self.clock
        )

    def client_for(self, token: str, timeout: float = 2.0) -> DliClient:
        """A client of the rig's project with this token."""
        return DliClient(self.http, self.sim.url, PROJECT, TokenAuth(token), timeout=timeout)

    def starter(self, *, client: DliClient | None = None, **fields: Any) -> Starter:
        """A starter over the rig's ledger; ``fields`` override its settings."""
        fields.setdefault("in_doubt_grace", 5.0)
        fields.setdefault("options", StartOptions())
        fields.setdefault("wall_clock", self.clock)
        fields.setdefault("sleep", fake_sleep(self.clock))
        return Starter(
            client=client or self.client,
            reader=self.reader,
            ledger=self.ledger,
            limiter=self.limiter,
            policy=self.policy,
            **fields,
        )

    def waiter(
        self, on_verdict: Callable[[Verdict], None] | None = None, **settings: Any
    ) -> Waiter:
        """A waiter over the rig's reader and ledger, its sleeps noted in ``sleeps``."""
        return Waiter(
            self.reader,
            WaitSettings(**settings),
            ledger=self.ledger,
            project_id=PROJECT,
            wall_clock=self.clock,
            sleep=fake_sleep(self.clock, self.sleeps),
            on_verdict=on_verdict,
        )

    async def create(self, count: int, prefix: str = "job", **fields: Any) -> list[StartJob]:
        """Create jobs (queue q1 unless given) as fresh StartJobs."""
        jobs = []
        for index in range(count):
            name = f"{prefix}-{index:04d}"
            body = orjson.dumps({"name": name, "queue_name": "q1", **fields})
            answer = await self.client.create(body)
            assert answer.job_id is not None, answer
            jobs.append(StartJob(answer.job_id, name, fresh=True))
        return jobs

    def add(self, count: int, prefix: str = "job") -> list[StartJob]:
        """Put jobs straight into the simulator's store (no request: for a throttled server)."""
        jobs = []
        for index in range(count):
            name = f"{prefix}-{index:04d}"
            made = self.sim.store.add(name, {"name": name, "queue_name": "q1"}, 0, PROJECT)
            jobs.append(StartJob(made.job_id, name, fresh=True))
        return jobs

    async def again(self, jobs: Sequence[StartJob]) -> list[StartJob]:
        """The jobs as a rerun sees them: the ledger's records, statuses unknown."""
        records = await self.ledger.start_records(PROJECT, [job.name for job in jobs])
        return [StartJob(job.job_id, job.name, records.get(job.name)) for job in jobs]

    def stats(self) -> dict[str, Any]:
        """The simulator's stats of the project (what ``GET /_simulator/stats`` shows)."""
        return self.sim.store.stats(PROJECT)

    def runs(self) -> dict[str, tuple[int, int]]:
        """Per job name: (runs that started it, runs sent while it was not stopped)."""
        return {
            row["name"]: (row["runs"], row["runs_while_running"]) for row in self.stats()["jobs"]
        }

    def status(self, job_id: int) -> str:
        """The job's status in the simulator now (on the fake clock)."""
        job = self.sim.store.get(job_id)
        assert job is not None
        return job.status


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def rig(*, middleware: Middleware | None = None, **sim_fields: Any) -> AsyncIterator[Rig]:
    """A rig whose simulator has these config fields (on the fake clock, QUICK times).

    ``middleware`` (an aiohttp middleware) goes in front of the simulator: a gateway that
    misbehaves in ways the simulator's own faults do not.
    """
    clock = FakeClock(EPOCH)
    fields = {**QUICK, **sim_fields}
    fields.setdefault("project_id", PROJECT)
    fields.setdefault("tokens", frozenset({TOKEN}))
    app = create_app(SimulatorConfig(wall_clock=clock, **fields))
    if middleware is not None:
        app.middlewares.insert(0, middleware)
    runner, url = await serve_app(app, "127.0.0.1", 0, shutdown_timeout=2.0)
    sim = RunningSimulator(runner, url)
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(sim, http, clock, MemoryStartLedger(clock=clock))
    finally:
        await sim.close()
