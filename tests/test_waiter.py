"""Waiting until jobs are healthy, on a fake clock shared with the simulator."""

from __future__ import annotations

from typing import Any

import pytest

from batchsub.jobs import StartIntent, StartOutcome, StartState
from batchsub.lifecycle.waiter import Health, PollInterval, Verdict, WaitSettings, Watched
from batchsub.simulator.lifecycle import RUN_FAILED, SUBMIT_FAILED
from tests.lifecycle_support import Rig, rig
from tests.support import PROJECT


async def started(r: Rig, count: int, prefix: str = "job", **fields: Any) -> list[int]:
    """Create and run ``count`` jobs; their ids. The run happens at the rig's clock now."""
    ids = [job.job_id for job in await r.create(count, prefix, **fields)]
    for start in range(0, count, 100):
        answer = await r.client.run_jobs(ids[start : start + 100])
        assert all(e.ok for e in answer.elements)
    return ids


def watched(ids: list[int], prefix: str = "job") -> list[Watched]:
    return [Watched(i, f"{prefix}-{n:04d}") for n, i in enumerate(ids)]


def test_poll_interval_doubles_while_nothing_changes_and_resets_on_change() -> None:
    interval = PollInterval(1.0, 10.0)
    assert [interval.after(False) for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert interval.after(True) == 1.0
    with pytest.raises(ValueError, match="poll"):
        WaitSettings(poll_min=5, poll_max=1)
    with pytest.raises(ValueError, match="healthy_for"):
        WaitSettings(healthy_for=-1)


async def test_healthy_after_running_for_healthy_for_and_not_before() -> None:
    async with rig(start_seconds=(1.0, 2.0)) as r:
        t0 = r.clock.now
        ids = await started(r, 250)
        waiter = r.waiter(healthy_for=30, poll_min=1, poll_max=15)
        waiter.track(watched(ids))
        verdicts = await waiter.wait()
        assert {v.health for v in verdicts.values()} == {Health.HEALTHY}
        assert t0 + 1 + 30 <= r.clock.now <= t0 + 2 + 30 + 2  # the slowest start, then 30 s
        assert all(v.running_at is not None and v.running_at >= t0 + 1 for v in verdicts.values())
        assert r.reader.detail_calls == 0
        # Each round reads 3 pages at most; rounds are few because the interval backs off.
        # A round reads a few pages (a status at a time), never a call per job.
        assert waiter.rounds <= 12 and r.reader.list_calls <= 4 * waiter.rounds < 250


async def test_a_health_deadline_pulls_the_next_round_in() -> None:
    async with rig(start_seconds=(1.0, 1.0)) as r:
        t0 = r.clock.now
        ids = await started(r, 3)
        waiter = r.waiter(healthy_for=10, poll_min=2, poll_max=120)
        waiter.track(watched(ids))
        await waiter.wait()
        # Seen running at t0 + 2 (the first round), healthy at the first round 10 s later.
        assert r.clock.now == pytest.approx(t0 + 12)
        # The first sighting is a change (2 s again), then it backs off until the deadline
        # cuts it short: t0+2 seen running, t0+4, t0+8, t0+12 healthy.
        assert r.sleeps == [2.0, 2.0, 4.0, 4.0]


async def test_failures_carry_dlis_reason() -> None:
    async with rig(start_seconds=(1.0, 1.0), submit_fail=1.0) as r:
        ids = await started(r, 4)
        waiter = r.waiter(healthy_for=30)
        waiter.track(watched(ids))
        verdicts = await waiter.wait()
        assert {(v.health, v.status) for v in verdicts.values()} == {
            (Health.FAILED, "job_submit_fail")
        }
        assert all(v.reason == f"job_submit_fail: {SUBMIT_FAILED}" for v in verdicts.values())


async def test_a_job_that_runs_then_fails_is_failed() -> None:
    async with rig(start_seconds=(1.0, 1.0), fail_after_run=1.0, fail_after_seconds=(3, 3)) as r:
        [job] = await started(r, 1)
        waiter = r.waiter(healthy_for=30, poll_min=1, poll_max=2)
        waiter.track(watched([job]))
        verdict = (await waiter.wait())[job]
        assert (verdict.health, verdict.reason) == (
            Health.FAILED,
            f"job_running_exception: {RUN_FAILED}",
        )
        assert verdict.running_at is not None  # it did run first


@pytest.mark.parametrize(
    ("start", "fail_after", "poll", "back"),
    [
        # running at t0+1, job_running_exception at t0+3 (seen), running again at t0+4
        (1.0, 2.0, 1.0, 4.0),
        # running at t0+0.5, exception at t0+1.5, running again at t0+2; rounds every 1.2 s
        # see it running at t0+1.2 and at t0+2.4, never in the exception: restart_times moved
        (0.5, 1.0, 1.2, 2.4),
    ],
)
async def test_a_restart_through_the_exception_restarts_the_clock(
    start: float, fail_after: float, poll: float, back: float
) -> None:
    fields: dict[str, Any] = {
        "start_seconds": (start, start),
        "fail_after_run": 1.0,
        "fail_after_seconds": (fail_after, fail_after),
    }
    async with rig(**fields) as r:
        t0 = r.clock.now
        [job] = await started(r, 1, restart_when_exception=True)
        waiter = r.waiter(healthy_for=5, poll_min=poll, poll_max=poll)
        waiter.track([Watched(job, "job-0000", restarts=True)])
        verdict = (await waiter.wait())[job]
        assert verdict.health is Health.HEALTHY
        assert r.clock.now >= t0 + back + 5  # not 5 s after it first ran: the clock restarted


async def test_a_job_that_restarts_on_exception_but_stays_down_times_out_with_the_reason() -> None:
    fields: dict[str, Any] = {
        "start_seconds": (1, 1),
        "fail_after_run": 1,
        "fail_after_seconds": (2, 2),
    }
    async with rig(**fields) as r:
        [job] = await started(r, 1)  # no restart_when_exception in its body: it stays down
        waiter = r.waiter(healthy_for=30, wait_timeout=60, poll_max=10)
        waiter.track([Watched(job, "job-0000", restarts=True)])
        verdict = (await waiter.wait())[job]
        assert verdict.health is Health.TIMED_OUT
        assert verdict.reason == f"still job_running_exception: {RUN_FAILED} after 60 s"


async def test_timeout_stopped_finished_and_gone() -> None:
    async with rig(start_seconds=(100.0, 100.0)) as r:
        ids = await started(r, 1)
        waiter = r.waiter(wait_timeout=20, poll_max=5)
        waiter.track(watched(ids))
        verdict = (await waiter.wait())[ids[0]]
        assert (verdict.health, verdict.status) == (Health.TIMED_OUT, "job_submitting")
        assert verdict.reason == "still job_submitting after 20 s"
    async with rig(start_seconds=(1.0, 1.0)) as r:
        ids = await started(r, 3)
        r.clock.now += 1.0
        await r.client.stop_jobs(ids[:1])
        r.sim.store.delete(ids[1])
        job = r.sim.store.get(ids[2])
        assert job is not None
        job.enter("job_finish")
        waiter = r.waiter(healthy_for=30, poll_max=5)
        waiter.track(watched(ids))
        verdicts = await waiter.wait()
        assert [verdicts[i].health for i in ids] == [Health.STOPPED, Health.GONE, Health.FINISHED]


async def test_statuses_and_failures_reach_the_ledger() -> None:
    async with rig(start_seconds=(1.0, 1.0), submit_fail=0.5, seed=4) as r:
        ids = await started(r, 20)
        names = {i: f"job-{n:04d}" for n, i in enumerate(ids)}
        intents = [StartIntent(names[i], i, "job_init", 0) for i in ids]
        await r.ledger.begin_start(PROJECT, intents)
        outcomes = [StartOutcome(names[i], i, StartState.STARTED) for i in ids]
        await r.ledger.record_start(PROJECT, outcomes)
        waiter = r.waiter(healthy_for=5)
        waiter.track(watched(ids))
        verdicts = await waiter.wait()
        rows = r.ledger.rows(PROJECT)
        for job_id, verdict in verdicts.items():
            row = rows[names[job_id]]
            assert row.last_status == r.status(job_id)
            if verdict.health is Health.FAILED:
                assert (row.state, row.error) == (StartState.START_FAILED, verdict.reason)
            else:
                assert verdict.health is Health.HEALTHY
                assert row.state is StartState.STARTED and row.running_at is not None
        assert {v.health for v in verdicts.values()} == {Health.HEALTHY, Health.FAILED}


async def test_jobs_tracked_later_join_the_same_rounds() -> None:
    async with rig(start_seconds=(1.0, 1.0)) as r:
        first = await started(r, 2)
        seen: list[Verdict] = []
        waiter = r.waiter(healthy_for=4, poll_min=1, poll_max=1, on_verdict=seen.append)
        waiter.track(watched(first))
        await waiter.wait(first[:1])
        second = await started(r, 2, "late")
        waiter.track(watched(second, "late"))
        waiter.track(watched(first))  # tracked twice: once
        verdicts = await waiter.wait()
        assert set(verdicts) == set(first) | set(second)
        assert len(seen) == 4 and waiter.running == 4
        with pytest.raises(KeyError):
            await waiter.wait([999])
        await waiter.close()


async def test_a_refused_credential_ends_the_wait_with_the_error() -> None:
    async with rig() as r:
        ids = await started(r, 1)
        r.sim.store.jobs[0].enter("job_submitting")
        bad = r.client_for("wrong")
        r.reader._client = bad
        waiter = r.waiter()
        waiter.track(watched(ids))
        with pytest.raises(Exception, match=r"APIG\.0301"):
            await waiter.wait()
