"""``batchsub simulator``: its life-cycle flags, in process and in a real subprocess."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsub.commands._parser import build_parser
from batchsub.commands.simulator import config_from_args
from batchsub.settings import load_settings
from batchsub.simulator import SimulatorConfig
from tests.process_support import free_port, start_batchsub, stop, wait_for
from tests.support import PROJECT, TOKEN


def parsed(*flags: str) -> SimulatorConfig:
    """The config ``batchsub simulator FLAGS`` serves with."""
    args = build_parser(["simulator"]).parse_args(["simulator", *flags])
    return config_from_args(load_settings({}), args)


def test_defaults_are_the_config_defaults() -> None:
    config, default = parsed(), SimulatorConfig()
    for field in (
        "start_seconds", "savepoint_seconds", "stop_seconds", "fail_after_seconds",
        "submit_fail", "fail_after_run", "drop_after_run", "error_504_after_update",
        "run_running", "update_running", "unknown_job_ids", "deleted_jobs", "max_job_ids",
        "duplicate_names", "seed",
    ):  # fmt: skip
        assert getattr(config, field) == getattr(default, field), field


def test_life_cycle_flags_reach_the_config() -> None:
    config = parsed(
        "--start-seconds", "0.5-3", "--stop-seconds", "2", "--savepoint-seconds", "0-0.1",
        "--fail-after-seconds", "4-4", "--submit-fail", "0.05", "--fail-after-run", "0.1",
        "--drop-after-run", "0.2", "--error-504-after-run", "0.3", "--drop-after-stop", "0.4",
        "--error-504-after-stop", "0.5", "--drop-after-update", "0.6",
        "--error-504-after-update", "0.7", "--run-running", "accept", "--update-running",
        "accept", "--unknown-job-ids", "error", "--deleted-jobs", "listed", "--max-job-ids",
        "7", "--seed", "9", "--duplicate-names", "accept",
    )  # fmt: skip
    assert (config.start_seconds, config.stop_seconds) == ((0.5, 3.0), (2.0, 2.0))
    assert (config.savepoint_seconds, config.fail_after_seconds) == ((0.0, 0.1), (4.0, 4.0))
    assert (config.submit_fail, config.fail_after_run) == (0.05, 0.1)
    assert (config.drop_after_run, config.error_504_after_run) == (0.2, 0.3)
    assert (config.drop_after_stop, config.error_504_after_stop) == (0.4, 0.5)
    assert (config.drop_after_update, config.error_504_after_update) == (0.6, 0.7)
    modes = (config.run_running, config.update_running, config.unknown_job_ids)
    assert modes == ("accept", "accept", "error")
    assert (config.deleted_jobs, config.max_job_ids, config.seed) == ("listed", 7, 9)
    assert config.duplicate_names == "accept"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--start-seconds", "2-1"], "expected S or MIN-MAX seconds, got '2-1'"),
        (["--stop-seconds", "soon"], "expected S or MIN-MAX seconds, got 'soon'"),
        (["--submit-fail", "1.5"], "expected a probability from 0 to 1, got '1.5'"),
        (["--fail-5xx", "x"], "expected a probability from 0 to 1, got 'x'"),
        (["--max-job-ids", "0"], "expected a whole number of at least 1, got '0'"),
        (["--run-running", "maybe"], "invalid choice: 'maybe'"),
    ],
)
def test_bad_flags_are_refused_by_name(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parsed(*flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and message in err


@pytest.mark.parametrize(
    "fields",
    [{"start_seconds": (2.0, 1.0)}, {"stop_seconds": (-1.0, 1.0)}, {"max_job_ids": 0}],
)
def test_config_refuses_bad_life_cycle_values(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        SimulatorConfig(**fields)


def _call(url: str, method: str = "GET", body: object = None) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("X-Auth-Token", TOKEN)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.mark.slow
def test_a_simulator_process_serves_the_life_cycle_and_its_stats(tmp_path: Path) -> None:
    port = free_port()
    proc = start_batchsub(
        "simulator", "--port", str(port), "--project-id", PROJECT, "--start-seconds", "0.1-0.3",
        "--submit-fail", "0.5", "--run-running", "accept", "--max-job-ids", "5", "--seed", "3",
        log=tmp_path / "sim.log",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    jobs = f"{base}/v1.0/{PROJECT}/streaming"
    try:

        def answering() -> bool:
            assert proc.poll() is None, (tmp_path / "sim.log").read_text()
            try:
                return _call(f"{base}/_simulator/stats")[0] == 200
            except OSError:
                return False

        wait_for("the simulator to answer", answering, timeout=15)
        ids = []
        for index in range(6):
            body = {"name": f"job-{index}", "queue_name": "q1"}
            ids.append(_call(f"{jobs}/flink-jobs", "POST", body)[1]["job"]["job_id"])
        status, answer = _call(f"{jobs}/jobs/run", "POST", {"job_ids": ids})
        assert (status, answer["error_code"]) == (400, "DLI.0001")  # over --max-job-ids
        status, answer = _call(f"{jobs}/jobs/run", "POST", {"job_ids": ids[:5]})
        assert [item["is_success"] for item in answer] == ["true"] * 5

        def settled() -> bool:
            listed = _call(f"{jobs}/jobs?status=job_submitting")[1]["job_list"]
            return bool(listed["total_count"] == 0)

        wait_for("every start to end", settled, timeout=10)
        running = _call(f"{jobs}/jobs?status=job_running")[1]["job_list"]["jobs"]
        _, again = _call(f"{jobs}/jobs/run", "POST", {"job_ids": [running[0]["job_id"]]})
        assert again[0]["is_success"] == "true"  # --run-running accept
        _, stats = _call(f"{base}/_simulator/stats")
        assert stats["totals"]["runs_while_running"] == 1
        statuses = stats["statuses"]
        assert set(statuses) <= {"job_running", "job_submit_fail", "job_init"}
        assert statuses.get("job_submit_fail", 0) == stats["faults"].get("submit_fail", 0) > 0
        assert statuses["job_init"] == 1
        assert stats["totals"]["runs"] == 5
        assert stats["calls"]["create"] == 6 and stats["calls"]["run"] == 3
    finally:
        stop(proc, signal.SIGTERM)
