"""The report's schema: versioned, shipped in the package, and what every run writes.

(Every report any test writes is also checked against it, by an autouse fixture of
``conftest.py``.)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsub import __version__
from batchsub.jobs import JobResult, Outcome
from batchsub.model import error_field
from batchsub.report import SCHEMA_VERSION, RunAccount, job_row
from batchsub.runner import run_source
from batchsub.sources.directory import DirectorySource
from tests.schema_support import SCHEMA, report_problems, schema_errors
from tests.support import PROJECT, REPO, SimulatorFactory, fast_settings, write_manifests


def test_the_schema_names_every_outcome_and_every_summary_field() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    outcomes = SCHEMA["$defs"]["outcome"]["enum"]
    assert outcomes == [outcome.value for outcome in Outcome]
    summary = SCHEMA["$defs"]["summary"]
    assert set(outcomes) <= set(summary["required"])
    assert set(RunAccount().summary()) <= set(summary["required"])
    assert summary["properties"]["schema_version"] == {
        "description": "The shape of this report.",
        "const": SCHEMA_VERSION,
    }
    assert "additive" in SCHEMA["description"] and "held" in SCHEMA["description"]


async def test_a_run_report_names_version_target_and_each_jobs_cause(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(known_queues=frozenset({"testQueue"}))
    folder = tmp_path / "m"
    write_manifests(folder, 2)
    write_manifests(folder, 1, prefix="nowhere", queue_name="noSuchQueue")
    (folder / "typed.json").write_text('{"name": "typed", "cu_number": "2"}')
    (folder / "tags.yaml").write_text("- name: t0\n  tags: [{key: k}]\n- name: t1\n")
    (folder / "broken.json").write_text("{not json")
    report = tmp_path / "r.json"
    settings = fast_settings(sim.url, tmp_path / "ledger.db")

    # run_source, not run_directory: that one configures logging for the whole process.
    assert await run_source(settings, DirectorySource(folder), RunAccount(report)) == 1

    written = json.loads(report.read_text())
    assert schema_errors(written) == []
    summary = written["summary"]
    assert summary["schema_version"] == 2
    assert summary["batchsub_version"] == __version__
    assert (summary["project_id"], summary["endpoint"]) == (PROJECT, sim.url)
    rows = {row["name"] or Path(row["source"]).name: row for row in written["jobs"]}
    causes = {
        name: (row["outcome"], row["error_code"], row["http_status"], row["field"])
        for name, row in rows.items()
    }
    assert causes == {
        "job-00000": ("created", None, None, None),
        "job-00001": ("created", None, None, None),
        "t1": ("created", None, None, None),
        "nowhere-00000": ("failed", "DLI.0002", 400, None),
        "typed": ("invalid", None, None, "cu_number"),
        "t0": ("invalid", None, None, "tags[0].value"),
        "broken.json": ("invalid", None, None, None),
    }


def test_the_endpoint_is_shown_with_its_password_masked(tmp_path: Path) -> None:
    account = RunAccount(tmp_path / "r.json")
    account.set_target("p1", "https://bob:s3cret@dli.example.com")
    account.write_report(account.summary(exit_code=0))
    text = (tmp_path / "r.json").read_text()
    assert "s3cret" not in text
    summary = json.loads(text)["summary"]
    assert summary["endpoint"] == "https://bob:***@dli.example.com"
    assert summary["project_id"] == "p1"


def test_every_outcome_writes_a_row_the_schema_accepts(tmp_path: Path) -> None:
    account = RunAccount(tmp_path / "r.json")
    account.set_target(PROJECT, "http://127.0.0.1:1")
    for outcome in Outcome:
        extra: dict[str, Any] = {}
        if outcome is Outcome.DUPLICATED:
            extra = {"job_id": 7, "duplicate_job_ids": [8, 9]}
        if outcome is Outcome.INVALID:
            extra = {
                "error": "m/x.json: cu_number: expected an integer",
                "error_field": "cu_number",
            }
        if outcome is Outcome.DRIFTED:
            extra = {"job_id": 3, "drift": ["desc"]}
        account.add(JobResult(f"m/{outcome}.json", outcome.value, outcome, **extra))
    account.write_report(account.summary(exit_code=1, fatal=None))
    written = json.loads((tmp_path / "r.json").read_text())
    assert schema_errors(written) == []
    assert {row["outcome"] for row in written["jobs"]} == {o.value for o in Outcome}


def _good_report() -> dict[str, Any]:
    """A report of one created job, as written."""
    account = RunAccount()
    result = JobResult("m/a.json", "a", Outcome.CREATED, job_id=1, attempts=1)
    account.add(result)
    return {"summary": account.summary(exit_code=0), "jobs": [job_row(result)]}


@pytest.mark.parametrize(
    ("where", "change", "complaint"),
    [
        ("summary", lambda s: s.pop("schema_version"), "'schema_version' is a required property"),
        ("summary", lambda s: s.update(schema_version=1), "2 was expected"),
        ("summary", lambda s: s.pop("duplicated"), "'duplicated' is a required property"),
        ("summary", lambda s: s.update(endpoint="dli.example.com"), "does not match"),
        ("job", lambda j: j.update(outcome="vanished"), "'vanished' is not one of"),
        ("job", lambda j: j.update(field="cu_number"), "is not of type 'null'"),
        ("job", lambda j: j.update(http_status="400"), "is not of type 'integer', 'null'"),
        ("job", lambda j: j.pop("error_code"), "'error_code' is a required property"),
        ("job", lambda j: j.update(extra=1), "Additional properties are not allowed"),
        (
            "job",
            lambda j: j.update(outcome="duplicated", job_id=1, duplicate_job_ids=[]),
            "should be non-empty",
        ),
    ],
)
def test_the_schema_refuses_a_report_of_another_shape(
    where: str, change: Any, complaint: str
) -> None:
    report = _good_report()
    assert schema_errors(report) == []
    broken = copy.deepcopy(report)
    change(broken["summary"] if where == "summary" else broken["jobs"][0])
    errors = schema_errors(broken)
    assert errors and any(complaint in error for error in errors), errors


@pytest.mark.parametrize(
    ("error", "field"),
    [
        ('m/a.json: cu_number: expected an integer, got a string ("2")', "cu_number"),
        ("m/a.json#3: tags[0].key: required field is missing", "tags[0].key"),
        (
            "m/a.json: resource_config.max_slot: must be at least 1 (got 0)",
            "resource_config.max_slot",
        ),
        ('m/a.json: "odd: key": unknown field (not in the DLI create API)', '"odd: key"'),
        ('m/a.json: name: duplicate job name "x" (first defined in m/b.json)', "name"),
        ("m/a.json: (top level): expected an object", None),
        ("m/a.json: invalid JSON at line 1, column 2: Expecting value", None),
        ("m/a.json: empty file", None),
        ("m/a.json: cannot read: dangling symlink (its target old.json does not exist)", None),
        ("other.json: cu_number: expected an integer", None),  # not this source's error
    ],
)
def test_the_field_is_the_first_one_the_error_names(error: str, field: str | None) -> None:
    source = "m/a.json#3" if "#3" in error else "m/a.json"
    assert error_field(source, error) == field


def test_the_check_finds_every_report_that_breaks_the_schema(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Outside tmp_path: the autouse check of this very test must not see the bad reports.
    root = tmp_path_factory.mktemp("scan")
    good = _good_report()
    (root / "good.json").write_bytes(orjson.dumps(good))
    (root / "deep" / "er").mkdir(parents=True)
    bad = copy.deepcopy(good)
    del bad["summary"]["schema_version"]
    (root / "deep" / "er" / "out").write_bytes(orjson.dumps(bad))  # any name
    (root / "cut.json").write_bytes(orjson.dumps(good)[:40])
    (root / "other.json").write_bytes(b'{"jobs": []}')  # `batchsub report`: no summary
    os.mkfifo(root / "fifo.json")  # never opened: it would block
    (root / "link.json").symlink_to(root / "deep" / "er" / "out")

    problems = report_problems(root)

    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{root}/cut.json: starts as a report but is not JSON")
    assert "'schema_version' is a required property" in problems[1]
    assert problems[1].startswith(f"{root}/deep/er/out: ")


@pytest.mark.slow
def test_the_schema_ships_in_the_wheel(tmp_path: Path) -> None:
    # Built from a copy of what the image's build context holds, so the tree stays clean.
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(
        REPO / "batchsub", context / "batchsub", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            str(context),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("batchsub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = json.loads(archive.read("batchsub/schemas/report.schema.json"))
    assert shipped == SCHEMA
