"""The command line as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.http_support import unanswered_port
from tests.process_support import clean_env, run_batchsub
from tests.support import REPO, TOKEN, SimulatorFactory, write_manifests

pytestmark = pytest.mark.slow


def test_readme_demo_runs_on_the_bundled_examples(tmp_path: Path) -> None:
    first = run_batchsub(
        "run", REPO / "examples" / "manifests", "--simulator", "--report", tmp_path / "r.json"
    )
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["created"] == report["summary"]["total"] > 10
    # The ledger in the working directory makes a rerun send nothing.
    again = run_batchsub(
        "run", REPO / "examples" / "manifests", "--simulator", "--report", tmp_path / "r2.json"
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "r2.json").read_text())["summary"]
    assert summary["already_created"] == summary["total"]
    assert summary["creates_sent"] == 0


def test_invalid_manifests_exit_1_and_name_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_manifests(folder, 2)
    (folder / "typo.json").write_text('{"name": "typo", "parallel_numbr": 2}')
    result = run_batchsub("run", folder, "--simulator", "--report", tmp_path / "r.json")
    assert result.returncode == 1
    assert "typo.json" in result.stdout and "parallel_numbr" in result.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["jobs"]
    assert sorted(row["outcome"] for row in rows) == ["created", "created", "invalid"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["run", "no-such-dir", "--simulator"], {}, "no-such-dir"),
        (
            ["run", "{m}", "--endpoint", "http://127.0.0.1:9", "--project-id", "p"],
            {},
            "no credentials",
        ),
        (["run", "{m}", "--project-id", "p"], {"BATCHSUB_AUTH_TOKEN": "t"}, "no endpoint"),
        (
            ["run", "{m}", "--endpoint", "http://127.0.0.1:9"],
            {"BATCHSUB_AUTH_TOKEN": "t"},
            "no project id",
        ),
        (["run", "{m}", "--simulator", "--rate", "-1"], {}, "rate"),
        (["run", "{m}", "--simulator", "--concurrency", "0"], {}, "concurrency"),
        (
            ["run", "{m}", "--endpoint", "ftp://x", "--project-id", "p"],
            {"BATCHSUB_AUTH_TOKEN": "t"},
            "endpoint",
        ),
        (["run", "{m}", "--simulator"], {"HUAWEICLOUD_SDK_AK": "AKONLY"}, "HUAWEICLOUD_SDK_SK"),
        (
            ["run", "{m}", "--simulator", "--ledger", "/nonexistent-dir/x.db"],
            {},
            "/nonexistent-dir/x.db",
        ),
        (["--config", "missing.toml", "run", "{m}", "--simulator"], {}, "missing.toml"),
        (
            ["run", "{m}", "--region", "cn-nort-4", "--project-id", "p"],
            {"BATCHSUB_AUTH_TOKEN": "t"},
            "unknown region 'cn-nort-4' (did you mean cn-north-4?)",
        ),
    ],
)
def test_usage_and_config_errors_exit_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    folder = tmp_path / "m"
    write_manifests(folder, 1)
    result = run_batchsub(*[arg.format(m=folder) for arg in args], env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith("batchsub: error:")
    ]
    assert len(error_lines) == 1, result.stderr
    assert expected in error_lines[0]


def test_bad_config_file_value_names_the_setting(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_manifests(folder, 1)
    config = tmp_path / "bad.toml"
    config.write_text('rate = "fast"\n')
    result = run_batchsub("--config", config, "run", folder, "--simulator")
    assert result.returncode == 2
    assert "rate" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("where", "concurrency", "expected"),
    [
        ("nobody-listening", 8, "cannot connect to http://127.0.0.1:"),
        ("nobody-listening", 64, "cannot connect to http://127.0.0.1:"),
        ("dns-failure", 64, "cannot connect to https://dli.no-such-region.invalid"),
        ("syn-dropped", 64, "no answer to connect within 5 s"),
    ],
)
def test_an_unreachable_endpoint_is_given_up_within_15_s_with_one_line(
    tmp_path: Path, where: str, concurrency: int, expected: str
) -> None:
    folder = tmp_path / "m"
    write_manifests(folder, 200)
    with contextlib.ExitStack() as stack:
        if where == "dns-failure":  # as a wrong --region would (allowed, to get past the list)
            endpoint = "https://dli.no-such-region.invalid"
        elif where == "syn-dropped":
            endpoint = f"http://127.0.0.1:{stack.enter_context(unanswered_port())}"
        else:
            # A port held bound but never listened on: refused, and no parallel test can
            # take it meanwhile (a port merely closed again can be).
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        result = run_batchsub(
            "run", folder, "--endpoint", endpoint, "--project-id", "p",
            "--concurrency", str(concurrency), "--ledger", tmp_path / "l.db",
            "--report", tmp_path / "r.json", env={"BATCHSUB_AUTH_TOKEN": "t"},
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert took < 15
    errors = [line for line in result.stderr.splitlines() if line.startswith("batchsub: error:")]
    assert len(errors) == 1 and "cannot reach the API" in errors[0], result.stderr
    assert expected in errors[0]
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["unresolved"] == 200 and summary["list_calls"] <= 4


async def test_refused_project_or_credential_names_the_fix(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(project_id="the-right-project")
    folder = tmp_path / "m"
    write_manifests(folder, 3)
    cases = [
        ({"BATCHSUB_AUTH_TOKEN": TOKEN}, "the-wrong-project"),
        ({"BATCHSUB_AUTH_TOKEN": "not-the-token"}, "the-right-project"),
    ]
    for env, project in cases:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchsub", "run", str(folder), "--endpoint", sim.url,
            "--project-id", project, "--ledger", str(tmp_path / f"{project}.db"),
            env={**clean_env(), **env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 2
        errors = [line for line in err.decode().splitlines() if line.startswith("batchsub: error:")]
        assert len(errors) == 1, err.decode()
        assert "refused the credential" in errors[0] and "--project-id" in errors[0]
    assert sim.store.create_requests == 0


def created_in(ledger: Path) -> int:
    """Jobs a running batchsub's SQLite ledger holds as created (0 while it has none)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT count(*) FROM jobs WHERE state = 'created'").fetchone()
            return int(row[0])
    except sqlite3.Error:  # not made yet, or its schema not yet
        return 0


def test_ctrl_c_stops_promptly_and_reports_every_job(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_manifests(folder, 40)
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchsub", "run", str(folder), "--simulator", "--rate", "5",
         "--ledger", str(tmp_path / "l.db"), "--report", str(report)],
        env=clean_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Interrupt once the first jobs are created, however slowly this machine started it.
    deadline = time.monotonic() + 20
    while created_in(tmp_path / "l.db") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stopped_at = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - stopped_at < 5, "a stop must not wait for every paced slot"
    assert proc.returncode == 130, err  # interrupted, not failed
    summary = json.loads(report.read_text())["summary"]
    assert summary["interrupted"] is True and summary["exit_code"] == 130
    assert summary["total"] == 40
    assert summary["created"] + summary["unresolved"] == 40
    assert 0 < summary["created"] < 40
