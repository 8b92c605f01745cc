"""Metrics: counters fed by a real run, served over HTTP with /healthz, one registry each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from batchsub.jobs import JobResult, Outcome
from batchsub.metrics import Metrics, start_metrics_server
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.sources.dropfolder import DropFolderSource
from tests.run_support import settings_for
from tests.support import SimulatorFactory, drop, eventually, job, names_in


def samples(text: str) -> dict[str, float]:
    """``name{label="v"}`` -> value, for every sample of a scrape."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


class FixedRate:
    """A RateView with fixed numbers."""

    rate = 7.5
    throttled = 0


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.on_start(FixedRate())
    first.on_result(JobResult("a.json", "a", Outcome.CREATED))
    first.on_result(JobResult("b.json", "b", Outcome.INVALID, error="bad"))
    first.on_answer("create", 0.2, 429)
    first.on_answer("create", 0.1, 201)
    first.on_answer("list", 0.05, None)
    first.track_files(lambda: 3)

    one, two = samples(first.render().decode()), samples(second.render().decode())

    assert one['batchsub_jobs_total{outcome="created"}'] == 1
    assert one['batchsub_jobs_total{outcome="invalid"}'] == 1
    assert one['batchsub_jobs_total{outcome="failed"}'] == 0  # every outcome, from the start
    assert one["batchsub_throttled_total"] == 1
    assert one['batchsub_request_seconds_count{call="create"}'] == 2
    assert one['batchsub_request_seconds_count{call="list"}'] == 1
    assert one["batchsub_rate"] == 7.5
    assert one["batchsub_files_waiting"] == 3
    assert two['batchsub_jobs_total{outcome="created"}'] == 0
    assert two["batchsub_throttled_total"] == 0


async def test_the_endpoint_serves_a_runs_counters(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(rate_limit=20)  # 429s over 20 req/s: the client starts unlimited
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.05)
    source.prepare()
    for index in range(30):
        drop(inbox, f"m{index:02d}.json", job(f"m{index:02d}"))
    drop(inbox, "bad.json", "{")
    metrics = Metrics()
    metrics.track_files(source.files_waiting)
    server = await start_metrics_server(metrics, "127.0.0.1", 0)
    settings = settings_for(sim.url, tmp_path, max_attempts=20)
    task = asyncio.create_task(
        run_source(settings, source, RunAccount(), endless=True, observer=metrics)
    )
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: len(names_in(inbox / "done")) == 30, timeout=15)
            async with http.get(f"{server.url}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok")
            async with http.get(f"{server.url}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                scraped = samples(await response.text())
            metrics.healthy = False
            async with http.get(f"{server.url}/healthz") as response:
                assert response.status == 503
    finally:
        source.stop()
        await asyncio.wait_for(task, 10)
        await source.close()
        await server.close()
    assert scraped['batchsub_jobs_total{outcome="created"}'] == 30
    assert scraped['batchsub_jobs_total{outcome="invalid"}'] == 1
    assert scraped["batchsub_throttled_total"] == sim.store.throttled > 0
    # Every create was timed, the throttled ones too (each was sent again).
    assert scraped['batchsub_request_seconds_count{call="create"}'] >= 30 + sim.store.throttled - 1
    assert scraped['batchsub_request_seconds_count{call="list"}'] >= 1
    assert 0 < scraped["batchsub_rate"] <= 20  # slowed to the limit the gateway stated
    assert scraped["batchsub_files_waiting"] == 0
