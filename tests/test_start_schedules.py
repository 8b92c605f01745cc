"""Property: under any schedule of lost answers, failures and crashes, each job starts once.

Hypothesis draws the faults (run answers dropped or 504 after the run took effect, a gateway
answering 503 before it, jobs whose start fails, DLI refusing or accepting a run of a running
job), the ids per call, and crash points: a starter is cancelled just after its k-th ledger
write (as kill -9 there would leave things), then a new starter goes on over the same ledger,
as a rerun does. At the end every job was started by at most one run, never while it was
running or submitting, and the ledger, the starters' results and a waiter's verdicts agree
with the simulator.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batchsub.jobs import StartState
from batchsub.lifecycle.starter import StartJob, StartKind, StartResult
from batchsub.lifecycle.statuses import ACTIVE
from batchsub.lifecycle.waiter import Health, Watched
from tests.lifecycle_support import Handler, Rig, rig
from tests.support import PROJECT


@dataclass(frozen=True)
class Schedule:
    """One drawn schedule of faults and crashes."""

    jobs: int
    seed: int
    drop: float
    error_504: float
    unavailable: float
    submit_fail: float
    run_running: str
    batch_size: int
    crashes: tuple[int, ...]  # per crashed starter: the ledger write after which it dies


schedules = st.builds(
    Schedule,
    jobs=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    drop=st.sampled_from([0.0, 0.3, 1.0]),
    error_504=st.sampled_from([0.0, 0.3]),
    unavailable=st.sampled_from([0.0, 0.3]),
    submit_fail=st.sampled_from([0.0, 0.2, 0.6]),
    run_running=st.sampled_from(["reject", "accept"]),
    batch_size=st.integers(1, 40),
    crashes=st.lists(st.integers(1, 8), max_size=3).map(tuple),
)


def gateway(schedule: Schedule) -> Middleware:
    """A gateway answering some run calls 503 before they reach DLI (nothing done)."""
    rng = random.Random(schedule.seed)

    @web.middleware
    async def sometimes_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.endswith("/jobs/run") and rng.random() < schedule.unavailable:
            return web.json_response({"error_code": "APIG.0202"}, status=503)
        return await handler(request)

    return sometimes_unavailable


async def crashed_run(r: Rig, jobs: list[StartJob], schedule: Schedule, crash_at: int) -> None:
    """A starter that dies just after its ``crash_at``-th ledger write (or finishes first)."""
    task = asyncio.create_task(r.starter(batch_size=schedule.batch_size).start(jobs))
    first = r.ledger.writes

    def crash(what: str) -> None:
        if r.ledger.writes - first == crash_at:
            task.cancel()

    r.ledger._on_write = crash
    try:
        await task
    except asyncio.CancelledError:
        in_doubt = [
            row for row in r.ledger.rows(PROJECT).values() if row.state is StartState.STARTING
        ]
        event("a crash left starts in doubt" if in_doubt else "a crash left nothing in doubt")
    else:
        event("a starter finished before its crash point")
    finally:
        r.ledger._on_write = None
    await asyncio.sleep(0.02)  # the restart: a request the dead process sent lands meanwhile
    r.clock.now += 0.5


async def check(schedule: Schedule) -> None:
    fields = {
        "seed": schedule.seed,
        "drop_after_run": schedule.drop,
        "error_504_after_run": schedule.error_504,
        "submit_fail": schedule.submit_fail,
        "run_running": schedule.run_running,
        "start_seconds": (1.0, 2.0),
    }
    async with rig(middleware=gateway(schedule), **fields) as r:
        jobs = await r.create(schedule.jobs)
        inputs = jobs
        for crash_at in schedule.crashes:
            await crashed_run(r, inputs, schedule, crash_at)
            inputs = await r.again(jobs)
        results = await r.starter(batch_size=schedule.batch_size).start(inputs)
        if any(res.attempts > 1 for res in results):
            event("a start was sent again (its run had not happened)")
        check_starts(r, jobs, results)
        await check_waits(r, jobs, results)


def check_starts(r: Rig, jobs: list[StartJob], results: list[StartResult]) -> None:
    runs = r.runs()
    rows = r.ledger.rows(PROJECT)
    for job, result in zip(jobs, results, strict=True):
        started, twice = runs[job.name]
        assert twice == 0, (job.name, result)
        assert started <= 1, (job.name, result)
        row = rows.get(job.name)
        state = row.state if row is not None else None
        status = r.status(job.job_id)
        if started == 0:
            assert result.kind is StartKind.UNRESOLVED, (job.name, result)
            assert state is None, (job.name, row)
            assert status == "job_init"
        elif result.kind is StartKind.START_FAILED:
            # Started by an earlier (crashed) starter, found failed by this one.
            assert (state, status) == (StartState.START_FAILED, "job_submit_fail"), result
        else:
            assert result.kind in (StartKind.STARTED, StartKind.ACTIVE), (job.name, result)
            assert state is StartState.STARTED, (job.name, row)
            assert status in ACTIVE or status == "job_submit_fail", (job.name, status)


async def check_waits(r: Rig, jobs: list[StartJob], results: list[StartResult]) -> None:
    waiter = r.waiter(healthy_for=3, poll_min=1, poll_max=4)
    tracked = [res for res in results if res.kind in (StartKind.STARTED, StartKind.ACTIVE)]
    waiter.track(Watched(res.job_id, res.name) for res in tracked)
    verdicts = await waiter.wait() if tracked else {}
    rows = r.ledger.rows(PROJECT)
    for result in tracked:
        verdict, status = verdicts[result.job_id], r.status(result.job_id)
        if status == "job_submit_fail":
            assert verdict.health is Health.FAILED, (verdict, status)
            assert rows[result.name].state is StartState.START_FAILED
        else:
            assert (verdict.health, status) == (Health.HEALTHY, "job_running")
            assert rows[result.name].state is StartState.STARTED
            assert rows[result.name].running_at is not None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules)
def test_any_schedule_starts_each_job_at_most_once_and_agrees_with_the_simulator(
    schedule: Schedule,
) -> None:
    asyncio.run(check(schedule))
