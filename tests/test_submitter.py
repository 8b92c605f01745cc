"""The submitter (the pool) against the simulator over real HTTP and a real SQLite ledger.

End-to-end runs (``test_run``, ``test_exactly_once``, ``test_fencing``) go through it too;
these pin what the pool itself decides: what it sends, once, and what it never sends.
"""

from __future__ import annotations

from batchsub.jobs import InvalidManifest, JobResult, JobSpec, LedgerState, Outcome
from tests.run_support import PoolFactory
from tests.support import PROJECT, job_spec


def outcomes(results: list[JobResult]) -> dict[str | None, Outcome]:
    return {r.name: r.outcome for r in results}


async def test_every_job_is_created_once_and_an_invalid_one_is_reported(
    submitter: PoolFactory,
) -> None:
    pool = await submitter()
    bad = InvalidManifest("jobs/bad.yaml", "jobs/bad.yaml: name: required field is missing")
    results = await pool.run([job_spec("a"), job_spec("b"), bad])
    assert outcomes(results) == {"a": Outcome.CREATED, "b": Outcome.CREATED, None: Outcome.INVALID}
    assert pool.sim.store.requests_by_name == {"a": 1, "b": 1}
    assert pool.submitter.creates_sent == 2
    recorded = await pool.ledger.get_many(PROJECT, ["a", "b"])
    assert {r.state for r in recorded.values()} == {LedgerState.CREATED}
    assert all(r.job_id for r in results if r.name)


async def test_a_job_the_ledger_records_as_created_is_never_sent_again(
    submitter: PoolFactory,
) -> None:
    pool = await submitter()
    same, changed = job_spec("same"), job_spec("changed")
    for spec in (same, changed):
        await pool.ledger.record(PROJECT, spec, LedgerState.CREATED, job_id=7)
    edited = job_spec("changed", body=b'{"name":"changed","queue_name":"q2"}')
    results = await pool.run([same, edited])
    assert outcomes(results) == {"same": Outcome.ALREADY_CREATED, "changed": Outcome.DRIFTED}
    drifted = next(r for r in results if r.name == "changed")
    assert drifted.drift == ["queue_name"] and "queue_name" in (drifted.error or "")
    assert pool.sim.store.requests_by_name == {}


async def test_the_same_name_twice_in_one_run_is_sent_once(submitter: PoolFactory) -> None:
    pool = await submitter()
    results = await pool.run([job_spec("twice", "jobs/1.yaml"), job_spec("twice", "jobs/2.yaml")])
    assert sorted(r.outcome for r in results) == [Outcome.ALREADY_CREATED, Outcome.CREATED]
    assert pool.sim.store.requests_by_name == {"twice": 1}


async def test_a_stopped_submitter_sends_nothing_and_every_job_ends_unresolved(
    submitter: PoolFactory,
) -> None:
    pool = await submitter()
    pool.submitter.stop()
    results = await pool.run([job_spec("a"), job_spec("b")])
    assert outcomes(results) == {"a": Outcome.UNRESOLVED, "b": Outcome.UNRESOLVED}
    assert pool.sim.store.requests_by_name == {}
    assert pool.submitter.creates_sent == 0


async def test_a_job_a_crash_left_in_doubt_is_adopted_not_sent_again(
    submitter: PoolFactory,
) -> None:
    pool = await submitter()
    spec = job_spec("in-doubt")
    created = await pool.client.create(spec.body)  # made by the run that crashed
    await pool.ledger.begin_attempt(PROJECT, spec)  # ... which left its intent: submitting
    results = await pool.run([spec])
    assert [(r.outcome, r.job_id, r.adopted) for r in results] == [
        (Outcome.ALREADY_CREATED, created.job_id, True)
    ]
    assert pool.sim.store.requests_by_name == {"in-doubt": 1}  # the crashed run's only
    assert pool.submitter.creates_sent == 0


async def test_a_job_no_source_validated_is_checked_before_it_is_sent(
    submitter: PoolFactory,
) -> None:
    pool = await submitter()
    unchecked = JobSpec(
        name="typo",
        body=b'{"name":"typo","parallel_numbr":2}',
        body_hash="0" * 64,
        source="jobs/typo.yaml",
        validated=False,
    )
    results = await pool.run([unchecked])
    assert [r.outcome for r in results] == [Outcome.INVALID]
    assert "parallel_numbr: unknown field" in (results[0].error or "")
    assert pool.sim.store.requests_by_name == {}
