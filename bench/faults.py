"""Soak the queue workers through infrastructure faults: the issue's "Done when", at full length.

Usage: ``python bench/faults.py [--jobs 1600] [--rate 4] [--sigstop] [--output F]`` (Linux, with
PostgreSQL's ``initdb`` installed: it restarts and stops a private cluster of its own, see
``tests/private_pg.py``; RabbitMQ on 127.0.0.1:5672). Not part of the test suite: it takes
about three minutes.

Three ``batchsub consume`` workers share one queue and one private PostgreSQL cluster, each
reaching PostgreSQL through a TCP proxy of its own (``tests/faults.py``), against a
``batchsub simulator`` process that accepts a second job of a name (so a duplicate would
show). Every job is published twice, among poison messages (a name with a NUL character,
which PostgreSQL cannot store, raw and escaped; bytes that are not UTF-8; not JSON at all),
each of which must be dead-lettered alone. While they work, on a fixed timeline:

- PostgreSQL is restarted once (fast mode: every session is ended);
- PostgreSQL is stopped for 20 s, then started;
- worker 1's link to PostgreSQL is frozen for 30 s (connections kept, nothing forwarded);
- with ``--sigstop`` (once fencing, issue 13 item 1, is in): worker 2 is SIGSTOPped for
  30 s with a 20 s lease (``--timeout 5``), then resumed.

Then it waits for every job and an empty queue, SIGTERMs the workers and checks, from the
simulator's list and the broker, not from batchsub's counters: each job exists exactly once,
no worker exited before the SIGTERM and each exited 0, the queue is empty and its dead-letter
queue holds exactly the poison messages, no log holds a traceback. It writes the figures, a
Markdown section, to ``bench/faults.md`` (``--output``), copied into ``bench/results.md`` under
its own heading.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from machine import describe
from manifests import write_manifests
from procs import PROJECT, TOKEN_ENV, Simulator, clean_env
from stats import table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.amqp_support import AMQP_URL, Broker, broker_listening  # noqa: E402
from tests.faults import Proxy, paused, via  # noqa: E402
from tests.private_pg import Cluster, private_cluster, private_cluster_problem  # noqa: E402

WORKERS = 3

# Messages no worker can take: each must be dead-lettered alone, the jobs around it created.
POISON = [
    b'{"name": "poison\\u0000escaped", "queue_name": "q"}',
    b'{"name": "poison\x00raw"}',
    b'{"name": "poison-\xff\xfe"}',
    b"not json at all",
]


@dataclass
class Fault:
    """One fault of the timeline: when it began, how long it lasted, what it was."""

    what: str
    at_s: float
    lasted_s: float = 0.0
    created_during: int = 0


@dataclass
class Worker:
    """One ``batchsub consume`` process and its log."""

    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    exited_early: int | None = None
    events: Counter[str] = field(default_factory=Counter)
    downtimes: list[float] = field(default_factory=list)


def start_worker(
    index: int, work: Path, queue: str, sim: Simulator, ledger: str, args: Any
) -> Worker:
    log = work / f"worker{index}.log"
    argv = [sys.executable, "-m", "batchsub", "consume", AMQP_URL, "--queue", queue]
    argv += ["--endpoint", sim.url, "--project-id", PROJECT, "--ledger", ledger]
    argv += ["--rate", f"{args.rate:g}", "--concurrency", "8", "--log-format", "json"]
    if args.sigstop:
        argv += ["--timeout", "5"]  # lease 2 x timeout + 10 = 20 s
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=clean_env(TOKEN_ENV), stdout=out, stderr=out)
    return Worker(index, proc, log)


def publish(queue: str, directory: Path) -> None:
    argv = [sys.executable, "-m", "batchsub", "publish", str(directory), AMQP_URL, "--queue", queue]
    subprocess.run(argv, env=clean_env({}), check=True, capture_output=True, timeout=120)


class Watcher:
    """Samples the simulator's job count and the workers' liveness."""

    def __init__(self, sim: Simulator, workers: list[Worker]) -> None:
        self.sim = sim
        self.workers = workers

    def created(self) -> int:
        for worker in self.workers:
            if worker.exited_early is None and worker.proc.poll() is not None:
                worker.exited_early = worker.proc.returncode
        return self.sim.total_jobs()


@contextlib.contextmanager
def fault(faults: list[Fault], what: str, started: float, watch: Watcher) -> Iterator[None]:
    entry = Fault(what, round(time.monotonic() - started, 1))
    before = watch.created()
    began = time.monotonic()
    try:
        yield
    finally:
        entry.lasted_s = round(time.monotonic() - began, 1)
        entry.created_during = watch.created() - before
        faults.append(entry)


async def wait_until(started: float, at_s: float, watch: Watcher) -> None:
    while time.monotonic() - started < at_s:
        watch.created()
        await asyncio.sleep(0.5)


async def timeline(
    started: float,
    watch: Watcher,
    cluster: Cluster,
    proxies: list[Proxy],
    workers: list[Worker],
    sigstop: bool,
) -> list[Fault]:
    faults: list[Fault] = []
    await wait_until(started, 15, watch)
    with fault(faults, "PostgreSQL restarted", started, watch):
        await asyncio.to_thread(cluster.restart)
    await wait_until(started, 35, watch)
    with fault(faults, "PostgreSQL stopped for 20 s", started, watch), cluster.stopped():
        await asyncio.sleep(20)
    await wait_until(started, 70, watch)
    with fault(faults, "worker 1's link to PostgreSQL frozen for 30 s", started, watch):
        proxies[1].freeze()
        try:
            await asyncio.sleep(30)
        finally:
            proxies[1].pass_through()
    if sigstop:
        await wait_until(started, 110, watch)
        with (
            fault(faults, "worker 2 SIGSTOPped for 30 s (20 s lease)", started, watch),
            paused(workers[2].proc),
        ):
            await asyncio.sleep(30)
    return faults


def read_logs(worker: Worker) -> str:
    text = worker.log.read_text(errors="replace")
    for line in text.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(line)
            if isinstance(entry, dict) and str(entry.get("event", "")).startswith("ledger."):
                worker.events[entry["event"]] += 1
                if entry["event"] == "ledger.recovered":
                    worker.downtimes.append(float(entry["down_s"]))
    return text


async def soak(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    write_manifests(work / "m", args.jobs)
    broker = await Broker.open()
    queue = broker.queue_name("soak-faults")
    workers: list[Worker] = []
    try:
        with private_cluster() as cluster:
            with (
                contextlib.ExitStack() as stack,
                Simulator(work, "--latency", "0.02", "--duplicate-names", "accept") as sim,
            ):
                for copy in range(2):  # every job published twice, poison among them
                    await asyncio.to_thread(publish, queue, work / "m")
                    if copy == 0:
                        for body in POISON:
                            await broker.publish(queue, body)
                proxies = [stack.enter_context(Proxy(cluster.port)) for _ in range(WORKERS)]
                workers = [
                    start_worker(i, work, queue, sim, via(cluster.dsn, proxies[i]), args)
                    for i in range(WORKERS)
                ]
                watch = Watcher(sim, workers)
                started = time.monotonic()
                faults = await timeline(started, watch, cluster, proxies, workers, args.sigstop)
                deadline = time.monotonic() + 300
                while watch.created() < args.jobs or await broker.depth(queue) > 0:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(1)
                await asyncio.sleep(2)  # a last redelivery settles
                finished_s = round(time.monotonic() - started, 1)
                depth = await broker.depth(queue)
                watch.created()  # the last look at who still runs, before the SIGTERMs
                exits = []
                for worker in workers:
                    if worker.proc.poll() is None:
                        worker.proc.send_signal(signal.SIGTERM)
                    exits.append(worker.proc.wait(timeout=60))
                names = Counter(name for name, _ in sim.jobs())
                dead = await broker.depth(f"{queue}.dead")
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
        await broker.close()
    texts = [read_logs(worker) for worker in workers]
    return {
        "faults": faults,
        "workers": workers,
        "exits": exits,
        "names": names,
        "depth": depth,
        "dead": dead,
        "finished_s": finished_s,
        "tracebacks": sum(text.count("Traceback") + text.count("ExceptionGroup") for text in texts),
    }


def page(result: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    names: Counter[str] = result["names"]
    workers: list[Worker] = result["workers"]
    twice = sum(1 for n in names.values() if n > 1)
    checks: list[tuple[str, object, bool]] = [
        ("jobs published (each twice)", args.jobs, True),
        ("jobs on the server", sum(names.values()), sum(names.values()) == args.jobs),
        ("names created twice", twice, twice == 0),
        ("jobs never created", args.jobs - len(names), len(names) == args.jobs),
        ("workers that exited before SIGTERM", sum(w.exited_early is not None for w in workers),
         all(w.exited_early is None for w in workers)),
        ("exit codes after SIGTERM", result["exits"], all(code == 0 for code in result["exits"])),
        ("messages left in the queue", result["depth"], result["depth"] == 0),
        ("poison messages dead-lettered", f"{result['dead']} of {len(POISON)}",
         result["dead"] == len(POISON)),
        ("tracebacks in the logs", result["tracebacks"], result["tracebacks"] == 0),
    ]  # fmt: skip
    ok = all(passed for _, _, passed in checks)
    fault_rows = [
        (f.what, f"{f.at_s:g}", f"{f.lasted_s:g}", f.created_during) for f in result["faults"]
    ]
    worker_rows = [
        (
            w.index,
            w.events["ledger.unavailable"],
            w.events["ledger.still_unavailable"],
            w.events["ledger.recovered"],
            ", ".join(f"{d:g}" for d in w.downtimes),
        )
        for w in workers
    ]
    machine = "; ".join(f"{k}: {v}" for k, v in describe(REPO))
    sigstop = (
        ""
        if args.sigstop
        else "\n\nNot run: the SIGSTOP of a worker past its lease (`--sigstop`): it "
        "needs the claim fencing of issue 13 item 1, which is not on this branch."
    )
    text = f"""## Infrastructure faults (`python bench/faults.py --jobs {args.jobs} --rate {
        args.rate:g}`)

{WORKERS} `consume` workers (`--rate {args.rate:g}` each, concurrency 8), one queue, one
PostgreSQL database reached through a proxy per worker, {args.jobs} jobs each published twice,
a simulator with 20 ms answers that accepts duplicate names. All done {result["finished_s"]} s
after the workers started. {machine}.

{table(("fault", "at s", "lasted s", "jobs created meanwhile"), fault_rows)}

Jobs created during an outage are those whose claims were committed before it (a worker
claims a job before it waits for its pacing turn), plus, during the freeze, the other two
workers' jobs; "lasted" includes `pg_ctl` stopping and starting the server. A worker's
outage (below) begins at its first failed statement: for the frozen link, once a statement
timed out (`ledger_timeout`, 10 s).

{
        table(
            (
                "worker",
                "ledger.unavailable",
                "ledger.still_unavailable",
                "ledger.recovered",
                "outages, s (from ledger.recovered)",
            ),
            worker_rows,
        )
    }

{table(("check", "value", "ok"), [(c, v, "yes" if p else "NO") for c, v, p in checks])}{sigstop}
"""
    return text, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    # 1,600 jobs keep work queued past the SIGSTOP at 110 s (900 are done by then).
    parser.add_argument("--jobs", type=int, default=1600)
    parser.add_argument("--rate", type=float, default=4.0, help="each worker's --rate")
    parser.add_argument("--sigstop", action="store_true", help="also SIGSTOP a worker (fencing)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "faults.md")
    args = parser.parse_args()
    problem = private_cluster_problem()
    if problem is not None or not broker_listening():
        print(f"faults.py cannot run here: {problem or 'RabbitMQ is not listening'}")
        return 2
    with tempfile.TemporaryDirectory(prefix="batchsub-faults-") as tmp:
        result = asyncio.run(soak(Path(tmp), args))
        text, ok = page(result, args)
        if not ok:  # keep the logs to look at
            kept = Path(tempfile.mkdtemp(prefix="batchsub-faults-logs-"))
            for worker in result["workers"]:
                kept.joinpath(worker.log.name).write_bytes(worker.log.read_bytes())
            text += f"\nWorker logs kept in {kept}.\n"
    args.output.write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
