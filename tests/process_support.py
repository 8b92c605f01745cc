"""batchsub and its simulator as real processes: started, waited for, stopped, and the
simulator read over HTTP the way a person would check it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from tests.support import PROJECT, TOKEN


def clean_env(prefixes: tuple[str, ...] = ("BATCHSUB_", "HUAWEICLOUD_SDK_")) -> dict[str, str]:
    """This process's environment without any batchsub setting or credential."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def run_batchsub(
    *args: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m batchsub ARGS`` to its end, with no batchsub setting from outside: exit
    code, stdout and stderr as text. ``env`` adds to the environment."""
    full_env = clean_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "batchsub", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


async def run_batchsub_async(
    *args: str | Path, env: dict[str, str], cwd: Path, timeout: float = 60
) -> tuple[int, bytes, bytes]:
    """``python -m batchsub ARGS`` to its end without blocking this loop (which may be serving
    the simulator): exit code, stdout, stderr. ``env`` is the whole environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchsub", *map(str, args), env=env, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


LATENCY = 0.02  # seconds the simulator adds to every answer: the run lasts a few seconds


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The environment of a child process: the test token and no other batchsub setting."""
    env = clean_env(("BATCHSUB_", "HUAWEICLOUD_"))
    env["BATCHSUB_AUTH_TOKEN"] = TOKEN
    return env


def start_batchsub(
    *args: str, log: Path, env: dict[str, str] | None = None, stdout: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m batchsub ARGS`` with its output in ``log`` (a pipe could fill up).

    ``env`` adds to the child's environment; ``stdout``: a file for stdout apart from stderr.
    """
    out: IO[bytes] = log.open("wb")
    summary: IO[bytes] | None = stdout.open("wb") if stdout is not None else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "batchsub", *args],
            stdin=subprocess.DEVNULL,
            stdout=summary or out,
            stderr=out if summary else subprocess.STDOUT,
            env={**child_env(), **(env or {})},
        )
    finally:
        out.close()
        if summary is not None:
            summary.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal ``proc`` (if still running) and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def get_json(url: str) -> dict[str, Any]:
    """GET with the token; the decoded JSON answer."""
    request = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
    with urllib.request.urlopen(request, timeout=5) as answer:
        payload: dict[str, Any] = orjson.loads(answer.read())
        return payload


def jobs_url(endpoint: str, *, limit: int, offset: int = 0) -> str:
    """The list endpoint of the test project, oldest job first."""
    query = f"limit={limit}&offset={offset}&order=asc"
    return f"{endpoint}/v1.0/{PROJECT}/streaming/jobs?{query}"


def job_count(endpoint: str) -> int:
    """How many jobs the simulator holds."""
    total: int = get_json(jobs_url(endpoint, limit=1))["job_list"]["total_count"]
    return total


def remote_jobs(endpoint: str) -> list[tuple[str, int]]:
    """(name, job_id) of every job on the simulator, read page by page."""
    found: list[tuple[str, int]] = []
    while True:
        page = get_json(jobs_url(endpoint, limit=100, offset=len(found)))["job_list"]
        found.extend((job["name"], job["job_id"]) for job in page["jobs"])
        if not page["jobs"] or len(found) >= page["total_count"]:
            return found


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def simulator_process(log: Path, *extra: str) -> Iterator[str]:
    """``batchsub simulator`` on a free port (``extra`` flags), answering; its endpoint URL."""
    port = free_port()
    proc = start_batchsub(
        "simulator", "--port", str(port), "--project-id", PROJECT, "--latency", str(LATENCY),
        *extra, log=log,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"simulator exited with {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError):
            return job_count(endpoint) == 0
        return False

    try:
        wait_for("the simulator to answer", answering, timeout=15)
        yield endpoint
    finally:
        stop(proc, signal.SIGTERM)
