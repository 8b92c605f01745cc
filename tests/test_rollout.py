"""--start, --wait and --waves through ``run_source``, in process against the simulator.

Waves: a failing first wave holds the rest (nothing sent for them); with healthy starts, no
job of wave 2 is created before wave 1 ran for --healthy-for. Lost start answers start no job
twice; --wait alone waits for the jobs already started; watch and consume refuse waves.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from batchsub.commands.retry import retry_failed
from batchsub.commands.watch import watch
from batchsub.errors import ConfigError
from batchsub.jobs import BAD_HEALTH, BAD_STARTS, INTERRUPTED, JobResult, Outcome
from batchsub.lifecycle.starter import StartKind
from batchsub.lifecycle.waiter import GOOD_HEALTH, Health
from batchsub.metrics import Metrics
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import load_settings
from batchsub.simulator import RunningSimulator, SimulatorConfig
from batchsub.simulator.faults import START_FAULTS, FaultPicker
from batchsub.simulator.lifecycle import LIFECYCLE
from batchsub.sources.directory import DirectorySource
from batchsub.sources.dropfolder import DropFolderSource
from batchsub.wiring import lifecycle
from tests.pg import fresh_database, postgres_listening
from tests.run_support import on_ledger, read_report, settings_for
from tests.support import PROJECT, SimulatorFactory, drop, eventually, job, write_manifests

FAST_START = {"start_seconds": (0.2, 0.2), "latency": 0.005, "seed": 7}


async def run(
    sim: RunningSimulator, tmp_path: Path, folder: Path, **settings: Any
) -> tuple[int, dict[str, Any]]:
    """One in-process run of ``folder`` with --start (and the given settings); code, report."""
    values = {"start": True, "healthy_for": 0.5, "in_doubt_grace": 0.2, **settings}
    report = tmp_path / "report.json"
    code = await run_source(
        settings_for(sim.url, tmp_path, **values), DirectorySource(folder), RunAccount(report)
    )
    return code, read_report(report)


def stats(sim: RunningSimulator) -> dict[str, Any]:
    return sim.store.stats(PROJECT)


def twice(sim: RunningSimulator) -> list[str]:
    rows = stats(sim)["jobs"]
    return [row["name"] for row in rows if row["runs"] > 1 or row["runs_while_running"]]


async def test_a_failing_first_wave_holds_the_rest(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**{**FAST_START, "submit_fail": 0.9})
    names = write_manifests(tmp_path / "m", 100)
    code, report = await run(
        sim, tmp_path, tmp_path / "m", waves="5,100%", max_failures=1, wait=True
    )
    assert code == 1
    rows = {row["name"]: row for row in report["jobs"]}
    held = sorted(n for n, r in rows.items() if r["outcome"] == "held")
    assert held == names[5:]  # nothing of wave 2 was sent
    assert all("--max-failures 1" in rows[n]["error"] and rows[n]["start"] is None for n in held)
    assert sorted(job.name for job in sim.store.jobs) == names[:5]
    assert report["summary"]["held"] == 95 and report["summary"]["start_failed"] >= 2


async def test_wave_2_is_created_only_after_wave_1_ran_for_healthy_for(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**FAST_START)
    names = write_manifests(tmp_path / "m", 12)
    code, report = await run(sim, tmp_path, tmp_path / "m", waves="2,50%,100%", healthy_for=0.5)
    assert code == 0, report["summary"]
    jobs = {made.name: made for made in sim.store.jobs}
    for made in jobs.values():
        assert made.status == "job_running"  # moves the simulated status along
    waves = [names[:2], names[2:6], names[6:]]
    for earlier, later in itertools.pairwise(waves):
        healthy_by = max(jobs[n].start_time for n in earlier) + 500  # epoch ms
        assert min(jobs[n].create_time for n in later) >= healthy_by
    assert {row["health"] for row in report["jobs"]} == {"healthy"}
    assert twice(sim) == []


@pytest.mark.parametrize("seed", [7, 23])
async def test_lost_start_answers_start_no_job_twice_and_the_report_agrees(
    simulator: SimulatorFactory, tmp_path: Path, seed: int
) -> None:
    faults = {"drop_after_run": 0.4, "error_504_after_run": 0.2, "submit_fail": 0.1}
    sim = await simulator(**{**FAST_START, **faults, "seed": seed})
    write_manifests(tmp_path / "m", 250)
    code, report = await run(sim, tmp_path, tmp_path / "m", wait=True)
    seen = stats(sim)
    assert seen["faults"].get("drop_after_run") or seen["faults"].get("error_504_after_run")
    assert twice(sim) == [] and all(row["runs"] == 1 for row in seen["jobs"])
    rows = {row["name"]: row for row in report["jobs"]}
    for made in seen["jobs"]:
        row = rows[made["name"]]
        assert (row["status"], row["start"]) == (made["status"], "started"), row
        assert (row["health"] == "healthy") == (made["status"] == "job_running"), row
    failed = sum(1 for made in seen["jobs"] if made["status"] != "job_running")
    assert code == (1 if failed else 0)
    assert (report["summary"]["running"], report["summary"]["start_failed"]) == (
        250 - failed,
        failed,
    )


async def test_wait_alone_waits_for_the_jobs_already_started(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**FAST_START)
    write_manifests(tmp_path / "m", 3)
    code, first = await run(sim, tmp_path, tmp_path / "m")  # --start, no --wait
    assert code == 0 and {row["start"] for row in first["jobs"]} == {"started"}
    assert first["summary"]["started"] + first["summary"]["running"] == 3
    write_manifests(tmp_path / "m", 1, prefix="late")  # created now, never started
    code, report = await run(sim, tmp_path, tmp_path / "m", start=False, wait=True)
    rows = {row["name"]: row for row in report["jobs"]}
    assert rows.pop("late-00000")["start"] == "not_started"
    assert {row["health"] for row in rows.values()} == {"healthy"}
    assert code == 0  # a job never started is reported, not waited for
    assert stats(sim)["totals"]["runs"] == 3


async def test_a_stopped_job_is_started_again_only_with_restart_stopped(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**FAST_START)
    write_manifests(tmp_path / "m", 1)
    assert (await run(sim, tmp_path, tmp_path / "m", wait=True))[0] == 0
    job = sim.store.jobs[0]
    job.enter("job_cancel_success")  # the user stopped it on purpose
    code, report = await run(sim, tmp_path, tmp_path / "m", wait=True)
    assert report["jobs"][0]["start"] == "not_started" and code == 0
    code, report = await run(sim, tmp_path, tmp_path / "m", wait=True, restart_stopped=True)
    assert (code, report["jobs"][0]["start"], report["jobs"][0]["health"]) == (
        0,
        "started",
        "healthy",
    )


def test_watch_and_consume_refuse_waves_and_waves_need_start(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9", tmp_path, start=True, waves="1,100%")
    with pytest.raises(ConfigError, match="watch and consume"):
        lifecycle(settings, endless=True)
    assert lifecycle(settings, endless=False).waves is not None
    with pytest.raises(ConfigError, match="give --start"):
        lifecycle(settings_for("http://x", tmp_path, waves="5"), endless=False)
    with pytest.raises(ConfigError, match="give --waves"):
        lifecycle(settings_for("http://x", tmp_path, max_failures=2), endless=False)
    with pytest.raises(ConfigError, match=r"waves: --waves 10%,5%: wave 2 \(5%\) must be more"):
        load_settings({"start": True, "waves": "10%,5%"})


def test_metrics_count_jobs_by_dli_status_and_time_the_starts() -> None:
    metrics = Metrics()
    row = JobResult("a.json", "a", Outcome.CREATED, job_id=1, start="started")
    metrics.on_lifecycle(row)
    running = JobResult(
        "b.json", "b", Outcome.CREATED, job_id=2, start="started", status="job_running",
        started_at=100.0, running_at=103.5,
    )  # fmt: skip
    metrics.on_lifecycle(running)
    text = metrics.render().decode()
    assert 'batchsub_job_status_total{status="job_running"} 1.0' in text
    assert 'batchsub_starts_total{start="started"} 2.0' in text
    assert "batchsub_start_seconds_count 1.0" in text and "batchsub_start_seconds_sum 3.5" in text


async def test_watch_starts_each_dropped_job_once_it_exists_and_waits_for_it(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**FAST_START)
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.1, rescan_interval=0.5)
    source.prepare()
    settings = settings_for(sim.url, tmp_path, start=True, wait=True, healthy_for=0.3)
    report = tmp_path / "report.json"
    metrics = Metrics()
    task = asyncio.create_task(watch(settings, source, report=report, metrics=metrics))
    try:
        for index in range(3):
            drop(inbox, f"w{index}.json", job(f"w{index}"))
        await eventually(lambda: stats(sim)["statuses"].get("job_running") == 3, timeout=10)
        drop(inbox, "late.json", job("late"))  # a batch of its own, later
        await eventually(lambda: stats(sim)["statuses"].get("job_running") == 4, timeout=10)
        await asyncio.sleep(0.6)  # healthy_for: the rows are written
    finally:
        source.stop()
        code = await asyncio.wait_for(task, 10)
    assert code == 0 and twice(sim) == []
    rows = read_report(report)["jobs"]
    assert sorted((r["name"], r["start"], r["health"]) for r in rows) == [
        (name, "started", "healthy") for name in ("late", "w0", "w1", "w2")
    ]
    assert 'batchsub_job_status_total{status="job_running"} 4.0' in metrics.render().decode()


@pytest.mark.skipif(not postgres_listening(), reason="PostgreSQL is not listening on 5432")
async def test_two_runs_sharing_a_postgresql_ledger_start_each_job_once(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**{**FAST_START, "drop_after_run": 0.3, "latency": 0.02})
    write_manifests(tmp_path / "m", 150)
    async with fresh_database() as dsn:
        settings = on_ledger(dsn, settings_for(
            sim.url, tmp_path, start=True, wait=True, healthy_for=0.3,
            in_doubt_grace=0.2, timeout=2.0,
        ))  # fmt: skip
        codes = await asyncio.gather(
            *(run_source(settings, DirectorySource(tmp_path / "m"), RunAccount()) for _ in range(2))
        )
    assert twice(sim) == []
    assert {row["status"] for row in stats(sim)["jobs"]} == {"job_running"}
    assert len(sim.store.jobs) == 150 and sim.store.duplicates() == {}
    assert set(codes) <= {0, 1}  # a job the other worker held may end unconfirmed here


def test_the_failure_values_of_the_report_are_the_engines() -> None:
    # jobs.py names them as strings (the report must not import the engine): they must match.
    assert {*BAD_STARTS, "started", "active", "not_started"} == {k.value for k in StartKind}
    assert BAD_HEALTH == {h.value for h in Health if h not in GOOD_HEALTH} | {INTERRUPTED}


async def test_retry_start_starts_the_jobs_whose_start_failed_once_more(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**{**FAST_START, "submit_fail": 1.0})
    write_manifests(tmp_path / "m", 3)
    code, report = await run(sim, tmp_path, tmp_path / "m", wait=True)
    assert code == 1 and report["summary"]["start_failed"] == 3
    code, report = await run(sim, tmp_path, tmp_path / "m", wait=True)  # a rerun: left alone
    assert {row["start"] for row in report["jobs"]} == {"start_failed"}
    assert stats(sim)["totals"]["runs"] == 3
    # The cause fixed (the queue has CUs again), retry --start starts them once more.
    lifecycle_of = sim._runner.app[LIFECYCLE]
    lifecycle_of._start_faults = FaultPicker(SimulatorConfig(), START_FAULTS)
    settings = settings_for(sim.url, tmp_path, start=True, wait=True, healthy_for=0.3)
    said: list[str] = []
    code = await retry_failed(settings, tmp_path / "retry.json", announce=said.append)
    rows = read_report(tmp_path / "retry.json")["jobs"]
    assert code == 0 and said == [f"starting again 3 jobs of project {PROJECT} whose start failed"]
    assert {(r["outcome"], r["start"], r["health"]) for r in rows} == {
        ("already_created", "started", "healthy")
    }
    assert [row["runs"] for row in stats(sim)["jobs"]] == [2, 2, 2]  # failed, then started
    assert stats(sim)["totals"]["runs_while_running"] == 0


async def test_waves_over_invalid_manifests_only_still_report_them(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**FAST_START)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "broken.json").write_text("{not json")
    code, report = await run(sim, tmp_path, tmp_path / "m", waves="10%,100%")
    assert code == 1 and [row["outcome"] for row in report["jobs"]] == ["invalid"]


async def test_resume_savepoint_reaches_the_run_call(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**FAST_START)
    write_manifests(tmp_path / "m", 3)
    code, _ = await run(sim, tmp_path, tmp_path / "m", resume_savepoint=True)
    assert code == 0 and stats(sim)["totals"]["resumes"] == 3


async def test_a_job_that_restarts_on_exception_is_waited_for_through_it(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # Both jobs run, then fail after 0.3 s; only the one whose body sets
    # restart_when_exception comes back (1.5 s later) and must end healthy, not failed.
    sim = await simulator(
        start_seconds=(1.5, 1.5), fail_after_run=1.0, fail_after_seconds=(0.3, 0.3), seed=7
    )
    folder = tmp_path / "m"
    folder.mkdir()
    drop(folder, "revived.json", job("revived", restart_when_exception=True))
    drop(folder, "plain.json", job("plain"))
    code, report = await run(sim, tmp_path, folder, wait=True, healthy_for=1.0)
    rows = {row["name"]: row for row in report["jobs"]}
    assert rows["plain"]["health"] == "failed"
    assert rows["plain"]["status"] == "job_running_exception"
    assert rows["revived"]["health"] == "healthy", rows["revived"]
    assert code == 1
