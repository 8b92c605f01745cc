"""The simulator's detail dialect, update (PUT) and delete calls over real HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from batchsub.simulator.dialect import DEFAULT_RUNTIME_CONFIG
from batchsub.simulator.update import IN_PLACE
from tests.sim_support import Dli, succeeded
from tests.support import DliFactory, FakeClock

EPOCH = 1_700_000_000.0
QUICK = {"start_seconds": (1.0, 1.0), "savepoint_seconds": (0.5, 0.5), "stop_seconds": (1.0, 1.0)}
FULL: dict[str, Any] = {
    "name": "full",
    "desc": "every field",
    "queue_name": "q1",
    "cu_number": 4,
    "manager_cu_number": 1,
    "parallel_number": 3,
    "log_enabled": True,
    "obs_bucket": "bucket",
    "smn_topic": "topic",
    "main_class": "com.example.Main",
    "entrypoint_args": "-x 1",
    "restart_when_exception": True,
    "entrypoint": "g/app.jar",
    "dependency_jars": ["g/a.jar"],
    "dependency_files": ["g/a.csv"],
    "tm_cus": 1,
    "tm_slot_num": 2,
    "resume_checkpoint": True,
    "resume_max_num": 5,
    "checkpoint_path": "bucket/ckpt",
    "runtime_config": '[{"key":"a","value":"b"}]',
    "checkpoint_enabled": True,
    "checkpoint_mode": 2,
    "checkpoint_interval": 30,
    "feature": "basic",
    "flink_version": "1.15",
    "execution_agency_urn": "agency",
    "resource_config_version": "v2",
    "resource_config": {"max_slot": 2, "parallel_number": 3},
    "tags": [{"key": "team", "value": "data"}],
}
TOP = ("name", "desc", "queue_name", "main_class", "entrypoint_args")


async def sim(dli: DliFactory, **fields: Any) -> tuple[Dli, FakeClock]:
    """A simulator on a fake wall clock."""
    clock = FakeClock(EPOCH)
    return await dli(wall_clock=clock, **{**QUICK, **fields}), clock


async def running_job(api: Dli, clock: FakeClock, name: str = "a", **fields: Any) -> int:
    """Create a job and run it until it is running."""
    job = await api.create(name, **fields)
    assert succeeded((await api.run(job))[1]) == [True]
    clock.now += 1.0
    assert await api.status(job) == "job_running"
    return job


async def test_detail_speaks_its_own_dialect(dli: DliFactory) -> None:
    api, _ = await sim(dli)
    job = await api.create(**FULL)
    status, answer = await api.call("GET", f"/jobs/{job}")
    assert status == 200
    assert (answer["is_success"], answer["message"]) == (
        "true",
        "Querying of the job details succeeds.",
    )
    shown = answer["job_detail"]
    config = shown["job_config"]
    for key in TOP:
        assert shown[key] == FULL[key]
        assert key not in config
    assert config["checkpoint_mode"] == "at_least_once"
    for key, value in FULL.items():
        if key not in (*TOP, "checkpoint_mode", "tags"):
            assert config[key] == value, key
    assert "tags" not in shown and "tags" not in config  # DLI keeps tags in its tag API
    assert shown["job_type"] == "flink_jar_job"
    assert (shown["status"], shown["create_time"], shown["update_time"]) == (
        "job_init", EPOCH * 1000, EPOCH * 1000,
    )  # fmt: skip
    assert shown["savepoint_path"] is None


async def test_detail_fills_in_server_defaults(dli: DliFactory) -> None:
    api, _ = await sim(dli)
    body = {"name": "bare", "queue_name": "q1", "entrypoint": "app.jar"}
    job = await api.create(**body)
    shown = await api.detail(job)
    config = shown["job_config"]
    assert {key: config[key] for key in DEFAULTS_SHOWN} == DEFAULTS_SHOWN
    assert config["runtime_config"] == DEFAULT_RUNTIME_CONFIG
    assert config["entrypoint"] == "app.jar"
    assert (config["obs_bucket"], config["smn_topic"], config["checkpoint_path"]) == (None,) * 3
    assert (shown["main_class"], shown["entrypoint_args"]) == (None, None)
    flat = {**{k: v for k, v in shown.items() if k != "job_config"}, **config}
    drift = [key for key in ("cu_number", "runtime_config") if key not in body and key in flat]
    assert drift == ["cu_number", "runtime_config"]  # a naive comparison sees drift


DEFAULTS_SHOWN = {
    "cu_number": 2,
    "manager_cu_number": 1,
    "parallel_number": 1,
    "tm_cus": 1,
    "tm_slot_num": 1,
    "resume_max_num": -1,
    "checkpoint_enabled": False,
    "checkpoint_mode": "exactly_once",
    "checkpoint_interval": 10,
    "log_enabled": False,
    "restart_when_exception": False,
    "resume_checkpoint": False,
    "resource_config_version": "v1",
    "root_id": -1,
    "idle_state_retention": 3600,
}


@pytest.mark.parametrize(
    ("fields", "slots"),
    [
        ({"cu_number": 5, "manager_cu_number": 1, "parallel_number": 8}, 2),
        ({"cu_number": 3, "parallel_number": 4, "tm_cus": 2}, 4),
        ({"cu_number": 1, "manager_cu_number": 1}, 1),  # no worker CU: no division by zero
    ],
)
async def test_tm_slot_num_defaults_to_the_documented_formula(
    dli: DliFactory, fields: dict[str, int], slots: int
) -> None:
    api, _ = await sim(dli)
    job = await api.create("a", **fields)
    assert (await api.detail(job))["job_config"]["tm_slot_num"] == slots


async def test_list_show_detail_uses_the_detail_dialect(dli: DliFactory) -> None:
    api, _ = await sim(dli)
    await api.create(**FULL)
    (listed,) = (await api.listed(show_detail="true"))["jobs"]
    assert listed["job_config"]["checkpoint_mode"] == "at_least_once"
    assert listed["tags"] == FULL["tags"]


async def test_update_applies_a_partial_body(dli: DliFactory) -> None:
    api, clock = await sim(dli)
    job = await api.create("a", smn_topic="old", dependency_jars=["g/a.jar", "g/b.jar"])
    clock.now += 5.0
    status, answer = await api.update(job, {"cu_number": 4, "dependency_jars": ["g/c.jar"]})
    assert status == 200
    assert answer == {
        "is_success": True,
        "message": "The Flink job is updated successfully.",
        "job": {"update_time": (EPOCH + 5.0) * 1000},
    }
    shown = await api.detail(job)
    assert shown["update_time"] == (EPOCH + 5.0) * 1000
    assert shown["create_time"] == EPOCH * 1000
    config = shown["job_config"]
    assert (config["cu_number"], config["smn_topic"]) == (4, "old")
    assert config["dependency_jars"] == ["g/c.jar"]  # a list is replaced whole
    assert api.sim.store.jobs[0].body["queue_name"] == "q1"
    status, _ = await api.update(job, {"job_type": "flink_jar_job"})  # changes nothing
    assert status == 200
    assert (await api.stats())["jobs"][0]["updates"] == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "JSON"),
        ([1], "object"),
        ({"cu_number": "4"}, "cu_number"),
        ({"cu_numbr": 4}, "cu_numbr"),
        ({"name": ""}, "name"),
        ({"desc": "x" * 513}, "desc"),
        ({"resume_max_num": 0}, "resume_max_num"),
        ({"checkpoint_mode": 3}, "checkpoint_mode"),
        ({"smn_topic": None}, "smn_topic"),
        ({"job_type": "flink_sql_job"}, "job_type"),
        ({"tags": [{"key": "k", "value": "v"}]}, "tags"),
    ],
)
async def test_update_validates_as_create_does(dli: DliFactory, body: object, named: str) -> None:
    api, _ = await sim(dli)
    job = await api.create("a", cu_number=2)
    status, answer = await api.update(job, body)
    assert (status, answer["error_code"]) == (400, "DLI.0001")
    assert named in answer["error_msg"]
    assert api.sim.store.jobs[0].body == {"name": "a", "queue_name": "q1", "cu_number": 2}
    assert (await api.stats())["jobs"][0]["updates"] == 0


async def test_update_of_an_unknown_job(dli: DliFactory) -> None:
    api, _ = await sim(dli)
    status, answer = await api.update(42, {"cu_number": 4})
    assert (status, answer["error_code"]) == (400, "DLI.16001")
    status, answer = await api.update(-1, {})
    assert (status, answer["error_code"]) == (400, "DLI.16001")
    status, answer = await api.call("PUT", "/flink-jobs/abc", {})
    assert (status, answer["error_code"]) == (400, "DLI.0001")


async def test_update_renames_and_checks_names_and_queues(dli: DliFactory) -> None:
    api, _ = await sim(dli, known_queues=frozenset({"q1", "q2"}))
    job = await api.create("a")
    await api.create("b")
    status, answer = await api.update(job, {"name": "b"})
    assert (status, answer["error_code"]) == (400, "DLI.0006")
    status, answer = await api.update(job, {"queue_name": "nope"})
    assert (status, answer["error_code"]) == (400, "DLI.0002")
    assert (await api.update(job, {"name": "a"}))[0] == 200  # its own name is no clash
    assert (await api.update(job, {"name": "c", "queue_name": "q2"}))[0] == 200
    assert [j["job_id"] for j in (await api.listed(name="c"))["jobs"]] == [job]
    assert (await api.listed(name="a"))["total_count"] == 0
    assert (await api.detail(job))["queue_name"] == "q2"
    assert api.sim.store.duplicates() == {}


async def test_a_running_job_takes_only_in_place_changes(dli: DliFactory) -> None:
    api, clock = await sim(dli)
    job = await running_job(api, clock, cu_number=2, smn_topic="old")
    in_place = {
        "smn_topic": "new", "restart_when_exception": True, "resume_checkpoint": True,
        "resume_max_num": 3, "obs_bucket": "bucket", "checkpoint_path": "bucket/ckpt",
    }  # fmt: skip
    assert set(in_place) == IN_PLACE
    assert (await api.update(job, in_place))[0] == 200
    assert (await api.update(job, {"cu_number": 2, "parallel_number": 1}))[0] == 200  # no change
    for change in ({"cu_number": 4}, {"smn_topic": "x", "entrypoint": "new.jar"}, {"name": "b"}):
        status, answer = await api.update(job, change)
        assert (status, answer["error_code"]) == (400, "DLI.0007")
        moved = next(key for key in change if key not in IN_PLACE)
        assert f"job_running: {moved} cannot be changed" in answer["error_msg"]
    config = (await api.detail(job))["job_config"]
    assert (config["cu_number"], config["smn_topic"], config["resume_max_num"]) == (2, "new", 3)
    assert await api.status(job) == "job_running"  # an update does not stop a job
    [row] = (await api.stats())["jobs"]
    assert (row["updates"], row["updates_refused"]) == (2, 3)
    await api.stop(job)
    clock.now += 1.0
    assert (await api.update(job, {"cu_number": 4}))[0] == 200  # stopped: anything goes
    assert (await api.detail(job))["job_config"]["cu_number"] == 4


async def test_every_status_not_stopped_refuses_a_change(dli: DliFactory) -> None:
    api, clock = await sim(dli)
    job = await api.create("a")
    await api.run(job)
    seen = []
    for step in (1.0, 0.0, 0.5, 0.0):  # submitting, running, savepointing, canceling
        status, answer = await api.update(job, {"cu_number": 8})
        assert (status, answer["error_code"]) == (400, "DLI.0007")
        seen.append(await api.status(job))
        if seen[-1] == "job_running":
            await api.stop(job, savepoint=True)
        clock.now += step
    assert seen == ["job_submitting", "job_running", "job_savepointing", "job_canceling"]


async def test_update_running_accept_takes_any_change(dli: DliFactory) -> None:
    api, clock = await sim(dli, update_running="accept")
    job = await running_job(api, clock)
    assert (await api.update(job, {"cu_number": 4, "entrypoint": "b.jar"}))[0] == 200
    assert (await api.detail(job))["job_config"]["cu_number"] == 4
    assert await api.status(job) == "job_running"


@pytest.mark.parametrize("fault", ["drop_after_update", "error_504_after_update"])
async def test_update_answer_lost_after_it_took_effect(dli: DliFactory, fault: str) -> None:
    api, _ = await sim(dli, **{fault: 1.0})
    job = await api.create("a")
    if fault.startswith("drop"):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.update(job, {"cu_number": 4})
    else:
        status, answer = await api.update(job, {"cu_number": 4})
        assert (status, answer["error_code"]) == (504, "APIG.0203")
    assert (await api.detail(job))["job_config"]["cu_number"] == 4
    stats = await api.stats()
    # aiohttp sends a PUT (idempotent) once more when a reused connection drops: each counts.
    assert stats["faults"] == {fault: stats["jobs"][0]["updates"]}
    assert stats["jobs"][0]["updates"] >= 1


@pytest.mark.parametrize("mode", ["hidden", "listed"])
async def test_batch_delete_in_any_state(dli: DliFactory, mode: str) -> None:
    api, clock = await sim(dli, deleted_jobs=mode)
    busy = await running_job(api, clock, "busy")
    idle = await api.create("idle")
    kept = await api.create("kept")
    status, answer = await api.delete_batch(busy, 999, idle, busy)
    assert status == 200
    assert succeeded(answer) == [True, False, True, False]
    assert answer[0]["message"] == "The job is deleted."
    for job in (busy, idle):
        status, gone = await api.call("GET", f"/jobs/{job}")
        assert (status, gone["error_code"]) == (400, "DLI.16001")
        assert succeeded((await api.run(job))[1]) == [False]
    listed = await api.listed(order="asc")
    if mode == "hidden":
        assert [j["job_id"] for j in listed["jobs"]] == [kept]
    else:  # the records stay, a running job stopped at once
        assert [(j["name"], j["status"]) for j in listed["jobs"]] == [
            ("busy", "job_cancel_success"), ("idle", "job_init"), ("kept", "job_init"),
        ]  # fmt: skip
        assert (await api.listed(name="busy"))["total_count"] == 1
        assert (await api.listed(name="busy", status="job_running"))["total_count"] == 0
    clock.now += 10.0
    assert (await api.stats())["jobs"][0]["status"] == "job_cancel_success"


async def test_single_delete_stops_a_running_job(dli: DliFactory) -> None:
    api, clock = await sim(dli, deleted_jobs="listed")
    job = await running_job(api, clock)
    status, answer = await api.call("DELETE", f"/jobs/{job}")
    assert (status, answer) == (200, {"is_success": "true", "message": "The job is deleted."})
    (listed,) = (await api.listed())["jobs"]
    assert listed["status"] == "job_cancel_success"
    status, answer = await api.call("DELETE", f"/jobs/{job}")
    assert (status, answer["error_code"]) == (400, "DLI.16001")
    assert (await api.create("a")) == job + 1  # the name is free again, the id is not reused
