"""The official Huawei Cloud Python SDK, a client nobody here wrote, against the simulator.

It proves the simulator speaks the real wire format: the SDK signs with its own AK/SK signer,
serialises its own request models and parses the simulator's answers into its own models.
The SDK is synchronous (requests), so its calls run in a thread while the simulator serves on
the test's event loop. Explicit endpoint and project id: the SDK never looks anything up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkdli.v1 import (
    CreateFlinkJarJobRequest,
    CreateFlinkJarJobRequestBody,
    DliClient,
    ListFlinkJobsRequest,
    ShowFlinkJobRequest,
)

from batchsub.simulator import RunningSimulator, SimulatorConfig, start_simulator

PROJECT = "0123456789abcdef"
AK, SK = "AKSDKTEST", "sdk-s3cret"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    """A simulator that accepts one AK/SK pair for one project."""
    config = SimulatorConfig(project_id=PROJECT, aksk={AK: SK})
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
