"""Scale out, end to end: three ``consume`` workers on real RabbitMQ and one PostgreSQL ledger.

500 jobs published, the first 100 twice, 3 invalid messages; one worker is killed with SIGKILL
mid-run. Every job must exist exactly once and the invalid messages sit in the dead queue.
Then every job published twice, and one worker frozen (SIGSTOP) past its claims' lease while
its jobs wait for their pacing turn: the others take them over, and when it wakes it sends
none of them again; no worker exits.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.amqp_support import AMQP_URL, Broker, broker_listening
from tests.pg import fresh_database, postgres_listening
from tests.process_support import job_count, remote_jobs, simulator_process, start_batchsub, stop
from tests.support import PROJECT, write_manifests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not broker_listening(), reason="RabbitMQ is not listening on 5672"),
    pytest.mark.skipif(not postgres_listening(), reason="PostgreSQL is not listening on 5432"),
]

JOBS = 500
TWICE = 100


def publish(directory: Path, queue: str, log: Path, *extra: str) -> None:
    proc = start_batchsub("publish", str(directory), AMQP_URL, "--queue", queue, *extra, log=log)
    assert proc.wait(timeout=60) in (0, 1), log.read_text()


async def test_three_workers_one_killed_create_each_job_once(tmp_path: Path) -> None:
    broker = await Broker.open()
    queue = broker.queue_name("scale")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        async with fresh_database() as dsn:
            with simulator_process(tmp_path / "sim.log") as endpoint:
                names = write_manifests(tmp_path / "all", JOBS)
                write_manifests(tmp_path / "again", TWICE)  # the same first 100 names
                bad = tmp_path / "bad"
                bad.mkdir()
                (bad / "broken.json").write_text("{not json")
                (bad / "typo.json").write_text('{"name": "typo", "parallel_numbr": 1}')
                (bad / "empty.yaml").write_text("")
                publish(tmp_path / "all", queue, tmp_path / "pub1.log")
                publish(tmp_path / "again", queue, tmp_path / "pub2.log")
                publish(bad, queue, tmp_path / "pub3.log", "--no-validate")

                consume = [
                    "consume", AMQP_URL, "--queue", queue, "--endpoint", endpoint,
                    "--project-id", PROJECT, "--ledger", dsn, "--rate", "0",
                    "--concurrency", "8", "--in-doubt-grace", "0.2",
                ]  # fmt: skip
                workers = [
                    start_batchsub(*consume, log=tmp_path / f"worker{i}.log") for i in range(3)
                ]
                await asyncio.sleep(1.5)
                stop(workers[0], signal.SIGKILL)

                deadline = time.monotonic() + 90
                while True:
                    created = {name for name, _ in remote_jobs(endpoint)}
                    if created >= set(names) and await broker.depth(queue) == 0:
                        break
                    assert time.monotonic() < deadline, f"{len(created)} of {JOBS} created"
                    await asyncio.sleep(0.2)
                for worker in workers[1:]:
                    stop(worker, signal.SIGTERM)
                    assert worker.returncode == 0, worker.args

                counts = Counter(name for name, _ in remote_jobs(endpoint))
                assert sorted(counts) == sorted(names)
                assert [name for name, n in counts.items() if n > 1] == []
                dead = await broker.drain(f"{queue}.dead")
                assert len(dead) == 3
                assert all(message.headers.get("x-batchsub-error") for message in dead)
    finally:
        for worker in workers:
            stop(worker, signal.SIGKILL)
        await broker.close()


FROZEN_JOBS = 60
LEASE = "2.5"  # seconds: covers timeout 0.5 + in-doubt grace 0.2 + 1, and the test stays short
FREEZE = 4.0


async def test_a_worker_frozen_past_its_lease_sends_nothing_twice(tmp_path: Path) -> None:
    broker = await Broker.open()
    queue = broker.queue_name("frozen")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        async with fresh_database() as dsn:
            # The simulator makes a second job of a name it has, as DLI may: only the
            # workers' claims stand between a frozen worker and a duplicate.
            sim_log = tmp_path / "sim.log"
            with simulator_process(sim_log, "--duplicate-names", "accept") as endpoint:
                names = write_manifests(tmp_path / "m", FROZEN_JOBS)
                publish(tmp_path / "m", queue, tmp_path / "pub1.log")  # every job once
                consume = [
                    "consume", AMQP_URL, "--queue", queue, "--endpoint", endpoint,
                    "--project-id", PROJECT, "--ledger", dsn, "--rate", "6",
                    "--concurrency", "8", "--timeout", "0.5", "--in-doubt-grace", "0.2",
                    "--lease", LEASE, "--log-format", "json",
                ]  # fmt: skip
                logs = [tmp_path / f"worker{i}.log" for i in range(3)]
                # The first worker takes 16 messages and claims their jobs, which then wait
                # for their turn at 6 a second; it freezes with most of them still waiting.
                workers = [start_batchsub(*consume, log=logs[0])]
                deadline = time.monotonic() + 30
                while job_count(endpoint) < 3:
                    assert time.monotonic() < deadline, "no job created"
                    await asyncio.sleep(0.02)
                workers[0].send_signal(signal.SIGSTOP)
                frozen_at = time.monotonic()
                publish(tmp_path / "m", queue, tmp_path / "pub2.log")  # every job again
                workers += [start_batchsub(*consume, log=log) for log in logs[1:]]
                await asyncio.sleep(FREEZE - (time.monotonic() - frozen_at))
                workers[0].send_signal(signal.SIGCONT)

                deadline = time.monotonic() + 40
                while True:
                    created = {name for name, _ in remote_jobs(endpoint)}
                    if created >= set(names) and await broker.depth(queue) == 0:
                        break
                    for worker, log in zip(workers, logs, strict=True):
                        assert worker.poll() is None, log.read_text()[-3000:]
                    assert time.monotonic() < deadline, f"{len(created)} of {FROZEN_JOBS} made"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # the woken worker's stale jobs have had their turn
                assert [w.poll() for w in workers] == [None, None, None], "a worker exited"
                for worker in workers:
                    stop(worker, signal.SIGTERM)  # drains: anything in flight is sent now
                assert [w.returncode for w in workers] == [0, 0, 0]

                counts = Counter(name for name, _ in remote_jobs(endpoint))
                assert sorted(counts) == sorted(names)
                assert {name: n for name, n in counts.items() if n > 1} == {}
                assert await broker.depth(queue) == 0
                assert await broker.depth(f"{queue}.dead") == 0
                frozen = logs[0].read_text()
                # It woke up to jobs whose claims were taken over, and sent none of them.
                assert '"job.claim_lost"' in frozen, frozen[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
            stop(worker, signal.SIGKILL)
        await broker.close()
