"""The official Huawei Cloud Python SDK, a client nobody here wrote, against the simulator.

It proves the simulator speaks the real wire format: the SDK signs with its own AK/SK signer,
serialises its own request models and parses the simulator's answers into its own models.
The SDK is synchronous (requests), so its calls run in a thread while the simulator serves on
the test's event loop. Explicit endpoint and project id: the SDK never looks anything up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkdli.v1 import (
    BatchDeleteFlinkJobsRequest,
    BatchDeleteFlinkJobsRequestBody,
    BatchRunFlinkJobsRequest,
    BatchRunFlinkJobsRequestBody,
    BatchStopFlinkJobsRequest,
    CreateFlinkJarJobRequest,
    CreateFlinkJarJobRequestBody,
    DeleteFlinkJobRequest,
    DliClient,
    ListFlinkJobsRequest,
    ShowFlinkJobRequest,
    StopFlinkJobsRequestBody,
    UpdateFlinkJarJobRequest,
    UpdateFlinkJarJobRequestBody,
)

from batchsub.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.support import FakeClock

PROJECT = "0123456789abcdef"
AK, SK = "AKSDKTEST", "sdk-s3cret"


@pytest.fixture
def clock() -> FakeClock:
    """The simulator's wall clock, near the real time so that signatures are fresh."""
    return FakeClock(time.time())


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[RunningSimulator]:
    """A simulator that accepts one AK/SK pair for one project."""
    config = SimulatorConfig(
        project_id=PROJECT,
        aksk={AK: SK},
        wall_clock=clock,
        start_seconds=(1.0, 1.0),
        savepoint_seconds=(1.0, 1.0),
        stop_seconds=(1.0, 1.0),
    )
    async with await start_simulator(config) as running:
        yield running


def sdk_client(url: str, sk: str = SK) -> Any:
    """An official DliClient pointed at the simulator, with no region lookup."""
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        DliClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(AK, sk, PROJECT))
        .with_endpoints([url])
        .build()
    )


def jar_body(name: str, **extra: Any) -> Any:
    """The SDK's request model for a Flink Jar job."""
    return CreateFlinkJarJobRequestBody(
        name=name, queue_name="q1", entrypoint="app.jar", cu_number=2, **extra
    )


async def test_sdk_creates_lists_and_shows_a_job(sim: RunningSimulator) -> None:
    client = sdk_client(sim.url)
    created = await asyncio.to_thread(
        client.create_flink_jar_job,
        CreateFlinkJarJobRequest(body=jar_body("sdk-job", dependency_jars=["g/a.jar"])),
    )
    assert created.job.job_id == 1
    assert created.job.status_name == "job_init"
    assert sim.store.jobs[0].body["dependency_jars"] == ["g/a.jar"]

    listed = await asyncio.to_thread(
        client.list_flink_jobs, ListFlinkJobsRequest(name="sdk-job", limit=10, show_detail=True)
    )
    assert listed.job_list.total_count == 1
    (job,) = listed.job_list.jobs
    assert (job.job_id, job.name, job.status) == (1, "sdk-job", "job_init")
    assert job.job_config.entrypoint == "app.jar"

    shown = await asyncio.to_thread(client.show_flink_job, ShowFlinkJobRequest(job_id=1))
    assert shown.job_detail.name == "sdk-job"


async def test_sdk_gets_dli0001_for_an_invalid_body(sim: RunningSimulator) -> None:
    client = sdk_client(sim.url)
    request = CreateFlinkJarJobRequest(body=jar_body("x" * 58))  # names have 1..57 characters
    with pytest.raises(ClientRequestException) as info:
        await asyncio.to_thread(client.create_flink_jar_job, request)
    assert info.value.status_code == 400
    assert info.value.error_code == "DLI.0001"
    assert "name" in info.value.error_msg
    assert sim.store.jobs == []


async def test_sdk_with_a_wrong_sk_gets_401(sim: RunningSimulator) -> None:
    client = sdk_client(sim.url, sk="not-the-sk")
    with pytest.raises(ClientRequestException) as info:
        await asyncio.to_thread(client.list_flink_jobs, ListFlinkJobsRequest())
    assert info.value.status_code == 401
    assert info.value.error_code == "APIG.0301"
    assert "signature" in info.value.error_msg
    assert SK not in info.value.error_msg


async def sdk(call: Any, request: Any) -> Any:
    """One SDK call, in a thread (the SDK blocks)."""
    return await asyncio.to_thread(call, request)


async def test_sdk_drives_the_life_cycle(sim: RunningSimulator, clock: FakeClock) -> None:
    client = sdk_client(sim.url)
    created = await sdk(client.create_flink_jar_job, CreateFlinkJarJobRequest(body=jar_body("j")))
    job_id = created.job.job_id
    run = BatchRunFlinkJobsRequestBody(job_ids=[job_id], resume_savepoint=False)
    ran = await sdk(client.batch_run_flink_jobs, BatchRunFlinkJobsRequest(body=run))
    assert [(r.is_success, r.message) for r in ran.body] == [
        ("true", "The request for submitting the job is delivered successfully.")
    ]
    shown = await sdk(client.show_flink_job, ShowFlinkJobRequest(job_id=job_id))
    assert (shown.is_success, shown.job_detail.status) == ("true", "job_submitting")
    clock.now += 1.0
    shown = await sdk(client.show_flink_job, ShowFlinkJobRequest(job_id=job_id))
    assert shown.job_detail.status == "job_running"
    assert shown.job_detail.job_config.checkpoint_mode == "exactly_once"
    assert shown.job_detail.job_config.cu_number == 2
    listed = await sdk(client.list_flink_jobs, ListFlinkJobsRequest(status="job_running"))
    assert [job.job_id for job in listed.job_list.jobs] == [job_id]
    listed = await sdk(client.list_flink_jobs, ListFlinkJobsRequest(status="job_init"))
    assert listed.job_list.total_count == 0

    in_place = UpdateFlinkJarJobRequestBody(smn_topic="alerts", resume_max_num=3)
    updated = await sdk(
        client.update_flink_jar_job, UpdateFlinkJarJobRequest(job_id=job_id, body=in_place)
    )
    assert updated.job.update_time == int(clock.now * 1000)
    with pytest.raises(ClientRequestException) as info:
        await sdk(
            client.update_flink_jar_job,
            UpdateFlinkJarJobRequest(job_id=job_id, body=UpdateFlinkJarJobRequestBody(cu_number=4)),
        )
    assert (info.value.status_code, info.value.error_code) == (400, "DLI.0007")

    stop = StopFlinkJobsRequestBody(job_ids=[job_id], trigger_savepoint=True)
    stopped = await sdk(client.batch_stop_flink_jobs, BatchStopFlinkJobsRequest(body=stop))
    assert [r.is_success for r in stopped.body] == ["true"]
    clock.now += 2.0
    shown = await sdk(client.show_flink_job, ShowFlinkJobRequest(job_id=job_id))
    assert shown.job_detail.status == "job_cancel_success"
    assert shown.job_detail.savepoint_path.startswith(
        f"obs://dli-simulator/jobs/savepoint/{job_id}/"
    )
    assert shown.job_detail.job_config.smn_topic == "alerts"

    other = await sdk(client.create_flink_jar_job, CreateFlinkJarJobRequest(body=jar_body("k")))
    gone = BatchDeleteFlinkJobsRequestBody(job_ids=[job_id])
    deleted = await sdk(client.batch_delete_flink_jobs, BatchDeleteFlinkJobsRequest(body=gone))
    assert [r.is_success for r in deleted.body] == ["true"]
    single = await sdk(client.delete_flink_job, DeleteFlinkJobRequest(job_id=other.job.job_id))
    assert single.is_success == "true"
    with pytest.raises(ClientRequestException) as info:
        await sdk(client.show_flink_job, ShowFlinkJobRequest(job_id=job_id))
    assert (info.value.status_code, info.value.error_code) == (400, "DLI.16001")
    counts = sim.store.stats()["jobs"][0]
    assert (counts["runs"], counts["stops"], counts["savepoints"], counts["updates"]) == (
        1,
        1,
        1,
        1,
    )
