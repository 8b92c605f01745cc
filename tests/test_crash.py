"""Crashes and rivals, with real processes: ``kill -9`` mid-run, and two runs on one ledger.

The simulator runs as ``batchsub simulator`` in its own process, so it outlives the killed
runs; what exists on it is read back through its list endpoint, as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from tests.conftest import PROJECT, TOKEN, write_manifests
from tests.fs_support import bind_mount, can_mount

pytestmark = pytest.mark.slow

JOBS = 400
LATENCY = 0.02  # seconds the simulator adds to every answer: the run lasts a few seconds


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The environment of a child process: the test token and no other batchsub setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSUB_", "HUAWEICLOUD_"))}
    env["BATCHSUB_AUTH_TOKEN"] = TOKEN
    return env


def batchsub(
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
    proc = batchsub(
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


def run_args(directory: Path, endpoint: str, ledger: Path, *extra: str) -> list[str]:
    """The ``batchsub run`` command line against the simulator."""
    return [
        "run", str(directory), "--endpoint", endpoint, "--project-id", PROJECT,
        "--ledger", str(ledger), "--concurrency", "8", "--progress", "off",
        "--log-level", "warning", *extra,
    ]  # fmt: skip


def kill_midway(proc: subprocess.Popen[bytes], endpoint: str, at_least: int) -> int:
    """SIGKILL ``proc`` once the simulator holds ``at_least`` jobs; how many it holds then."""
    wait_for(
        f"{at_least} jobs before the kill",
        lambda: proc.poll() is not None or job_count(endpoint) >= at_least,
        timeout=20,
    )
    assert proc.poll() is None, "the run ended before it could be killed"
    stop(proc)
    time.sleep(LATENCY * 5)  # requests the dead run had sent finish on the server
    return job_count(endpoint)


def ledger_states(path: Path) -> dict[str, tuple[str, int | None]]:
    """name -> (state, job_id) as the ledger file says, read with plain sqlite3."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT name, state, job_id FROM jobs WHERE project_id = ?", (PROJECT,))
        return {name: (state, job_id) for name, state, job_id in rows}


def check_intents_cover_server(endpoint: str, ledger: Path) -> int:
    """After a kill: every job on the server has a ledger row (intent is written before send).

    Rows marked created carry the server's job_id. Returns how many rows are in doubt.
    """
    states = ledger_states(ledger)
    jobs = dict(remote_jobs(endpoint))
    assert set(jobs) <= set(states), "a job was sent without its intent in the ledger"
    for name, (state, job_id) in states.items():
        assert state in {"submitting", "unknown", "retrying", "created"}, (name, state)
        if state == "created":
            assert job_id == jobs[name], name
    return sum(1 for state, _ in states.values() if state in {"submitting", "unknown"})


def assert_each_once(endpoint: str, names: list[str], ledger: Path) -> None:
    """Every name exists exactly once on the server, and the ledger has its job_id."""
    jobs = remote_jobs(endpoint)
    counts = Counter(name for name, _ in jobs)
    assert {name: n for name, n in counts.items() if n > 1} == {}
    assert sorted(counts) == sorted(names)
    assert ledger_states(ledger) == {name: ("created", job_id) for name, job_id in jobs}


def test_killed_runs_then_a_rerun_create_every_job_exactly_once(tmp_path: Path) -> None:
    names = write_manifests(tmp_path / "m", JOBS)
    ledger = tmp_path / "ledger.db"
    with simulator_process(tmp_path / "sim.log") as endpoint:
        args = run_args(tmp_path / "m", endpoint, ledger, "--rate", "0")
        seen = in_doubt = 0
        for round_, at_least in enumerate((40, 200), start=1):
            run = batchsub(*args, log=tmp_path / f"run{round_}.log")
            try:
                now = kill_midway(run, endpoint, at_least)
            finally:
                stop(run)
            assert seen < now < JOBS, f"round {round_}: {now} jobs after the kill"
            seen = now
            in_doubt += check_intents_cover_server(endpoint, ledger)
        assert in_doubt > 0, "no kill left a request in flight: nothing was reconciled"

        report = tmp_path / "report.json"
        final = batchsub(*args, "--report", str(report), log=tmp_path / "final.log")
        try:
            code = final.wait(timeout=30)
        finally:
            stop(final)
        assert code == 0, (tmp_path / "final.log").read_text()[-2000:]
        assert_each_once(endpoint, names, ledger)
        summary = orjson.loads(report.read_bytes())["summary"]
        # The killed runs' jobs were found in the ledger or adopted from the server, not resent.
        assert summary["created"] + summary["already_created"] == JOBS
        assert summary["creates_sent"] == JOBS - seen


def test_a_second_run_on_the_same_ledger_refuses_to_start(tmp_path: Path) -> None:
    names = write_manifests(tmp_path / "m", 150)
    ledger = tmp_path / "ledger.db"
    with simulator_process(tmp_path / "sim.log") as endpoint:
        # Paced (5 s in all), so that the first run still runs when the second has started.
        args = run_args(tmp_path / "m", endpoint, ledger, "--rate", "30")
        first = batchsub(*args, log=tmp_path / "first.log")
        try:
            wait_for("the first run to send", lambda: job_count(endpoint) > 0, timeout=15)
            second = batchsub(*args, log=tmp_path / "second.log")
            try:
                second_code = second.wait(timeout=15)
            finally:
                stop(second)
            assert first.poll() is None, "the first run ended too soon to test the lock"
            first_code = first.wait(timeout=30)
        finally:
            stop(first)

        message = (tmp_path / "second.log").read_text().strip().splitlines()
        assert second_code == 2
        assert len(message) == 1, message
        assert str(ledger) in message[0]
        assert f"pid {first.pid}" in message[0]
        assert first_code == 0, (tmp_path / "first.log").read_text()[-2000:]
        assert_each_once(endpoint, names, ledger)


def test_a_second_run_through_any_other_name_of_the_ledger_is_refused(tmp_path: Path) -> None:
    names = write_manifests(tmp_path / "m", 150)
    (tmp_path / "data").mkdir()
    ledger = tmp_path / "data" / "ledger.db"
    with simulator_process(tmp_path / "sim.log") as endpoint, contextlib.ExitStack() as stack:
        first = batchsub(
            *run_args(tmp_path / "m", endpoint, ledger, "--rate", "20"), log=tmp_path / "first.log"
        )
        stack.callback(stop, first)
        wait_for("the first run to send", lambda: job_count(endpoint) > 0, timeout=15)
        (tmp_path / "link.db").symlink_to(ledger)
        (tmp_path / "dir-link").symlink_to(ledger.parent, target_is_directory=True)
        os.link(ledger, tmp_path / "hard.db")
        others = [
            str(tmp_path / "link.db"),
            str(tmp_path / "dir-link" / "ledger.db"),
            str(tmp_path / "data" / ".." / "data" / "ledger.db"),
            os.path.relpath(ledger),
            str(tmp_path / "hard.db"),
        ]
        if can_mount():
            others.append(str(stack.enter_context(bind_mount(ledger.parent, tmp_path / "bind"))))
            others[-1] += "/ledger.db"
        seconds = [
            batchsub(*run_args(tmp_path / "m", endpoint, Path(other)), log=tmp_path / f"{i}.log")
            for i, other in enumerate(others)
        ]
        for proc in seconds:
            stack.callback(stop, proc)
        codes = [proc.wait(timeout=30) for proc in seconds]
        status = subprocess.run(
            [sys.executable, "-m", "batchsub", "status", "--ledger", str(tmp_path / "link.db")],
            capture_output=True, text=True, env=child_env(), timeout=30, check=False,
        )  # fmt: skip
        assert first.poll() is None, "the first run ended too soon to test the lock"
        first_code = first.wait(timeout=30)
        assert first_code == 0, (tmp_path / "first.log").read_text()[-2000:]
        assert_each_once(endpoint, names, ledger)
    for index, other in enumerate(others):
        message = (tmp_path / f"{index}.log").read_text().strip().splitlines()
        assert codes[index] == 2, (other, message)
        assert len(message) == 1 and other in message[0] and f"pid {first.pid}" in message[0]
    assert status.returncode == 0 and "created" in status.stdout  # a reader reads meanwhile
