"""Property: any change set, any lost answers, a crash after any ledger write, then a rerun:
every job holds its manifest, every running job runs again, none created twice, none stopped
twice (or savepointed twice) for one change, no PUT refused for a running job."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchsub.jobs import UpdateStep
from batchsub.ledgers.memory_update import MemoryUpdateLedger
from tests.apply_support import make_jobs, plan, server_body, updater
from tests.lifecycle_support import rig

CHANGES: list[dict[str, Any]] = [
    {},
    {"cu_number": 4},
    {"smn_topic": "b"},
    {"cu_number": 3, "smn_topic": "c"},
    {"parallel_number": 2, "restart_when_exception": True},
    {"resume_max_num": 5, "checkpoint_path": "b/ck"},
]


class Crash(Exception):
    """The process dies after a ledger write."""


schedules = st.fixed_dictionaries(
    {
        "changes": st.lists(st.sampled_from(range(len(CHANGES))), min_size=1, max_size=8),
        "running": st.lists(st.booleans(), min_size=8, max_size=8),
        "crash_at": st.integers(min_value=0, max_value=30),
        "drop_update": st.sampled_from([0.0, 0.3]),
        "drop_stop": st.sampled_from([0.0, 0.3]),
        "drop_run": st.sampled_from([0.0, 0.3]),
        "seed": st.integers(min_value=0, max_value=1000),
        "batch_size": st.sampled_from([1, 3, 100]),
    }
)


async def check(s: dict[str, Any]) -> None:
    faults = {
        "drop_after_update": s["drop_update"],
        "drop_after_stop": s["drop_stop"],
        "drop_after_run": s["drop_run"],
    }
    async with rig(update_running="reject", seed=s["seed"], **faults) as r:
        count = len(s["changes"])
        running = await make_jobs(r, count, prefix="run")
        stopped_ids = [j for j, up in zip(running, s["running"], strict=False) if not up]
        for job in stopped_ids:  # some jobs are stopped before the change
            await r.client.stop_jobs([job.job_id])
        r.clock.now += 3.0
        was_running = {j.name: r.status(j.job_id) == "job_running" for j in running}
        manifests = {
            j.name: {**j.body, **CHANGES[c]} for j, c in zip(running, s["changes"], strict=True)
        }
        writes = 0

        def crash(what: str, steps: Sequence[UpdateStep]) -> None:
            nonlocal writes
            writes += 1
            if writes == s["crash_at"]:
                raise Crash(what)

        ledger = MemoryUpdateLedger(clock=r.clock, on_write=crash)
        for _ in range(4):  # the run, then reruns until nothing is left
            work, _ = await plan(r, ledger, running, manifests)
            if not work:
                break
            try:
                await updater(r, ledger, batch_size=s["batch_size"]).update(work)
            except (Crash, ExceptionGroup):
                pass
            r.clock.now += 1.0
        work, decisions = await plan(r, ledger, running, manifests)
        assert work == [], decisions
        r.clock.now += 5.0
        for job in running:
            assert server_body(r, job.job_id) == manifests[job.name]
            status = r.status(job.job_id)
            assert (status == "job_running") == was_running[job.name], (job.name, status)
        assert r.sim.store.create_requests == count
        for row in r.stats()["jobs"]:
            assert row["updates_refused"] == 0, row
            assert row["runs_while_running"] == 0, row
            assert row["savepoints"] <= 1, row
            assert row["stops"] <= 1 + (row["name"] in {j.name for j in stopped_ids}), row


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules)
def test_any_change_set_and_crash_ends_with_every_job_updated_once(
    schedule: dict[str, Any],
) -> None:
    asyncio.run(check(schedule))
