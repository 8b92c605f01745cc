"""Exactly once under failure: random fault schedules against the simulator, in process.

Every fault the simulator injects into creates (5xx, DLI.0999 before or after creating, a
dropped connection, a 504 or a slow answer after creating) is drawn by hypothesis together
with the duplicate-name mode, the pool size and the number of jobs. Whatever the schedule,
each job must exist exactly once on the server and the ledger must hold its job_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchsub.jobs import JobSpec, LedgerState
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.settings import Settings
from batchsub.simulator import (
    Fault,
    RunningSimulator,
    SimulatorConfig,
    start_simulator,
)
from batchsub.sources.directory import DirectorySource
from tests.run_support import RunResult, run_once
from tests.sim_support import simulator_with
from tests.support import PROJECT, TOKEN, fast_settings, write_manifests

AFTER_CREATE = (
    Fault.DROP_AFTER_CREATE,
    Fault.ERROR_504_AFTER_CREATE,
    Fault.SLOW_AFTER_CREATE,
    Fault.DLI0999_AFTER_CREATE,
)
BEFORE_CREATE = (Fault.FAIL_5XX, Fault.DLI0999)
SLOW_SECONDS = 0.3  # a slow answer comes after this ...
SHORT_TIMEOUT = 0.2  # ... so a client waiting this long loses it
DuplicateMode = Literal["reject", "accept"]


@dataclass(frozen=True)
class Scenario:
    """One random fault schedule and the run it is applied to."""

    faults: Mapping[str, float]
    duplicate_names: DuplicateMode
    seed: int
    concurrency: int
    jobs: int

    def simulator_config(self) -> SimulatorConfig:
        """The simulator misbehaving as drawn."""
        return sim_config(self.duplicate_names, seed=self.seed, **self.faults)


@st.composite
def fault_probabilities(draw: st.DrawFn) -> dict[str, float]:
    """Each fault kind 0..0.3, scaled down so that together they stay <= 0.6."""
    drawn = {
        fault.value: draw(st.one_of(st.just(0.0), st.floats(0.0, 0.3)), label=fault.value)
        for fault in Fault
    }
    total = sum(drawn.values())
    if total > 0.6:
        drawn = {kind: p * 0.6 / total for kind, p in drawn.items()}
    return drawn


scenarios = st.builds(
    Scenario,
    faults=fault_probabilities(),
    duplicate_names=st.sampled_from(["reject", "accept"]),
    seed=st.integers(0, 2**32 - 1),
    concurrency=st.integers(1, 16),
    jobs=st.integers(5, 40),
)


def sim_config(duplicate_names: DuplicateMode = "reject", **fields: Any) -> SimulatorConfig:
    """A simulator for PROJECT and TOKEN; slow answers are short so tests stay fast."""
    fields.setdefault("slow_seconds", SLOW_SECONDS)
    return SimulatorConfig(
        project_id=PROJECT, tokens=frozenset({TOKEN}), duplicate_names=duplicate_names, **fields
    )


def run_settings(url: str, ledger: Path, **overrides: Any) -> Settings:
    """Fast backoff and generous attempts: faults must be outlasted, not waited out."""
    values: dict[str, Any] = {
        "concurrency": 8,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
        "max_attempts": 50,
        "in_doubt_grace": 0.0,
    }
    return fast_settings(url, ledger, **{**values, **overrides})


def assert_exactly_once(sim: RunningSimulator, names: list[str], outcome: RunResult) -> None:
    """Every name exists once on the server, and the ledger says created with that job_id."""
    store = sim.store
    assert store.duplicates() == {}, f"duplicated jobs; faults {dict(store.faults)}"
    assert sorted(job.name for job in store.jobs) == sorted(names)
    assert outcome.code == 0, outcome.report["summary"]["first_errors"]
    assert sorted(outcome.ledger) == sorted(names)
    for name in names:
        record = outcome.ledger[name]
        [job] = store.named(name)
        assert (record.state, record.job_id) == (LedgerState.CREATED, job.job_id), name
    rows = {row["name"]: row for row in outcome.report["jobs"]}
    assert {name: rows[name]["job_id"] for name in names} == {
        name: outcome.ledger[name].job_id for name in names
    }


def slow_timeout(faults: Mapping[str, float]) -> float:
    """A client timeout that gives up on slow answers only when slow answers are drawn."""
    return SHORT_TIMEOUT if faults.get(Fault.SLOW_AFTER_CREATE.value, 0.0) > 0 else 2.0


async def check_scenario(scenario: Scenario, *, rerun: bool) -> None:
    """Run the scenario once (and again, on request) and check the exactly-once properties."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = write_manifests(root / "m", scenario.jobs)
        sim = await start_simulator(scenario.simulator_config())
        try:
            settings = run_settings(
                sim.url,
                root / "ledger.db",
                concurrency=scenario.concurrency,
                timeout=slow_timeout(scenario.faults),
            )
            first = await run_once(settings, root / "m")
            assert_exactly_once(sim, names, first)
            if rerun:
                await check_reruns_send_nothing(sim, settings, root, names)
        finally:
            await sim.close()


async def check_reruns_send_nothing(
    sim: RunningSimulator, settings: Settings, root: Path, names: list[str]
) -> None:
    """A rerun on the same ledger, then one on a lost (new) ledger, send no create at all."""
    sent = sim.store.create_requests
    again = await run_once(settings, root / "m")
    assert sim.store.create_requests == sent
    assert again.report["summary"]["creates_sent"] == 0
    assert again.report["summary"]["already_created"] == len(names)
    assert_exactly_once(sim, names, again)

    lost = settings.model_copy(update={"ledger": str(root / "new-ledger.db")})
    adopted = await run_once(lost, root / "m")
    assert sim.store.create_requests == sent
    assert adopted.report["summary"]["adopted"] == len(names)
    assert_exactly_once(sim, names, adopted)
    assert all(record.adopted for record in adopted.ledger.values())


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios)
def test_any_fault_schedule_creates_every_job_exactly_once(scenario: Scenario) -> None:
    asyncio.run(check_scenario(scenario, rerun=False))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios)
def test_after_any_fault_schedule_a_rerun_sends_no_create(scenario: Scenario) -> None:
    asyncio.run(check_scenario(scenario, rerun=True))


# --- one fault kind at a time ----------------------------------------------------------------


@pytest.mark.parametrize("duplicate_names", ["reject", "accept"])
@pytest.mark.parametrize("fault", AFTER_CREATE, ids=str)
async def test_lost_answer_every_time_is_adopted_never_resent(
    fault: Fault, duplicate_names: DuplicateMode, tmp_path: Path
) -> None:
    # Every create makes the job and loses the answer: one request per job, then a lookup.
    names = write_manifests(tmp_path / "m", 12)
    async with await start_simulator(sim_config(duplicate_names, **{fault.value: 1.0})) as sim:
        timeout = SHORT_TIMEOUT if fault is Fault.SLOW_AFTER_CREATE else 2.0
        settings = run_settings(sim.url, tmp_path / "ledger.db", timeout=timeout)

        outcome = await run_once(settings, tmp_path / "m")

        assert_exactly_once(sim, names, outcome)
        assert sim.store.faults == {fault.value: len(names)}
        assert sim.store.requests_by_name == dict.fromkeys(names, 1)
        for row in outcome.report["jobs"]:
            assert (row["outcome"], row["adopted"], row["attempts"]) == ("created", True, 1)


@pytest.mark.parametrize("fault", BEFORE_CREATE, ids=str)
async def test_failure_every_time_gives_up_without_creating(fault: Fault, tmp_path: Path) -> None:
    names = write_manifests(tmp_path / "m", 5)
    ledger = tmp_path / "ledger.db"
    async with await start_simulator(sim_config("reject", **{fault.value: 1.0})) as sim:
        outcome = await run_once(run_settings(sim.url, ledger, max_attempts=3), tmp_path / "m")

        assert outcome.code == 1
        assert sim.store.jobs == []
        assert sim.store.requests_by_name == dict.fromkeys(names, 3)
        for row in outcome.report["jobs"]:
            assert row["outcome"] == "failed"
            assert row["error"].startswith("gave up after 3 attempts")
        # Looked up after the last attempt and not found: known not to exist, not in doubt.
        assert {r.state for r in outcome.ledger.values()} == {LedgerState.RETRYING}

    async with await start_simulator(sim_config()) as healthy:
        outcome = await run_once(run_settings(healthy.url, ledger), tmp_path / "m")
        assert_exactly_once(healthy, names, outcome)
        assert healthy.store.requests_by_name == dict.fromkeys(names, 1)


@pytest.mark.parametrize("duplicate_names", ["reject", "accept"])
@pytest.mark.parametrize("fault", [*BEFORE_CREATE, *AFTER_CREATE], ids=str)
async def test_frequent_single_fault_is_outlasted(
    fault: Fault, duplicate_names: DuplicateMode, tmp_path: Path
) -> None:
    names = write_manifests(tmp_path / "m", 30)
    config = sim_config(duplicate_names, seed=11, **{fault.value: 0.7})
    async with await start_simulator(config) as sim:
        timeout = SHORT_TIMEOUT if fault is Fault.SLOW_AFTER_CREATE else 2.0
        settings = run_settings(sim.url, tmp_path / "ledger.db", concurrency=16, timeout=timeout)

        outcome = await run_once(settings, tmp_path / "m")

        assert_exactly_once(sim, names, outcome)
        assert sim.store.faults[fault.value] >= len(names) // 2  # the faults really happened


# --- a crash left intents behind -------------------------------------------------------------


async def test_intents_left_by_a_crash_are_reconciled_before_sending(tmp_path: Path) -> None:
    # A process died after committing "submitting" (or "unknown"): half of those requests
    # reached the server. Those must be adopted, the others sent once.
    names = write_manifests(tmp_path / "m", 8)
    ledger_path = tmp_path / "ledger.db"
    specs = {item.name: item async for item in DirectorySource(tmp_path / "m").items()}
    async with await start_simulator(sim_config(duplicate_names="accept")) as sim:
        async with SqliteLedger(ledger_path) as ledger:
            for index, name in enumerate(names):
                spec = specs[name]
                assert isinstance(spec, JobSpec)
                await ledger.begin_attempt(PROJECT, spec)
                if index % 4 == 3:
                    await ledger.record(PROJECT, spec, LedgerState.UNKNOWN)
                if index % 2 == 0:
                    sim.store.add(name, orjson.loads(spec.body), 0, PROJECT)
        made_before = {name: sim.store.named(name)[0].job_id for name in names[::2]}

        outcome = await run_once(run_settings(sim.url, ledger_path), tmp_path / "m")

        assert_exactly_once(sim, names, outcome)
        assert sim.store.requests_by_name == dict.fromkeys(names[1::2], 1)
        for name, job_id in made_before.items():
            assert outcome.ledger[name].job_id == job_id
            assert outcome.ledger[name].adopted
        assert outcome.report["summary"]["creates_sent"] == len(names) // 2


# --- a server slower than the client's timeout ------------------------------------------------

_Handler = Any  # aiohttp's middleware handler type is private


@contextlib.asynccontextmanager
async def slow_first_create(
    config: SimulatorConfig, hold: float
) -> AsyncIterator[RunningSimulator]:
    """The simulator, but the first create of each body waits ``hold`` s before it is handled.

    As a gateway queue or a busy backend does: the job is made after the client gave up.
    """
    seen: set[bytes] = set()

    @web.middleware
    async def hold_first(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.method == "POST":
            body = await request.read()
            if body not in seen:
                seen.add(body)
                await asyncio.sleep(hold)
        response: web.StreamResponse = await handler(request)
        return response

    async with simulator_with(config, hold_first) as sim:
        yield sim


async def test_create_still_running_after_the_timeout_is_not_duplicated(tmp_path: Path) -> None:
    # The grace period before the lookup lets the server finish the create it was making.
    names = write_manifests(tmp_path / "m", 3)
    async with slow_first_create(sim_config("accept"), hold=SLOW_SECONDS) as sim:
        settings = run_settings(
            sim.url, tmp_path / "ledger.db", timeout=SHORT_TIMEOUT, in_doubt_grace=SLOW_SECONDS
        )

        outcome = await run_once(settings, tmp_path / "m")
        await asyncio.sleep(SLOW_SECONDS)  # every held request has reached the server now

        assert sim.store.duplicates() == {}
        assert_exactly_once(sim, names, outcome)
