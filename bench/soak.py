"""Soak the drop-folder daemon: manifests keep arriving; is memory flat, is each job made once?

Usage: ``python bench/soak.py [--minutes 5] [--rate 100] [--keep-jobs N --relist S]
[--output F]`` (Linux: it reads /proc). Starts a ``batchsub simulator`` process (20 ms
answers; 1% 5xx before creating and 0.5% connections dropped after creating, so retries and
lookups of lost answers run all along; a second job of a name would be accepted, so a
duplicate would show), then ``batchsub watch DIR`` against it with ``--rate`` a quarter
above the feed, so that it keeps up and the soak measures a steady state (AK/SK, info logs
to a file, metrics on).
A feeder drops ``rate`` manifests a second into DIR for ``minutes``, each written under a
temporary name and renamed into place (the drop-folder protocol). Every 5 s it samples the
daemon's RSS and CPU time from /proc and its created count from ``/metrics``.

With ``--keep-jobs N`` a janitor deletes the oldest jobs beyond the newest N every 2 s, as
the owner of a project under its DLI job quota would, and the daemon reads the whole server
list again every ``--relist`` seconds (``BATCHSUB_SNAPSHOT_RELIST``): the list it keeps then
stays bounded, and so should its memory.

At the end the feeder stops, the daemon gets until every file is done (or 120 s), then
SIGTERM. Checks, from the server and the folder, not from batchsub's counters: the
simulator holds exactly one job per manifest fed, and every file is in ``done/``. Memory:
RSS at the end against RSS after the first minute, and the slope of a straight line fitted
over the second half of the samples (MiB per hour).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
from machine import describe
from manifests import manifest
from procs import AKSK_ENV, PROJECT, Simulator, clean_env, free_port
from prometheus_client.parser import text_string_to_metric_families
from stats import table

REPO = Path(__file__).resolve().parent.parent
SAMPLE_EVERY = 5.0
HEADROOM = 1.25  # the daemon's --rate over the feed rate: retries and list calls share it
FAULTS = ("--latency", "0.02", "--fail-5xx", "0.01", "--drop-after-create", "0.005")


@dataclass(frozen=True)
class Sample:
    """One look at the daemon."""

    at_s: float  # since the feeder started
    fed: int
    created: int
    rss_mib: float
    cpu_s: float


class Daemon:
    """``batchsub watch`` in its own process, measured through /proc and its /metrics."""

    def __init__(
        self, inbox: Path, sim: Simulator, work: Path, rate: float, env: dict[str, str]
    ) -> None:
        self.metrics_port = free_port()
        self.log_path = work / "watch.log"
        argv = [sys.executable, "-m", "batchsub", "watch", str(inbox), "--endpoint", sim.url]
        argv += ["--project-id", PROJECT, "--ledger", str(work / "ledger.db")]
        argv += ["--rate", f"{rate:g}", "--concurrency", "32", "--log-level", "info"]
        argv += ["--metrics-port", str(self.metrics_port), "--settle-time", "0.5"]
        # Answers lost on purpose are looked up after the grace period: keep it short.
        argv += ["--in-doubt-grace", "1"]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=clean_env({**AKSK_ENV, **env}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the daemon serves /metrics (its start-up is not part of the soak)."""
        deadline = time.monotonic() + timeout
        while self.created() < 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"batchsub watch did not start; see {self.log_path}")
            time.sleep(0.1)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[tuple[str, str], float]:
        """The daemon's samples by (name, value of its first label); empty while not serving."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        return {
            (sample.name, next(iter(sample.labels.values()), "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def created(self) -> int:
        """Jobs created or found existing so far, from the daemon's counters; -1: not up."""
        found = self.metrics()
        if not found:
            return -1
        outcomes = ("created", "already_created")
        return int(sum(found.get(("batchsub_jobs_total", o), 0.0) for o in outcomes))

    def requests(self) -> dict[str, int]:
        """Requests sent so far, per call (create, list)."""
        found = self.metrics()
        return {
            call: int(found.get(("batchsub_request_seconds_count", call), 0.0))
            for call in ("create", "list")
        }

    def stop(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()


class Janitor(threading.Thread):
    """Deletes the oldest jobs beyond the newest ``keep``, every 2 s, remembering their names.

    Over 10 connections at once: the simulator answers every call, deletes too, after its
    added latency.
    """

    def __init__(self, sim: Simulator, keep: int) -> None:
        super().__init__(name="soak-janitor", daemon=True)
        self.sim = sim
        self.keep = keep
        self.deleted: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            while not self.stopped.wait(2.0):
                excess = self.sim.total_jobs() - self.keep
                while excess > 0 and not self.stopped.is_set():
                    oldest = self.sim.oldest(min(excess, 100))
                    ids = [job_id for _, job_id in oldest]
                    list(pool.map(self.sim.delete, [ids[i::10] for i in range(10)]))
                    self.deleted += [name for name, _ in oldest]
                    excess -= len(oldest)


def feed(inbox: Path, index: int, rng: random.Random) -> None:
    """Drop one manifest: written under a temporary name, then renamed into place."""
    body = orjson.dumps(manifest(index, "soak-", rng), option=orjson.OPT_INDENT_2)
    final = inbox / f"job-{index:07d}.json"
    temporary = final.with_suffix(".json.tmp")
    temporary.write_bytes(body)
    temporary.rename(final)


def soak(
    work: Path, minutes: float, rate: float, keep_jobs: int | None, relist: float
) -> tuple[list[Sample], dict[str, object]]:
    """Feed the daemon for ``minutes``; returns the samples and the end-of-run checks."""
    inbox = work / "inbox"
    inbox.mkdir()
    rng = random.Random(11)
    samples: list[Sample] = []
    env = {} if keep_jobs is None else {"BATCHSUB_SNAPSHOT_RELIST": f"{relist:g}"}
    with Simulator(work, "--duplicate-names", "accept", *FAULTS) as sim:
        daemon = Daemon(inbox, sim, work, rate * HEADROOM, env)
        janitor = Janitor(sim, keep_jobs) if keep_jobs is not None else None
        try:
            if janitor is not None:
                janitor.start()
            daemon.wait_ready()
            started = time.monotonic()
            next_sample = started
            fed = 0
            while (now := time.monotonic()) - started < minutes * 60:
                due = int((now - started) * rate)
                while fed < due:
                    feed(inbox, fed, rng)
                    fed += 1
                if now >= next_sample:
                    samples.append(_sample(daemon, started, fed))
                    next_sample += SAMPLE_EVERY
                time.sleep(0.005)
            deadline = time.monotonic() + 120
            while daemon.created() < fed and time.monotonic() < deadline:
                time.sleep(1)
            samples.append(_sample(daemon, started, fed))
            requests = daemon.requests()
        finally:
            if janitor is not None:
                janitor.stopped.set()
                janitor.join()
            code = daemon.stop()
        # Every job ever made: those still listed, and those the janitor deleted.
        names = Counter(name for name, _ in sim.jobs())
        names.update(janitor.deleted if janitor is not None else [])
    checks: dict[str, object] = {
        "fed": fed,
        "exit code": code,
        "create requests": requests["create"],
        "list requests": requests["list"],
        "server jobs (made)": sum(names.values()),
        "deleted by the janitor": len(janitor.deleted) if janitor is not None else 0,
        "names created twice": sum(1 for count in names.values() if count > 1),
        "never made": fed - len(names),
        "done/": _count(inbox / "done"),
        "failed/": _count(inbox / "failed"),
        "left in the inbox": _count(inbox),
    }
    return samples, checks


def _sample(daemon: Daemon, started: float, fed: int) -> Sample:
    return Sample(
        time.monotonic() - started, fed, daemon.created(), daemon.rss_mib(), daemon.cpu_s()
    )


def _count(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.iterdir() if p.is_file() and p.suffix in (".json", ".yaml"))


def slope_mib_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, second half of the samples."""
    half = samples[len(samples) // 2 :]
    if len({s.at_s for s in half}) < 2:
        return 0.0
    fit = statistics.linear_regression([s.at_s for s in half], [s.rss_mib for s in half])
    return fit.slope * 3600


def page(samples: list[Sample], checks: dict[str, object], args: argparse.Namespace) -> str:
    """The results page."""
    after_first_minute = next((s for s in samples if s.at_s >= 60), samples[-1])
    last = samples[-1]
    created = max(last.created, 1)
    rows = [
        [f"{s.at_s:.0f}", s.fed, s.created, f"{s.rss_mib:.1f}", f"{s.cpu_s:.1f}"]
        for s in [*samples[: -1 : max(1, len(samples) // 20)], last]
    ]
    slope = slope_mib_per_hour(samples)
    ok = (
        checks["exit code"] == 0
        and checks["names created twice"] == 0
        and checks["never made"] == 0
        and checks["server jobs (made)"] == checks["fed"] == checks["done/"]
    )
    return f"""# batchsub soak: the drop-folder daemon under a steady stream of manifests

Written by `python bench/soak.py {_flags(args)}`: {args.rate:g} manifests a second into
the drop folder, `batchsub watch --rate {args.rate * HEADROOM:g}`. The simulator answers in
20 ms, fails 1% of creates with a 5xx before creating and drops 0.5% of connections after
creating (lost answers, looked up before any resend); it accepts a second job of a name, so a
duplicate would show in its list.{_janitor_note(args)}

{table(["", ""], describe(REPO))}

## Jobs (counted from the server and the folder)

{table(["check", "value"], [[k, v] for k, v in checks.items()])}

**{"PASS" if ok else "FAIL"}**: one job on the server per manifest fed, every file in `done/`,
exit 0 on SIGTERM.

## Memory and CPU of the daemon (sampled every {SAMPLE_EVERY:g} s)

RSS after the first minute {after_first_minute.rss_mib:.1f} MiB, at the end
{last.rss_mib:.1f} MiB; straight-line slope over the second half of the samples
**{slope:+.1f} MiB/hour**. CPU: {1000 * last.cpu_s / created:.2f} s per 1,000 jobs
(start-up, retries and lookups included).

{_growth_note(args)}

List requests: besides looking up lost answers by name, each catch-up reads every job made
since the last one plus a 2-minute overlap (so that a create still in flight or a server
clock stepping back is not missed): at 100 new jobs a second ~180 list pages a minute, from
the same rate budget; at a daemon's usual pace, one. Full listings add a page per 100 jobs.

{table(["s", "fed", "done (metrics)", "RSS MiB", "CPU s"], rows)}
"""


def _growth_note(args: argparse.Namespace) -> str:
    kept = """What the daemon keeps that grows: a snapshot of the server's jobs (name and id:
made by hand, they must be adopted rather than duplicated), caught up once a minute on the
jobs made since, its own included, and read whole again every `snapshot_relist`, which
drops deleted jobs."""
    if args.keep_jobs is None:
        return f"""{kept} Here the simulator keeps every job ever made ({args.rate:g} a second),
so RSS steps up at each catch-up; a real project is bounded by its DLI job quota (see
`--keep-jobs`). The rest (SQLite's page caches filling up to their 2 MB each, the
allocator's high-water marks) levels off."""
    return f"""{kept} Here the server holds about {args.keep_jobs:,} jobs, so the snapshot holds
at most those plus the jobs made since the last full listing ({args.relist:g} s ago at most)."""


def _flags(args: argparse.Namespace) -> str:
    flags = f"--minutes {args.minutes:g} --rate {args.rate:g}"
    if args.keep_jobs is not None:
        flags += f" --keep-jobs {args.keep_jobs} --relist {args.relist:g}"
    return flags


def _janitor_note(args: argparse.Namespace) -> str:
    if args.keep_jobs is None:
        return ""
    return (
        f"\n\nA janitor keeps the newest {args.keep_jobs:,} jobs on the server, deleting older"
        " ones every 2 s as the owner of a project under its job quota would, and the daemon"
        f" reads the whole server list again every {args.relist:g} s (`snapshot_relist`)."
    )


def main() -> int:
    """Run the soak; write the page."""
    if not sys.platform.startswith("linux"):
        print("soak.py reads /proc: Linux only", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0, help="manifests per second")
    parser.add_argument(
        "--keep-jobs", type=int, help="delete the oldest jobs beyond this many on the server"
    )
    parser.add_argument(
        "--relist", type=float, default=120.0, help="with --keep-jobs: snapshot_relist, seconds"
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "soak.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchsub-soak-") as tmp:
        samples, checks = soak(Path(tmp), args.minutes, args.rate, args.keep_jobs, args.relist)
    text = page(samples, checks, args)
    args.output.write_text(text)
    print(text)
    return 0 if checks["names created twice"] == 0 and checks["never made"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
