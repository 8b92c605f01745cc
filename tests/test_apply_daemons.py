"""``watch --apply``: a manifest dropped again with a change updates its job, and its file
goes to done/ (the real run path, a real drop folder, the simulator refusing non-in-place
changes to running jobs)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from batchsub.commands._parser import build_parser
from batchsub.commands.apply import applying
from batchsub.runner import run_source
from batchsub.sources.dropfolder import DropFolderSource
from tests.run_support import settings_for
from tests.support import SimulatorFactory, drop, eventually, job, names_in

QUICK = {
    "start_seconds": (0.1, 0.1),
    "savepoint_seconds": (0.1, 0.1),
    "stop_seconds": (0.1, 0.1),
    "update_running": "reject",
}


async def test_a_changed_manifest_dropped_again_updates_its_running_job(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**QUICK)
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.05, retry_delay=0.0)
    source.prepare()
    settings = settings_for(sim.url, tmp_path)
    report = tmp_path / "r.json"
    sent, account = applying(settings, source, report, savepoint=True)
    task = asyncio.create_task(run_source(settings, sent, account, endless=True))
    try:
        drop(inbox, "d.json", job("d", smn_topic="a"))
        await eventually(lambda: names_in(inbox / "done") == ["d.json"])
        [made] = sim.store.jobs
        made.enter("job_running")  # started by someone (or --start)
        drop(inbox, "d.json", job("d", cu_number=4, smn_topic="a"))
        await eventually(lambda: len(names_in(inbox / "done")) == 2, timeout=15)
        assert (made.body["cu_number"], made.counts.savepoints, made.counts.updates) == (4, 1, 1)
        drop(inbox, "d.json", job("d", cu_number=4, smn_topic="b"))  # in place, still running
        await eventually(lambda: len(names_in(inbox / "done")) == 3, timeout=15)
        assert made.body["smn_topic"] == "b" and made.counts.savepoints == 1
        await eventually(lambda: made.status == "job_running")
        drop(inbox, "d.json", job("d", cu_number=4, smn_topic="b"))  # the same again
        await eventually(lambda: len(names_in(inbox / "done")) == 4)
        assert made.counts.updates == 2 and made.counts.updates_refused == 0
    finally:
        source.stop()
        await asyncio.wait_for(task, 15)
        await source.close()
    assert len(sim.store.jobs) == 1
    rows = [row["outcome"] for row in json.loads(report.read_text())["jobs"]]
    assert rows == ["created", "updated", "updated", "already_created"]


def test_consume_takes_apply_too() -> None:
    args = build_parser(["consume"]).parse_args(["consume", "amqp://h", "--apply", "--savepoint"])
    assert (args.apply, args.savepoint) == (True, True)


async def test_an_update_left_by_a_crash_is_finished_before_a_newer_change(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    from batchsub.commands.apply import ApplyAccount, ApplyNotes, update_pass
    from batchsub.jobs import UpdateRecord, UpdateState, UpdateStep
    from batchsub.ledgers.sqlite import SqliteLedger
    from batchsub.sources.directory import DirectorySource
    from tests.apply_support import spec_of
    from tests.support import PROJECT, write_manifests

    sim = await simulator()
    folder = tmp_path / "m"
    write_manifests(folder, 1)  # job-00000, cu_number 2, not started
    settings = settings_for(sim.url, tmp_path)
    assert (
        await run_source(settings, DirectorySource(folder), ApplyAccount(None, ApplyNotes())) == 0
    )
    [made] = sim.store.jobs
    # A crash left an update to cu_number 3 planned (not sent); the manifest says 4 now.
    earlier = spec_of({"name": "job-00000", "queue_name": "testQueue", "cu_number": 3})
    put = earlier.body.replace(b'"name":"job-00000",', b"")
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        row = UpdateRecord("job-00000", made.job_id, UpdateState.PLANNED, earlier.body,
                           earlier.body_hash, put)  # fmt: skip
        assert await ledger.begin_update(PROJECT, [row]) == {"job-00000"}
        await ledger.record_update(PROJECT, [UpdateStep("job-00000", made.job_id,
                                                        UpdateState.PLANNED)])  # fmt: skip
    write_manifests(folder, 1, cu_number=4)

    async def apply_once() -> dict[str, object]:
        notes = await update_pass(settings, folder, savepoint=False)
        report = tmp_path / "r.json"
        await run_source(settings, DirectorySource(folder), ApplyAccount(report, notes))
        rows: dict[str, object] = json.loads(report.read_text())["jobs"][0]
        return rows

    first = await apply_once()
    assert (first["outcome"], made.body["cu_number"]) == ("unresolved", 3)
    second = await apply_once()
    assert (second["outcome"], made.body["cu_number"]) == ("updated", 4)
    assert made.counts.updates == 2 and len(sim.store.jobs) == 1
