"""What machine the numbers come from: CPU, cores, memory, Python, date, git commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_SPIN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit(repo: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (uncommitted changes present)" if dirty else "")


def parallel_speedup(seconds: float = 1.0) -> float:
    """CPU work two processes get done at once, relative to one alone (2.0 = two real cores).

    Each process spins for ``seconds`` of its own CPU time; on a 2-core box shared with
    hyperthreads or a busy host, this shows how much the client and server can overlap.
    """
    code = _SPIN.format(s=seconds)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    alone = time.perf_counter() - started
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for proc in procs:
        proc.wait()
    together = time.perf_counter() - started
    return 2 * alone / together


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the box skews every number."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def describe(repo: Path) -> list[tuple[str, str]]:
    """(field, value) rows describing this machine and checkout."""
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("memory", _memory_gib()),
        ("load average at start (1/5/15 min)", load_average()),
        ("two-process CPU speedup", f"{parallel_speedup():.2f}x (2.00x = two full cores)"),
        ("Python", sys.version.split()[0]),
        ("OS", platform.platform()),
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("git commit", _git_commit(repo)),
    ]
