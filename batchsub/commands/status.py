"""``batchsub status``: a ledger's counts by state and its latest failures.

Reads the ledger without locking it (beside a run or a daemon that writes it) and never
creates one. Exit code 0 whenever the ledger could be read, 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from batchsub.commands._ledger import add_ledger_flags, error_fields, existing_ledger, row_of
from batchsub.commands._tables import new_console
from batchsub.commands.report import start_fields
from batchsub.jobs import LedgerRecord, LedgerState
from batchsub.masking import mask_url
from batchsub.protocols import Ledger
from batchsub.settings import Settings
from batchsub.text import iso_utc

if TYPE_CHECKING:
    from rich.table import Table

FAILURE_STATES = frozenset({LedgerState.FAILED, LedgerState.RETRYING, LedgerState.UNKNOWN})


def add_parser(commands: Any) -> None:
    """Register ``status`` with the CLI."""
    status = commands.add_parser("status", help="ledger counts by state and the latest failures")
    add_ledger_flags(status)
    status.add_argument("--limit", type=int, default=10, help="failures to show (default: 10)")
    status.add_argument("--json", action="store_true", help="print counts and failures as JSON")
    status.set_defaults(handler=status_command)


@dataclass(slots=True)
class LedgerStatus:
    """Counts by state and the latest failures of a ledger."""

    counts: dict[str, int]
    failures: list[LedgerRecord]
    # --start / --wait: jobs by start state (``never`` for those batchsub never started) and
    # by the DLI status last seen; empty when no job of the ledger has a start record.
    starts: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)


async def ledger_status(ledger: Ledger, project_id: str | None, limit: int) -> LedgerStatus:
    """Stream every row once: count states, keep the ``limit`` most recently updated failures."""
    counts: Counter[str] = Counter()
    starts: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    latest: list[tuple[float, int, LedgerRecord]] = []  # a min-heap on updated_at
    await ledger.open()
    try:
        async for seq, record in _enumerate(ledger.records(project_id)):
            counts[record.state.value] += 1
            start = start_fields(record)
            if record.state is LedgerState.CREATED:
                starts[start["start_state"] or "never"] += 1
            if start["status"] is not None:
                statuses[start["status"]] += 1
            failed = record.state in FAILURE_STATES or start["start_state"] == "start_failed"
            if failed and limit > 0:
                entry = (_failed_at(record), seq, record)
                if len(latest) < limit:
                    heapq.heappush(latest, entry)
                else:
                    heapq.heappushpop(latest, entry)
    finally:
        await ledger.close()
    by_state = {state.value: counts[state.value] for state in LedgerState}
    by_state["total"] = sum(counts.values())
    failures = [record for _, _, record in sorted(latest, reverse=True)]
    if set(starts) <= {"never"}:
        starts.clear()  # nothing was ever started: the counts say nothing new
    return LedgerStatus(by_state, failures, dict(starts), dict(statuses))


def _failed_at(record: LedgerRecord) -> float:
    """When a failure happened: its start's last change for a start failure."""
    if record.state is LedgerState.CREATED and record.start is not None:
        return record.start.updated_at or record.updated_at
    return record.updated_at


async def _enumerate(
    records: AsyncIterator[LedgerRecord],
) -> AsyncIterator[tuple[int, LedgerRecord]]:
    seq = 0
    async for record in records:
        yield seq, record
        seq += 1


def failure_row(record: LedgerRecord) -> dict[str, Any]:
    """One failure as ``status --json`` shows it."""
    start = start_fields(record)
    return {
        **row_of(record),
        "state": record.state.value,
        "attempts": record.attempts,
        **error_fields(record.error),
        "updated_at": iso_utc(_failed_at(record)),
        "start_state": start["start_state"],
        "status": start["status"],
        "start_error": start["start_error"],
    }


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub status``: counts by state and the latest failures; always 0 when readable."""
    from rich.table import Table

    ledger = existing_ledger(settings.ledger)
    status = asyncio.run(ledger_status(ledger, args.project_id, args.limit))
    if args.json:
        out = {
            "counts": status.counts,
            "starts": status.starts,
            "statuses": status.statuses,
            "failures": [failure_row(r) for r in status.failures],
        }
        print(orjson.dumps(out).decode())
        return 0
    console = new_console()
    where = f" (project {args.project_id})" if args.project_id else ""
    counts = Table(title=f"ledger {mask_url(settings.ledger)}{where}", header_style="bold")
    counts.add_column("state")
    counts.add_column("jobs", justify="right")
    for state, count in status.counts.items():
        counts.add_row(state, str(count), style="bold" if state == "total" else None)
    console.print(counts)
    if status.starts:
        console.print(_starts_table(status))
    if status.failures:
        console.print(_failures_table(status.failures))
    if status.starts.get("start_failed"):
        console.print(
            "fix the cause of the start failures, then: batchsub retry --start", markup=False
        )
    if status.counts[LedgerState.FAILED.value] or status.counts[LedgerState.RETRYING.value]:
        console.print(
            "fix the cause (quota, queue, credential), then: batchsub retry", markup=False
        )
    return 0


def _failures_table(failures: list[LedgerRecord]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="latest failures", header_style="bold")
    for column in ("name", "state", "error code", "message"):
        table.add_column(column, overflow="fold")
    table.add_column("updated (UTC)", no_wrap=True)
    for record in failures:
        row = failure_row(record)
        code = row["error_code"] or (f"HTTP {row['http_status']}" if row["http_status"] else "-")
        state, message = record.state.value, row["error_message"]
        if row["start_state"] == "start_failed":
            state, message = "start_failed", row["start_error"]
            code = row["status"] or "-"
        table.add_row(
            Text(record.name),
            Text(state),
            Text(code),
            Text(message or ""),
            Text(row["updated_at"]),
        )
    return table


def _starts_table(status: LedgerStatus) -> Table:
    """The created jobs by start state, and every job by the DLI status last seen."""
    from rich.table import Table

    table = Table(title="starts (created jobs) and DLI status last seen", header_style="bold")
    table.add_column("start / status")
    table.add_column("jobs", justify="right")
    for key, count in status.starts.items():
        table.add_row(f"start {key}", str(count))
    for key, count in sorted(status.statuses.items()):
        table.add_row(key, str(count))
    return table
