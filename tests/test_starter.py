"""The starter against the simulator: each job started once, whatever the answers and faults."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchsub.jobs import StartState
from batchsub.ledgers.memory import MemoryStartLedger
from batchsub.lifecycle.start_rules import StartOptions
from batchsub.lifecycle.starter import StartJob, StartKind, StartResult
from batchsub.simulator.lifecycle import NO_QUEUE
from tests.lifecycle_support import Handler, Rig, rig
from tests.support import PROJECT


@web.middleware
async def reversed_run_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A gateway that returns the elements of a run answer in the reverse order of the ids."""
    response = await handler(request)
    if request.path.endswith("/jobs/run") and isinstance(response, web.Response):
        assert isinstance(response.body, bytes)
        return web.json_response(orjson.loads(response.body)[::-1], status=response.status)
    return response


def kinds(results: list[StartResult]) -> Counter[StartKind]:
    return Counter(result.kind for result in results)


def assert_started_once(r: Rig, jobs: list[StartJob]) -> None:
    """Every job started by exactly one run, none sent a run while running or submitting."""
    runs = r.runs()
    assert {job.name: runs[job.name] for job in jobs} == {job.name: (1, 0) for job in jobs}
    rows = r.ledger.rows(PROJECT)
    assert {rows[job.name].state for job in jobs} == {StartState.STARTED}


async def test_fresh_jobs_are_started_a_hundred_per_call_without_reading_statuses() -> None:
    async with rig() as r:
        jobs = await r.create(250)
        starter = r.starter()
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.STARTED: 250}
        assert [result.job_id for result in results] == [job.job_id for job in jobs]
        assert all(result.attempts == 1 for result in results)
        assert (starter.runs_sent, r.sim.store.calls["run"], r.reader.list_calls) == (3, 3, 0)
        assert_started_once(r, jobs)
        assert {r.status(job.job_id) for job in jobs} == {"job_submitting"}


@pytest.mark.parametrize("fault", ["drop_after_run", "error_504_after_run"])
async def test_every_answer_lost_each_job_is_confirmed_from_its_status_never_resent(
    fault: str,
) -> None:
    faults: dict[str, Any] = {fault: 1.0}
    async with rig(**faults) as r:
        jobs = await r.create(150)
        starter = r.starter()
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.STARTED: 150}
        assert starter.runs_sent == 2  # one per call: nothing sent again
        assert_started_once(r, jobs)
        assert {result.status for result in results} <= {"job_submitting", "job_running"}
        assert r.reader.detail_calls == 0 and r.reader.list_calls <= 4


async def test_an_answer_lost_before_the_run_happened_sends_it_again_once() -> None:
    refused = 0

    @web.middleware
    async def unavailable_twice(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal refused
        if request.path.endswith("/jobs/run") and refused < 2:
            refused += 1
            return web.json_response({"error_code": "APIG.0202"}, status=503)
        return await handler(request)

    async with rig(middleware=unavailable_twice) as r:
        jobs = await r.create(5)
        starter = r.starter()
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.STARTED: 5}
        assert starter.runs_sent == 3 and {res.attempts for res in results} == {3}
        assert_started_once(r, jobs)
        assert r.ledger.rows(PROJECT)[jobs[0].name].attempts == 3


async def test_a_run_still_on_its_way_after_the_timeout_is_not_sent_twice() -> None:
    # In real time: the gateway holds the first run for 0.3 s, the client gives up at 0.1 s,
    # the grace (0.6 s) lets the held run land before the statuses are read.
    held = asyncio.Event()

    @web.middleware
    async def hold_first_run(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.endswith("/jobs/run") and not held.is_set():
            held.set()
            await request.read()
            await asyncio.sleep(0.3)
        return await handler(request)

    async with rig(middleware=hold_first_run) as r:
        jobs = await r.create(3)
        starter = r.starter(
            client=r.client_for("test-token-0123456789", timeout=0.1),
            in_doubt_grace=0.6,
            wall_clock=time.time,
            sleep=asyncio.sleep,
        )
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.STARTED: 3}
        assert starter.runs_sent == 1
        assert_started_once(r, jobs)


async def test_throttled_calls_are_sent_again_and_slow_the_limiter() -> None:
    async with rig(rate_limit=1) as r:
        jobs = r.add(3)
        starter = r.starter(batch_size=1)
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.STARTED: 3}
        assert r.limiter.throttled > 0 and r.sim.store.throttled > 0
        assert_started_once(r, jobs)


async def test_a_job_refused_in_a_mixed_answer_gets_its_own_message() -> None:
    async with rig() as r:
        jobs = await r.create(4)
        jobs += await r.create(1, "noqueue", queue_name="")  # DLI.13024: no queue, no start
        jobs += await r.create(2, "late")
        results = await r.starter().start(jobs)
        by_name = {result.name: result for result in results}
        failed = by_name["noqueue-0000"]
        assert (failed.kind, failed.error) == (StartKind.START_FAILED, NO_QUEUE)
        assert kinds(results) == {StartKind.STARTED: 6, StartKind.START_FAILED: 1}
        row = r.ledger.rows(PROJECT)["noqueue-0000"]
        assert (row.state, row.error) == (StartState.START_FAILED, NO_QUEUE)
        assert r.sim.store.calls["run"] == 1


async def test_an_answer_in_another_order_is_never_trusted_by_position() -> None:
    async with rig(middleware=reversed_run_answers) as r:
        jobs = await r.create(1, "noqueue", queue_name="")
        jobs += await r.create(2)
        results = await r.starter().start(jobs)
        by_name = {result.name: result for result in results}
        # The failure came back last: the statuses say who did not start; one failure, one
        # message, so it is that job's.
        assert by_name["noqueue-0000"].kind is StartKind.START_FAILED
        assert by_name["noqueue-0000"].error == NO_QUEUE
        assert {by_name[j.name].kind for j in jobs[1:]} == {StartKind.STARTED}
        assert {name: r.runs()[name] for name in by_name} == {
            "noqueue-0000": (0, 0),
            "job-0000": (1, 0),
            "job-0001": (1, 0),
        }


async def test_two_refusals_with_different_messages_out_of_place_are_asked_one_by_one() -> None:
    async with rig(middleware=reversed_run_answers) as r:
        jobs = await r.create(1, "noqueue", queue_name="")
        jobs += await r.create(1)
        jobs += await r.create(1, "deleted")
        r.sim.store.delete(jobs[2].job_id)  # after it was created: its element fails too
        results = await r.starter().start(jobs)
        by_name = {result.name: result for result in results}
        assert (by_name["noqueue-0000"].kind, by_name["noqueue-0000"].error) == (
            StartKind.START_FAILED,
            NO_QUEUE,
        )
        assert by_name["deleted-0000"].error == "the job does not exist (DLI.16001)"
        assert by_name["job-0000"].kind is StartKind.STARTED
        # Two failures with two messages, not where the jobs were: the one left in job_init
        # was asked again on its own.
        assert r.sim.store.calls["run"] == 2
        assert r.runs()["noqueue-0000"] == (0, 0) and r.runs()["job-0000"] == (1, 0)


async def test_a_call_refused_as_a_whole_is_halved_and_later_calls_are_smaller() -> None:
    async with rig(max_job_ids=10) as r:
        jobs = await r.create(40)
        starter = r.starter(batch_size=25)
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.STARTED: 40}
        assert starter.batch_size <= 10
        assert_started_once(r, jobs)


async def test_a_job_deleted_before_its_start() -> None:
    for mode in ("element", "error"):
        async with rig(unknown_job_ids=mode) as r:
            jobs = await r.create(3)
            assert r.sim.store.delete(jobs[1].job_id) is not None
            results = await r.starter().start(jobs)
            by_name = {result.name: result for result in results}
            gone = by_name[jobs[1].name]
            assert gone.kind is StartKind.START_FAILED, mode
            assert gone.error == "the job does not exist (DLI.16001)", mode
            assert {by_name[j.name].kind for j in (jobs[0], jobs[2])} == {StartKind.STARTED}
            assert r.runs()[jobs[0].name] == (1, 0) and r.runs()[jobs[2].name] == (1, 0)


async def test_a_refused_credential_stops_and_leaves_nothing_in_doubt() -> None:
    async with rig() as r:
        jobs = await r.create(3)
        starter = r.starter(client=r.client_for("wrong-token"))
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.UNRESOLVED: 3}
        assert starter.fatal is not None and "APIG.0301" in str(starter.fatal)
        assert {row.state for row in r.ledger.rows(PROJECT).values()} == {None}
        assert r.runs() == {job.name: (0, 0) for job in jobs}


@pytest.mark.parametrize("run_running", ["reject", "accept"])
async def test_a_rerun_starts_nothing_running_or_submitting(run_running: str) -> None:
    async with rig(run_running=run_running, start_seconds=(1.0, 1.0)) as r:
        jobs = await r.create(120)
        await r.starter().start(jobs)
        r.clock.now += 0.5  # half of them submitting, half running: any active job counts
        for job in jobs[:60]:
            found = r.sim.store.get(job.job_id)
            assert found is not None
            found.enter("job_running")
        starter = r.starter()
        results = await starter.start(await r.again(jobs))
        assert kinds(results) == {StartKind.ACTIVE: 120}
        assert starter.runs_sent == 0
        assert_started_once(r, jobs)
        # A job started outside batchsub is left alone too.
        [other] = await r.create(1, "other")
        await r.client.run_jobs([other.job_id])
        [result] = await r.starter().start([StartJob(other.job_id, other.name)])
        assert result.kind is StartKind.ACTIVE and r.runs()["other-0000"] == (1, 0)


async def test_a_job_stopped_on_purpose_is_started_again_only_when_asked() -> None:
    async with rig(start_seconds=(1.0, 1.0)) as r:
        jobs = await r.create(2)
        await r.starter().start(jobs)
        r.clock.now += 1.0
        await r.client.stop_jobs([jobs[0].job_id])
        r.clock.now += 1.0
        assert r.status(jobs[0].job_id) == "job_cancel_success"
        [stopped, running] = await r.starter().start(await r.again(jobs))
        assert stopped.kind is StartKind.NOT_STARTED and running.kind is StartKind.ACTIVE
        assert stopped.error is not None and "restart_stopped" in stopped.error
        assert r.runs()[jobs[0].name] == (1, 0)
        options = StartOptions(restart_stopped=True)
        [again, _] = await r.starter(options=options).start(await r.again(jobs))
        assert again.kind is StartKind.STARTED and r.runs()[jobs[0].name] == (2, 0)


async def test_a_failed_start_is_not_retried_by_a_rerun_only_by_retry_failed() -> None:
    async with rig(start_seconds=(1.0, 1.0), submit_fail=1.0) as r:
        jobs = await r.create(2)
        await r.starter().start(jobs)
        r.clock.now += 1.0
        # No waiter ran: the rerun finds the failure itself and records it.
        results = await r.starter().start(await r.again(jobs))
        assert kinds(results) == {StartKind.START_FAILED: 2}
        assert all(res.error and "too few idle CUs" in res.error for res in results)
        rows = r.ledger.rows(PROJECT)
        assert {rows[j.name].state for j in jobs} == {StartState.START_FAILED}
        results = await r.starter().start(await r.again(jobs))
        assert kinds(results) == {StartKind.START_FAILED: 2}
        assert r.sim.store.calls["run"] == 1
        retried = await r.starter(options=StartOptions(retry_failed=True)).start(
            await r.again(jobs)
        )
        assert kinds(retried) == {StartKind.STARTED: 2}
        assert {r.runs()[j.name] for j in jobs} == {(2, 0)}


async def test_a_crash_after_the_intent_and_before_the_call_sends_it_on_the_rerun() -> None:
    async with rig() as r:
        jobs = await r.create(3)
        crashing = asyncio.create_task(r.starter().start(jobs))

        def crash(what: str) -> None:
            if what == "begin_start":
                crashing.cancel()

        r.ledger._on_write = crash
        with pytest.raises(asyncio.CancelledError):
            await crashing
        r.ledger._on_write = None
        assert {row.state for row in r.ledger.rows(PROJECT).values()} == {StartState.STARTING}
        assert r.runs() == {job.name: (0, 0) for job in jobs}
        starter = r.starter()
        results = await starter.start(await r.again(jobs))
        assert kinds(results) == {StartKind.STARTED: 3} and starter.runs_sent == 1
        assert r.reader.list_calls == 1  # the statuses said: never started
        assert_started_once(r, jobs)


async def test_a_crash_after_the_call_is_confirmed_on_the_rerun_not_resent() -> None:
    crashing: list[asyncio.Task[list[StartResult]]] = []

    @web.middleware
    async def crash_on_run(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path.endswith("/jobs/run"):
            crashing[0].cancel()  # the run took effect; the process dies before the answer
        return response

    async with rig(middleware=crash_on_run) as r:
        jobs = await r.create(3)
        crashing.append(asyncio.create_task(r.starter().start(jobs)))
        with pytest.raises(asyncio.CancelledError):
            await crashing[0]
        assert {row.state for row in r.ledger.rows(PROJECT).values()} == {StartState.STARTING}
        assert r.runs() == {job.name: (1, 0) for job in jobs}
        starter = r.starter()
        results = await starter.start(await r.again(jobs))
        assert kinds(results) == {StartKind.STARTED: 3} and starter.runs_sent == 0
        assert_started_once(r, jobs)


async def test_two_workers_sharing_a_ledger_start_each_job_once() -> None:
    async with rig(drop_after_run=0.5, seed=3) as r:
        r.ledger = MemoryStartLedger(clock=r.clock, lease_seconds=60.0)
        jobs = await r.create(60)
        first, second = r.starter(batch_size=7), r.starter(batch_size=11)
        both = await asyncio.gather(first.start(jobs), second.start(await r.again(jobs)))
        results = {
            res.job_id: res for batch in both for res in batch if res.kind is StartKind.STARTED
        }
        assert len(results) == 60
        runs = r.runs()
        assert {runs[job.name] for job in jobs} == {(1, 0)}


async def test_a_stop_sends_nothing_more() -> None:
    async with rig() as r:
        jobs = await r.create(30)
        starter = r.starter(batch_size=10, concurrency=1)
        starter.stop()
        results = await starter.start(jobs)
        assert kinds(results) == {StartKind.UNRESOLVED: 30}
        assert r.sim.store.calls["run"] == 0
        assert r.ledger.rows(PROJECT) == {}  # never begun: no record


async def test_a_job_given_twice_is_started_once() -> None:
    async with rig() as r:
        [job] = await r.create(1)
        results = await r.starter().start([job, job, StartJob(job.job_id, job.name)])
        assert [res.kind for res in results] == [StartKind.STARTED] * 3
        assert r.runs() == {job.name: (1, 0)} and r.sim.store.calls["run"] == 1
