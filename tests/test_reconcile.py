"""Looking jobs up by name: exact matches, the oldest of duplicates, lookups shared in batches."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from batchsub.auth import TokenAuth
from batchsub.client import DliClient
from batchsub.errors import FatalApiError
from batchsub.limiter import RateLimiter
from batchsub.reconcile import Reconciler
from batchsub.retry import RetryingCaller, RetryPolicy
from tests.support import PROJECT, TOKEN, SimulatorFactory


def reconciler(
    session: aiohttp.ClientSession, url: str, token: str = TOKEN, **options: Any
) -> Reconciler:
    client = DliClient(session, url, PROJECT, TokenAuth(token))
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05)
    return Reconciler(client, RetryingCaller(RateLimiter(0), policy), batch_window=0.02, **options)


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


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_stale_snapshot_catches_up_on_new_jobs_newest_first(
    simulator: SimulatorFactory,
) -> None:
    sim = await simulator()
    base_ms = 1_700_000_000_000
    for index in range(250):  # three pages of old jobs, ten seconds apart
        sim.store.add(f"old-{index:03d}", {}, base_ms + index * 10_000, PROJECT)
    clock = _Clock()
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url, refresh_after=60, clock=clock)
        first = await finder.snapshot()
        assert len(first) == 250 and finder.list_calls == 3
        # Made by hand while a daemon runs, one of them under a name already taken.
        newest = base_ms + 249 * 10_000
        made = [sim.store.add(f"new-{i}", {}, newest + (i + 1) * 1000, PROJECT) for i in range(3)]
        sim.store.add("old-000", {}, newest + 9000, PROJECT)
        clock.now += 59
        assert "new-0" not in await finder.snapshot()  # not stale yet: no list call
        assert finder.list_calls == 3
        clock.now += 1
        caught_up = await finder.snapshot()
        # One page, newest first: it reaches jobs older than the newest known (less an overlap).
        assert finder.list_calls == 4
        assert {f"new-{i}": made[i].job_id for i in range(3)}.items() <= caught_up.items()
        assert caught_up["old-000"] == 1  # the oldest of a name stays the one to adopt
        assert await finder.snapshot() is caught_up and finder.list_calls == 4


async def test_catching_up_pages_back_to_the_jobs_it_knew(simulator: SimulatorFactory) -> None:
    sim = await simulator()
    base_ms = 1_700_000_000_000
    sim.store.add("old", {}, base_ms, PROJECT)
    clock = _Clock()
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url, refresh_after=1, clock=clock)
        await finder.snapshot()
        calls = finder.list_calls
        for index in range(230):  # made since, a second apart: three pages newest first
            sim.store.add(f"new-{index:03d}", {}, base_ms + (index + 1) * 1000, PROJECT)
        clock.now += 1
        caught_up = await finder.snapshot()
    assert finder.list_calls - calls == 3
    assert len(caught_up) == 231


async def test_a_job_deleted_since_is_dropped_when_the_whole_list_is_read_again(
    simulator: SimulatorFactory,
) -> None:
    sim = await simulator()
    base_ms = 1_700_000_000_000
    by_hand = sim.store.add("by-hand", {}, base_ms, PROJECT)
    sim.store.add("kept", {}, base_ms + 1000, PROJECT)
    clock = _Clock()
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url, refresh_after=60, relist_after=600, clock=clock)
        assert (await finder.snapshot())["by-hand"] == by_hand.job_id
        url = f"{sim.url}/v1.0/{PROJECT}/streaming/jobs/{by_hand.job_id}"
        async with session.delete(url, headers={"X-Auth-Token": TOKEN}) as resp:
            assert resp.status == 200
        clock.now += 60  # catching up (newest first) does not see a deletion
        assert "by-hand" in await finder.snapshot()
        clock.now += 540  # the whole list is read again
        snapshot = await finder.snapshot()
        assert "by-hand" not in snapshot and snapshot["kept"] == 2
        remade = sim.store.add("by-hand", {}, base_ms + 5000, PROJECT)
        clock.now += 60
        assert (await finder.snapshot())["by-hand"] == remade.job_id


async def test_without_creation_times_the_whole_list_is_read_every_relist_after(
    simulator: SimulatorFactory,
) -> None:
    # Catching up newest first needs creation times: without them it would read every page
    # at every refresh, so the whole list is read only every relist_after.
    sim = await simulator(list_create_time=False)
    sim.store.add("old", {}, 1_700_000_000_000, PROJECT)
    clock = _Clock()
    async with aiohttp.ClientSession() as session:
        finder = reconciler(session, sim.url, refresh_after=60, relist_after=600, clock=clock)
        with capture_logs() as logs:
            assert await finder.snapshot() == {"old": 1}
        warnings = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
        assert warnings == ["remote.no_create_time"]
        by_hand = sim.store.add("by-hand", {}, 1_700_000_001_000, PROJECT)
        clock.now += 599
        assert "by-hand" not in await finder.snapshot()
        assert finder.list_calls == 1
        clock.now += 1
        assert (await finder.snapshot())["by-hand"] == by_hand.job_id
        assert finder.list_calls == 2
