"""Looking jobs up by name: exact matches, the oldest of duplicates, lookups shared in batches."""

from __future__ import annotations

import asyncio

import aiohttp

from batchsub.auth import TokenAuth
from batchsub.calls import SafeCaller
from batchsub.client import DliClient
from batchsub.errors import FatalApiError
from batchsub.limiter import RateLimiter
from batchsub.reconcile import Reconciler
from batchsub.retry import RetryPolicy
from tests.conftest import PROJECT, TOKEN, SimulatorFactory


def reconciler(session: aiohttp.ClientSession, url: str, token: str = TOKEN) -> Reconciler:
    client = DliClient(session, url, PROJECT, TokenAuth(token))
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05)
    return Reconciler(client, SafeCaller(RateLimiter(0), policy), batch_window=0.02)


async def test_many_lookups_at_once_share_one_listing(simulator: SimulatorFactory) -> None:
    sim = await simulator()
    for index in range(150):  # two pages of the list call
        sim.store.add(f"job-{index:03d}", {}, index, PROJECT)
    sim.store.add("job-007", {}, 999, PROJECT)  # a duplicate made later: the oldest wins
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url)
        wanted = [f"job-{i:03d}" for i in range(0, 200, 10)]  # 15 exist, 5 do not
        found = await asyncio.gather(*(finder.find(name) for name in wanted))
    assert finder.list_calls == 2
    assert found == [i + 1 if i < 150 else None for i in range(0, 200, 10)]
    assert found[wanted.index("job-000")] == 1


async def test_a_few_lookups_ask_by_name(simulator: SimulatorFactory) -> None:
    sim = await simulator()
    for index in range(300):
        sim.store.add(f"job-{index:03d}", {}, index, PROJECT)
    sim.store.add("job-001", {}, 999, PROJECT)
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url)
        found = await asyncio.gather(finder.find("job-001"), finder.find("job-1"))
    assert list(found) == [2, None]  # exact names only: "job-1" is a prefix of many
    assert finder.list_calls == 2


async def test_a_failed_lookup_fails_every_waiter(simulator: SimulatorFactory) -> None:
    sim = await simulator()
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url, token="wrong")
        results = await asyncio.gather(
            *(finder.find(f"job-{i}") for i in range(6)), return_exceptions=True
        )
    assert all(isinstance(result, FatalApiError) for result in results)
    assert finder.list_calls == 1
