"""The issue's Done-when trial, as a new user would try it: real ``batchsub`` processes
against a simulator process that refuses non-in-place changes to running jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.pg import fresh_database, postgres_listening
from tests.process_support import (
    get_json,
    remote_jobs,
    run_batchsub,
    simulator_process,
    start_batchsub,
    stop,
    wait_for,
)
from tests.support import PROJECT, TOKEN

QUICK = ("--start-seconds", "0.3", "--savepoint-seconds", "0.2", "--stop-seconds", "0.2")


def post(endpoint: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"{endpoint}/v1.0/{PROJECT}/streaming{path}",
        data=orjson.dumps(body),
        headers={"X-Auth-Token": TOKEN, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return orjson.loads(answer.read())


def stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_simulator/stats", timeout=5) as answer:
        found: dict[str, Any] = orjson.loads(answer.read())
        return found


def statuses(endpoint: str) -> dict[str, str]:
    url = f"{endpoint}/v1.0/{PROJECT}/streaming/jobs?limit=100&order=asc"
    return {job["name"]: job["status"] for job in get_json(url)["job_list"]["jobs"]}


def write(folder: Path, index: int, **fields: Any) -> None:
    name = f"job-{index:03d}"
    body = {"name": name, "queue_name": "q1", "cu_number": 2, "smn_topic": "a", **fields}
    (folder / f"{name}.json").write_bytes(orjson.dumps(body))


@contextlib.contextmanager
def ledger_for(kind: str, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or a fresh database of the real PostgreSQL server."""
    if kind == "sqlite":
        yield str(tmp_path / "l.db")
        return
    if not postgres_listening():
        pytest.skip("no PostgreSQL server listens")
    loop = asyncio.new_event_loop()
    database = fresh_database()
    try:
        yield loop.run_until_complete(database.__aenter__())
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_forty_running_jobs_ten_new_cu_five_new_topics(tmp_path: Path, ledger: str) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    for index in range(40):
        write(folder, index)
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN}
    with (
        ledger_for(ledger, tmp_path) as spec,
        simulator_process(tmp_path / "sim.log", "--update-running", "reject", *QUICK) as url,
    ):
        common = ("--endpoint", url, "--project-id", PROJECT, "--ledger", spec)
        done = run_batchsub("run", folder, *common, "--rate", "0", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        ids = [job_id for _, job_id in remote_jobs(url)]
        assert len(ids) == 40
        post(url, "/jobs/run", {"job_ids": ids, "resume_savepoint": False})
        time.sleep(1.0)
        assert set(statuses(url).values()) == {"job_running"}
        for index in range(10):
            write(folder, index, cu_number=4)
        for index in range(10, 15):
            write(folder, index, smn_topic="b")

        plan = run_batchsub("plan", folder, *common, "--savepoint", env=env, cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
        lines = [line for line in plan.stdout.splitlines() if "cu_number: 2 -> 4" in line]
        assert len(lines) == 10, plan.stdout
        assert all("update" in line for line in lines)
        plan_json = run_batchsub("plan", folder, *common, "--json", env=env, cwd=tmp_path)
        rows = {row["name"]: row for row in json.loads(plan_json.stdout)["jobs"]}
        assert rows["job-000"]["changes"] == [
            {"field": "cu_number", "old": 2, "new": 4, "how": "restart_if_running"}
        ]
        assert rows["job-010"]["changes"] == [
            {"field": "smn_topic", "old": "a", "new": "b", "how": "in_place"}
        ]
        assert json.loads(plan_json.stdout)["counts"]["update"] == 15

        report = tmp_path / "apply.json"
        applied = run_batchsub(
            "apply", folder, *common, "--savepoint", "--wait", "--healthy-for", "0.5",
            "--report", report, "--rate", "0", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        written = json.loads(report.read_text())
        summary = written["summary"]
        assert (summary["updated"], summary["created"], summary["already_created"]) == (15, 0, 25)
        assert (summary["running"], summary["start_failed"], summary["timed_out"]) == (40, 0, 0)
        assert {row["health"] for row in written["jobs"]} == {"healthy"}
        assert summary["update_calls"] == 15
        by_name = {row["name"]: row for row in written["jobs"]}
        assert by_name["job-000"]["changes"] == [
            {"field": "cu_number", "old": 2, "new": 4, "how": "restart"}
        ]
        assert by_name["job-010"]["changes"][0]["how"] == "in_place"
        totals = stats(url)["totals"]
        assert totals["stops"] == totals["savepoints"] == totals["resumes"] == 10
        assert (totals["updates"], totals["updates_refused"], totals["runs_while_running"]) == (
            15, 0, 0,
        )  # fmt: skip
        assert stats(url)["create_requests"] == 40
        time.sleep(1.0)
        assert set(statuses(url).values()) == {"job_running"}
        jobs = {row["name"]: row for row in stats(url)["jobs"]}
        assert all(jobs[f"job-{i:03d}"]["savepoint_path"] for i in range(10))

        again = run_batchsub("apply", folder, *common, "--savepoint", env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        after = stats(url)
        assert after["totals"] == totals and after["create_requests"] == 40  # nothing sent


@pytest.mark.parametrize(
    ("counter", "at"),
    [("stops", 1), ("updates", 30), ("resumes", 1)],  # killed while stopping, updating, starting
)
def test_apply_killed_mid_way_and_run_again_updates_each_job_once(
    tmp_path: Path, counter: str, at: int
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    count = 150
    for index in range(count):
        write(folder, index)
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN}
    with simulator_process(tmp_path / "sim.log", "--update-running", "reject", *QUICK) as url:
        common = (
            "--endpoint", url, "--project-id", PROJECT, "--ledger", tmp_path / "l.db",
            "--in-doubt-grace", "0.5",
        )  # fmt: skip
        done = run_batchsub("run", folder, *common, "--rate", "0", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        ids = [job_id for _, job_id in remote_jobs(url)]
        for start in range(0, count, 100):
            post(url, "/jobs/run", {"job_ids": ids[start : start + 100]})
        time.sleep(1.0)
        for index in range(count):  # two in three restart, the rest in place
            write(folder, index, **({"cu_number": 4} if index % 3 else {"smn_topic": "b"}))

        proc = start_batchsub(
            "apply", str(folder), *map(str, common), "--savepoint", "--rate", "25",
            log=tmp_path / "apply1.log",
        )  # fmt: skip
        try:
            wait_for(counter, lambda: stats(url)["totals"][counter] >= at, 15)
        finally:
            stop(proc)  # SIGKILL
        assert proc.returncode == -signal.SIGKILL
        killed_at = stats(url)["totals"]
        assert killed_at["updates"] < count or counter == "resumes"  # mid-way

        again = run_batchsub(
            "apply", folder, *common, "--savepoint", "--rate", "0", "--report",
            tmp_path / "r.json", env=env, cwd=tmp_path,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        time.sleep(1.0)
        after = stats(url)
        assert after["create_requests"] == count and after["totals"]["updates_refused"] == 0
        for row in after["jobs"]:
            assert row["stops"] <= 1 and row["savepoints"] <= 1, row
            assert row["runs_while_running"] == 0 and row["status"] == "job_running", row
        restarted = [row for row in after["jobs"] if int(row["name"][4:]) % 3]
        assert all(row["savepoints"] == 1 and row["resumes"] == [row["savepoint_path"]]
                   for row in restarted)  # fmt: skip
        for page in range(0, count, 100):
            listed = get_json(
                f"{url}/v1.0/{PROJECT}/streaming/jobs?limit=100&offset={page}&order=asc"
                "&show_detail=true"
            )["job_list"]["jobs"]
            for job in listed:
                config, index = job["job_config"], int(job["name"][4:])
                assert (config["cu_number"], config["smn_topic"]) == (
                    (4, "a") if index % 3 else (2, "b")
                ), job["name"]
        third = run_batchsub("apply", folder, *common, "--savepoint", env=env, cwd=tmp_path)
        assert third.returncode == 0 and stats(url)["totals"] == after["totals"]


def test_prune_deletes_only_the_orphans_batchsub_made_after_listing_them(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    for index in range(6):
        write(folder, index)
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN}
    with simulator_process(tmp_path / "sim.log", *QUICK) as url:
        common = ("--endpoint", url, "--project-id", PROJECT, "--ledger", tmp_path / "l.db")
        done = run_batchsub("run", folder, *common, "--rate", "0", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        by_name = dict(remote_jobs(url))
        post(url, "/jobs/run", {"job_ids": [by_name["job-000"], by_name["job-001"]]})
        # A job of someone else's, in no manifest: never batchsub's to delete.
        post(url, "/flink-jobs", {"name": "not-ours", "queue_name": "q1"})
        (folder / "job-000.json").unlink()  # running
        (folder / "job-005.json").unlink()  # never started
        time.sleep(0.6)

        plan = run_batchsub("plan", folder, *common, "--json", env=env, cwd=tmp_path)
        orphaned = [r["name"] for r in json.loads(plan.stdout)["jobs"] if r["action"] == "orphaned"]
        assert sorted(orphaned) == ["job-000", "job-005"]
        dry = run_batchsub("apply", folder, *common, "--prune", "--dry-run", env=env, cwd=tmp_path)
        assert dry.returncode == 0 and "orphaned" in dry.stdout
        assert len(remote_jobs(url)) == 7  # the dry run deleted nothing

        report = tmp_path / "r.json"
        pruned = run_batchsub(
            "apply", folder, *common, "--prune", "--report", report, env=env, cwd=tmp_path
        )
        assert pruned.returncode == 0, pruned.stderr
        assert "--prune: stopping and deleting 2 job(s)" in pruned.stderr
        assert "job-000 (job " in pruned.stderr and "job-005 (job " in pruned.stderr
        rows = {row["name"]: row for row in json.loads(report.read_text())["jobs"]}
        assert rows["job-000"]["outcome"] == rows["job-005"]["outcome"] == "pruned"
        assert json.loads(report.read_text())["summary"]["pruned"] == 2
        left = {name for name, _ in remote_jobs(url)}
        assert left == {"job-001", "job-002", "job-003", "job-004", "not-ours"}
        jobs = {row["job_id"]: row for row in stats(url)["jobs"]}
        assert jobs[by_name["job-000"]]["deleted"] and jobs[by_name["job-000"]]["stops"] == 1

        again = run_batchsub("apply", folder, *common, "--prune", env=env, cwd=tmp_path)
        assert again.returncode == 0 and "--prune" not in again.stderr, again.stderr
        plan = run_batchsub("plan", folder, *common, "--json", env=env, cwd=tmp_path)
        assert json.loads(plan.stdout)["counts"]["orphaned"] == 0


def test_plan_check_remote_shows_a_change_made_by_hand_and_how_apply_updates(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    for index in range(3):
        write(folder, index)
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN}
    with simulator_process(tmp_path / "sim.log", *QUICK) as url:
        common = ("--endpoint", url, "--project-id", PROJECT, "--ledger", tmp_path / "l.db")
        done = run_batchsub("run", folder, *common, "--rate", "0", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        ids = dict(remote_jobs(url))
        post(url, "/jobs/run", {"job_ids": [ids["job-000"], ids["job-001"]]})
        request = urllib.request.Request(  # a change by hand, in the console
            f"{url}/v1.0/{PROJECT}/streaming/flink-jobs/{ids['job-002']}",
            data=orjson.dumps({"cu_number": 8}),
            headers={"X-Auth-Token": TOKEN, "Content-Type": "application/json"},
            method="PUT",
        )
        urllib.request.urlopen(request, timeout=5).close()
        write(folder, 0, cu_number=4)
        time.sleep(0.6)
        local = run_batchsub("plan", folder, *common, "--json", env=env, cwd=tmp_path)
        rows = {row["name"]: row for row in json.loads(local.stdout)["jobs"]}
        assert rows["job-002"]["action"] == "already_created"  # the ledger cannot see it
        checked = run_batchsub(
            "plan", folder, *common, "--json", "--check-remote", "--savepoint",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        rows = {row["name"]: row for row in json.loads(checked.stdout)["jobs"]}
        assert rows["job-002"]["action"] == "drifted"
        assert rows["job-002"]["remote_drift"] == [
            {"field": "cu_number", "server": 8, "batchsub": 2}
        ]
        assert rows["job-001"]["action"] == "already_created"  # defaults are no drift
        assert rows["job-000"]["action"] == "update"
        assert rows["job-000"]["changes"][0]["how"] == "restart"
        assert "cu_number: 2 -> 4 (restart with savepoint)" in rows["job-000"]["detail"]


def test_a_job_deleted_on_the_server_is_missing_and_created_again_only_when_asked(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    for index in range(3):
        write(folder, index)
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN}
    with simulator_process(tmp_path / "sim.log", *QUICK) as url:
        common = ("--endpoint", url, "--project-id", PROJECT, "--ledger", tmp_path / "l.db")
        done = run_batchsub("run", folder, *common, "--rate", "0", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        gone = dict(remote_jobs(url))["job-001"]
        post(url, "/jobs/delete", {"job_ids": [gone]})
        report = tmp_path / "r.json"
        missing = run_batchsub("apply", folder, *common, "--report", report, env=env, cwd=tmp_path)
        assert missing.returncode == 1
        rows = {row["name"]: row for row in json.loads(report.read_text())["jobs"]}
        assert rows["job-001"]["outcome"] == "missing" and rows["job-001"]["job_id"] == gone
        assert stats(url)["create_requests"] == 3  # not created again
        again = run_batchsub(
            "apply", folder, *common, "--recreate-missing", "--report", report,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        rows = {row["name"]: row for row in json.loads(report.read_text())["jobs"]}
        assert rows["job-001"]["outcome"] == "created" and rows["job-001"]["job_id"] != gone
        assert stats(url)["create_requests"] == 4
        third = run_batchsub("apply", folder, *common, "--recreate-missing", env=env, cwd=tmp_path)
        assert third.returncode == 0 and stats(url)["create_requests"] == 4
