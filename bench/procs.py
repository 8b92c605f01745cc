"""Child processes for the benchmarks: the simulator server, and measured client runs.

A measured run is waited with ``os.wait4``, which gives that one child's own rusage (user and
system CPU, peak RSS), unlike ``RUSAGE_CHILDREN``, which mixes every child waited so far (the
simulator's included).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
PROJECT = "0a1b2c3d4e5f6789bench"
AK = "BENCHAKEXAMPLE0001"
SK = "bench-secret-key-not-real"
TOKEN = "bench-token-not-real"
_OUR_VARS = ("BATCHSUB_", "HUAWEICLOUD_SDK_")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment without any batchsub or SDK variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUR_VARS)}
    env.update(extra)
    return env


AKSK_ENV = {
    "HUAWEICLOUD_SDK_AK": AK,
    "HUAWEICLOUD_SDK_SK": SK,
    "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
}
TOKEN_ENV = {"BATCHSUB_AUTH_TOKEN": TOKEN, "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ChildRun:
    """What one measured child process took."""

    returncode: int
    wall_s: float  # from spawn to reaped: interpreter start-up and imports included
    user_s: float
    sys_s: float
    maxrss_mib: float  # peak resident set size of that process (ru_maxrss is in KiB on Linux)


def run_child(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> ChildRun:
    """Run ``argv`` to the end, stdout and stderr to ``log_path``, and measure it."""
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return ChildRun(
        returncode=proc.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_mib=usage.ru_maxrss / 1024,
    )


class Simulator:
    """``batchsub simulator`` in its own process, accepting the bench AK/SK and token."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.cpu_s = 0.0  # user + system CPU of the server, known once closed
        self._log_path = workdir / f"simulator-{self.port}.log"
        argv = [sys.executable, "-m", "batchsub", "simulator", "--host", HOST]
        argv += ["--port", str(self.port), "--project-id", PROJECT, "--log-level", "warning"]
        argv += list(options)
        self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            argv,
            env=clean_env({**AKSK_ENV, "BATCHSUB_AUTH_TOKEN": TOKEN}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._reap():
                raise RuntimeError(f"simulator exited early; see {self._log_path}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"simulator did not listen within {timeout} s")

    def _get(self, query: str) -> dict[str, Any]:
        url = f"{self.url}/v1.0/{PROJECT}/streaming/jobs?{query}"
        request = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
        with urllib.request.urlopen(request, timeout=30) as resp:
            payload: dict[str, Any] = json.load(resp)
        return payload

    def delete(self, job_ids: Sequence[int]) -> None:
        """Delete jobs, as DLI's delete call does, over one kept-alive connection."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            for job_id in job_ids:
                path = f"/v1.0/{PROJECT}/streaming/jobs/{job_id}"
                conn.request("DELETE", path, headers={"X-Auth-Token": TOKEN})
                conn.getresponse().read()
        finally:
            conn.close()

    def oldest(self, limit: int) -> list[tuple[str, int]]:
        """(name, job_id) of the oldest jobs, up to ``limit`` (at most 100)."""
        page = self._get(f"limit={limit}&offset=0&order=asc")["job_list"]
        return [(job["name"], job["job_id"]) for job in page["jobs"]]

    def total_jobs(self) -> int:
        """How many jobs the simulator holds (the list call's total_count)."""
        count: int = self._get("limit=1")["job_list"]["total_count"]
        return count

    def jobs(self) -> list[tuple[str, int]]:
        """(name, create_time in epoch ms) of every job, oldest first, paged 100 at a time."""
        found: list[tuple[str, int]] = []
        while True:
            page = self._get(f"limit=100&offset={len(found)}&order=asc")["job_list"]
            found += [(job["name"], job["create_time"]) for job in page["jobs"]]
            if not page["jobs"] or len(found) >= page["total_count"]:
                return found

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not self._reap():
                time.sleep(0.02)
            if self._proc.returncode is None:
                self._proc.kill()
                while not self._reap():
                    time.sleep(0.02)
        self._log.close()

    def _reap(self) -> bool:
        pid, status, usage = os.wait4(self._proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return True

    def __enter__(self) -> Simulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def batchsub_argv(
    directory: Path,
    url: str,
    ledger: Path,
    *,
    rate: float = 0,
    concurrency: int = 32,
    report: Path | None = None,
) -> list[str]:
    """The ``batchsub run`` command line for one measured run."""
    argv = [sys.executable, "-m", "batchsub", "run", str(directory), "--endpoint", url]
    argv += ["--project-id", PROJECT, "--ledger", str(ledger), "--rate", f"{rate:g}"]
    argv += ["--concurrency", str(concurrency), "--progress", "off"]
    if report is not None:
        argv += ["--report", str(report)]
    return argv


def max_rss_note() -> str:
    """How peak RSS is measured, for the results page."""
    unit = "KiB" if sys.platform.startswith("linux") else "bytes"
    return (
        f"os.wait4() rusage of the batchsub process (ru_maxrss, {unit} on this OS): the larger"
        " of the process and its manifest parser child, which it waits for (not their sum:"
        " the forked child shares most of its pages with the parent)"
    )
