"""A refused credential is refused once: the first request goes alone, and after a refusal no
other request leaves (more than 5 bad AK/SK signatures in a row lock the AK for 5 minutes).

Refusals are counted on the server side, by a proxy in front of the simulator that records the
status of every answer, for run, retry, watch and consume, whatever the pool and the backlog.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from batchsub.commands.queue import consume_source, prefetch_for, publish_directory
from batchsub.commands.retry import retry_failed
from batchsub.commands.watch import watch
from batchsub.jobs import LedgerState
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import Settings
from batchsub.sources.amqp import open_amqp_source
from batchsub.sources.directory import DirectorySource
from batchsub.sources.dropfolder import DropFolderSource
from tests.amqp_support import AMQP_URL, Broker, broker_listening
from tests.http_support import Recorder, proxying
from tests.support import (
    PROJECT,
    REPO,
    SimulatorFactory,
    drop,
    fast_settings,
    job,
    job_spec,
    names_in,
    write_manifests,
)

AK, SK = "AKWRONGSK0000000", "the-right-secret-key"
REFUSED = (401, 403)


@pytest.fixture
async def api(simulator: SimulatorFactory) -> AsyncIterator[tuple[str, Recorder]]:
    """The simulator with AK/SK auth on, behind a proxy that records every answer's status."""
    sim = await simulator(tokens=frozenset(), aksk={AK: SK}, duplicate_names="accept")
    async with proxying(sim.url, lambda request: None) as served:
        yield served


def wrong_sk(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return fast_settings(
        url, tmp_path / "ledger.db", auth_token=None, ak=AK, sk="a-wrong-secret", **overrides
    )


def refusals(seen: Recorder) -> int:
    return sum(status in REFUSED for status in seen.statuses)


@pytest.mark.parametrize("concurrency", [1, 8, 64])
@pytest.mark.parametrize("manifests", [1, 300])
async def test_run_is_refused_once_whatever_the_pool_and_the_backlog(
    api: tuple[str, Recorder], tmp_path: Path, concurrency: int, manifests: int
) -> None:
    url, seen = api
    write_manifests(tmp_path / "m", manifests)
    settings = wrong_sk(url, tmp_path, concurrency=concurrency)
    account = RunAccount(tmp_path / "r.json")
    code = await run_source(settings, DirectorySource(tmp_path / "m"), account)
    assert code == 2
    assert refusals(seen) == 1 and len(seen.statuses) == 1
    assert account.exit_code(fatal=True) == 2 and account.total == manifests


async def test_the_recovery_listing_after_a_crash_is_refused_once(
    api: tuple[str, Recorder], tmp_path: Path
) -> None:
    url, seen = api
    names = write_manifests(tmp_path / "m", 100)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    try:  # a crash left half of them in doubt (submitting): they are reconciled first
        for name in names[:50]:
            await ledger.begin_attempt(PROJECT, job_spec(name))
    finally:
        await ledger.close()
    settings = wrong_sk(url, tmp_path, concurrency=64, in_doubt_grace=0)
    code = await run_source(settings, DirectorySource(tmp_path / "m"), RunAccount())
    assert code == 2
    assert refusals(seen) == 1 and len(seen.statuses) == 1


async def test_retry_is_refused_once(api: tuple[str, Recorder], tmp_path: Path) -> None:
    url, seen = api
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    try:
        for index in range(200):
            spec = job_spec(f"failed-{index:03d}")
            await ledger.record(PROJECT, spec, LedgerState.FAILED)
    finally:
        await ledger.close()
    settings = wrong_sk(url, tmp_path, concurrency=64)
    code = await retry_failed(settings, None, announce=lambda _: None)
    assert code == 2
    assert refusals(seen) == 1 and len(seen.statuses) == 1


async def test_watch_is_refused_once_and_exits_2(api: tuple[str, Recorder], tmp_path: Path) -> None:
    url, seen = api
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.2)
    source.prepare()
    for index in range(100):
        drop(inbox, f"job-{index:03d}.json", job(f"job-{index:03d}"))
    code = await asyncio.wait_for(watch(wrong_sk(url, tmp_path, concurrency=64), source), 15)
    assert code == 2
    assert refusals(seen) == 1 and len(seen.statuses) == 1
    assert len(names_in(inbox)) == 100  # every file given back, to be sent once it is fixed


@pytest.mark.skipif(not broker_listening(), reason="RabbitMQ is not on 127.0.0.1:5672")
async def test_consume_is_refused_once_and_exits_2(
    api: tuple[str, Recorder], tmp_path: Path
) -> None:
    url, seen = api
    broker = await Broker.open()
    try:
        queue = broker.queue_name("refused")
        write_manifests(tmp_path / "m", 100)
        await publish_directory(AMQP_URL, queue, tmp_path / "m")
        settings = wrong_sk(url, tmp_path, concurrency=64)
        async with open_amqp_source(AMQP_URL, queue, prefetch=prefetch_for(64)) as source:
            code = await asyncio.wait_for(consume_source(settings, source), 15)
        assert code == 2
        assert refusals(seen) == 1 and len(seen.statuses) == 1
        assert await broker.depth(queue) == 100  # every message requeued, none dead-lettered
    finally:
        await broker.close()


@pytest.mark.slow
async def test_the_command_line_is_refused_once_and_says_so_in_one_line(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(tokens=frozenset(), aksk={AK: SK})
    write_manifests(tmp_path / "m", 300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSUB_", "HUAWEICLOUD_"))}
    env.update(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK="a-wrong-secret", PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchsub", "run", str(tmp_path / "m"), "--endpoint", sim.url,
        "--project-id", PROJECT, "--concurrency", "64", "--rate", "0",
        "--ledger", str(tmp_path / "l.db"), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    errors = [line for line in err.decode().splitlines() if line.startswith("batchsub: error:")]
    assert len(errors) == 1 and "refused the credential AK/SK" in errors[0]
    assert "a-wrong-secret" not in err.decode()
    assert len(sim.store.arrivals) == 1  # a wrong SK has every request refused: one in all
