"""Helpers the tests share: the test project and its credential, manifests and settings for a
run against a simulator, a hand-moved clock, small jobs, waiting on a condition, drop-folder
files. Fixtures are in ``conftest.py``; helpers of one kind in ``tests/*_support.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from structlog._config import BoundLoggerLazyProxy

from batchsub.jobs import Claim, JobSpec
from batchsub.settings import Settings

PROJECT = "proj-test"


TOKEN = "test-token-0123456789"


REPO = Path(__file__).resolve().parent.parent


SimulatorFactory = Callable[..., Any]


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


def attempt_of(claim: Claim | None) -> int | None:
    """The attempt number of a ledger claim, None when the ledger refused the claim."""
    return None if claim is None else claim.attempt


# --- waiting, and drop-folder files ---------------------------------------------------


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "queue_name": "testQueue", "cu_number": 2, **fields}


def drop(folder: Path, name: str, content: Any) -> Path:
    """Write a manifest as a producer should: under a hidden name, then rename it into place."""
    data = content.encode() if isinstance(content, str) else orjson.dumps(content)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, folder / name)
    return folder / name


def names_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file())


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (polling), or fail the test."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def forget_cached_loggers() -> None:
    """Make batchsub's module loggers assemble themselves afresh from structlog's settings.

    A command run in process configures structlog and caches those loggers
    (``cache_logger_on_first_use``): a later test's ``capture_logs`` would see nothing.
    """
    for name, module in list(sys.modules.items()):
        if name.startswith("batchsub") and module is not None:
            for value in vars(module).values():
                if isinstance(value, BoundLoggerLazyProxy):
                    vars(value).pop("bind", None)
