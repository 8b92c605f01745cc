"""Fixtures only (helpers are in ``tests/support.py`` and ``tests/*_support.py``): a clean
environment, real simulators on loopback, DLI calls to them, submitters over them, a small disk."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from batchsub.auth import TokenAuth
from batchsub.client import DliClient
from batchsub.jobs import JobResult
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.limiter import RateLimiter
from batchsub.logs import set_json_lines
from batchsub.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.faults import ensure_postgres_running, small_filesystem
from tests.run_support import Pool, PoolFactory, make_submitter
from tests.schema_support import report_problems
from tests.sim_support import Dli
from tests.support import PROJECT, TOKEN, DliFactory, SimulatorFactory, forget_cached_loggers


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # The machine's own credentials or settings must never leak into a test, and the
    # default config file is looked up relative to the working directory.
    for key in list(os.environ):
        if key.startswith(("BATCHSUB_", "HUAWEICLOUD_SDK_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield
    # A command run in process configures structlog for the whole process; later tests
    # (capture_logs among them) need the defaults back, and the module loggers it cached
    # (cache_logger_on_first_use) must be assembled afresh; and its last words
    # (batchsub.logs.say) go back to plain lines.
    structlog.reset_defaults()
    forget_cached_loggers()
    set_json_lines(False)


@pytest.fixture(autouse=True)
def _reports_match_the_schema(tmp_path: Path) -> Iterator[None]:
    # Every report a test wrote (batchsub's own, or a child's) conforms to the schema the
    # package ships: the schema cannot drift from what the code writes.
    yield
    problems = report_problems(tmp_path)
    assert not problems, "reports break batchsub/schemas/report.schema.json:\n" + "\n".join(
        problems
    )


@pytest.fixture(scope="session", autouse=True)
def _postgres_left_running() -> Iterator[None]:
    # A test that stopped PostgreSQL starts it again itself; this is the safety net, since
    # every other test (and other people's test runs) share the server.
    yield
    ensure_postgres_running()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 16 MiB tmpfs of the test's own (skipped where none can be mounted)."""
    directory = tmp_path / "disk"
    with small_filesystem(directory, "16m") as problem:
        if problem is not None:
            pytest.skip(problem)
        yield directory


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorFactory]:
    """Start simulators with the given config fields; all are closed after the test."""
    running: list[RunningSimulator] = []

    async def start(**fields: Any) -> RunningSimulator:
        fields.setdefault("project_id", PROJECT)
        fields.setdefault("tokens", frozenset({TOKEN}))
        sim = await start_simulator(SimulatorConfig(**fields))
        running.append(sim)
        return sim

    yield start
    for sim in running:
        await sim.close()


@pytest.fixture
async def dli(simulator: SimulatorFactory) -> AsyncIterator[DliFactory]:
    """Start a simulator with the given config fields; DLI calls to it for PROJECT."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def make(**fields: Any) -> Dli:
            return Dli(http, await simulator(**fields), PROJECT, TOKEN)

        yield make


@pytest.fixture
async def submitter(simulator: SimulatorFactory, tmp_path: Path) -> AsyncIterator[PoolFactory]:
    """Make submitters, each over a real simulator (its config fields in ``sim``) and a fresh
    SQLite ledger; other keywords go to the Submitter. All are closed after the test."""
    opened: list[tuple[aiohttp.ClientSession, SqliteLedger]] = []

    async def make(*, sim: dict[str, Any] | None = None, **fields: Any) -> Pool:
        running = await simulator(**(sim or {}))
        session = aiohttp.ClientSession()
        ledger = SqliteLedger(tmp_path / f"ledger-{len(opened)}.db")
        opened.append((session, ledger))
        await ledger.open()
        client = DliClient(session, running.url, PROJECT, TokenAuth(TOKEN), timeout=2.0)
        results: list[JobResult] = []
        pool = make_submitter(client, ledger, RateLimiter(0), on_result=results.append, **fields)
        return Pool(pool, running, ledger, client, results)

    yield make
    for session, ledger in opened:
        await ledger.close()
        await session.close()
