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
