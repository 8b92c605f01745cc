"""Reading many jobs' statuses from list pages: what it costs, and that nothing is misread."""

from __future__ import annotations

from batchsub.answers import JobStatus
from batchsub.lifecycle.status_reader import Seen
from tests.lifecycle_support import Rig, rig


def statuses(seen: Seen) -> dict[int, str | None]:
    return {i: (s.status.status if s is not None else None) for i, s in seen.items()}


def last(seen: Seen) -> dict[int, JobStatus | None]:
    return {i: (s.status if s is not None else None) for i, s in seen.items()}


async def run_all(r: Rig, ids: list[int]) -> None:
    for start in range(0, len(ids), 100):
        answer = await r.client.run_jobs(ids[start : start + 100])
        assert all(e.ok for e in answer.elements)


async def test_unknown_jobs_are_read_newest_first_until_all_are_seen() -> None:
    async with rig() as r:
        ids = [job.job_id for job in await r.create(350)]
        newest = await r.reader.read(dict.fromkeys(ids[-50:]))
        assert set(statuses(newest).values()) == {"job_init"} and len(newest) == 50
        assert r.reader.list_calls == 1
        every = await r.reader.read(dict.fromkeys(ids))
        assert len(every) == 350 and r.reader.list_calls == 1 + 4  # down to the oldest job
        assert r.reader.detail_calls == 0
        assert r.sim.store.calls["list"] == r.reader.list_calls
        # Now the project is known to fill 4 pages: 4 jobs or fewer are asked for one by one.
        oldest = await r.reader.read(dict.fromkeys(ids[:4]))
        assert statuses(oldest) == dict.fromkeys(ids[:4], "job_init")
        assert (r.reader.list_calls, r.reader.detail_calls) == (5, 4)
        five = await r.reader.read(dict.fromkeys(ids[-5:]))
        assert len(five) == 5 and (r.reader.list_calls, r.reader.detail_calls) == (6, 4)


async def test_a_straggler_costs_one_filtered_page_not_a_page_per_hundred_jobs() -> None:
    async with rig(start_seconds=(1.0, 1.0)) as r:
        ids = [job.job_id for job in await r.create(300)]
        straggler = ids[0]  # the oldest: the last page of a newest-first listing
        await run_all(r, ids[1:])
        r.clock.now += 1.0
        await run_all(r, [straggler])
        everything = await r.reader.read(dict.fromkeys(ids))
        assert statuses(everything)[straggler] == "job_submitting"
        assert set(statuses(everything).values()) == {"job_running", "job_submitting"}
        calls = r.reader.list_calls
        again = await r.reader.read({straggler: last(everything)[straggler]})
        assert statuses(again) == {straggler: "job_submitting"}
        assert r.reader.list_calls == calls + 1  # status=job_submitting: one page


async def test_jobs_that_moved_are_found_in_the_next_status_of_the_life_cycle() -> None:
    async with rig(start_seconds=(1.0, 1.0)) as r:
        ids = [job.job_id for job in await r.create(5)]
        await run_all(r, ids)
        first = await r.reader.read(dict.fromkeys(ids))
        assert set(statuses(first).values()) == {"job_submitting"}
        r.clock.now += 1.0
        calls = r.reader.list_calls
        moved = await r.reader.read(last(first))
        assert set(statuses(moved).values()) == {"job_running"}
        assert r.reader.list_calls == calls + 2  # submitting (none left), then running
        assert r.reader.detail_calls == 0


async def test_a_failed_job_deep_in_the_list_costs_one_detail_call() -> None:
    async with rig(start_seconds=(1.0, 1.0), submit_fail=1.0) as r:
        ids = [job.job_id for job in await r.create(250)]
        await run_all(r, ids[:1])
        first = await r.reader.read(dict.fromkeys(ids))
        r.clock.now += 1.0
        lists = r.reader.list_calls
        failed = await r.reader.read({ids[0]: last(first)[ids[0]]})
        found = failed[ids[0]]
        assert found is not None and found.status.status == "job_submit_fail"
        assert "too few idle CUs" in found.status.status_desc
        # One page of job_submitting (not there), then its detail rather than three pages.
        assert (r.reader.list_calls - lists, r.reader.detail_calls) == (1, 1)


async def test_many_moved_jobs_are_found_by_a_listing_not_by_details() -> None:
    async with rig(start_seconds=(1.0, 1.0), submit_fail=1.0) as r:
        ids = [job.job_id for job in await r.create(120)]
        await run_all(r, ids[-20:])
        first = await r.reader.read(dict.fromkeys(ids[-20:]))
        r.clock.now += 1.0
        lists = r.reader.list_calls
        failed = await r.reader.read(last(first))
        assert set(statuses(failed).values()) == {"job_submit_fail"}
        assert (r.reader.list_calls - lists, r.reader.detail_calls) == (2, 0)


async def test_a_deleted_job_is_gone() -> None:
    async with rig() as r:
        ids = [job.job_id for job in await r.create(3)]
        first = await r.reader.read(dict.fromkeys(ids))
        assert r.sim.store.delete(ids[1]) is not None
        seen = await r.reader.read(last(first))
        assert statuses(seen) == {ids[0]: "job_init", ids[1]: None, ids[2]: "job_init"}
        never_listed = await r.reader.read({ids[1]: None})
        assert never_listed == {ids[1]: None}


async def test_without_creation_times_every_page_is_read_and_nothing_is_missed() -> None:
    async with rig(list_create_time=False, start_seconds=(1.0, 1.0)) as r:
        ids = [job.job_id for job in await r.create(250)]
        await run_all(r, ids[:3])
        first = await r.reader.read(dict.fromkeys(ids[:3]))
        assert set(statuses(first).values()) == {"job_submitting"}
        assert all(s is not None and s.status.create_time is None for s in first.values())
        r.clock.now += 1.0
        again = await r.reader.read(last(first))
        assert set(statuses(again).values()) == {"job_running"}


async def test_a_throttling_server_is_read_through_the_shared_limiter_and_retries() -> None:
    async with rig(rate_limit=2) as r:
        ids = [job.job_id for job in r.add(250)]
        seen = await r.reader.read(dict.fromkeys(ids))
        assert len(seen) == 250 and set(statuses(seen).values()) == {"job_init"}
        assert r.sim.store.throttled > 0 and r.limiter.throttled > 0
