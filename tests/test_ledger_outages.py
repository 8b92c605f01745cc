"""Ledger outages end to end: PostgreSQL restarted, stopped and partitioned; a SQLite disk full.

Real ``batchsub`` processes (``consume`` workers, ``run``, ``watch``) against the simulator
process, real RabbitMQ and PostgreSQL. Each case asserts from the simulator's side (its list
endpoint) that every job exists exactly once and that no worker exited. PostgreSQL is really
restarted and stopped: a private cluster of the test's own (``tests.private_pg``), so that no
other test sees the outage; a partition is the TCP proxy of ``tests.faults`` in front of it; a
full disk is a small tmpfs of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsub.commands.queue import publish_directory
from batchsub.sources.amqp import REQUEUE_DELAY
from tests.amqp_support import AMQP_URL, Broker, broker_listening
from tests.faults import (
    Proxy,
    fill,
    via,
)
from tests.pg import PORT, fresh_database, postgres_listening
from tests.private_pg import Cluster, private_cluster, private_cluster_problem
from tests.process_support import (
    free_port,
    job_count,
    remote_jobs,
    simulator_process,
    start_batchsub,
    stop,
)
from tests.support import PROJECT, drop, job, write_manifests

pytestmark = pytest.mark.slow

needs_postgres = pytest.mark.skipif(
    not postgres_listening(), reason="PostgreSQL is not listening on 5432"
)
needs_broker = pytest.mark.skipif(not broker_listening(), reason="RabbitMQ is not listening")
_PRIVATE = private_cluster_problem()
needs_private_cluster = pytest.mark.skipif(_PRIVATE is not None, reason=_PRIVATE or "")

# Quick to notice and to retry: a ledger statement times out after 2 s, a drain takes 5 s.
QUICK = {"BATCHSUB_LEDGER_TIMEOUT": "2", "BATCHSUB_DRAIN_TIMEOUT": "5"}


# --- helpers ----------------------------------------------------------------------------------



def fatal_lines(text: str) -> list[str]:
    """The command's error lines, as ``batchsub: error: ...``: under ``--log-format json``
    each is the JSON event ``command.error``, the only kind of line on stderr then."""
    found = []
    for line in text.splitlines():
        if line.startswith("batchsub:"):
            found.append(line)
        elif '"command.error"' in line:
            found.append("batchsub: error: " + orjson.loads(line)["message"])
    return found

def events(log: Path, name: str) -> list[dict[str, Any]]:
    """The JSON log events called ``name`` in ``log`` (other lines are skipped)."""
    found = []
    for line in log.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
    return found


def assert_clean(log: Path) -> None:
    """No traceback, no ExceptionGroup: every failure ended in one line or a wait."""
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "ExceptionGroup" not in text, text[-3000:]


def assert_each_once(endpoint: str, names: list[str]) -> None:
    counts = Counter(name for name, _ in remote_jobs(endpoint))
    assert {name: n for name, n in counts.items() if n > 1} == {}
    assert sorted(counts) == sorted(names)


def created(endpoint: str) -> set[str]:
    return {name for name, _ in remote_jobs(endpoint)}


async def until(what: str, check: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    """Poll ``check`` (sync or async) every 50 ms; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def health(port: int) -> tuple[int, str]:
    """(status, body) of GET /healthz, or (0, reason) while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def consume_args(queue: str, endpoint: str, ledger: str, *extra: str) -> list[str]:
    return [
        "consume", AMQP_URL, "--queue", queue, "--endpoint", endpoint, "--project-id", PROJECT,
        "--ledger", ledger, "--concurrency", "4", "--in-doubt-grace", "0.2",
        "--log-format", "json", *extra,
    ]  # fmt: skip


def run_args(directory: Path, endpoint: str, ledger: str, *extra: str) -> list[str]:
    return [
        "run", str(directory), "--endpoint", endpoint, "--project-id", PROJECT,
        "--ledger", ledger, "--concurrency", "4", "--in-doubt-grace", "0.2",
        "--progress", "off", "--log-format", "json", *extra,
    ]  # fmt: skip


@dataclass(slots=True)
class Rig:
    """What a queue-worker test needs: a queue, a database, the simulator, a proxy before it."""

    broker: Broker
    queue: str
    dsn: str
    endpoint: str
    proxy: Proxy  # in front of PostgreSQL; via(rig.dsn, rig.proxy) goes through it
    workers: list[subprocess.Popen[bytes]]


@contextlib.asynccontextmanager
async def queue_rig(
    tmp_path: Path, label: str, cluster: Cluster | None = None
) -> AsyncIterator[Rig]:
    """A fresh queue and database (or ``cluster``'s), the simulator process and a proxy;
    workers killed after."""
    broker = await Broker.open()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if cluster is None:
                dsn = await stack.enter_async_context(fresh_database())
            else:
                dsn = cluster.dsn
            with (
                simulator_process(tmp_path / "sim.log") as endpoint,
                Proxy(PORT if cluster is None else cluster.port) as proxy,
                processes() as workers,
            ):
                yield Rig(broker, broker.queue_name(label), dsn, endpoint, proxy, workers)
    finally:
        await broker.close()


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in; each is SIGKILLed on the way out if still running."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            stop(proc, signal.SIGKILL)


async def drained(broker: Broker, queue: str) -> None:
    """Wait until no message is ready, again after a requeue delay (a redelivery settles)."""
    await until("the queue to drain", lambda: _empty(broker, queue), 30)
    await asyncio.sleep(REQUEUE_DELAY * 1.2)
    await until("the queue to stay drained", lambda: _empty(broker, queue), 30)


async def _empty(broker: Broker, queue: str) -> bool:
    return await broker.depth(queue) == 0


def stop_workers(workers: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Every worker still runs; SIGTERM drains each and exits 0."""
    for worker, log in zip(workers, logs, strict=True):
        assert worker.poll() is None, f"a worker exited: {log.read_text()[-3000:]}"
    for worker, log in zip(workers, logs, strict=True):
        stop(worker, signal.SIGTERM)
        assert worker.returncode == 0, log.read_text()[-3000:]
        assert_clean(log)


# --- PostgreSQL restarted or stopped ----------------------------------------------------------


@needs_broker
@needs_private_cluster
@pytest.mark.parametrize("outage", ["restarted", "stopped for 3 s"])
async def test_consume_workers_ride_out_postgres(tmp_path: Path, outage: str) -> None:
    with private_cluster() as cluster:
        await ride_out(tmp_path, cluster, outage)


async def ride_out(tmp_path: Path, cluster: Cluster, outage: str) -> None:
    async with queue_rig(tmp_path, "pg-outage", cluster) as rig:
        names = write_manifests(tmp_path / "m", 60)
        for _ in range(2):  # every job published twice
            await publish_directory(AMQP_URL, rig.queue, tmp_path / "m")
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        args = consume_args(rig.queue, rig.endpoint, rig.dsn, "--rate", "8")
        rig.workers += [start_batchsub(*args, log=log, env=QUICK) for log in logs]
        await until("the first jobs", lambda: job_count(rig.endpoint) >= 8, 30)
        if outage == "restarted":
            await asyncio.to_thread(cluster.restart)
        else:
            with cluster.stopped():
                await asyncio.sleep(3)
        await until("every job", lambda: created(rig.endpoint) >= set(names), 60)
        await drained(rig.broker, rig.queue)
        stop_workers(rig.workers, logs)
        assert_each_once(rig.endpoint, names)
        saw = [bool(events(log, "ledger.unavailable")) for log in logs]
        # A stop of 3 s outlasts the 2 s statement timeout, so someone notices; a fast restart
        # may fall between two statements, and a pool that reconnects unseen is no failure.
        assert any(saw) or outage == "restarted", "no worker noticed the outage"
        for log, noticed in zip(logs, saw, strict=True):
            assert len(events(log, "ledger.recovered")) == int(noticed)
        assert await rig.broker.depth(f"{rig.queue}.dead") == 0


@needs_private_cluster
async def test_run_rides_out_a_postgres_restart(tmp_path: Path) -> None:
    names = write_manifests(tmp_path / "m", 60)
    report = tmp_path / "report.json"
    with private_cluster() as cluster:
        dsn = cluster.dsn
        with simulator_process(tmp_path / "sim.log") as endpoint, processes() as started:
            args = run_args(tmp_path / "m", endpoint, dsn, "--rate", "15", "--report", str(report))
            run = start_batchsub(*args, log=tmp_path / "run.log", env=QUICK)
            started.append(run)
            await until("the first jobs", lambda: job_count(endpoint) >= 10, 30)
            assert run.poll() is None, "the run ended before the restart"
            await asyncio.to_thread(cluster.restart)
            code = await asyncio.to_thread(run.wait, 60)
            log = (tmp_path / "run.log").read_text()
            assert code == 0, log[-3000:]
            assert_clean(tmp_path / "run.log")
            assert len(events(tmp_path / "run.log", "ledger.unavailable")) == 1
            assert len(events(tmp_path / "run.log", "ledger.recovered")) == 1
            assert_each_once(endpoint, names)
            summary = orjson.loads(report.read_bytes())["summary"]
            assert (summary["created"], summary["exit_code"], summary["fatal"]) == (60, 0, None)


# --- a partition, through the proxy -----------------------------------------------------------


@needs_postgres
@needs_broker
async def test_a_frozen_link_to_postgres_times_out_and_the_worker_carries_on(
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    async with queue_rig(tmp_path, "pg-frozen") as rig:
        names = write_manifests(tmp_path / "m", 150)
        for _ in range(2):
            await publish_directory(AMQP_URL, rig.queue, tmp_path / "m")
        args = consume_args(rig.queue, rig.endpoint, via(rig.dsn, rig.proxy), "--rate", "0")
        rig.workers.append(start_batchsub(*args, log=log, env={"BATCHSUB_LEDGER_TIMEOUT": "1"}))
        await until("the first jobs", lambda: job_count(rig.endpoint) >= 20, 30)
        rig.proxy.freeze()  # longer than the statement timeout
        await asyncio.sleep(0.5)  # what was claimed before the freeze is sent now
        during = job_count(rig.endpoint)
        await asyncio.sleep(2.5)
        # Nothing is sent while its claim cannot be committed.
        assert job_count(rig.endpoint) == during < len(names)
        [unavailable] = events(log, "ledger.unavailable")
        assert unavailable["error"].endswith("timed out after 1 s"), unavailable
        rig.proxy.pass_through()
        await until("every job", lambda: created(rig.endpoint) >= set(names), 60)
        await drained(rig.broker, rig.queue)
        stop_workers(rig.workers, [log])
        assert len(events(log, "ledger.recovered")) == 1
        assert_each_once(rig.endpoint, names)


@needs_postgres
async def test_run_ends_in_one_line_when_the_ledger_stays_down_past_the_limit(
    tmp_path: Path,
) -> None:
    names = write_manifests(tmp_path / "m", 60)
    report = tmp_path / "report.json"
    err, out = tmp_path / "run.log", tmp_path / "run.out"
    async with fresh_database() as dsn:
        with (
            simulator_process(tmp_path / "sim.log") as endpoint,
            Proxy(PORT) as proxy,
            processes() as started,
        ):
            ledger = via(dsn, proxy).replace("postgres@", "postgres:s3cret@", 1)
            args = run_args(
                tmp_path / "m", endpoint, ledger, "--rate", "15", "--report", str(report)
            )
            limits = {"BATCHSUB_LEDGER_OUTAGE_LIMIT": "2", "BATCHSUB_LEDGER_TIMEOUT": "1"}
            run = start_batchsub(*args, log=err, stdout=out, env=limits)
            started.append(run)
            await until("the first jobs", lambda: job_count(endpoint) >= 10, 30)
            proxy.refuse()
            proxy.cut()
            cut_at = time.monotonic()
            code = await asyncio.to_thread(run.wait, 30)
            took = time.monotonic() - cut_at

            assert code == 2, err.read_text()[-3000:]
            assert took < 10
            assert_clean(err)
            errors = fatal_lines(err.read_text())
            shown = ledger.replace("s3cret", "***")
            assert len(errors) == 1, errors
            assert re.fullmatch(
                rf"batchsub: error: ledger {re.escape(shown)} unreachable for \d+ s: .+", errors[0]
            ), errors[0]
            for text in (err.read_text(), out.read_text(), report.read_text()):
                assert "s3cret" not in text
            assert "\ntotal\t" in out.read_text()  # the summary is printed
            written = orjson.loads(report.read_bytes())
            assert written["summary"]["exit_code"] == 2
            assert written["summary"]["fatal"] == errors[0].removeprefix("batchsub: error: ")
            assert sorted(row["name"] for row in written["jobs"]) == names  # every manifest
            sent = job_count(endpoint)
            assert sent < len(names)

            # Once the ledger is back, a rerun finishes the rest: each job exists once.
            proxy.accept()
            rerun = start_batchsub(*args, log=tmp_path / "rerun.log")
            started.append(rerun)
            assert await asyncio.to_thread(rerun.wait, 60) == 0
            assert_each_once(endpoint, names)


# --- start-up while the ledger is unreachable, and /healthz -----------------------------------


@needs_postgres
@needs_broker
async def test_a_worker_waits_for_its_ledger_and_healthz_says_so(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    port = free_port()
    async with queue_rig(tmp_path, "pg-start") as rig:
        names = write_manifests(tmp_path / "m", 40)
        await publish_directory(AMQP_URL, rig.queue, tmp_path / "m")
        proxy, endpoint = rig.proxy, rig.endpoint
        proxy.refuse()
        args = consume_args(rig.queue, endpoint, via(rig.dsn, proxy), "--rate", "20")
        args += ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
        rig.workers.append(start_batchsub(*args, log=log, env={"BATCHSUB_LEDGER_TIMEOUT": "1"}))

        await until("the start-up wait", lambda: bool(events(log, "ledger.unavailable")), 20)
        status, text = health(port)
        assert status == 503 and text.startswith("ledger unavailable: cannot connect: ")
        await asyncio.sleep(1)
        assert rig.workers[0].poll() is None and job_count(endpoint) == 0
        proxy.accept()
        await until("/healthz 200", lambda: health(port) == (200, "ok"), 20)
        await until("the first jobs", lambda: job_count(endpoint) >= 10, 30)

        proxy.refuse()
        proxy.cut()
        await until("/healthz 503", lambda: health(port)[0] == 503, 20)
        assert health(port)[1].startswith("ledger unavailable: ")
        proxy.accept()
        await until("/healthz 200 again", lambda: health(port) == (200, "ok"), 20)
        await until("every job", lambda: created(endpoint) >= set(names), 60)
        await drained(rig.broker, rig.queue)
        stop_workers(rig.workers, [log])
        assert_each_once(endpoint, names)
        assert len(events(log, "ledger.unavailable")) == 2
        assert len(events(log, "ledger.recovered")) == 2


@needs_postgres
async def test_run_does_not_start_without_its_ledger(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 5)
    async with fresh_database() as dsn:
        with simulator_process(tmp_path / "sim.log") as endpoint, Proxy(PORT) as proxy:
            proxy.refuse()
            ledger = via(dsn, proxy).replace("postgres@", "postgres:s3cret@", 1)
            started = time.monotonic()
            run = start_batchsub(
                *run_args(tmp_path / "m", endpoint, ledger), log=tmp_path / "run.log"
            )
            code = await asyncio.to_thread(run.wait, 30)
            assert time.monotonic() - started < 10
            lines = (tmp_path / "run.log").read_text().strip().splitlines()
            assert code == 2
            assert len(lines) == 1, lines  # under --log-format json, the error is a JSON line
            shown = ledger.replace("s3cret", "***")
            assert fatal_lines(lines[0])[0].startswith(
                f"batchsub: error: ledger {shown}: cannot connect: "
            )
            assert job_count(endpoint) == 0


# --- a full disk under a SQLite ledger --------------------------------------------------------


async def test_run_on_a_full_disk_ends_in_one_line_naming_the_ledger(
    tmp_path: Path, small_disk: Path
) -> None:
    names = write_manifests(tmp_path / "m", 80)
    ledger = small_disk / "ledger.db"
    report = tmp_path / "report.json"
    err, out = tmp_path / "run.log", tmp_path / "run.out"
    with simulator_process(tmp_path / "sim.log") as endpoint, processes() as started:
        args = run_args(
            tmp_path / "m", endpoint, str(ledger), "--rate", "20", "--report", str(report)
        )
        run = start_batchsub(*args, log=err, stdout=out, env={"BATCHSUB_LEDGER_OUTAGE_LIMIT": "1"})
        started.append(run)
        await until("the first jobs", lambda: job_count(endpoint) >= 10, 30)
        filler = fill(small_disk)
        code = await asyncio.to_thread(run.wait, 30)

        assert code == 2, err.read_text()[-3000:]
        assert_clean(err)
        errors = fatal_lines(err.read_text())
        assert len(errors) == 1, errors
        assert re.fullmatch(
            rf"batchsub: error: ledger {re.escape(str(ledger))} unwritable for \d+ s: "
            "write failed: database or disk is full",
            errors[0],
        ), errors
        assert "\ntotal\t" in out.read_text()
        written = orjson.loads(report.read_bytes())
        assert written["summary"]["exit_code"] == 2
        assert sorted(row["name"] for row in written["jobs"]) == names

        filler.unlink()  # space again: a rerun finishes, each job once
        rerun = start_batchsub(*args, log=tmp_path / "rerun.log")
        started.append(rerun)
        assert await asyncio.to_thread(rerun.wait, 60) == 0, (tmp_path / "rerun.log").read_text()
        assert_each_once(endpoint, names)


async def test_watch_on_a_full_disk_pauses_and_carries_on(tmp_path: Path, small_disk: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = tmp_path / "watch.log"
    port = free_port()
    with simulator_process(tmp_path / "sim.log") as endpoint, processes() as started:
        args = [
            "watch", str(inbox), "--endpoint", endpoint, "--project-id", PROJECT,
            "--ledger", str(small_disk / "ledger.db"), "--settle-time", "0",
            "--rescan-interval", "0.5", "--rate", "20", "--metrics-port", str(port),
        ]  # fmt: skip
        watch = start_batchsub(*args, log=log, env={"BATCHSUB_METRICS_HOST": "127.0.0.1"})
        started.append(watch)
        first = [f"first-{n:02d}" for n in range(10)]
        for name in first:
            drop(inbox, f"{name}.json", job(name))
        await until("the first files", lambda: created(endpoint) == set(first), 30)
        filler = fill(small_disk)
        second = [f"second-{n:02d}" for n in range(10)]
        for name in second:
            drop(inbox, f"{name}.json", job(name))
        await until("/healthz 503", lambda: health(port)[0] == 503, 20)
        assert health(port)[1] == "ledger unavailable: write failed: database or disk is full"
        await asyncio.sleep(1)
        assert watch.poll() is None
        stuck = len(created(endpoint) - set(first))
        filler.unlink()
        await until("/healthz 200", lambda: health(port) == (200, "ok"), 20)
        await until("every file", lambda: created(endpoint) == set(first + second), 30)
        await until(
            "every file done",
            lambda: len(list((inbox / "done").glob("*.json"))) == len(first + second),
            20,
        )
        stop_workers([watch], [log])
        assert_each_once(endpoint, first + second)
        assert stuck == 0  # nothing is sent while its intent cannot be committed
        assert len(events(log, "ledger.unavailable")) == 1
        assert len(events(log, "ledger.recovered")) == 1
