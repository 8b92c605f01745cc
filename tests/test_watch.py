"""``batchsub watch``: the daemon end to end, in process and as a process stopped by SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from batchsub.commands.watch import add_parser, main, watch
from batchsub.http_server import serve_app
from batchsub.logs import configure_logging
from batchsub.metrics import Metrics, create_metrics_app
from batchsub.settings import Settings, load_settings
from batchsub.simulator import RunningSimulator, SimulatorConfig, start_simulator
from batchsub.simulator.store import SimJob
from batchsub.sources.dropfolder import DropFolderSource
from tests.http_support import is_list_call, proxying
from tests.process_support import free_port
from tests.run_support import settings_for
from tests.support import PROJECT, REPO, TOKEN, SimulatorFactory, drop, eventually, job, names_in


def test_watch_flags_map_onto_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            *("watch", "inbox", "--settle-time", "0.5", "--rescan-interval", "5", "--poll"),
            *("--metrics-port", "9100", "--drain-timeout", "7", "--report", "r.json"),
            *("--rate", "3"),
        ]
    )
    assert args.handler is main and args.directory == Path("inbox")
    assert (args.settle_time, args.rescan_interval, args.poll) == (0.5, 5.0, True)
    assert (args.metrics_port, args.drain_timeout, args.report, args.rate) == (
        9100,
        7.0,
        Path("r.json"),
        3.0,
    )
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    settings = load_settings(given)
    assert settings.settle_time == 0.5 and settings.poll is True and settings.metrics_port == 9100
    # Not given: None, so that the environment and the config file still apply.
    defaults = parser.parse_args(["watch", "inbox"])
    assert defaults.poll is None and defaults.settle_time is None and defaults.drain_timeout is None


async def test_drop_folder_end_to_end(simulator: SimulatorFactory, tmp_path: Path) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.6, rescan_interval=0.5)
    source.prepare()
    task = asyncio.create_task(watch(settings_for(sim.url, tmp_path), source))
    try:
        await asyncio.sleep(0.1)
        started = time.monotonic()
        names = [f"drop-{i:02d}" for i in range(20)]
        for name in names:
            drop(inbox, f"{name}.json", job(name))
        body = orjson.dumps(job("in-pieces"))
        with (inbox / "in-pieces.json").open("wb") as out:
            out.write(body[:15])
            out.flush()
            await asyncio.sleep(0.4)
            out.write(body[15:])
        drop(inbox, "broken.json", job("broken", parallel_numbr=1))
        (inbox / "partial.json.part").write_bytes(orjson.dumps(job("partial")))
        await eventually(
            lambda: len(names_in(inbox / "done")) == 21 and len(names_in(inbox / "failed")) == 2,
            timeout=10,
        )
        elapsed = time.monotonic() - started
    finally:
        source.stop()
        code = await asyncio.wait_for(task, 10)
    assert code == 0  # a failed file is not a failure of the daemon
    assert elapsed < 5
    assert sorted(j.name for j in sim.store.jobs) == sorted([*names, "in-pieces"])
    assert sim.store.duplicates() == {}
    assert names_in(inbox / "done") == sorted(f"{n}.json" for n in [*names, "in-pieces"])
    error = json.loads((inbox / "failed" / "broken.error.json").read_text())
    assert "parallel_numbr: unknown field" in error["reason"]
    assert names_in(inbox) == ["partial.json.part"]
    assert names_in(inbox / "processing") == []


async def drop_after_a_server_change(
    sim: RunningSimulator,
    tmp_path: Path,
    change: Callable[[], object],
    name: str,
    *,
    url: str | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Run the daemon: drop first.json (it lists the server's jobs then), ``change`` the server,
    let that listing age 0.4 s, drop NAME.json; the report rows of NAME. ``url``: a proxy."""
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.1, rescan_interval=0.5)
    source.prepare()
    settings = settings_for(url or sim.url, tmp_path, **overrides)
    task = asyncio.create_task(watch(settings, source, report=tmp_path / "report.json"))
    try:
        drop(inbox, "first.json", job("first"))
        await eventually(lambda: names_in(inbox / "done") == ["first.json"])
        change()
        await asyncio.sleep(0.4)
        drop(inbox, f"{name}.json", job(name))
        await eventually(lambda: f"{name}.json" in names_in(inbox / "done"))
    finally:
        source.stop()
        code = await asyncio.wait_for(task, 10)
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    return [row for row in report["jobs"] if row["name"] == name]


async def test_a_job_made_by_hand_while_the_daemon_runs_is_adopted_not_duplicated(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # This API accepts a second job of the same name: only batchsub can prevent it.
    sim = await simulator(duplicate_names="accept")
    sim.store.add("older", {}, int(time.time() * 1000) - 60_000, PROJECT)
    made: list[SimJob] = []
    rows = await drop_after_a_server_change(
        sim,
        tmp_path,
        lambda: made.append(sim.store.add("by-hand", {}, int(time.time() * 1000), PROJECT)),
        "by-hand",
        snapshot_refresh=0.3,  # the daemon's listing is older than this when by-hand.json comes
    )
    assert sim.store.duplicates() == {}
    assert sorted(j.name for j in sim.store.jobs) == ["by-hand", "first", "older"]
    assert [(row["outcome"], row["job_id"], row["adopted"]) for row in rows] == [
        ("already_created", made[0].job_id, True)
    ]


async def test_a_job_deleted_by_hand_is_forgotten_at_the_next_full_listing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(duplicate_names="accept")
    gone = sim.store.add("gone", {}, int(time.time() * 1000) - 60_000, PROJECT)
    rows = await drop_after_a_server_change(
        sim,
        tmp_path,
        lambda: sim.store.delete(gone.job_id),
        "gone",
        snapshot_refresh=0.3,
        snapshot_relist=0.3,  # the whole list is read again before gone.json comes
    )
    # Created anew: the deleted job was not taken for existing.
    assert [(row["outcome"], row["adopted"]) for row in rows] == [("created", False)]
    assert rows[0]["job_id"] != gone.job_id
    assert [j.name for j in sim.store.jobs if not j.deleted] == ["first", "gone"]


# --- as a process -------------------------------------------------------------------------


async def start_watch(
    sim: RunningSimulator, tmp_path: Path, *extra: str, log: str = "watch.log"
) -> asyncio.subprocess.Process:
    """``batchsub watch`` in a subprocess against ``sim``; its stderr goes to ``tmp_path/log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSUB_", "HUAWEICLOUD_"))}
    env.update(BATCHSUB_AUTH_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    with (tmp_path / log).open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchsub",
            "watch",
            str(tmp_path / "inbox"),
            "--endpoint",
            sim.url,
            "--project-id",
            PROJECT,
            "--ledger",
            str(tmp_path / "ledger.db"),
            "--settle-time",
            "0.1",
            "--rate",
            "0",
            "--concurrency",
            "4",
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=tmp_path,
        )


async def stop(process: asyncio.subprocess.Process, *signals: signal.Signals) -> tuple[int, float]:
    started = time.monotonic()
    for sig in signals:
        process.send_signal(sig)
        await asyncio.sleep(0.05)
    code = await asyncio.wait_for(process.wait(), 15)
    return code, time.monotonic() - started


def accounted(inbox: Path, names: list[str], sim: RunningSimulator) -> set[str]:
    """Check nothing is lost or created twice; the names whose files are done."""
    done = {n.removesuffix(".json") for n in names_in(inbox / "done")}
    waiting = {n.removesuffix(".json") for n in names_in(inbox) + names_in(inbox / "processing")}
    assert done | waiting == set(names) and not done & waiting
    assert sim.store.duplicates() == {}
    assert done <= {j.name for j in sim.store.jobs}
    return done


@pytest.mark.slow
async def test_sigterm_drains_and_a_restart_finishes(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(latency=0.3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"job-{i:03d}" for i in range(40)]
    for name in names:
        drop(inbox, f"{name}.json", job(name))
    port = free_port()
    process = await start_watch(sim, tmp_path, "--drain-timeout", "3", "--metrics-port", str(port))
    try:
        await eventually(lambda: len(sim.store.jobs) >= 6, timeout=15)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200 and await response.text() == "ok"
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                scraped = await response.text()
        assert 'batchsub_jobs_total{outcome="created"}' in scraped
        assert "batchsub_files_waiting" in scraped
        code, took = await stop(process, signal.SIGTERM)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logs = (tmp_path / "watch.log").read_text()
    assert code == 0, logs
    assert took < 3 + 2
    done = accounted(inbox, names, sim)
    assert 0 < len(done) < len(names)  # it stopped claiming: work was left in the folder
    assert '"event":"file.done"' in logs  # JSON lines

    again = await start_watch(sim, tmp_path, "--drain-timeout", "3", log="again.log")
    try:
        await eventually(lambda: len(names_in(inbox / "done")) == len(names), timeout=15)
        code, _ = await stop(again, signal.SIGTERM)
    finally:
        if again.returncode is None:
            again.kill()
            await again.wait()
    assert code == 0
    assert sorted(j.name for j in sim.store.jobs) == names
    assert sim.store.duplicates() == {}


@pytest.mark.slow
async def test_a_second_signal_stops_at_once_and_loses_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # Every create makes its job at once but answers only after 30 s: in flight at the signals.
    sim = await simulator(slow_after_create=1.0, slow_seconds=30.0)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"slow-{i:02d}" for i in range(4)]
    for name in names:
        drop(inbox, f"{name}.json", job(name))
    process = await start_watch(sim, tmp_path, "--drain-timeout", "30")
    try:
        await eventually(lambda: sim.store.create_requests == 4, timeout=15)
        code, took = await stop(process, signal.SIGTERM, signal.SIGTERM)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert took < 5  # neither the 30 s answers nor the 30 s drain were waited for
    assert code == 0
    assert accounted(inbox, names, sim) == set()  # no answer came: every file is waiting

    # The jobs were created though: the restart finds them by name, adopts them, sends nothing.
    again = await start_watch(sim, tmp_path, "--drain-timeout", "3", log="again.log")
    try:
        await eventually(lambda: len(names_in(inbox / "done")) == len(names), timeout=15)
        await stop(again, signal.SIGTERM)
    finally:
        if again.returncode is None:
            again.kill()
            await again.wait()
    assert sorted(j.name for j in sim.store.jobs) == names
    assert sim.store.create_requests == 4


async def test_a_refused_credential_stops_the_daemon_with_exit_2(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.5)
    source.prepare()
    drop(inbox, "a.json", job("a"))
    settings = settings_for(sim.url, tmp_path, auth_token="wrong-token")
    code = await asyncio.wait_for(watch(settings, source), 10)
    assert code == 2
    assert names_in(inbox) == ["a.json"]  # given back, to be sent once the credential is fixed
    assert sim.store.jobs == []


class ListOutage:
    """A proxy override: while ``on``, every list call gets a proxy's HTML page."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, request: web.Request) -> web.StreamResponse | None:
        if self.on and is_list_call(request):
            return web.Response(text="<html>Gateway maintenance</html>", content_type="text/html")
        return None


async def test_while_the_job_list_cannot_be_read_the_daemon_creates_nothing_then_adopts(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # The API accepts a second job of a name: only the listing keeps batchsub from making one.
    sim = await simulator(duplicate_names="accept")
    made = sim.store.add("by-hand", {}, int(time.time() * 1000) - 1000, PROJECT)
    outage = ListOutage()
    outage.on = True
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.3)
    source.prepare()
    metrics = Metrics()
    async with proxying(sim.url, outage) as (url, _):
        settings = settings_for(url, tmp_path, max_attempts=3)
        with capture_logs() as logs:
            task = asyncio.create_task(
                watch(settings, source, metrics=metrics, report=tmp_path / "r.json")
            )
            try:
                drop(inbox, "by-hand.json", job("by-hand"))
                drop(inbox, "new.json", job("new"))
                await eventually(lambda: metrics.api_problem is not None)
                await asyncio.sleep(1.0)  # listings keep failing: files go back and again
                assert sim.store.create_requests == 0 and not task.done()
                assert names_in(inbox / "done") == []
                outage.on = False
                await eventually(lambda: len(names_in(inbox / "done")) == 2, timeout=10)
                assert metrics.api_problem is None
            finally:
                source.stop()
                code = await asyncio.wait_for(task, 10)
    assert code == 0
    assert sim.store.duplicates() == {}
    assert sorted(j.name for j in sim.store.jobs) == ["by-hand", "new"]
    events = [entry["event"] for entry in logs]
    assert events.count("api.unreachable") == 1 and events.count("api.reachable") == 1
    assert "remote.cannot_list" not in events
    rows = json.loads((tmp_path / "r.json").read_text())["jobs"]
    waited = [row for row in rows if row["outcome"] == "unresolved"]
    assert waited and all(
        "not sent: the job list cannot be read: HTTP 200 with an HTML body" in row["error"]
        for row in waited
    )
    final = {row["name"]: row for row in rows if row["outcome"] != "unresolved"}
    assert (final["by-hand"]["outcome"], final["by-hand"]["job_id"]) == (
        "already_created",
        made.job_id,
    )


async def test_while_a_catch_up_cannot_be_read_a_job_made_by_hand_is_not_duplicated(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(duplicate_names="accept")
    outage = ListOutage()
    made: list[SimJob] = []

    def made_by_hand_during_an_outage() -> None:
        made.append(sim.store.add("by-hand", {}, int(time.time() * 1000), PROJECT))
        outage.on = True
        asyncio.get_running_loop().call_later(1.5, setattr, outage, "on", False)

    async with proxying(sim.url, outage) as (url, _):
        rows = await drop_after_a_server_change(
            sim,
            tmp_path,
            made_by_hand_during_an_outage,
            "by-hand",
            url=url,
            snapshot_refresh=0.3,  # the listing is stale when by-hand.json comes: caught up
            max_attempts=2,
        )
    assert sim.store.duplicates() == {}
    assert [(row["outcome"], row["job_id"]) for row in rows][-1] == (
        "already_created",
        made[0].job_id,
    )
    assert any(row["outcome"] == "unresolved" for row in rows)  # it waited for the list


async def test_the_daemon_waits_through_an_api_outage_logs_it_once_and_says_so_in_healthz(
    tmp_path: Path,
) -> None:
    port = free_port()  # nobody listens there until the "API" comes up
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.3)
    source.prepare()
    settings = settings_for(f"http://127.0.0.1:{port}", tmp_path)
    metrics = Metrics()
    runner, metrics_url = await serve_app(
        create_metrics_app(metrics), "127.0.0.1", 0, shutdown_timeout=0.5
    )
    healthz = f"{metrics_url}/healthz"
    with capture_logs() as logs:
        task = asyncio.create_task(watch(settings, source, metrics=metrics))
        sim = None
        try:
            drop(inbox, "a.json", job("a"))
            async with aiohttp.ClientSession() as http:

                async def health() -> tuple[int, str]:
                    async with http.get(healthz) as response:
                        return response.status, await response.text()

                await eventually(lambda: any(e["event"] == "api.unreachable" for e in logs))
                await asyncio.sleep(1.0)  # several listings fail meanwhile
                assert not task.done()
                status, text = await health()
                assert status == 503 and text.startswith("API unreachable: cannot connect to")
                config = SimulatorConfig(project_id=PROJECT, tokens=frozenset({TOKEN}))
                sim = await start_simulator(config, port=port)
                await eventually(lambda: names_in(inbox / "done") == ["a.json"], timeout=10)
                assert await health() == (200, "ok")
        finally:
            source.stop()
            code = await asyncio.wait_for(task, 10)
            await runner.cleanup()
            if sim is not None:
                await sim.close()
    assert code == 0
    assert sim is not None and [j.name for j in sim.store.jobs] == ["a"]
    events = [entry["event"] for entry in logs]
    assert events.count("api.unreachable") == 1 and events.count("api.reachable") == 1
    noisy = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert len(noisy) <= 3, noisy
async def test_a_file_name_that_is_not_utf8_is_sent_and_logged_escaped(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    stream = io.StringIO()
    configure_logging("json", "info", interactive=False, stream=stream)
    odd, bad = os.fsdecode(b"caf\xe9.json"), os.fsdecode(b"bad\xff.json")
    drop(inbox, "good.json", job("good"))
    drop(inbox, odd, job("odd-name"))
    drop(inbox, bad, "{")
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.05)
    source.prepare()
    task = asyncio.create_task(watch(settings_for(sim.url, tmp_path), source))
    try:
        await eventually(lambda: len(names_in(inbox / "done")) == 2 or task.done(), timeout=10)
        await eventually(lambda: len(names_in(inbox / "failed")) == 2 or task.done())
    finally:
        source.stop()
        code = await asyncio.wait_for(task, 10)
    assert code == 0
    assert sorted(j.name for j in sim.store.jobs) == ["good", "odd-name"]
    assert names_in(inbox / "done") == sorted(["good.json", odd])
    error = orjson.loads((inbox / "failed" / os.fsdecode(b"bad\xff.error.json")).read_bytes())
    assert error["file"] == "bad\\xff.json" and "invalid JSON" in error["reason"]
    logged = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert {"file.claimed", "file.done", "file.failed"} <= {e["event"] for e in logged}
    assert any(e.get("file") == "caf\\xe9.json" for e in logged)
