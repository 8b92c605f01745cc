"""Shared fixtures: a real simulator on loopback, manifest folders, clean settings."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from batchsub.jobs import Claim, JobSpec
from batchsub.settings import Settings
from batchsub.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.faults import ensure_postgres_running, small_filesystem
from tests.schema_support import report_problems
from tests.sim_support import Dli

PROJECT = "proj-test"
TOKEN = "test-token-0123456789"
REPO = Path(__file__).resolve().parent.parent


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
    # (capture_logs among them) need the defaults back.
    structlog.reset_defaults()


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


SimulatorFactory = Callable[..., Any]


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


def write_manifests(
    directory: Path, count: int, *, prefix: str = "job", **fields: Any
) -> list[str]:
    """Write ``count`` one-job JSON manifests; returns the job names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"{prefix}-{index:05d}"
        body = {"name": name, "queue_name": "testQueue", "cu_number": 2, **fields}
        (directory / f"{name}.json").write_bytes(orjson.dumps(body))
        names.append(name)
    return names


def fast_settings(url: str, ledger: Path, **overrides: Any) -> Settings:
    """Settings for a run against a test simulator: no rate limit, quick retries and waits."""
    values: dict[str, Any] = {
        "endpoint": url,
        "project_id": PROJECT,
        "auth_token": TOKEN,
        "ledger": str(ledger),
        "rate": 0,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "timeout": 2.0,
        "in_doubt_grace": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job_spec(name: str, source: str | None = None, body: bytes | None = None) -> JobSpec:
    """A small valid job, its source ``jobs/NAME.yaml`` unless given."""
    data = body if body is not None else b'{"name":"%s","queue_name":"q1"}' % name.encode()
    return JobSpec(
        name=name,
        body=data,
        body_hash=hashlib.sha256(data).hexdigest(),
        source=source if source is not None else f"jobs/{name}.yaml",
    )


DliFactory = Callable[..., Any]


@pytest.fixture
async def dli(simulator: SimulatorFactory) -> AsyncIterator[DliFactory]:
    """Start a simulator with the given config fields; DLI calls to it for PROJECT."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def make(**fields: Any) -> Dli:
            return Dli(http, await simulator(**fields), PROJECT, TOKEN)

        yield make


def attempt_of(claim: Claim | None) -> int | None:
    """The attempt number of a ledger claim, None when the ledger refused the claim."""
    return None if claim is None else claim.attempt
