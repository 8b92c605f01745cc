"""The run path end to end, in process: directory -> submitter -> HTTP -> simulator -> ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchsub.cli import main
from batchsub.jobs import Outcome
from batchsub.runner import run_directory
from tests.fs_support import odd_entries
from tests.http_support import Override, dli_list_or, is_list_call, proxying, serving
from tests.run_support import AK, SK, read_report, run_dir, settings_for
from tests.support import PROJECT, REPO, SimulatorFactory, write_manifests


async def test_creates_every_job_once_and_a_rerun_sends_nothing(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    names = write_manifests(tmp_path / "m", 300)
    settings = settings_for(sim.url, tmp_path)

    code, _ = await run_dir(settings, tmp_path / "m", tmp_path / "r1.json")
    assert code == 0
    assert sorted(job.name for job in sim.store.jobs) == names
    assert sim.store.duplicates() == {}
    report = read_report(tmp_path / "r1.json")
    assert report["summary"]["created"] == 300
    assert {row["outcome"] for row in report["jobs"]} == {"created"}
    assert all(isinstance(row["job_id"], int) for row in report["jobs"])

    sent_before = sim.store.create_requests
    code, _account = await run_dir(settings, tmp_path / "m", tmp_path / "r2.json")
    assert code == 0
    assert sim.store.create_requests == sent_before
    summary = read_report(tmp_path / "r2.json")["summary"]
    assert summary["already_created"] == 300
    assert summary["creates_sent"] == 0


async def test_api_example_request_arrives_unchanged(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    example = REPO / "examples" / "manifests" / "api-example.json"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "api-example.json").write_bytes(example.read_bytes())

    code, _ = await run_dir(settings_for(sim.url, tmp_path), folder)

    assert code == 0
    [job] = sim.store.jobs
    sent = json.loads(example.read_text())
    assert list(job.body.items()) == list(sent.items())


async def test_broken_manifests_are_reported_and_good_ones_still_created(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    folder = tmp_path / "mixed"
    good = write_manifests(folder, 5, prefix="good")
    broken = sorted((REPO / "examples" / "broken").iterdir())
    for path in broken:
        (folder / path.name).write_bytes(path.read_bytes())

    code, _account = await run_dir(settings_for(sim.url, tmp_path), folder, tmp_path / "r.json")

    assert code == 1
    assert sorted(job.name for job in sim.store.jobs) == good
    report = read_report(tmp_path / "r.json")
    invalid = [row for row in report["jobs"] if row["outcome"] == "invalid"]
    assert {Path(row["source"].split("#")[0]).name for row in invalid} == {p.name for p in broken}
    for row in invalid:
        assert row["error"] and Path(row["source"].split("#")[0]).name in row["error"]
    assert report["summary"]["invalid"] == len(invalid)


async def test_lost_answers_and_5xx_never_duplicate(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(
        drop_after_create=0.15, fail_5xx=0.2, error_504_after_create=0.05, dli0999=0.05, seed=7
    )
    names = write_manifests(tmp_path / "m", 120)

    code, account = await run_dir(settings_for(sim.url, tmp_path, max_attempts=30), tmp_path / "m")

    assert code == 0, account.first_errors
    assert sorted({job.name for job in sim.store.jobs}) == names
    assert sim.store.duplicates() == {}
    assert sim.store.faults  # the faults really happened
    assert account.adopted > 0  # some lost answers were found by name, not resent


async def test_existing_jobs_are_adopted_not_duplicated(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # The server silently accepts duplicate names: only batchsub can prevent them.
    sim = await simulator(duplicate_names="accept")
    names = write_manifests(tmp_path / "m", 10)
    for name in names[:4]:  # made by hand before batchsub ran
        sim.store.add(name, {"name": name}, 0, PROJECT)

    code, _account = await run_dir(
        settings_for(sim.url, tmp_path), tmp_path / "m", tmp_path / "r.json"
    )

    assert code == 0
    assert sim.store.duplicates() == {}
    assert len(sim.store.jobs) == 10
    rows = {row["name"]: row for row in read_report(tmp_path / "r.json")["jobs"]}
    for name in names[:4]:
        assert rows[name]["outcome"] == "already_created"
        assert rows[name]["adopted"] is True


async def test_duplicate_name_rejection_is_adopted(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(duplicate_names="reject")
    names = write_manifests(tmp_path / "m", 3)
    settings = settings_for(sim.url, tmp_path)
    await run_dir(settings, tmp_path / "m")
    # A second ledger knows nothing; the listing snapshot finds the jobs first.
    code, account = await run_dir(
        settings.model_copy(update={"ledger": str(tmp_path / "other.db")}), tmp_path / "m"
    )
    assert code == 0
    assert len(sim.store.jobs) == len(names)
    assert account.adopted == 3


async def test_wrong_token_stops_the_run_at_once(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    write_manifests(tmp_path / "m", 50)
    settings = settings_for(sim.url, tmp_path, auth_token="wrong-token", concurrency=4)

    code, _account = await run_dir(settings, tmp_path / "m", tmp_path / "r.json")

    assert code == 2
    assert sim.store.create_requests == 0  # the first list call already failed
    summary = read_report(tmp_path / "r.json")["summary"]
    assert "refused the credential" in summary["fatal"]
    assert summary["unresolved"] == 50
    assert "wrong-token" not in (tmp_path / "r.json").read_text()


async def test_permanent_failure_is_reported_and_not_retried(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(known_queues=frozenset({"testQueue"}))
    write_manifests(tmp_path / "m", 3)
    write_manifests(tmp_path / "m", 1, prefix="lost", queue_name="noSuchQueue")

    code, _account = await run_dir(
        settings_for(sim.url, tmp_path), tmp_path / "m", tmp_path / "r.json"
    )

    assert code == 1
    rows = {row["name"]: row for row in read_report(tmp_path / "r.json")["jobs"]}
    assert rows["lost-00000"]["outcome"] == "failed"
    assert "DLI.0002" in rows["lost-00000"]["error"]
    assert sim.store.requests_by_name["lost-00000"] == 1


async def test_changed_manifest_is_reported_as_drift(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    write_manifests(tmp_path / "m", 2)
    settings = settings_for(sim.url, tmp_path)
    await run_dir(settings, tmp_path / "m")
    path = tmp_path / "m" / "job-00001.json"
    body = orjson.loads(path.read_bytes())
    body["cu_number"] = 4
    path.write_bytes(orjson.dumps(body))

    code, _account = await run_dir(settings, tmp_path / "m", tmp_path / "r.json")

    assert code == 1
    rows = {row["name"]: row for row in read_report(tmp_path / "r.json")["jobs"]}
    assert rows["job-00001"]["outcome"] == "drifted"
    assert rows["job-00001"]["drift"] == ["cu_number"]
    assert len(sim.store.jobs) == 2


async def test_throttled_run_creates_each_job_once(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(rate_limit=40)
    names = write_manifests(tmp_path / "m", 60)

    code, _account = await run_dir(
        settings_for(sim.url, tmp_path, rate=200), tmp_path / "m", tmp_path / "r.json"
    )

    assert code == 0
    assert sorted(job.name for job in sim.store.jobs) == names
    summary = read_report(tmp_path / "r.json")["summary"]
    assert summary["throttled"] > 0
    assert summary["rate"] < 200


@pytest.mark.parametrize("auth", ["aksk", "token"])
async def test_no_secret_reaches_ledger_or_report(
    simulator: SimulatorFactory, tmp_path: Path, auth: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_token = "tok-secret-do-not-log-9876543210"
    sim = await simulator(tokens=frozenset({secret_token}), aksk={AK: SK}, fail_5xx=0.3, seed=3)
    write_manifests(tmp_path / "m", 20)
    creds: dict[str, Any] = (
        {"auth_token": secret_token}
        if auth == "token"
        else {"auth_token": None, "ak": AK, "sk": SK}
    )
    settings = settings_for(sim.url, tmp_path, **creds)

    code, _ = await run_dir(settings, tmp_path / "m", tmp_path / "r.json")

    assert code == 0
    captured = capsys.readouterr()
    for blob in (
        (tmp_path / "ledger.db").read_bytes(),
        (tmp_path / "r.json").read_bytes(),
        captured.out.encode(),
        captured.err.encode(),
    ):
        assert SK.encode() not in blob
        assert secret_token.encode() not in blob


async def test_a_redirected_create_stops_the_run_and_the_token_stays_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_manifests(tmp_path / "m", 20)
    async with serving(answer_created) as (elsewhere, received):
        target = f"{elsewhere}/v1.0/{PROJECT}/streaming/flink-jobs"

        async def redirect(request: web.Request) -> web.StreamResponse:
            return web.Response(status=307, headers={"Location": target})

        async with serving(dli_list_or(redirect)) as (url, seen):
            settings = settings_for(url, tmp_path, concurrency=4)
            code, _ = await run_dir(settings, tmp_path / "m", tmp_path / "r.json")
    assert code == 2
    assert received.requests == [] and not received.saw_header("X-Auth-Token")
    summary = read_report(tmp_path / "r.json")["summary"]
    assert target in summary["fatal"] and "redirect" in summary["fatal"]
    assert summary["unresolved"] == 20 and summary["created"] == 0
    assert sum(method == "POST" for method, _, _ in seen.requests) <= 4  # those in flight
    errors = [line for line in capsys.readouterr().err.splitlines() if "batchsub: error:" in line]
    assert len(errors) == 1 and target in errors[0]


async def answer_created(request: web.Request) -> web.StreamResponse:
    return web.json_response({"is_success": True, "job": {"job_id": 666}})


def html_page(request: web.Request) -> web.Response:
    return web.Response(text="<html>Sign in to the proxy</html>", content_type="text/html")


def bad_request(request: web.Request) -> web.Response:
    return web.json_response({"error_code": "DLI.0001", "error_msg": "odd"}, status=400)


def first_lists(count: int, odd: Callable[[web.Request], web.Response]) -> Override:
    """The first ``count`` list calls answered by ``odd``; every other request forwarded."""
    seen = [0]

    def override(request: web.Request) -> web.StreamResponse | None:
        if not is_list_call(request) or seen[0] >= count:
            return None
        seen[0] += 1
        return odd(request)

    return override


@pytest.mark.parametrize("odd", [html_page, bad_request])
async def test_an_unreadable_list_is_retried_and_existing_jobs_are_still_adopted(
    simulator: SimulatorFactory, tmp_path: Path, odd: Callable[[web.Request], web.Response]
) -> None:
    # The API accepts a second job of a name: only the listing keeps batchsub from making one.
    sim = await simulator(duplicate_names="accept")
    names = write_manifests(tmp_path / "m", 10)
    for name in names[:4]:
        sim.store.add(name, {"name": name}, 0, PROJECT)
    async with proxying(sim.url, first_lists(2, odd)) as (url, _):
        code, account = await run_dir(settings_for(url, tmp_path), tmp_path / "m")
    assert code == 0, account.first_errors
    assert sim.store.duplicates() == {}
    assert len(sim.store.jobs) == 10
    assert account.adopted == 4


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        (html_page, "the job list cannot be read: HTTP 200 with an HTML body (text/html"),
        (bad_request, "the job list cannot be read: DLI.0001 HTTP 400: odd"),
    ],
)
async def test_a_list_that_never_reads_creates_nothing_and_says_why(
    simulator: SimulatorFactory,
    tmp_path: Path,
    odd: Callable[[web.Request], web.Response],
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = await simulator(duplicate_names="accept")
    write_manifests(tmp_path / "m", 300)
    started = time.monotonic()
    async with proxying(sim.url, first_lists(10**6, odd)) as (url, seen):
        settings = settings_for(url, tmp_path, concurrency=64, backoff_base=0.5, backoff_max=30)
        code, _ = await run_dir(settings, tmp_path / "m", tmp_path / "r.json")
    assert time.monotonic() - started < 15
    assert code == 2
    assert sim.store.create_requests == 0
    assert len(seen.requests) <= 4  # one listing shared by every job, tried 4 times
    report = read_report(tmp_path / "r.json")
    assert reason in report["summary"]["fatal"]
    assert {row["outcome"] for row in report["jobs"]} == {"unresolved"}
    assert all(row["error"].startswith("not sent: ") for row in report["jobs"])
    assert all(reason in row["error"] for row in report["jobs"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "batchsub: error:" in line]
    assert len(errors) == 1 and reason in errors[0]
async def test_a_manifest_with_400000_problems_is_reported_in_seconds_in_a_bounded_report(
    simulator: SimulatorFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = await simulator()
    folder = tmp_path / "m"
    write_manifests(folder, 1, prefix="good")
    (folder / "bad.json").write_bytes(
        orjson.dumps({"name": "bad", "dependency_jars": [1] * 400_000})
    )

    started = time.monotonic()
    code, _ = await run_dir(settings_for(sim.url, tmp_path), folder, tmp_path / "r.json")
    elapsed = time.monotonic() - started

    assert code == 1
    assert [job.name for job in sim.store.jobs] == ["good-00000"]
    assert (tmp_path / "r.json").stat().st_size < 4096  # 40 MB before
    [row] = [r for r in read_report(tmp_path / "r.json")["jobs"] if r["outcome"] == "invalid"]
    assert row["error"].endswith("; and 399995 more problems")
    out = capsys.readouterr().out
    assert "and 399995 more problems" in out and len(out) < 4096
    assert elapsed < 20  # about 1.5 s; minutes before (the summary laid out a 20 MB line)


async def test_a_file_name_that_is_not_utf8_is_sent_and_shown_escaped(
    simulator: SimulatorFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = await simulator()
    folder = tmp_path / "m"
    write_manifests(folder, 1, prefix="good")
    (folder / os.fsdecode(b"caf\xe9.json")).write_bytes(orjson.dumps({"name": "odd-name"}))
    (folder / os.fsdecode(b"bad\xff.json")).write_bytes(b"{")
    settings = settings_for(sim.url, tmp_path, log_format="json")

    # The real run path: parsed in a child process, logs as JSON lines, the file index.
    code = await run_directory(settings, folder, tmp_path / "r.json", simulator=False)

    assert code == 1
    assert sorted(job.name for job in sim.store.jobs) == ["good-00000", "odd-name"]
    rows = {row["source"]: row for row in read_report(tmp_path / "r.json")["jobs"]}
    odd, bad = f"{folder}/caf\\xe9.json", f"{folder}/bad\\xff.json"
    assert rows[odd]["outcome"] == "created"
    assert rows[bad]["outcome"] == "invalid" and rows[bad]["error"].startswith(f"{bad}: invalid")
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
        assert ("odd-name", odd) in db.execute("SELECT name, source FROM jobs").fetchall()
    captured = capsys.readouterr()
    logged = [orjson.loads(line) for line in captured.err.splitlines()]
    assert any(e.get("source") == odd and e["event"] == "job.created" for e in logged)
    assert bad in captured.out  # the summary's first problems

    # A rerun takes the file from the index (by its escaped name) and sends nothing.
    code, account = await run_dir(settings, folder)
    assert code == 1 and account.counts[Outcome.ALREADY_CREATED] == 2
    assert len(sim.store.jobs) == 2
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["report", "--ledger", str(tmp_path / "ledger.db")]) == 0
    assert odd in {row["source"] for row in orjson.loads(capsys.readouterr().out)["jobs"]}


@pytest.mark.parametrize("progress", ["on", "off"])
async def test_unreadable_entries_end_the_same_with_and_without_the_progress_bar(
    simulator: SimulatorFactory, tmp_path: Path, progress: str
) -> None:
    sim = await simulator()
    folder = tmp_path / "m"
    write_manifests(folder, 2, prefix="good")
    problems = odd_entries(folder)
    settings = settings_for(sim.url, tmp_path, progress=progress)

    code = await run_directory(settings, folder, tmp_path / "r.json", simulator=False)

    assert code == 1
    assert sorted(job.name for job in sim.store.jobs) == ["good-00000", "good-00001"]
    report = read_report(tmp_path / "r.json")
    invalid = {
        Path(r["source"]).name: r["error"] for r in report["jobs"] if r["outcome"] == "invalid"
    }
    assert invalid == {name: f"{folder / name}: {problem}" for name, problem in problems.items()}
    assert report["summary"]["total"] == 5
