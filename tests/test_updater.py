"""The updater against the simulator refusing non-in-place changes to running jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from batchsub.jobs import UpdateState, UpdateStep
from batchsub.ledgers.memory_update import MemoryUpdateLedger
from batchsub.lifecycle.apply_plan import ApplyAction
from batchsub.lifecycle.updater import UpdateKind
from tests.apply_support import Created, make_jobs, plan, server_body, updater
from tests.lifecycle_support import rig
from tests.support import PROJECT

REFUSING: dict[str, Any] = {"update_running": "reject", "savepoint_seconds": (0.5, 0.5)}


def changed(jobs: Sequence[Created], cu: Sequence[int], smn: Sequence[int]) -> dict[str, Any]:
    """The manifests: ``cu`` indexes get cu_number 4, ``smn`` ones smn_topic b."""
    out = {}
    for index, job in enumerate(jobs):
        body = dict(job.body)
        if index in cu:
            body["cu_number"] = 4
        if index in smn:
            body["smn_topic"] = "b"
        out[job.name] = body
    return out


async def test_restart_with_savepoint_and_in_place() -> None:
    async with rig(**REFUSING) as r:
        jobs = await make_jobs(r, 10)
        manifests = changed(jobs, cu=range(4), smn=range(4, 7))
        ledger = MemoryUpdateLedger(clock=r.clock)
        work, decisions = await plan(r, ledger, jobs, manifests)
        actions = [decisions[j.name].action for j in jobs]
        assert (
            actions
            == [ApplyAction.RESTART] * 4 + [ApplyAction.IN_PLACE] * 3 + [ApplyAction.UNCHANGED] * 3
        )
        assert decisions[jobs[0].name].changes[0].text() == "cu_number: 2 -> 4"
        results = await updater(r, ledger).update(work)
        assert sorted(r.kind for r in results) == [UpdateKind.UPDATED] * 7
        assert sum(r.restarted for r in results) == 4
        stats = r.stats()["totals"]
        assert (stats["stops"], stats["savepoints"], stats["resumes"]) == (4, 4, 4)
        assert (stats["updates"], stats["updates_refused"]) == (7, 0)
        assert r.sim.store.create_requests == 10
        r.clock.now += 3.0
        for job in jobs:
            assert server_body(r, job.job_id) == {**job.body, **manifests[job.name]}
            assert r.status(job.job_id) == "job_running"
        for row in r.stats()["jobs"][:4]:
            assert row["savepoint_path"] is not None
        assert {row.state for row in ledger.rows(PROJECT).values()} == {UpdateState.DONE}
        # A second plan sends nothing: the ledger holds the applied bodies.
        applied = {name: body for (_, name), (_, body, _) in ledger.applied.items()}
        assert set(applied) == {j.name for j in jobs[:7]}


async def test_a_stopped_job_is_just_updated() -> None:
    async with rig(**REFUSING) as r:
        jobs = await make_jobs(r, 3, running=False)
        manifests = changed(jobs, cu=range(3), smn=())
        ledger = MemoryUpdateLedger(clock=r.clock)
        work, decisions = await plan(r, ledger, jobs, manifests)
        assert {d.action for d in decisions.values()} == {ApplyAction.UPDATE}
        results = await updater(r, ledger).update(work)
        assert [r.kind for r in results] == [UpdateKind.UPDATED] * 3
        totals = r.stats()["totals"]
        assert (totals["stops"], totals["runs"], totals["updates"]) == (0, 0, 3)
        assert all(r.status(j.job_id) == "job_init" for j in jobs)


@pytest.mark.parametrize("fault", ["drop_after_update", "drop_after_stop", "drop_after_run"])
async def test_lost_answers_are_reconciled_not_repeated(fault: str) -> None:
    async with rig(**{**REFUSING, fault: 0.5, "seed": 7}) as r:
        jobs = await make_jobs(r, 12)
        manifests = changed(jobs, cu=range(8), smn=range(8, 12))
        ledger = MemoryUpdateLedger(clock=r.clock)
        work, _ = await plan(r, ledger, jobs, manifests)
        results = await updater(r, ledger, batch_size=2).update(work)  # several calls
        assert [x.kind for x in results] == [UpdateKind.UPDATED] * 12, results
        r.clock.now += 3.0
        for row in r.stats()["jobs"]:
            assert row["stops"] <= 1 and row["savepoints"] <= 1, row
            assert row["runs_while_running"] == 0 and row["updates_refused"] == 0, row
        for job in jobs:
            assert server_body(r, job.job_id) == manifests[job.name]
            assert r.status(job.job_id) == "job_running"
        assert r.stats()["faults"].get(fault, 0) > 0


class Crash(Exception):
    """The process dies after a ledger write."""


async def test_a_crash_after_any_write_is_finished_by_a_rerun() -> None:
    for crash_at in range(1, 18):
        async with rig(**REFUSING) as r:
            jobs = await make_jobs(r, 4)
            manifests = changed(jobs, cu=range(2), smn=range(2, 4))
            writes = 0

            def crash(what: str, steps: Sequence[UpdateStep], at: int = crash_at) -> None:
                nonlocal writes
                writes += 1
                if writes == at:
                    raise Crash(what)

            ledger = MemoryUpdateLedger(clock=r.clock, on_write=crash)
            work, _ = await plan(r, ledger, jobs, manifests)
            try:
                await updater(r, ledger).update(work)
            except (Crash, ExceptionGroup):
                pass
            r.clock.now += 1.0
            work, _ = await plan(r, ledger, jobs, manifests)
            await updater(r, ledger).update(work)
            r.clock.now += 3.0
            for job in jobs:
                assert server_body(r, job.job_id) == manifests[job.name], crash_at
                assert r.status(job.job_id) == "job_running", crash_at
            for row in r.stats()["jobs"]:
                assert row["stops"] <= 1 and row["savepoints"] <= 1, (crash_at, row)
                assert row["updates_refused"] == 0, (crash_at, row)
            work, decisions = await plan(r, ledger, jobs, manifests)
            assert work == [], (crash_at, decisions)
