"""Helpers of the update and apply tests: running jobs in a rig's simulator, an updater over
an in-memory update ledger, and what an apply decides for changed manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchsub.jobs import JobSpec, LedgerRecord, LedgerState
from batchsub.ledgers.memory_update import MemoryUpdateLedger
from batchsub.lifecycle.apply_plan import UPDATES, ApplyAction, ApplyDecision, decide_apply
from batchsub.lifecycle.updater import UpdateJob, Updater, UpdateTimes
from batchsub.retry import RetryingCaller
from tests.lifecycle_support import Rig, fake_sleep
from tests.support import PROJECT


def spec_of(body: Mapping[str, Any]) -> JobSpec:
    """A JobSpec of a body, hashed as the manifest reader hashes it (canonical JSON)."""
    data = orjson.dumps(body)
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    name = str(body["name"])
    return JobSpec(name, data, hashlib.sha256(canonical).hexdigest(), f"jobs/{name}.json")


@dataclass
class Created:
    """A job made in the simulator: its id and the body it was created with."""

    name: str
    job_id: int
    body: dict[str, Any]

    def record(self) -> LedgerRecord:
        """Its jobs row, as the create path leaves it."""
        spec = spec_of(self.body)
        return LedgerRecord(
            PROJECT, self.name, LedgerState.CREATED, self.job_id, 1, None, spec.source,
            spec.body_hash, spec.body, False, 0.0, 0.0,
        )  # fmt: skip


async def make_jobs(
    rig: Rig, count: int, *, running: bool = True, prefix: str = "job"
) -> list[Created]:
    """Create jobs (cu_number 2, smn_topic a) and, when ``running``, run them until running."""
    made = []
    for index in range(count):
        body = {
            "name": f"{prefix}-{index:04d}",
            "queue_name": "q1",
            "cu_number": 2,
            "smn_topic": "a",
        }
        answer = await rig.client.create(orjson.dumps(body))
        assert answer.job_id is not None, answer
        made.append(Created(str(body["name"]), answer.job_id, body))
    if running:
        ids = [job.job_id for job in made]
        for start in range(0, len(ids), 100):
            ran = await rig.client.run_jobs(ids[start : start + 100])
            assert all(e.ok for e in ran.elements), ran
        rig.clock.now += 3.0
        assert all(rig.status(job.job_id) == "job_running" for job in made)
    return made


def updater(rig: Rig, ledger: MemoryUpdateLedger, **fields: Any) -> Updater:
    """An updater over the rig (fake clock and sleep) and ``ledger``."""
    fields.setdefault("in_doubt_grace", 2.0)
    fields.setdefault("savepoint", True)
    fields.setdefault("times", UpdateTimes(stop_timeout=60.0, poll_min=0.5, poll_max=2.0))
    return Updater(
        client=rig.client,
        reader=rig.reader,
        caller=RetryingCaller(
            rig.limiter, rig.policy, clock=rig.clock, sleep=fake_sleep(rig.clock)
        ),
        ledger=ledger,
        limiter=rig.limiter,
        policy=rig.policy,
        wall_clock=rig.clock,
        sleep=fake_sleep(rig.clock),
        **fields,
    )


async def plan(
    rig: Rig,
    ledger: MemoryUpdateLedger,
    jobs: Sequence[Created],
    manifests: Mapping[str, Mapping[str, Any]],
) -> tuple[list[UpdateJob], dict[str, ApplyDecision]]:
    """What an apply of ``manifests`` does to ``jobs``: the updates, and every decision."""
    names = [job.name for job in jobs]
    updates = await ledger.update_records(PROJECT, names)
    seen = await rig.reader.read({job.job_id: None for job in jobs})
    work: list[UpdateJob] = []
    decisions: dict[str, ApplyDecision] = {}
    for job in jobs:
        spec = spec_of(manifests[job.name])
        sighting = seen.get(job.job_id)
        status = sighting.status.status if sighting is not None else None
        decision = decide_apply(
            spec, job.record(), updates.get(job.name), status, gone=sighting is None
        )
        decisions[job.name] = decision
        if decision.action is ApplyAction.RESUME:
            work.append(UpdateJob(job.name, job.job_id, record=updates[job.name]))
        elif decision.action in UPDATES:
            work.append(UpdateJob(job.name, job.job_id, spec, decision))
    return work, decisions


def server_body(rig: Rig, job_id: int) -> dict[str, Any]:
    """The body the simulator holds for a job (create, then every PUT)."""
    job = rig.sim.store.get(job_id)
    assert job is not None
    return dict(job.body)
