"""jobs/s of ``batchsub run`` at this checkout against a base revision, rounds interleaved.

``python bench/compare.py --base main`` runs section 1's measure (a whole ``batchsub run``
process, ``--rate 0``, concurrency 32, AK/SK, a fresh ledger and simulator each run) for the
checkout and for ``--base`` (exported with ``git archive`` and put first on ``PYTHONPATH``),
alternating which goes first, on a SQLite ledger and on PostgreSQL (a fresh database per
run on 127.0.0.1:5432, trust auth). Ratios are paired by round, as in ``bench.py``: a slow
spell of the machine moves both sides. Writes ``--output`` (default ``bench/compare.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from machine import describe, load_average
from manifests import write_manifests
from procs import AKSK_ENV, Simulator, batchsub_argv, clean_env, run_child
from stats import median, table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_HEADER = (
    "ledger", "base jobs/s", "head jobs/s", "head / base", "rounds",
    "base CPU ms/job", "head CPU ms/job",
)  # fmt: skip


@contextmanager
def exported(revision: str) -> Iterator[Path]:
    """The ``batchsub`` package of ``revision``, in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="batchsub-base-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", revision, "batchsub"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


@contextmanager
def ledger_for(kind: str, work: Path) -> Iterator[str]:
    """A fresh ledger: a new SQLite file, or a new PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield str(work / f"ledger-{time.monotonic_ns()}.db")
        return
    name = f"batchsub_bench_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def one_run(
    work: Path, manifests: Path, jobs: int, kind: str, pythonpath: Path | None
) -> tuple[float, float]:
    """jobs/s of one whole ``batchsub run`` process (its wall time, start-up included), and
    its CPU (user + system, parser child included) in ms per job."""
    extra = {"PYTHONPATH": str(pythonpath)} if pythonpath else {}
    with Simulator(work) as sim, ledger_for(kind, work) as ledger:
        report = work / f"report-{time.monotonic_ns()}.json"
        argv = batchsub_argv(manifests, sim.url, Path(ledger), report=report)
        argv[argv.index("--ledger") + 1] = ledger  # a URL must not go through Path
        log = work / f"run-{time.monotonic_ns()}.log"
        # cwd outside the checkout: the current directory would shadow PYTHONPATH.
        run = run_child(argv, clean_env({**AKSK_ENV, **extra}), log, cwd=work)
        if run.returncode != 0:
            raise RuntimeError(f"batchsub run exited {run.returncode}: {log.read_text()[-2000:]}")
        created = json.loads(report.read_bytes())["summary"]["created"]
        if created != jobs or sim.total_jobs() != jobs:
            raise RuntimeError(f"created {created} of {jobs}")
    return jobs / run.wall_s, (run.user_s + run.sys_s) * 1000 / jobs


def compare(
    work: Path, manifests: Path, jobs: int, kind: str, base: Path, rounds: int
) -> list[str]:
    """One row of the page: both sides' medians on ``kind`` and the paired ratios."""
    rates: dict[str, list[float]] = {"base": [], "head": []}
    cpu: dict[str, list[float]] = {"base": [], "head": []}
    for index in range(rounds):
        for side in ("base", "head") if index % 2 == 0 else ("head", "base"):
            rate, ms = one_run(work, manifests, jobs, kind, base if side == "base" else None)
            rates[side].append(rate)
            cpu[side].append(ms)
            print(f"  {kind} round {index + 1} {side}: {rate:.0f} jobs/s, {ms:.3f} ms CPU/job")
    ratios = [h / b for h, b in zip(rates["head"], rates["base"], strict=True)]
    return [
        kind,
        f"{median(rates['base']):.0f}",
        f"{median(rates['head']):.0f}",
        f"{100 * median(ratios):.0f}%",
        " / ".join(f"{100 * r:.0f}%" for r in ratios),
        f"{median(cpu['base']):.3f}",
        f"{median(cpu['head']):.3f}",
    ]


def main() -> int:
    """Measure, print and write the comparison page."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="main", help="git revision to compare against")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ledger", default="sqlite,postgres", help="sqlite,postgres or one")
    parser.add_argument("--output", type=Path, default=BENCH / "compare.md")
    args = parser.parse_args()
    git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, check=True, capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    busy = os.getloadavg()
    machine = table(["", ""], describe(REPO))
    with (
        tempfile.TemporaryDirectory(prefix="batchsub-compare-") as tmp,
        exported(args.base) as base,
    ):
        work = Path(tmp)
        manifests = work / "manifests"
        write_manifests(manifests, args.jobs)
        rows = [
            compare(work, manifests, args.jobs, kind, base, args.rounds)
            for kind in args.ledger.split(",")
        ]
    elapsed = time.perf_counter() - started
    page = f"""# `batchsub run` at {head} against {args.base}

Written by `python bench/compare.py --base {args.base} --jobs {args.jobs} --rounds {args.rounds}`
({elapsed / 60:.1f} minutes). Each run: a whole `batchsub run` process, {args.jobs} manifests,
`--rate 0`, concurrency 32, AK/SK, a fresh ledger and simulator process; the two sides
alternate which goes first. The ratio is head / base, paired by round, median over rounds;
CPU is the client process's (user + system, its parser child included), median per job.
Load average at start {busy[0]:.2f} / {busy[1]:.2f} / {busy[2]:.2f}, at the end
{load_average()}: other work on the machine makes single rounds noisy.

{machine}

{table(_HEADER, rows)}
"""
    args.output.write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
