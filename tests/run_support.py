"""Running the engine in process: settings for a test simulator, a run over a directory and
what it left behind (exit code, report, ledger), and a source of ready-made items."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchsub.client import DliClient
from batchsub.jobs import JobResult, LedgerRecord, ManifestItem
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.limiter import RateLimiter
from batchsub.protocols import Ledger
from batchsub.reconcile import Reconciler
from batchsub.report import RunAccount
from batchsub.retry import RetryBudget, RetryingCaller, RetryPolicy
from batchsub.runner import run_source
from batchsub.settings import Settings
from batchsub.simulator import RunningSimulator
from batchsub.sources.directory import DirectorySource
from batchsub.submitter import Submitter
from tests.support import PROJECT, fast_settings


class ListSource:
    """A finite source of ready-made items (as a buggy or foreign source could yield them);
    ``results`` holds each one's result by name."""

    def __init__(self, items: list[ManifestItem]) -> None:
        self._items = items
        self.results: dict[str | None, JobResult] = {}

    async def items(self) -> AsyncIterator[ManifestItem]:
        for item in self._items:
            yield item

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        self.results[item.name] = result


def on_ledger(ledger: str, settings: Settings) -> Settings:
    """``settings`` with ``--ledger`` a PostgreSQL URL or a SQLite path."""
    return settings.model_copy(update={"ledger": ledger})


AK, SK = "AKTEST0000000000", "sk-secret-do-not-log-0123456789"


def settings_for(url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return fast_settings(url, tmp_path / "ledger.db", **{"concurrency": 16, **overrides})


async def run_dir(
    settings: Settings, directory: Path, report: Path | None = None
) -> tuple[int, RunAccount]:
    account = RunAccount(report)
    code = await run_source(settings, DirectorySource(directory), account)
    return code, account


def read_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


@dataclass
class RunResult:
    """What one in-process run left behind."""

    code: int
    report: dict[str, Any]
    ledger: dict[str, LedgerRecord] = field(default_factory=dict)


async def run_once(settings: Settings, directory: Path) -> RunResult:
    """One in-process run over ``directory``; its exit code, report and ledger afterwards."""
    report_path = directory.parent / "report.json"
    code, _ = await run_dir(settings, directory, report_path)
    report = read_report(report_path)
    report_path.unlink()
    return RunResult(code, report, await read_ledger(Path(settings.ledger)))


async def read_ledger(path: Path) -> dict[str, LedgerRecord]:
    """Every record of PROJECT by name (the run has released the ledger's lock)."""
    async with SqliteLedger(path) as ledger:
        return {record.name: record async for record in ledger.records(PROJECT)}


@dataclass
class Pool:
    """A submitter as ``run`` wires it, over a simulator and a SQLite ledger of the test's own;
    ``results`` are the results it gave, in order."""

    submitter: Submitter
    sim: RunningSimulator
    ledger: SqliteLedger
    client: DliClient
    results: list[JobResult] = field(default_factory=list)

    async def run(self, items: list[ManifestItem]) -> list[JobResult]:
        """Run the submitter over ``items``; the results of this run."""
        before = len(self.results)
        await self.submitter.run(ListSource(items))
        return self.results[before:]


PoolFactory = Callable[..., Awaitable[Pool]]


def make_submitter(
    client: DliClient, ledger: Ledger, limiter: RateLimiter, **fields: Any
) -> Submitter:
    """A submitter as ``run`` wires it, with a test's quick retries and lookups; ``fields``
    (policy, concurrency, on_result, clocks...) override its settings."""
    policy = fields.pop("policy", RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05))
    lookups = RetryingCaller(RateLimiter(0), policy)
    defaults: dict[str, Any] = {"concurrency": 4, "in_doubt_grace": 0.01}
    defaults["on_result"] = lambda _: None
    return Submitter(
        client=client,
        ledger=ledger,
        limiter=limiter,
        policy=policy,
        budget=RetryBudget(),
        reconciler=Reconciler(client, lookups, batch_window=0.01),
        **{**defaults, **fields},
    )
