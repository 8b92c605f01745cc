"""validate, plan, status, report, retry and config show, against real ledgers and the simulator.

Ledgers are written by a real ``run_source``. Commands run in process through ``cli.main``
(in a thread when the test's loop must keep serving the simulator), except where the command
configures process-wide logging: those run as a real subprocess.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchsub.cli import main
from batchsub.commands.retry import retry_failed
from batchsub.jobs import LedgerState
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import Settings
from batchsub.simulator import RunningSimulator
from batchsub.sources.directory import DirectorySource
from batchsub.sources.failed import LedgerFailedSource
from tests.fs_support import odd_entries
from tests.http_support import proxying
from tests.support import PROJECT, TOKEN, SimulatorFactory, fast_settings, write_manifests

MISSING_QUEUE = "missingQueue"


def settings_for(url: str, ledger: Path, **overrides: Any) -> Settings:
    return fast_settings(url, ledger, **overrides)


async def populate(simulator: SimulatorFactory, folder: Path) -> tuple[RunningSimulator, Path]:
    """A ledger (./ledger.db) with 3 jobs created and 2 failed (DLI.0002: no such queue)."""
    sim = await simulator(known_queues=frozenset({"testQueue"}))
    write_manifests(folder, 3)
    write_manifests(folder, 2, prefix="bad", queue_name=MISSING_QUEUE)
    ledger = Path("ledger.db").resolve()
    code = await run_source(settings_for(sim.url, ledger), DirectorySource(folder), RunAccount())
    assert code == 1
    return sim, ledger


async def cli(*argv: str | Path) -> int:
    """``cli.main`` in a thread: its own asyncio.run, while this loop serves the simulator."""
    return await asyncio.to_thread(main, [str(arg) for arg in argv])


async def cli_subprocess(*argv: str | Path, env: dict[str, str]) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSUB_", "HUAWEICLOUD"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batchsub",
        *map(str, argv),
        env={**base, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_error_line(err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("batchsub: error: ") and expected in lines[0], err


# --- validate ------------------------------------------------------------------------------


def test_validate_lists_every_problem_with_file_job_and_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = Path("m")
    write_manifests(folder, 2)
    (folder / "typo.json").write_text('{"name": "typo", "parallel_numbr": 2}')
    (folder / "list.yaml").write_text("- {name: fine}\n- {name: also, cu_number: '2'}\n")
    (folder / "zz-dup.json").write_text('{"name": "job-00000"}')

    assert main(["validate", "m", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert (found["manifests"], found["valid"]) == (5, 3)
    problems = {(p["file"], p["job"]): p["problem"] for p in found["problems"]}
    assert problems[("m/typo.json", "typo")].startswith("parallel_numbr: unknown field")
    assert problems[("m/list.yaml", "also")].startswith("cu_number: expected an integer")
    assert "duplicate job name" in problems[("m/zz-dup.json", "job-00000")]
    assert len(problems) == 3

    # Not a terminal: one "path: field: message" line per problem, the totals on stderr.
    assert main(["validate", "m"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        'm/list.yaml#1: cu_number: expected an integer, got "2"',
        "m/typo.json: parallel_numbr: unknown field (not in the DLI create API)"
        " (did you mean parallel_number?)",
        'm/zz-dup.json: name: duplicate job name "job-00000" (first defined in'
        " m/job-00000.json)",
    ]
    assert "5 manifests, 3 jobs valid, 3 problems" in captured.err

    # -o table: the borderless table, and the totals under it.
    assert main(["validate", "m", "-o", "table"]) == 1
    out = capsys.readouterr().out
    assert "m/typo.json" in out and "parallel_numbr" in out and "5 manifests" in out
    assert not set(out) & set("┏┃│━─┗└")

    (folder / "typo.json").unlink()
    (folder / "list.yaml").unlink()
    (folder / "zz-dup.json").unlink()
    assert main(["validate", "m"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "2 manifests, 2 jobs valid, 0 problems" in captured.err


def test_validate_and_plan_of_a_folder_without_manifests_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Path("empty").mkdir()
    assert main(["validate", "empty"]) == 1
    assert "batchsub: error: no manifests" in capsys.readouterr().err
    assert main(["plan", "empty", "--project-id", PROJECT]) == 1
    assert "batchsub: error: no manifests" in capsys.readouterr().err


def test_validate_reports_a_manifest_of_400000_problems_in_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = Path("m")
    folder.mkdir()
    (folder / "bad.json").write_bytes(
        orjson.dumps({"name": "bad", "dependency_jars": [1] * 400_000})
    )
    for args in (["validate", "m"], ["validate", "m", "--json"]):
        started = time.monotonic()
        assert main(args) == 1
        out = capsys.readouterr().out
        assert time.monotonic() - started < 15  # about 1 s; minutes before (a 20 MB line)
        assert "399995" in out and len(out) < 4096  # "and 399995 more problems"


def test_validate_and_plan_report_unreadable_entries_as_run_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_manifests(Path("m"), 1)
    problems = odd_entries(Path("m"))
    expected = {f"m/{name}": problem for name, problem in problems.items()}

    assert main(["validate", "m", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert {p["file"]: p["problem"] for p in found["problems"]} == expected
    assert (found["manifests"], found["valid"]) == (4, 1)

    assert main(["plan", "m", "--project-id", PROJECT, "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["jobs"]
    assert {r["source"]: r["detail"] for r in rows if r["action"] == "invalid"} == expected


def test_validate_a_missing_directory_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "no-such-dir"]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, "no-such-dir")
    assert captured.out == ""


# --- plan ----------------------------------------------------------------------------------


async def test_plan_shows_each_action_and_sends_nothing(
    simulator: SimulatorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path("m")
    sim, ledger = await populate(simulator, folder)
    capsys.readouterr()  # the run's log lines
    write_manifests(folder, 1, prefix="job", cu_number=4)  # job-00000 changed: drift
    write_manifests(folder, 1, prefix="new")
    (folder / "typo.json").write_text('{"name": "typo", "parallel_numbr": 2}')
    sent = sim.store.create_requests

    code = await cli("plan", folder, "--ledger", ledger, "--project-id", PROJECT, "--json")
    assert code == 1  # an invalid manifest
    plan = json.loads(capsys.readouterr().out)
    actions = {row["name"]: row["action"] for row in plan["jobs"]}
    assert actions == {
        "job-00000": "update",  # apply updates it (run reports it drifted)
        "job-00001": "already_created",
        "job-00002": "already_created",
        "bad-00000": "retry",
        "bad-00001": "retry",
        "new-00000": "create",
        "typo": "invalid",
    }
    drifted = next(row for row in plan["jobs"] if row["action"] == "update")
    assert drifted["drift"] == ["cu_number"]
    assert drifted["changes"] == [
        {"field": "cu_number", "old": 2, "new": 4, "how": "restart_if_running"}
    ]
    assert plan["counts"]["already_created"] == 2 and plan["remote_checked"] is False
    assert sim.store.create_requests == sent

    code = await cli("plan", folder, "--ledger", ledger, "--project-id", PROJECT)
    captured = capsys.readouterr()
    assert code == 1
    assert "Plan: 1 to create, 0 to adopt, 2 to retry" in captured.err
    # Piped: one tab-separated line per job worth showing, whole path and detail.
    lines = [line.split("\t") for line in captured.out.splitlines()]
    assert {(cells[0], cells[1]) for cells in lines} == {
        ("update", "job-00000"), ("retry", "bad-00000"), ("retry", "bad-00001"),
        ("create", "new-00000"), ("invalid", "typo"),
    }  # fmt: skip
    assert all(len(cells) == 4 for cells in lines)
    retry = next(cells for cells in lines if cells[1] == "bad-00000")
    assert retry[2] == "m/bad-00000.json" and "DLI.0002" in retry[3]

    code = await cli("plan", folder, "--ledger", ledger, "--project-id", PROJECT, "-o", "table")
    out = capsys.readouterr().out
    assert code == 1 and "Plan: 1 to create" in out.replace("\n", " ")


async def test_plan_check_remote_marks_jobs_made_elsewhere_as_adopt(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    folder = Path("m")
    sim, ledger = await populate(simulator, folder)
    write_manifests(folder, 1, prefix="by-hand")
    sim.store.add("by-hand-00000", {"name": "by-hand-00000"}, 0, PROJECT)
    sent = sim.store.create_requests
    common = ("plan", folder, "--ledger", ledger, "--endpoint", sim.url, "--check-remote")
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN}

    code, out, err = await cli_subprocess(*common, "--project-id", PROJECT, "--json", env=env)
    assert code == 0, err
    plan = json.loads(out)
    actions = {row["name"]: (row["action"], row["job_id"]) for row in plan["jobs"]}
    assert actions["by-hand-00000"] == ("adopt", sim.store.named("by-hand-00000")[0].job_id)
    assert actions["bad-00000"][0] == "retry"
    assert plan["remote_checked"] is True
    assert sim.store.create_requests == sent  # list calls only

    # A project the credential may not use: one line naming the credential, exit 2.
    code, out, err = await cli_subprocess(*common, "--project-id", "other-project", env=env)
    assert code == 2 and out == ""
    one_error_line(err, "the API refused the credential token from BATCHSUB_AUTH_TOKEN")


async def test_plan_check_remote_on_a_list_it_cannot_read_says_so_and_adopts_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    write_manifests(Path("m"), 1)

    def proxy_page(request: web.Request) -> web.StreamResponse | None:
        return web.Response(text="<html>proxy</html>", content_type="text/html")

    async with proxying(sim.url, proxy_page) as (url, seen):
        code, out, err = await cli_subprocess(
            "plan", "m", "--check-remote", "--endpoint", url, "--project-id", PROJECT,
            env={"BATCHSUB_AUTH_TOKEN": TOKEN, "BATCHSUB_BACKOFF_BASE": "0.01"},
        )  # fmt: skip
    assert code == 2 and out == ""
    one_error_line(err, "the job list cannot be read: HTTP 200 with an HTML body (text/html")
    assert 1 < len(seen.requests) <= 3  # tried again, as any transient failure


def test_plan_without_project_id_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    write_manifests(Path("m"), 1)
    assert main(["plan", "m"]) == 2
    one_error_line(capsys.readouterr().err, "no project id")
    assert not Path("batchsub.db").exists()


# --- status and report -----------------------------------------------------------------------


async def test_status_counts_states_and_shows_latest_failures(
    simulator: SimulatorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ledger = await populate(simulator, Path("m"))
    capsys.readouterr()  # the run's log lines

    assert await cli("status", "--ledger", ledger, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["created"] == 3 and status["counts"]["failed"] == 2
    assert status["counts"]["total"] == 5
    assert status["outcomes"] == {"created": 3, "failed": 2, "unresolved": 0, "total": 5}
    assert {f["name"] for f in status["failures"]} == {"bad-00000", "bad-00001"}
    assert {f["error_code"] for f in status["failures"]} == {"DLI.0002"}
    assert {f["outcome"] for f in status["failures"]} == {"failed"}
    assert all(f["updated_at"].endswith("Z") for f in status["failures"])

    assert await cli("status", "--ledger", ledger, "--limit", "1", "-o", "table") == 0
    out = capsys.readouterr().out
    assert "DLI.0002" in out and "batchsub retry" in out
    assert ("bad-00000" in out) != ("bad-00001" in out)  # only the latest one

    # Piped: "outcome<TAB>count<TAB>states" lines, then "path: name: ..." per failure.
    assert await cli("status", "--ledger", ledger) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[:4] == ["created\t3\tcreated 3", "failed\t2\tfailed 2", "unresolved\t0\t-",
                         "total\t5\t-"]  # fmt: skip
    assert lines[4].startswith("m/bad-0000") and ": failed (failed, " in lines[4]
    assert "DLI.0002" in lines[4] and "batchsub retry" in captured.err

    assert await cli("status", "--ledger", ledger, "--project-id", "elsewhere", "--json") == 0
    assert json.loads(capsys.readouterr().out)["counts"]["total"] == 0


def test_status_on_a_missing_ledger_is_one_line_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status", "--ledger", "missing.db"]) == 2
    one_error_line(capsys.readouterr().err, "ledger missing.db does not exist")
    assert not Path("missing.db").exists() and not Path("missing.db.lock").exists()


async def test_report_writes_every_ledger_row_as_json_and_csv(
    simulator: SimulatorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ledger = await populate(simulator, Path("m"))
    capsys.readouterr()  # the run's log lines

    assert await cli("report", "--ledger", ledger, "--output", "r.json") == 0
    rows = json.loads(Path("r.json").read_text())["jobs"]
    assert [row["name"] for row in rows] == [
        "bad-00000",
        "bad-00001",
        "job-00000",
        "job-00001",
        "job-00002",
    ]
    by_name = {row["name"]: row for row in rows}
    assert by_name["bad-00000"]["outcome"] == "failed"
    assert by_name["bad-00000"]["error_code"] == "DLI.0002"
    assert by_name["bad-00000"]["http_status"] == 400
    assert by_name["job-00000"]["outcome"] == "created"
    assert isinstance(by_name["job-00000"]["job_id"], int)
    assert by_name["job-00000"]["created_at"].endswith("Z")

    assert await cli("report", "--ledger", ledger, "--format", "csv") == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(table) == 5
    assert {row["outcome"] for row in table} == {"created", "failed"}
    assert {row["ledger_state"] for row in table} == {"created", "failed"}
    assert table[0]["error_message"].startswith("The queue missingQueue does not exist")
    assert not list(Path().glob(".report-*"))


# --- retry ---------------------------------------------------------------------------------


async def test_ledger_failed_source_yields_failed_jobs_and_releases_the_ledger(
    simulator: SimulatorFactory,
) -> None:
    _, ledger_path = await populate(simulator, Path("m"))
    source = LedgerFailedSource(SqliteLedger(ledger_path), PROJECT)
    assert await source.load() == 2
    names = [item.name async for item in source.items()]
    assert names == ["bad-00000", "bad-00001"]
    async with SqliteLedger(ledger_path):  # load() closed it: it can be opened again
        pass


async def test_retry_sends_only_the_failed_jobs_once_fixed(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    _, ledger = await populate(simulator, Path("m"))
    fixed = await simulator()  # the queue now exists
    settings = settings_for(fixed.url, ledger)
    said: list[str] = []

    code = await retry_failed(settings, tmp_path / "r.json", announce=said.append)
    assert code == 0
    assert sorted(job.name for job in fixed.store.jobs) == ["bad-00000", "bad-00001"]
    assert fixed.store.create_requests == 2  # created jobs untouched
    assert said == [f"sending again 2 failed jobs of project {PROJECT}"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["created"] == 2
    async with SqliteLedger(ledger) as opened:
        states = {r.name: r.state async for r in opened.records(PROJECT)}
    assert set(states.values()) == {LedgerState.CREATED}

    code = await retry_failed(settings, None, announce=said.append)
    assert code == 0 and "nothing to retry" in said[-1]
    assert fixed.store.create_requests == 2


def test_retry_on_a_missing_ledger_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["retry", "--ledger", "gone.db", "--project-id", "p", "--log-level", "error"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "ledger gone.db does not exist")


# --- config show ---------------------------------------------------------------------------


def test_config_show_merges_file_env_and_flags_and_masks_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("cfg.toml").write_text('rate = 3.0\nconcurrency = 5\nregion = "cn-north-4"\n')
    monkeypatch.setenv("BATCHSUB_RATE", "7")
    monkeypatch.setenv("BATCHSUB_AUTH_TOKEN", "very-secret-token")
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "very-secret-sk")

    assert main(["--config", "cfg.toml", "config", "show", "--concurrency", "9"]) == 0
    out = capsys.readouterr().out
    assert "# config file: cfg.toml" in out
    assert "rate = 7.0  # env" in out and "concurrency = 9  # flag" in out
    assert 'region = "cn-north-4"  # file' in out and "timeout = 30.0  # default" in out
    # The token in the environment beats the lone SK: both are said.
    assert "# credential in use: token (auth_token from the environment)" in out
    assert "# endpoint in use: https://dli.cn-north-4.myhuaweicloud.com" in out
    assert 'auth_token = "********"' in out and 'sk = "********"' in out
    assert "very-secret" not in out

    assert main(["--config", "cfg.toml", "config", "show", "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["config_file"] == "cfg.toml"
    assert shown["settings"]["concurrency"] == 5 and shown["settings"]["ak"] is None
    assert shown["settings"]["auth_token"] == "********"
    assert shown["sources"]["concurrency"] == "file" and shown["sources"]["rate"] == "env"


def test_config_show_names_a_token_in_the_file_that_beats_ak_sk_in_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("cfg.toml").write_text('auth_token = "file-token"\n')
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", "AKIDEXAMPLE")
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "very-secret-sk")
    assert main(["--config", "cfg.toml", "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "# credential in use: token (auth_token from config file cfg.toml)" in out
    assert "# also set, not used: AK/SK (the environment)" in out
    assert 'auth_token = "********"  # file' in out and "file-token" not in out
    # After the command, as before it: a global flag.
    assert main(["config", "show", "--config", "cfg.toml", "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["credentials_not_used"] == ["AK/SK (the environment)"]
    assert "very-secret" not in json.dumps(shown)
