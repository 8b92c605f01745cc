"""Crashes and rivals, with real processes: ``kill -9`` mid-run, and two runs on one ledger.

The simulator runs as ``batchsub simulator`` in its own process, so it outlives the killed
runs; what exists on it is read back through its list endpoint, as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.fs_support import bind_mount, can_mount
from tests.process_support import (
    LATENCY,
    child_env,
    job_count,
    remote_jobs,
    simulator_process,
    start_batchsub,
    stop,
    wait_for,
)
from tests.support import PROJECT, write_manifests

pytestmark = pytest.mark.slow

JOBS = 400


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
            run = start_batchsub(*args, log=tmp_path / f"run{round_}.log")
            try:
                now = kill_midway(run, endpoint, at_least)
            finally:
                stop(run)
            assert seen < now < JOBS, f"round {round_}: {now} jobs after the kill"
            seen = now
            in_doubt += check_intents_cover_server(endpoint, ledger)
        assert in_doubt > 0, "no kill left a request in flight: nothing was reconciled"

        report = tmp_path / "report.json"
        final = start_batchsub(*args, "--report", str(report), log=tmp_path / "final.log")
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
        first = start_batchsub(*args, log=tmp_path / "first.log")
        try:
            wait_for("the first run to send", lambda: job_count(endpoint) > 0, timeout=15)
            second = start_batchsub(*args, log=tmp_path / "second.log")
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
        first = start_batchsub(
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
            start_batchsub(
                *run_args(tmp_path / "m", endpoint, Path(other)), log=tmp_path / f"{i}.log"
            )
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
