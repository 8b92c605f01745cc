"""Where a report goes, as a user names it: ``-``, symlinks, devices; and a report that cannot be
written (full disk, read-only folder, a folder in the way): one line, the summary, exit 2."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.fs_support import full_disk, unwritable
from tests.process_support import run_batchsub
from tests.support import write_manifests

pytestmark = pytest.mark.slow


def run(
    tmp_path: Path, *extra: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_batchsub(
        "run", "m", "--simulator", "--progress", "off", "--rate", "0", *extra, cwd=tmp_path, env=env
    )


def error_line(stderr: str) -> str:
    """The one ``batchsub: error:`` line of a run's stderr (there must be exactly one)."""
    lines = [line for line in stderr.splitlines() if line.startswith("batchsub: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def created(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as db:
        (count,) = db.execute("SELECT count(*) FROM jobs WHERE state = 'created'").fetchone()
    return int(count)


def test_report_to_dash_and_through_links_to_stdout_leaves_stdout_json(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 3)
    (tmp_path / "out-link").symlink_to("/proc/self/fd/1")  # what /dev/stdout leads to
    for named in ("-", "out-link"):
        result = run(tmp_path, "--report", named)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)  # the report alone: the summary went to stderr
        assert report["summary"]["total"] == 3
        assert "total\t3\n" in result.stderr  # the summary, plain, on stderr
    assert (tmp_path / "out-link").is_symlink()


def test_report_through_a_symlink_keeps_the_symlink(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 2)
    (tmp_path / "reports").mkdir()
    (tmp_path / "latest.json").symlink_to("reports/2024.json")
    result = run(tmp_path, "--report", "latest.json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "latest.json").is_symlink()
    assert json.loads((tmp_path / "reports" / "2024.json").read_text())["summary"]["total"] == 2

    for named in ("latest.json", "-"):
        out = run_batchsub("report", "--format", "csv", "--output", named, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "latest.json").is_symlink()
    assert (tmp_path / "reports" / "2024.json").read_text() == out.stdout
    assert out.stdout.startswith("project_id,source,name,outcome")


def test_a_full_disk_at_the_end_is_one_line_with_the_summary_and_exit_2(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 300)
    with full_disk(tmp_path / "disk", size_kib=64) as disk:
        result = run(tmp_path, "--report", disk / "r.json")
        left = sorted(os.listdir(disk))
    assert result.returncode == 2, result.stderr
    assert error_line(result.stderr) == (
        f"batchsub: error: --report {disk / 'r.json'}: cannot write it: No space left on device"
    )
    assert re.search(r"^created\t300$", result.stdout, re.M)  # the summary, still printed
    assert left == ["filler"]  # no half report, no temporary file
    assert created(tmp_path / "batchsub.db") == 300


def test_a_full_temporary_folder_is_one_line_with_the_summary_and_exit_2(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 300)
    # 8 KiB free: Python's tempfile takes the folder (its probe fits), the rows do not.
    with full_disk(tmp_path / "tmp", size_kib=64, free_kib=8) as tmp:
        result = run(tmp_path, "--report", "r.json", env={"TMPDIR": str(tmp)})
    assert result.returncode == 2, result.stderr
    assert "cannot write it: No space left on device" in error_line(result.stderr)
    assert re.search(r"^created\t300$", result.stdout, re.M)
    assert not (tmp_path / "r.json").exists()


def test_a_report_that_cannot_be_written_at_all_stops_the_run_before_it_sends(
    tmp_path: Path,
) -> None:
    write_manifests(tmp_path / "m", 2)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "locked").mkdir()
    cases = {
        "a-folder": "--report a-folder: cannot write it: Is a directory",
        "nowhere/r.json": "--report nowhere/r.json: directory",
        "locked/r.json": "--report locked/r.json: cannot write it: ",
    }
    with unwritable(tmp_path / "locked"):
        for named, expected in cases.items():
            result = run(tmp_path, "--report", named)
            assert result.returncode == 2, result.stderr
            assert expected in error_line(result.stderr)
    assert created(tmp_path / "batchsub.db") == 0
