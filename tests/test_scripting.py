"""batchsub driven by a script (issue 17), as a shell runs it: real processes, real pipes and
real signals. Piped output is plain lines; ``| head`` changes neither the output's end nor the
exit code; signals exit 130/143; ``--log-format json`` leaves only JSON on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from batchsub.commands.report import csv_cell
from tests.process_support import clean_env, run_batchsub
from tests.support import REPO, write_manifests

pytestmark = pytest.mark.slow

BOX = set("┏┓┗┛┃│━─┡┩╇┳┻┼")


def batchsub(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "batchsub", *map(str, args)]


def bad_manifests(folder: Path, count: int) -> None:
    """``count`` manifests with an unknown field each: a validate output of many lines."""
    write_manifests(folder, count, parallel_numbr=2)


# --- piped output ----------------------------------------------------------------------------


def test_validate_to_a_file_is_one_whole_line_per_problem(tmp_path: Path) -> None:
    deep = tmp_path.joinpath("a" * 100, "b" * 100, "manifests")
    for name in ("typo.json", "bool-as-int.json", "date-in-yaml.yaml", "broken-json.json"):
        deep.mkdir(parents=True, exist_ok=True)
        deep.joinpath(name).write_bytes(REPO.joinpath("examples", "broken", name).read_bytes())
    out = tmp_path / "problems.txt"
    with out.open("w") as stdout:
        code = subprocess.run(
            batchsub("validate", deep), stdout=stdout, stderr=subprocess.PIPE, env=clean_env()
        ).returncode
    assert code == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{deep}/") for line in lines)  # the whole path, one line each
    assert all(len(line) <= 400 for line in lines) and not BOX & set(out.read_text())
    typo = next(line for line in lines if "typo.json" in line)
    assert typo.startswith(f"{deep}/typo.json: parallel_numbr: unknown field")
    # grep finds what it looks for: the path is never split across lines.
    assert run_batchsub("validate", REPO / "examples" / "broken").stdout.count("typo.json") == 1


def read_some(args: list[str], size: int, cwd: Path) -> tuple[int, bytes, str]:
    """Run ``args``, read ``size`` bytes of its stdout and close the pipe, as ``head -c``."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=clean_env(), cwd=cwd,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(size)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.wait(timeout=60), head, err


def test_piping_json_into_head_never_prints_a_traceback_nor_changes_the_exit_code(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "m"
    bad_manifests(folder, 1500)  # about 200 KB of JSON: more than a pipe holds
    whole = subprocess.run(
        batchsub("plan", folder, "--project-id", "p", "--json"), capture_output=True,
        env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert whole.returncode == 1 and len(whole.stdout) > 200_000
    runs = [
        (batchsub("validate", folder, "--json"), 100, 1, 15),
        (batchsub("validate", folder, "-o", "plain"), 1, 1, 4),
        (batchsub("plan", folder, "--project-id", "p", "--json"), 1, 1, 6),
        (batchsub("plan", folder, "--project-id", "p", "-o", "json"), 300, 1, 4),
    ]
    for args, size, expected, tries in runs:
        for _ in range(tries):
            code, head, err = read_some(args, size, tmp_path)
            assert len(head) == size
            assert "Traceback" not in err and "BrokenPipe" not in err, err
            assert code == expected, (args, err)


def test_status_json_into_head_is_quiet_and_exits_0(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 3)
    ran = run_batchsub("run", "m", "--simulator", "--progress", "off", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    for _ in range(10):
        code, head, err = read_some(batchsub("status", "--json"), 5, tmp_path)
        assert (code, head, err) == (0, b'{"cou', "")
    # A shell pipe, with pipefail: the exit code of batchsub, not of head.
    shell = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{sys.executable} -m batchsub report | head -c 5"],
        capture_output=True, text=True, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert (shell.returncode, shell.stdout, shell.stderr) == (0, '{"job', "")


# --- signals and what to do after ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code", "logs"), [(signal.SIGINT, 130, "auto"), (signal.SIGTERM, 143, "json")]
)
def test_a_signal_stops_a_run_with_128_plus_its_number_and_the_advice_to_run_again(
    tmp_path: Path, sig: signal.Signals, code: int, logs: str
) -> None:
    write_manifests(tmp_path / "m", 200)
    proc = subprocess.Popen(
        batchsub(
            "run", "m", "--simulator", "--rate", "20", "--report", "r.json", "--log-format", logs
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    time.sleep(2.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["interrupted"] is True and summary["exit_code"] == code
    assert summary["created"] > 0 and summary["unresolved"] > 0
    assert "interrupted\ttrue" in out.decode()
    assert "run `batchsub run m` again" in err.decode()
    if logs == "json":  # the advice too is a JSON line: nothing else is on stderr
        events = [orjson.loads(line) for line in err.decode().splitlines()]
        assert {"run.stopping", "command.note", "run.finished"} <= {e["event"] for e in events}

    status = run_batchsub("status", cwd=tmp_path)
    assert status.returncode == 0
    assert "batchsub run m" in status.stderr and "then: batchsub retry" not in status.stderr
    # The files the stopped run never reached have no ledger row: status counts them, and
    # retry (which resends only what the ledger holds) says so and points to run.
    shown = json.loads(run_batchsub("status", "-o", "json", cwd=tmp_path).stdout)
    never = shown["never_sent_files"]
    assert never > 0 and shown["counts"]["total"] + never == 200
    assert shown["outcomes"]["unresolved"] > 0 and shown["outcomes"]["failed"] == 0
    retry = run_batchsub("retry", "--simulator", "--log-level", "error", cwd=tmp_path)
    assert f"{never} manifest files under m were never sent" in retry.stdout
    assert "run `batchsub run m`" in retry.stdout


@pytest.mark.parametrize("command", ["run", "apply"])
def test_an_empty_folder_is_an_error_with_a_report(tmp_path: Path, command: str) -> None:
    (tmp_path / "empty").mkdir()
    result = run_batchsub(command, "empty", "--simulator", "--report", "r.json", cwd=tmp_path)
    assert result.returncode == 1
    assert "batchsub: error: no manifests (*.json, *.yaml, *.yml) under empty" in result.stderr
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["exit_code"] == 1 and summary["total"] == 0


def test_apply_dry_run_on_the_simulator_plans_for_its_demo_project(tmp_path: Path) -> None:
    names = write_manifests(tmp_path / "m", 3)
    result = run_batchsub("apply", "m", "--simulator", "--dry-run", cwd=tmp_path)  # piped: plain
    assert result.returncode == 0, result.stderr
    assert sorted(line.split("\t")[1] for line in result.stdout.splitlines()) == sorted(names)
    assert all(line.startswith("create\t") for line in result.stdout.splitlines())


# --- logs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run", "missing-dir", "--simulator", "--log-format", "json"],
        ["run", "empty", "--simulator", "--log-format", "json"],
        ["apply", "empty", "--simulator", "--log-format", "json"],
        ["--log-format", "json", "run", "m", "--simulator", "--rate", "-1"],
        ["run", "m", "--simulator", "--log-format", "json", "--rat", "5"],
        ["status", "--ledger", "missing.db", "--log-format", "json"],
    ],
)
def test_under_log_format_json_every_line_of_stderr_is_json(
    tmp_path: Path, args: list[str]
) -> None:
    write_manifests(tmp_path / "m", 1)
    (tmp_path / "empty").mkdir()
    result = run_batchsub(*args, cwd=tmp_path)
    assert result.returncode in (1, 2)
    lines = result.stderr.splitlines()
    assert lines
    events = [orjson.loads(line) for line in lines]  # each one parses
    final = events[-1]
    assert final["event"] == "command.error" and final["level"] == "error"
    assert final["message"]


def test_a_json_logged_run_has_json_only_on_stderr(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 2)
    (tmp_path / "m" / "typo.json").write_text('{"name": "typo", "parallel_numbr": 2}')
    result = run_batchsub("run", "m", "--simulator", "--log-format", "json", cwd=tmp_path)
    assert result.returncode == 1
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert events[-1]["event"] == "run.finished" and events[-1]["exit_code"] == 1


# --- flags ---------------------------------------------------------------------------------


def test_abbreviations_are_refused_with_the_commands_usage_and_a_close_match(
    tmp_path: Path,
) -> None:
    write_manifests(tmp_path / "m", 1)
    result = run_batchsub("run", "m", "--simulator", "--rat", "5", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: batchsub run ")
    assert "unrecognized arguments: --rat 5 (did you mean --rate?)" in result.stderr
    assert not (tmp_path / "batchsub.db").exists()
    typo = run_batchsub("validate", "m", "--jsn", cwd=tmp_path)
    assert typo.returncode == 2 and "(did you mean --json?)" in typo.stderr
    command = run_batchsub("valdate", "m", cwd=tmp_path)
    assert command.returncode == 2 and "(did you mean validate?)" in command.stderr


def test_global_flags_work_after_the_command_and_batchsub_alone_prints_help(
    tmp_path: Path,
) -> None:
    write_manifests(tmp_path / "m", 1)
    after = run_batchsub("validate", "m", "--config", "missing.toml", cwd=tmp_path)
    assert after.returncode == 2 and "config file missing.toml does not exist" in after.stderr
    before = run_batchsub("--log-format", "json", "validate", "m", "--config", "x.toml")
    assert before.returncode == 2 and orjson.loads(before.stderr)["event"] == "command.error"
    alone = run_batchsub()
    assert alone.returncode == 0 and alone.stdout.startswith("usage: batchsub")


@pytest.mark.parametrize("command", [["run"], ["validate"], ["status"], ["config", "show"]])
def test_help_lists_environment_exit_codes_and_an_example(command: list[str]) -> None:
    result = run_batchsub(*command, "--help")
    assert result.returncode == 0
    assert "exit codes: 0 " in result.stdout and "example: batchsub " in result.stdout
    if command != ["validate"] and command != ["status"]:
        assert "BATCHSUB_RATE" in result.stdout


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped() -> None:
    for text in ("=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("plain") == "plain" and csv_cell(True) == "true" and csv_cell(3) == 3


def test_a_daemon_logs_its_shutdown_summary_as_one_event_and_draws_no_table(
    tmp_path: Path,
) -> None:
    drop = tmp_path / "drop"
    write_manifests(drop, 2)
    err = tmp_path / "err.log"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            batchsub("watch", drop, "--simulator", "--settle-time", "0.1", "--log-format", "json"),
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            env=clean_env(), cwd=tmp_path,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while err.read_text().count('"job.created"') < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0  # a daemon's stop by SIGTERM is no failure
    assert out == b""  # no table into container logs
    events = [orjson.loads(line) for line in err.read_text().splitlines()]
    finished = [e for e in events if e["event"] == "run.finished"]
    assert len(finished) == 1 and finished[0]["created"] == 2
    assert finished[0]["interrupted"] is False and finished[0]["exit_code"] == 0
