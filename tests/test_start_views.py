"""What status, report --format csv and plan --start show of starts, after a real run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from batchsub.commands.plan import plan_rows
from batchsub.commands.report import REPORT_FIELDS, write_ledger_report
from batchsub.commands.status import failure_row, ledger_status
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.lifecycle.start_rules import StartOptions
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.sources.directory import DirectorySource
from tests.run_support import settings_for
from tests.support import PROJECT, SimulatorFactory, write_manifests


async def test_status_csv_and_plan_show_the_starts_of_a_run(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(start_seconds=(0.1, 0.1), submit_fail=0.5, seed=4)
    folder = tmp_path / "m"
    write_manifests(folder, 6)
    settings = settings_for(sim.url, tmp_path, start=True, wait=True, healthy_for=0.2)
    assert await run_source(settings, DirectorySource(folder), RunAccount()) == 1
    failed = {job.name for job in sim.store.jobs if job.status == "job_submit_fail"}
    assert 0 < len(failed) < 6
    write_manifests(folder, 1, prefix="new")
    ledger_path = Path(settings.ledger)

    out = io.StringIO()
    await write_ledger_report(SqliteLedger(ledger_path, read_only=True), PROJECT, "csv", out)
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(out.getvalue()))}
    assert list(csv.DictReader(io.StringIO(out.getvalue())).fieldnames or []) == list(REPORT_FIELDS)
    for name, row in rows.items():
        if name in failed:
            assert (row["start_state"], row["status"]) == ("start_failed", "job_submit_fail")
            assert "simulated fault" in row["start_error"]
        else:
            assert (row["start_state"], row["status"]) == ("started", "job_running")
            assert row["started_at"] <= row["running_at"] and row["start_attempts"] == "1"

    status = await ledger_status(SqliteLedger(ledger_path, read_only=True), PROJECT, 10)
    assert status.starts == {"started": 6 - len(failed), "start_failed": len(failed)}
    assert status.statuses == {"job_running": 6 - len(failed), "job_submit_fail": len(failed)}
    assert {failure_row(r)["start_state"] for r in status.failures} == {"start_failed"}

    async with SqliteLedger(ledger_path, read_only=True) as ledger:
        plan = {
            row.name: row
            async for row in plan_rows(
                DirectorySource(folder).items(), ledger, PROJECT, None, rules=StartOptions()
            )
        }
        again = {
            row.name: row.start
            async for row in plan_rows(
                DirectorySource(folder).items(),
                ledger,
                PROJECT,
                None,
                rules=StartOptions(retry_failed=True),
            )
        }
    assert plan["new-00000"].start == "start"  # to be created: started once it exists
    for name in failed:
        assert plan[name].start == "failed_before" and "simulated fault" in plan[name].start_detail
        assert again[name] == "start"  # retry --start
    assert {plan[n].start for n in rows if n not in failed} == {"active"}
