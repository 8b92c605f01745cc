"""API calls per job of an update: stop and run calls of 100 ids, or one id per call?

    python bench/apply.py [--jobs 300] [--rate 100] [--latency 0.05]

For each mode, a fresh ``batchsub simulator`` process (refusing non-in-place changes to
running jobs, with a server rate limit and latency): the jobs are created and started first
(not timed), then two in three get a new ``cu_number`` (stop with a savepoint, PUT, run
resuming from it) and the rest a new ``smn_topic`` (a PUT in place); the ``Updater`` carries
the updates out (timed), and a second plan must find nothing to do. PUTs are one job a call
either way (the API has no batch update). Prints a markdown table for ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
from pathlib import Path

import orjson
from lifecycle_parts import Parts, clock, create_jobs, parts, quiet
from procs import PROJECT, Simulator
from stats import table

from batchsub.jobs import JobSpec, LedgerRecord, LedgerState
from batchsub.ledgers.memory_update import MemoryUpdateLedger
from batchsub.lifecycle.apply_plan import UPDATES, ApplyAction, decide_apply
from batchsub.lifecycle.starter import StartJob
from batchsub.lifecycle.updater import UpdateJob, Updater, UpdateTimes
from batchsub.retry import RetryingCaller

MODES = (("1 id per stop/run call", 1), ("100 ids per stop/run call", 100))
CASES = (
    ("no faults", []),
    ("10% of answers lost", ["--drop-after-update", "0.1", "--drop-after-stop", "0.1",
                             "--drop-after-run", "0.1"]),
)  # fmt: skip


def spec_of(body: dict[str, object]) -> JobSpec:
    data = orjson.dumps(body)
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return JobSpec(str(body["name"]), data, digest, f"bench/{body['name']}.json")


def manifest(index: int) -> dict[str, object]:
    name = f"bench-{index:05d}"
    change = {"cu_number": 4} if index % 3 else {"smn_topic": "b"}
    return {"name": name, "queue_name": "q1", "cu_number": 2, **change}


async def plan(p: Parts, ledger: MemoryUpdateLedger, made: list[StartJob]) -> list[UpdateJob]:
    """What apply would do: the decision of each job against the body it was created with."""
    rows = await ledger.update_records(PROJECT, [j.name for j in made])
    seen = await p.reader.read({j.job_id: None for j in made})
    work = []
    for index, job in enumerate(made):
        created = spec_of({"name": job.name, "queue_name": "q1", "cu_number": 2})
        record = LedgerRecord(
            PROJECT, job.name, LedgerState.CREATED, job.job_id, 1, None, created.source,
            created.body_hash, created.body, False, 0.0, 0.0,
        )  # fmt: skip
        row = rows.get(job.name)
        sighting = seen.get(job.job_id)
        status = sighting.status.status if sighting is not None else None
        decision = decide_apply(spec_of(manifest(index)), record, row, status)
        if decision.action is ApplyAction.RESUME and row is not None:
            work.append(UpdateJob(job.name, job.job_id, record=row))
        elif decision.action in UPDATES:
            work.append(UpdateJob(job.name, job.job_id, spec_of(manifest(index)), decision))
    return work


async def measure(url: str, jobs: int, rate: float, batch: int) -> list[object]:
    async with parts(url, rate) as p:
        made = await create_jobs(p, jobs)
        await p.starter().start(made)
        await asyncio.sleep(2.5)  # every job running
        ledger = MemoryUpdateLedger()
        work = await plan(p, ledger, made)
        before = p.stats()["calls"]
        began = clock()
        updater = Updater(
            client=p.client,
            reader=p.reader,
            caller=RetryingCaller(p.limiter, p.policy),
            ledger=ledger,
            limiter=p.limiter,
            policy=p.policy,
            savepoint=True,
            batch_size=batch,
            concurrency=8,
            in_doubt_grace=2.0,
            times=UpdateTimes(poll_min=0.5, poll_max=2.0),
        )
        results = await updater.update(work)
        wall = clock() - began
        after = p.stats()
        kinds = ("stop", "run", "update", "list", "detail")
        calls = {k: after["calls"].get(k, 0) - before.get(k, 0) for k in kinds}
        updated = sum(1 for r in results if r.kind.value == "updated")
        rows = after["jobs"]
        again = await plan(p, ledger, made)  # a rerun: must find nothing to do
        return [
            calls["stop"] + calls["run"],
            calls["update"],
            calls["list"] + calls["detail"],
            f"{sum(calls.values()) / jobs:.3f}",
            f"{wall:.2f}",
            f"{updated}/{jobs}",
            max(row["savepoints"] for row in rows),
            after["totals"]["updates_refused"],
            len(again),
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0, help="server rate limit, req/s")
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    quiet()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case, flags in CASES:
            for mode, batch in MODES:
                options = ["--latency", str(args.latency), "--rate-limit", str(args.rate)]
                options += ["--update-running", "reject", "--seed", "7", *flags]
                options += ["--start-seconds", "0.5", "--savepoint-seconds", "0.3"]
                options += ["--stop-seconds", "0.3"]
                with Simulator(Path(work), *options) as sim:
                    found = asyncio.run(measure(sim.url, args.jobs, args.rate, batch))
                rows.append([case, mode, *found])
                print(" | ".join(map(str, rows[-1])), flush=True)
    header = [
        "case",
        "mode",
        "stop+run calls",
        "PUTs",
        "status reads",
        "calls/job",
        "wall s",
        "updated",
        "most savepoints of a job",
        "PUTs refused",
        "left to do",
    ]
    print()
    print(f"{args.jobs} running jobs (2/3 restart, 1/3 in place), server rate limit "
          f"{args.rate:g}/s, latency {args.latency:g} s")  # fmt: skip
    print()
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
