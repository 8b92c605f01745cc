"""The simulator's job life cycle over real HTTP: run, stop, status moving on a fake clock."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.sim_support import Dli, succeeded
from tests.support import PROJECT, DliFactory, FakeClock

EPOCH = 1_700_000_000.0
FAST = {"start_seconds": (1.0, 2.0), "savepoint_seconds": (0.5, 0.5), "stop_seconds": (1.0, 1.0)}


async def started(dli: DliFactory, *names: str, **fields: Any) -> tuple[Dli, FakeClock, list[int]]:
    """A simulator on a fake wall clock holding one created job per name."""
    clock = FakeClock(EPOCH)
    api = await dli(wall_clock=clock, **{**FAST, **fields})
    return api, clock, [await api.create(name) for name in names]


async def running(dli: DliFactory, *names: str, **fields: Any) -> tuple[Dli, FakeClock, list[int]]:
    """As ``started``, with every job run and the clock moved until they all run."""
    api, clock, ids = await started(dli, *names, **fields)
    status, answer = await api.run(*ids)
    assert (status, succeeded(answer)) == (200, [True] * len(ids))
    clock.now += 2.0
    assert [await api.status(i) for i in ids] == ["job_running"] * len(ids)
    return api, clock, ids


async def test_run_moves_a_job_to_running_after_the_start_delay(dli: DliFactory) -> None:
    api, clock, [job] = await started(dli, "a", start_seconds=(1.0, 1.0))
    assert (await api.detail(job))["status"] == "job_init"
    status, answer = await api.run(job)
    assert status == 200
    message = "The request for submitting the job is delivered successfully."
    assert answer == [{"is_success": "true", "message": message}]
    shown = await api.detail(job)
    assert (shown["status"], shown["start_time"], shown["duration"]) == ("job_submitting", 0, 0)
    assert shown["update_time"] == EPOCH * 1000
    clock.now += 0.999
    assert await api.status(job) == "job_submitting"
    clock.now += 0.001
    shown = await api.detail(job)
    assert (shown["status"], shown["status_desc"]) == ("job_running", "")
    assert shown["start_time"] == (EPOCH + 1.0) * 1000
    clock.now += 5.0
    (listed,) = (await api.listed())["jobs"]
    assert (listed["status"], listed["duration"]) == ("job_running", 5000)
    assert api.sim.store.get(job) is not None
    assert api.sim.store.jobs[0].counts.runs == 1


async def test_start_delays_are_drawn_in_range_and_seeded(dli: DliFactory) -> None:
    names = [f"j{i}" for i in range(20)]
    seen = []
    for _ in range(2):
        api, clock, ids = await started(dli, *names, seed=5)
        await api.run(*ids)
        clock.now += 0.999
        assert {j["status"] for j in (await api.listed(limit="20"))["jobs"]} == {"job_submitting"}
        clock.now += 0.5
        seen.append([await api.status(i) for i in ids])
        clock.now += 0.501
        assert {j["status"] for j in (await api.listed(limit="20"))["jobs"]} == {"job_running"}
    assert seen[0] == seen[1]  # the same seed draws the same delays
    assert {"job_submitting", "job_running"} <= set(seen[0])  # and they differ by job


async def test_stop_with_a_savepoint_then_resume_from_it(dli: DliFactory) -> None:
    api, clock, [job] = await running(dli, "a")
    status, answer = await api.stop(job, savepoint=True)
    assert (status, succeeded(answer)) == (200, [True])
    assert answer[0]["message"] == "The request for stopping the job is delivered successfully."
    assert await api.status(job) == "job_savepointing"
    clock.now += 0.5
    assert await api.status(job) == "job_canceling"
    clock.now += 1.0
    shown = await api.detail(job)
    assert shown["status"] == "job_cancel_success"
    assert shown["has_savepoint"] is True
    path = shown["savepoint_path"]
    assert path == "obs://dli-simulator/jobs/savepoint/1/2023-11-14_22-13-22/"
    assert (await api.stats())["jobs"][0]["savepoints"] == 1

    status, answer = await api.run(job, resume=True)
    assert succeeded(answer) == [True]
    clock.now += 2.0
    assert await api.status(job) == "job_running"
    [row] = (await api.stats())["jobs"]
    assert (row["runs"], row["stops"], row["savepoints"], row["resumes"]) == (2, 1, 1, [path])


async def test_stop_without_a_savepoint_and_resume_with_none(dli: DliFactory) -> None:
    api, clock, [job] = await running(dli, "a")
    _, answer = await api.stop(job)
    assert succeeded(answer) == [True]
    assert await api.status(job) == "job_canceling"
    clock.now += 1.0
    assert await api.status(job) == "job_cancel_success"
    assert (await api.detail(job))["savepoint_path"] is None
    await api.run(job, resume=True)  # no savepoint to resume from: it starts afresh
    clock.now += 2.0
    assert await api.status(job) == "job_running"
    [row] = (await api.stats())["jobs"]
    assert (row["savepoints"], row["resumes"], row["runs"]) == (0, [None], 2)


async def test_a_savepoint_is_taken_only_from_running(dli: DliFactory) -> None:
    api, clock, [job] = await started(dli, "a")
    await api.run(job)
    _, answer = await api.stop(job, savepoint=True)  # still submitting: nothing to save
    assert succeeded(answer) == [True]
    assert await api.status(job) == "job_canceling"
    clock.now += 1.0
    assert await api.status(job) == "job_cancel_success"
    clock.now += 5.0
    assert await api.status(job) == "job_cancel_success"  # the start was called off
    assert (await api.stats())["totals"]["savepoints"] == 0


@pytest.mark.parametrize("mode", ["reject", "accept"])
async def test_run_of_a_job_submitting_or_running(dli: DliFactory, mode: str) -> None:
    api, clock, [job] = await started(dli, "a", run_running=mode, start_seconds=(1.0, 1.0))
    await api.run(job)
    clock.now += 0.5
    _, while_submitting = await api.run(job)
    clock.now += 0.5
    assert await api.status(job) == "job_running"  # the second run moved nothing
    assert (await api.detail(job))["start_time"] == (EPOCH + 1.0) * 1000
    _, while_running = await api.run(job)
    assert await api.status(job) == "job_running"
    accepted = mode == "accept"
    assert succeeded(while_submitting + while_running) == [accepted, accepted]
    if not accepted:
        assert "job_submitting" in while_submitting[0]["message"]
        assert "job_running" in while_running[0]["message"]
    [row] = (await api.stats())["jobs"]
    assert (row["runs"], row["runs_while_running"]) == (1, 2)
    assert row["runs_refused"] == (0 if accepted else 2)
    assert (await api.stats())["totals"]["started_twice"] == 1


@pytest.mark.parametrize("mode", ["reject", "accept"])
async def test_run_of_a_job_being_stopped_is_refused(dli: DliFactory, mode: str) -> None:
    api, clock, [job] = await running(dli, "a", run_running=mode)
    await api.stop(job, savepoint=True)
    _, savepointing = await api.run(job)
    clock.now += 0.5
    _, canceling = await api.run(job)
    assert succeeded(savepointing + canceling) == [False, False]
    assert "being stopped" in canceling[0]["message"]
    clock.now += 1.0
    assert await api.status(job) == "job_cancel_success"


async def test_stop_of_a_job_not_running_is_refused(dli: DliFactory) -> None:
    api, clock, [fresh, job] = await running(dli, "fresh", "a")
    await api.stop(fresh)
    clock.now += 1.0  # fresh is stopped now
    _, first = await api.stop(job)
    _, second = await api.stop(job, fresh)  # job is stopping, fresh stopped
    assert succeeded(first + second) == [True, False, False]
    assert "already being stopped" in second[0]["message"]
    assert "not running (job_cancel_success)" in second[1]["message"]
    rows = (await api.stats())["jobs"]
    assert [(r["stops"], r["stops_refused"]) for r in rows] == [(1, 1), (1, 1)]


async def test_answers_follow_the_order_of_the_ids(dli: DliFactory) -> None:
    api, _, [a, b] = await started(dli, "a", "b")
    status, answer = await api.run(a, 999, b, a)
    assert status == 200
    assert succeeded(answer) == [True, False, True, False]
    assert answer[1]["message"] == "The job does not exist."
    assert [await api.status(i) for i in (a, b)] == ["job_submitting"] * 2


async def test_unknown_ids_as_an_error_for_the_whole_call(dli: DliFactory) -> None:
    api, _, [a] = await started(dli, "a", unknown_job_ids="error")
    for call in (api.run, api.stop, api.delete_batch):
        status, answer = await call(a, 999)
        assert (status, answer["error_code"]) == (400, "DLI.16001")
        assert "999" in answer["error_msg"]
    assert await api.status(a) == "job_init"  # nothing was done


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "JSON"),
        ([1, 2], "object"),
        ({}, "job_ids"),
        ({"job_ids": []}, "job_ids"),
        ({"job_ids": ["1"]}, "job_ids"),
        ({"job_ids": [True]}, "job_ids"),
        ({"job_ids": [0]}, "job_ids"),
        ({"job_ids": [1], "resume_savepoint": "yes"}, "resume_savepoint"),
        ({"job_ids": [1], "trigger_savepoint": True}, "trigger_savepoint"),
        ({"job_ids": [1, 2, 3, 4]}, "at most 3"),
    ],
)
async def test_run_refuses_a_bad_body(dli: DliFactory, body: object, named: str) -> None:
    api, _, [job] = await started(dli, "a", max_job_ids=3)
    status, answer = await api.call("POST", "/jobs/run", body)
    assert (status, answer["error_code"]) == (400, "DLI.0001")
    assert named in answer["error_msg"]
    assert await api.status(job) == "job_init"


async def test_batch_size_limit_applies_to_stop_and_delete(dli: DliFactory) -> None:
    api, _, ids = await running(dli, "a", "b", max_job_ids=2)
    for call in (api.stop, api.delete_batch):
        status, answer = await call(*ids, ids[0])
        assert (status, answer["error_code"]) == (400, "DLI.0001")
        assert "at most 2" in answer["error_msg"]
    status, answer = await api.stop(*ids[:2])
    assert (status, succeeded(answer)) == (200, [True, True])


async def test_a_job_without_a_queue_does_not_start(dli: DliFactory) -> None:
    api, _, _ = await started(dli)
    _, created = await api.call("POST", "/flink-jobs", {"name": "no-queue"})
    job = created["job"]["job_id"]
    _, answer = await api.run(job)
    assert succeeded(answer) == [False]
    assert answer[0]["message"].startswith("DLI.13024 No job-running queue selected")
    assert await api.status(job) == "job_init"


async def test_submit_failures(dli: DliFactory) -> None:
    api, clock, [job] = await started(dli, "a", submit_fail=1.0, seed=1)
    _, answer = await api.run(job)
    assert succeeded(answer) == [True]  # the run call itself succeeds
    assert await api.status(job) == "job_submitting"
    clock.now += 2.0
    shown = await api.detail(job)
    assert shown["status"] == "job_submit_fail"
    assert "Failed to submit the job" in shown["status_desc"]
    (listed,) = (await api.listed(status="job_submit_fail"))["jobs"]
    assert listed["status_desc"] == shown["status_desc"]
    await api.run(job)  # a failed job can be run again
    assert await api.status(job) == "job_submitting"
    stats = await api.stats()
    assert stats["faults"] == {"submit_fail": 2}
    assert stats["jobs"][0]["runs"] == 2


@pytest.mark.parametrize("restart", [False, True])
async def test_jobs_that_run_then_fail(dli: DliFactory, restart: bool) -> None:
    clock = FakeClock(EPOCH)
    api = await dli(wall_clock=clock, fail_after_run=1.0, **FAST, fail_after_seconds=(3.0, 3.0))
    job = await api.create("a", restart_when_exception=restart)
    await api.run(job)
    clock.now += 2.0
    assert await api.status(job) == "job_running"
    clock.now += 3.0
    shown = await api.detail(job)
    assert shown["status"] == "job_running_exception"
    assert "RuntimeException" in shown["status_desc"]
    clock.now += 2.0
    shown = await api.detail(job)
    expected = ("job_running", 1) if restart else ("job_running_exception", 0)
    assert (shown["status"], shown["restart_times"]) == expected
    assert (await api.stats())["faults"] == {"fail_after_run": 1}


@pytest.mark.parametrize(
    ("fault", "call"),
    [
        ("drop_after_run", "run"),
        ("error_504_after_run", "run"),
        ("drop_after_stop", "stop"),
        ("error_504_after_stop", "stop"),
    ],
)
async def test_answers_lost_after_the_call_took_effect(
    dli: DliFactory, fault: str, call: str
) -> None:
    api, _, [job] = await (running if call == "stop" else started)(dli, "a", **{fault: 1.0})
    act = api.run if call == "run" else api.stop
    if fault.startswith("drop"):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await act(job)
    else:
        status, answer = await act(job)
        assert (status, answer["error_code"]) == (504, "APIG.0203")
    assert await api.status(job) == ("job_submitting" if call == "run" else "job_canceling")
    stats = await api.stats()
    assert stats["faults"] == {fault: 1}
    assert stats["jobs"][0]["runs" if call == "run" else "stops"] == 1


async def test_jobs_are_kept_per_project(dli: DliFactory) -> None:
    api = await dli(project_id=None)
    here, there = api.in_project("p1"), api.in_project("p2")
    first = await here.create("same-name")
    second = await there.create("same-name")  # a name is unique per project only
    assert second == first + 1  # ids are unique across projects
    assert [j["job_id"] for j in (await here.listed())["jobs"]] == [first]
    assert [j["job_id"] for j in (await there.listed(name="same-name"))["jobs"]] == [second]
    for call in ("GET", "DELETE"):
        status, answer = await there.call(call, f"/jobs/{first}")
        assert (status, answer["error_code"]) == (400, "DLI.16001")
    status, answer = await there.update(first, {"cu_number": 4})
    assert (status, answer["error_code"]) == (400, "DLI.16001")
    _, answer = await there.run(first)
    assert succeeded(answer) == [False]
    assert await here.status(first) == "job_init"
    assert api.sim.store.duplicates() == {}
    assert (await api.stats(project_id="p2"))["jobs"][0]["job_id"] == second


async def test_list_shows_status_and_filters_by_it(dli: DliFactory) -> None:
    api, clock, ids = await running(dli, "a", "b", "c", "d")
    await api.stop(ids[1])
    await api.create("idle")
    listed = await api.listed(status="job_running", order="asc")
    assert [j["job_id"] for j in listed["jobs"]] == [ids[0], ids[2], ids[3]]
    assert listed["total_count"] == 3
    page = await api.listed(status="job_running", limit="2", offset="2", order="asc")
    assert [j["job_id"] for j in page["jobs"]] == [ids[3]]
    assert [j["name"] for j in (await api.listed(status="job_init"))["jobs"]] == ["idle"]
    assert (await api.listed(status="job_canceling", name="b"))["total_count"] == 1
    clock.now += 1.0
    assert (await api.listed(status="job_cancel_success"))["total_count"] == 1
    status, answer = await api.call("GET", "/jobs", query={"status": "running"})
    assert (status, answer["error_code"]) == (400, "DLI.0001")
    assert "status" in answer["error_msg"]


async def test_rate_limit_and_latency_apply_to_every_call(dli: DliFactory) -> None:
    now = [0.0]
    api = await dli(rate_limit=2, clock=lambda: now[0])
    job = await api.create("a")
    status, _ = await api.run(job)
    assert status == 200
    status, answer = await api.stop(job)
    assert (status, answer["error_code"]) == (429, "APIG.0308")
    assert api.sim.store.jobs[0].counts.stops_refused == 0  # the throttled call did nothing
    calls = (await api.stats())["calls"]
    assert calls == {"create": 1, "run": 1, "stop": 1}  # arrivals, throttled ones included
    now[0] += 1.0
    assert (await api.stop(job))[0] == 200


async def test_stats_count_calls_by_kind_in_process_and_over_http(dli: DliFactory) -> None:
    api, _, [job, other] = await running(dli, "a", "b")
    await api.update(job, {"smn_topic": "t"})
    await api.update(job, {"cu_number": 4})  # refused: the job runs
    await api.listed()
    await api.stop(job)
    await api.call("DELETE", f"/jobs/{other}")
    await api.delete_batch(job)
    await api.call("GET", "/nowhere")  # no route: not a kind
    stats = await api.stats()
    assert stats == api.sim.store.stats()
    assert stats["calls"] == {
        "create": 2, "run": 1, "detail": 2, "update": 2, "list": 1, "stop": 1,
        "delete": 1, "batch_delete": 1,
    }  # fmt: skip
    assert stats["create_requests"] == 2
    rows = {row["job_id"]: row for row in stats["jobs"]}
    assert rows[job] == {
        "job_id": job, "project_id": PROJECT, "name": "a", "status": "job_cancel_success",
        "deleted": True, "savepoint_path": None, "runs": 1, "runs_while_running": 0,
        "runs_refused": 0, "stops": 1, "stops_refused": 0, "savepoints": 0, "updates": 1,
        "updates_refused": 1, "resumes": [],
    }  # fmt: skip
    assert stats["totals"]["refused_updates"] == 1
    assert stats["statuses"] == {}  # both deleted
    assert (await api.stats(project_id="another"))["jobs"] == []
