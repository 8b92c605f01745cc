"""Shared fixtures: a real simulator on loopback, manifest folders, clean settings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from batchsub.simulator import RunningSimulator, SimulatorConfig, start_simulator

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
