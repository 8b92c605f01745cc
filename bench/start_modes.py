"""How to send starts: one job id per run call, or 100 per call? Measured against the simulator.

    python bench/start_modes.py [--jobs 500] [--rate 100] [--latency 0.05]

For each mode and each case (no faults; 5% of run answers lost after the run took effect,
with DLI refusing a run of a running job, or accepting it), a fresh ``batchsub simulator``
process with a server rate limit and latency; the jobs are created first (not timed), then
the starter starts them (timed), then a rerun of the starter over the same jobs must send
nothing. Prints a markdown table (calls per job, wall time, runs per job as the simulator
counts them) for ``bench/results.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from lifecycle_parts import clock, create_jobs, parts, quiet
from procs import Simulator
from stats import table

from batchsub.lifecycle.starter import StartJob, StartKind

MODES = (("1 id per call", 1, 8), ("100 ids per call", 100, 4))  # (name, batch, concurrency)


def lost(share: float) -> list[str]:
    """Simulator flags losing ``share`` of run answers (half dropped, half 504) after the run."""
    half = str(share / 2)
    return ["--drop-after-run", half, "--error-504-after-run", half]


CASES = (
    ("no faults", []),
    ("5% of answers lost, run_running reject", lost(0.05)),
    ("30% of answers lost, run_running reject", lost(0.3)),
    ("30% of answers lost, run_running accept", [*lost(0.3), "--run-running", "accept"]),
    ("every answer lost", lost(1.0)),
)


async def measure(url: str, jobs: int, rate: float, batch: int, concurrency: int) -> list[object]:
    async with parts(url, rate) as p:
        made = await create_jobs(p, jobs)
        before = p.stats()["calls"]
        began = clock()
        starter = p.starter(batch_size=batch, concurrency=concurrency)
        results = await starter.start(made)
        wall = clock() - began
        after = p.stats()
        calls = {k: after["calls"].get(k, 0) - before.get(k, 0) for k in ("run", "list", "detail")}
        rerun = p.starter(batch_size=batch, concurrency=concurrency)
        records = await p.ledger.start_records(p.client.project_id, [j.name for j in made])
        reads = p.reader.list_calls + p.reader.detail_calls
        again = await rerun.start([StartJob(j.job_id, j.name, records.get(j.name)) for j in made])
        reads = p.reader.list_calls + p.reader.detail_calls - reads
        final = p.stats()
        rows = final["jobs"]
        started = sum(1 for r in results if r.kind is StartKind.STARTED)
        once = sum(1 for row in rows if row["runs"] == 1)
        total = sum(calls.values())
        return [
            calls["run"],
            calls["list"] + calls["detail"],
            f"{total / jobs:.3f}",
            f"{wall:.2f}",
            f"{started}/{jobs}",
            f"{once}/{jobs}",
            final["totals"]["runs_while_running"],
            f"{rerun.runs_sent} ({sum(1 for r in again if r.kind is StartKind.ACTIVE)} active)",
            reads,
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="server rate limit, req/s")
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    quiet()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case, flags in CASES:
            for mode, batch, concurrency in MODES:
                options = ["--latency", str(args.latency), "--rate-limit", str(args.rate), *flags]
                options += ["--seed", "7"]
                with Simulator(Path(work), *options) as sim:
                    found = asyncio.run(measure(sim.url, args.jobs, args.rate, batch, concurrency))
                rows.append([case, mode, *found])
                print(" | ".join(map(str, rows[-1])), flush=True)
    header = [
        "case",
        "mode",
        "run calls",
        "status reads",
        "calls/job",
        "wall s",
        "started",
        "jobs run once",
        "runs while running",
        "rerun: runs sent",
        "rerun: status reads",
    ]
    print()
    print(f"{args.jobs} jobs, server rate limit {args.rate:g}/s, latency {args.latency:g} s")
    print()
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
