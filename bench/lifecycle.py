"""Create, start and wait for 3,000 jobs: API calls per job and wall time, against the budget.

    python bench/lifecycle.py [--jobs 3000] [--rate 50] [--latency 0.05] [--healthy-for 30]
                              [--submit-fail 0.05] [--start-seconds 1-2] [--pipeline | --wired]

Issue 15's goal: calls per job for create + start + wait <= 2.2, and wall time within
1.1 x (calls / rate limit + healthy_for + the slowest start). A ``batchsub simulator``
process answers in ``--latency`` s, admits ``--rate`` requests a second (429 above), starts
a job in ``--start-seconds`` and fails ``--submit-fail`` of the starts. The client paces
every call at that rate through one limiter: plain creates (``DliClient.create``), then
the starter (100 ids per call), then the waiter (list pages). ``--pipeline`` starts each
hundred jobs as soon as they exist and waits for all of them at the end, as a run with
``--start --wait`` would. Beside the figures: what the same rounds would have cost with one
detail call per job, and the least that costs (two details per job: running, then healthy).
``--wired`` measures the path a user runs instead: ``batchsub run DIR --start --wait`` as a
process of its own (manifests on disk, a SQLite ledger, the rollout gathering each hundred
as it is created), its wall time from spawn to exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from lifecycle_parts import Parts, clock, create_jobs, parts, quiet
from manifests import write_manifests
from procs import PROJECT, TOKEN_ENV, Simulator, clean_env, run_child
from stats import table, verdict

from batchsub.lifecycle.starter import StartJob, StartKind, StartResult
from batchsub.lifecycle.waiter import Verdict, Watched

CALLS_GOAL = 2.2
WALL_SLACK = 1.1


async def sequential(
    p: Parts, jobs: int, healthy_for: float
) -> tuple[list[Any], dict[int, Verdict]]:
    """Create every job, then start them all, then wait for them all."""
    made = await create_jobs(p, jobs)
    results = await p.starter().start(made)
    waiter = p.waiter(healthy_for=healthy_for)
    waiter.track(watch_list(results))
    verdicts = await waiter.wait()
    return [results, waiter], verdicts


async def pipelined(
    p: Parts, jobs: int, healthy_for: float
) -> tuple[list[Any], dict[int, Verdict]]:
    """Start each hundred as soon as it exists; wait for all at the end."""
    waiter = p.waiter(healthy_for=healthy_for)
    starter = p.starter()
    results: list[StartResult] = []
    queue: asyncio.Queue[list[StartJob] | None] = asyncio.Queue()

    async def start_batches() -> None:
        while (batch := await queue.get()) is not None:
            started = await starter.start(batch)
            results.extend(started)
            waiter.track(watch_list(started))

    async with asyncio.TaskGroup() as group:
        group.create_task(start_batches())
        for first in range(0, jobs, 100):
            made = await create_jobs(p, min(100, jobs - first), offset=first)
            await queue.put(made)
        await queue.put(None)
    verdicts = await waiter.wait()
    return [results, waiter], verdicts


def watch_list(results: list[StartResult]) -> list[Watched]:
    return [
        Watched(r.job_id, r.name)
        for r in results
        if r.kind in (StartKind.STARTED, StartKind.ACTIVE)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=50.0, help="server rate limit, req/s")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--healthy-for", type=float, default=30.0)
    parser.add_argument("--submit-fail", type=float, default=0.05)
    parser.add_argument("--start-seconds", default="1-2")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--wired", action="store_true", help="run `batchsub run --start --wait`")
    args = parser.parse_args()
    quiet()
    slowest = float(args.start_seconds.split("-")[-1])
    options = ["--latency", str(args.latency), "--rate-limit", str(args.rate)]
    options += ["--start-seconds", args.start_seconds, "--submit-fail", str(args.submit_fail)]
    options += ["--seed", "15"]
    if args.wired:
        return wired(args, options, slowest)
    drive = pipelined if args.pipeline else sequential
    with tempfile.TemporaryDirectory() as work, Simulator(Path(work), *options) as sim:

        async def measure() -> tuple[float, list[Any], dict[int, Verdict], dict[str, Any]]:
            async with parts(sim.url, args.rate) as p:
                began = clock()
                extra, verdicts = await drive(p, args.jobs, args.healthy_for)
                return clock() - began, extra, verdicts, p.stats()

        wall, (results, waiter), verdicts, stats = asyncio.run(measure())
    print(report(args, slowest, wall, results, waiter, verdicts, stats))
    return 0


def report(
    args: argparse.Namespace,
    slowest: float,
    wall: float,
    results: list[StartResult],
    waiter: Any,
    verdicts: dict[int, Verdict],
    stats: dict[str, Any],
) -> str:
    jobs = args.jobs
    calls = Counter(stats["calls"])
    total = sum(calls.values())
    bound = WALL_SLACK * (total / args.rate + args.healthy_for + slowest)
    health = Counter(v.health.value for v in verdicts.values())
    starts = Counter(r.kind.value for r in results)
    reads = calls["list"] + calls["detail"]
    detail_rounds = calls["create"] + calls["run"] + waiter.looked_at
    least = calls["create"] + calls["run"] + 2 * len(verdicts)
    rows = [
        ["creates", calls["create"], f"{calls['create'] / jobs:.3f}"],
        ["run calls", calls["run"], f"{calls['run'] / jobs:.3f}"],
        ["list pages (start checks and waiting)", calls["list"], f"{calls['list'] / jobs:.3f}"],
        ["detail calls", calls["detail"], f"{calls['detail'] / jobs:.3f}"],
        ["all calls", total, f"**{total / jobs:.3f}**"],
    ]
    compare = [
        ["this run (list pages)", total, f"{total / jobs:.3f}", waiter.rounds],
        [
            "the same rounds, one detail call per job",
            detail_rounds,
            f"{detail_rounds / jobs:.3f}",
            waiter.rounds,
        ],
        ["one detail per job, twice (the least)", least, f"{least / jobs:.3f}", "-"],
    ]
    lines = [
        f"{jobs} jobs, {'pipelined' if args.pipeline else 'create, then start, then wait'}; "
        f"server: {args.rate:g} req/s, {args.latency * 1000:g} ms latency, start "
        f"{args.start_seconds} s, {args.submit_fail:.0%} start failures; healthy_for "
        f"{args.healthy_for:g} s",
        "",
        table(["calls", "count", "per job"], rows),
        "",
        table(
            ["measure", "result", "goal", ""],
            [
                [
                    "API calls per job",
                    f"{total / jobs:.3f}",
                    f"<= {CALLS_GOAL}",
                    verdict(total / jobs <= CALLS_GOAL),
                ],
                [
                    "wall time",
                    f"{wall:.1f} s",
                    f"<= {bound:.1f} s = 1.1 x ({total} / {args.rate:g} + "
                    f"{args.healthy_for:g} + {slowest:g})",
                    verdict(wall <= bound),
                ],
                ["429s", stats["throttled"], "", ""],
            ],
        ),
        "",
        table(["polling as", "calls", "per job", "rounds"], compare),
        "",
        f"starts: {dict(starts)}; verdicts: {dict(health)}; status reads {reads}; "
        f"runs while running {stats['totals']['runs_while_running']}; "
        f"jobs run more than once {sum(1 for j in stats['jobs'] if j['runs'] > 1)}",
    ]
    return "\n".join(lines)


def wired(args: argparse.Namespace, options: list[str], slowest: float) -> int:
    """``batchsub run DIR --start --wait`` in a process of its own, against the simulator."""
    with tempfile.TemporaryDirectory() as work_dir, Simulator(Path(work_dir), *options) as sim:
        work = Path(work_dir)
        write_manifests(work / "m", args.jobs)
        report_path = work / "report.json"
        argv = [sys.executable, "-m", "batchsub", "run", str(work / "m"), "--endpoint", sim.url]
        argv += ["--ledger", str(work / "ledger.db"), "--rate", str(args.rate), "--start"]
        argv += ["--wait", "--healthy-for", str(args.healthy_for), "--report", str(report_path)]
        argv += ["--progress", "off", "--log-level", "warning", "--concurrency", "16"]
        child = run_child(argv, clean_env(TOKEN_ENV), work / "run.log")
        with urllib.request.urlopen(f"{sim.url}/_simulator/stats?project_id={PROJECT}") as resp:
            stats: dict[str, Any] = orjson.loads(resp.read())
        summary = orjson.loads(report_path.read_bytes())["summary"]
    calls = Counter(stats["calls"])
    total = sum(calls.values())
    jobs = args.jobs
    bound = WALL_SLACK * (total / args.rate + args.healthy_for + slowest)
    rows = [[kind, n, f"{n / jobs:.3f}"] for kind, n in sorted(calls.items())]
    rows.append(["all calls", total, f"**{total / jobs:.3f}**"])
    lines = [
        f"{jobs} jobs through `batchsub run --start --wait` (exit {child.returncode}); server:"
        f" {args.rate:g} req/s, {args.latency * 1000:g} ms latency, start {args.start_seconds} s,"
        f" {args.submit_fail:.0%} start failures; healthy_for {args.healthy_for:g} s",
        "",
        table(["calls", "count", "per job"], rows),
        "",
        table(
            ["measure", "result", "goal", ""],
            [
                [
                    "API calls per job",
                    f"{total / jobs:.3f}",
                    f"<= {CALLS_GOAL}",
                    verdict(total / jobs <= CALLS_GOAL),
                ],
                [
                    "wall time (spawn to exit)",
                    f"{child.wall_s:.1f} s",
                    f"<= {bound:.1f} s = 1.1 x ({total} / {args.rate:g} + "
                    f"{args.healthy_for:g} + {slowest:g})",
                    verdict(child.wall_s <= bound),
                ],
                ["429s", stats["throttled"], "", ""],
            ],
        ),
        "",
        f"summary: running {summary.get('running')}, start_failed {summary.get('start_failed')},"
        f" timed_out {summary.get('timed_out')}, starting {summary.get('starting')}; runs while"
        f" running {stats['totals']['runs_while_running']}; jobs run more than once"
        f" {sum(1 for j in stats['jobs'] if j['runs'] > 1)}; client CPU"
        f" {child.user_s + child.sys_s:.1f} s",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
