"""``batchsub status``: a ledger's jobs by outcome (and ledger state), its latest failures,
and what to do next.

Reads the ledger without locking it (beside a run or a daemon that writes it) and never
creates one. Outcomes are the run report's (``_ledger.outcome_of``): ``retrying`` with an
error (gave up after retries) counts as failed, without one (a stop before it was sent) as
unresolved, and so do ``submitting`` and ``unknown``.
Exit code 0 whenever the ledger could be read, 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import os
import shlex
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsub.commands._ledger import (
    add_ledger_flags,
    error_fields,
    existing_ledger,
    outcome_of,
    row_of,
)
from batchsub.commands.report import start_fields
from batchsub.errors import BatchsubError
from batchsub.jobs import LedgerRecord, LedgerState, Outcome
from batchsub.masking import mask_url
from batchsub.output import (
    Format,
    Rows,
    add_output_flags,
    chosen_format,
    note,
    print_json,
    problem_line,
)
from batchsub.protocols import Ledger
from batchsub.settings import Settings
from batchsub.sources.directory import iter_manifest_paths
from batchsub.text import iso_utc

FAILURE_STATES = frozenset({LedgerState.FAILED, LedgerState.RETRYING, LedgerState.UNKNOWN})
# Not done: a run again finishes them (and sends any job it never sent).
UNFINISHED_STATES = frozenset({LedgerState.RETRYING, LedgerState.SUBMITTING, LedgerState.UNKNOWN})
STATUS_OUTCOMES = (Outcome.CREATED, Outcome.FAILED, Outcome.UNRESOLVED)
# Manifest files whose paths are held to find the ones never sent; past it, memory stays flat.
MAX_FILES = 200_000


def add_parser(commands: Any) -> None:
    """Register ``status`` with the CLI."""
    status = commands.add_parser("status", help="ledger jobs by outcome and the latest failures")
    add_ledger_flags(status)
    status.add_argument("--limit", type=int, default=10, help="failures to show (default: 10)")
    add_output_flags(status, "the counts and failures")
    status.set_defaults(handler=status_command)


@dataclass(slots=True)
class LedgerStatus:
    """Counts by state and the latest failures of a ledger.

    ``unfinished_dir``: the folder the manifests of the unfinished jobs share, if any.
    """

    counts: dict[str, int]
    failures: list[LedgerRecord]
    unfinished_dir: str | None = None
    # (outcome, ledger state) -> rows: the outcomes, and which states each is made of.
    states_of: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    # The folder every row's manifest is under, and its manifest files no row came from:
    # files a run never sent (it was interrupted before them), when that folder is here.
    manifest_dir: str | None = None
    never_sent: int = 0
    # --start / --wait: created jobs by start state (``never`` for those batchsub never
    # started) and every job by the DLI status last seen; empty when nothing was started.
    starts: dict[str, int] = dataclasses.field(default_factory=dict)
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def outcomes(self) -> dict[str, int]:
        """The counts as the report's outcomes, with ``total``."""
        by_outcome: Counter[str] = Counter()
        for (outcome, _), count in self.states_of.items():
            by_outcome[outcome] += count
        shown = {outcome.value: by_outcome[outcome.value] for outcome in STATUS_OUTCOMES}
        shown["total"] = self.counts.get("total", 0)
        return shown


async def ledger_status(ledger: Ledger, project_id: str | None, limit: int) -> LedgerStatus:
    """Stream every row once: count states, keep the ``limit`` most recently updated failures."""
    counts: Counter[str] = Counter()
    starts: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    states_of: Counter[tuple[str, str]] = Counter()
    latest: list[tuple[float, int, LedgerRecord]] = []  # a min-heap on updated_at
    folder: str | None = None
    mixed = False
    files = _ManifestFiles()
    await ledger.open()
    try:
        async for seq, record in _enumerate(ledger.records(project_id)):
            counts[record.state.value] += 1
            states_of[outcome_of(record).value, record.state.value] += 1
            file = record.source.rpartition("#")[0] or record.source
            files.add(file)
            if record.state in UNFINISHED_STATES and not mixed:
                folder, mixed = _common(folder, os.path.dirname(file))
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
    found = LedgerStatus(by_state, failures, None if mixed else folder, states_of)
    found.manifest_dir, found.never_sent = files.never_sent()
    if not set(starts) <= {"never"}:  # else nothing was ever started: nothing new to say
        found.starts, found.statuses = dict(starts), dict(statuses)
    return found


def _failed_at(record: LedgerRecord) -> float:
    """When a failure happened: its start's last change for a start failure."""
    if record.state is LedgerState.CREATED and record.start is not None:
        return record.start.updated_at or record.updated_at
    return record.updated_at


class _ManifestFiles:
    """The manifest files a ledger's rows came from, while they share one folder and are
    not too many to hold (``MAX_FILES``): to count the files of that folder no run sent."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._root: str | None = None
        self._lost = False  # scattered, or too many: nothing is said of them

    def add(self, file: str) -> None:
        if self._lost or file in self._files:
            return
        self._files.add(file)
        self._root, self._lost = _common(self._root, os.path.dirname(file))
        if len(self._files) > MAX_FILES:
            self._lost = True
        if self._lost:
            self._files.clear()

    def never_sent(self) -> tuple[str | None, int]:
        """The shared folder and how many of its manifest files no row came from."""
        if self._lost or not self._root or not os.path.isdir(self._root):
            return None, 0  # the ledger of another machine, or the files moved
        try:
            unsent = sum(
                1 for path in iter_manifest_paths(Path(self._root)) if str(path) not in self._files
            )
        except (OSError, BatchsubError):  # an unreadable folder: nothing to say about it
            return None, 0
        return self._root, unsent


def _common(folder: str | None, here: str) -> tuple[str | None, bool]:
    """The folder ``folder`` and ``here`` share; mixed when they share none."""
    if folder is None:
        return here, False
    try:
        shared = os.path.commonpath([folder, here])
    except ValueError:  # one absolute, one relative
        return None, True
    return (shared, False) if shared else (None, True)


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
        "outcome": outcome_of(record).value,
        "state": record.state.value,
        "attempts": record.attempts,
        **error_fields(record.error),
        "updated_at": iso_utc(_failed_at(record)),
        "start_state": start["start_state"],
        "status": start["status"],
        "start_error": start["start_error"],
    }


def advice(status: LedgerStatus) -> list[str]:
    """What to do next: run again for jobs not done, retry for jobs failed for good."""
    counts = status.counts
    lines = []
    unfinished = sum(counts[state.value] for state in UNFINISHED_STATES)
    shown = status.unfinished_dir or status.manifest_dir
    folder = shlex.quote(shown) if shown else "DIR"
    if status.never_sent:
        lines.append(
            f"{status.never_sent} manifest files under {status.manifest_dir} have no job in "
            f"the ledger (never sent: new since, or a run was interrupted before them): run "
            f"`batchsub run {folder}` to send them"
        )
    if unfinished:
        lines.append(
            f"{unfinished} jobs not done (a run was interrupted, gave up on them, or is still "
            f"going): run `batchsub run {folder}` again to finish; it skips created jobs, "
            "looks up the ones in doubt by name and sends the rest, with any never sent"
        )
    if status.starts.get("start_failed"):
        lines.append(
            f"{status.starts['start_failed']} jobs whose start failed: fix the cause (queue,"
            " CUs, jar), then: batchsub retry --start"
        )
    if counts[LedgerState.FAILED.value]:
        lines.append(
            f"{counts[LedgerState.FAILED.value]} jobs failed for good: fix the cause (quota, "
            "queue, credential), then: batchsub retry"
        )
    return lines


def never_sent_advice(status: LedgerStatus) -> str | None:
    """What ``retry`` says of manifest files no run sent: ``run`` sends them, not ``retry``."""
    if not status.never_sent:
        return None
    folder = shlex.quote(status.manifest_dir or "DIR")
    return (
        f"{status.never_sent} manifest files under {status.manifest_dir} were never sent (new "
        "since, or a run was interrupted before them): retry resends only jobs the ledger "
        f"holds; run `batchsub run {folder}` to send them"
    )


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub status``: counts by outcome and the latest failures; always 0 when readable."""
    fmt = chosen_format(args)
    ledger = existing_ledger(settings.ledger)
    status = asyncio.run(ledger_status(ledger, args.project_id, args.limit))
    if fmt is Format.JSON:
        print_json(
            {
                "counts": status.counts,
                "outcomes": status.outcomes,
                "starts": status.starts,
                "statuses": status.statuses,
                "failures": [failure_row(r) for r in status.failures],
                "never_sent_files": status.never_sent,
                "manifest_dir": status.manifest_dir,
                "advice": advice(status),
            }
        )
        return 0
    where = f" (project {args.project_id})" if args.project_id else ""
    title = f"ledger {mask_url(settings.ledger)}{where}"
    with Rows(fmt, ("outcome", "jobs", "ledger states"), title=title, right=("jobs",)) as rows:
        for outcome, count in status.outcomes.items():
            states = [
                f"{state.value} {status.states_of[outcome, state.value]}"
                for state in LedgerState
                if status.states_of[outcome, state.value]
            ]
            style = "bold" if outcome == "total" else None
            rows.add((outcome, count, " · ".join(states)), style=style)
    if status.starts:
        title = "starts (created jobs), DLI status last seen"
        with Rows(fmt, ("start / DLI status", "jobs"), title=title, right=("jobs",)) as rows:
            for key, count in status.starts.items():
                rows.add((f"start {key}", count))
            for key, count in sorted(status.statuses.items()):
                rows.add((key, count))
    columns = ("name", "outcome", "state", "error code", "message", "updated (UTC)")
    with Rows(fmt, columns, title="latest jobs not done", plain=_failure_line) as rows:
        for record in status.failures:
            row = failure_row(record)
            code = row["error_code"] or (
                f"HTTP {row['http_status']}" if row["http_status"] else None
            )
            state, message = row["state"], row["error_message"]
            if row["start_state"] == "start_failed":  # created, then its start failed
                state, code, message = "start_failed", row["status"], row["start_error"]
            cells = (record.name, row["outcome"], state, code, message)
            rows.add((*cells, row["updated_at"], record.source))
    for line in advice(status):
        note(fmt, line)
    return 0


def _failure_line(cells: Any) -> str:
    """``path: name: outcome (state): code: message`` for a plain line."""
    name, outcome, state, code, message, updated, source = cells
    text = f"{name}: {outcome} ({state}, {updated}): {code or '-'}: {message or ''}"
    return problem_line(source, text)
