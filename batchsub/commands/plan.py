"""``batchsub plan DIR`` (and ``run --dry-run``): what a run would do for each job, sending nothing.

The action of each job comes from the same decision the submitter makes (``plan_job``);
``--check-remote`` adds list calls (and nothing else) to show the jobs a run would adopt.
Exit codes: 0, or 1 when a manifest is invalid or there is none; 2 a usage or configuration
error. Printed by ``batchsub.output``: piped, one tab-separated line per job shown, the
footer on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from batchsub.answers import JobStatus
from batchsub.commands._flags import add_send_flags
from batchsub.commands._ledger import ledger_exists
from batchsub.commands._tables import plural
from batchsub.create_rules import CreateAction, decide_create
from batchsub.errors import ConfigError
from batchsub.files import stdout_may_close
from batchsub.jobs import (
    InvalidManifest,
    JobSpec,
    LedgerRecord,
    ManifestItem,
    RememberedJob,
)
from batchsub.lifecycle.start_rules import StartAction, StartOptions, decide_start
from batchsub.lifecycle.statuses import INIT
from batchsub.logs import configure_command_logging, say
from batchsub.masking import mask_url
from batchsub.output import Format, Rows, add_output_flags, chosen_format, note
from batchsub.protocols import Ledger
from batchsub.reconcile import Reconciler
from batchsub.settings import Settings
from batchsub.sources.directory import DirectorySource
from batchsub.wiring import NO_PROJECT, lifecycle, open_ledger, remote_api

PLAN_BATCH = 256  # jobs looked up in the ledger per query


def add_parser(commands: Any) -> None:
    """Register ``plan`` with the CLI."""
    plan = commands.add_parser("plan", help="show what a run would do, without creating")
    plan.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    add_send_flags(plan)
    plan.add_argument(
        "--check-remote",
        action="store_true",
        help="also list the project's jobs on the API (list calls only) to spot adoptions",
    )
    plan.add_argument(
        "--start",
        action="store_true",
        default=None,
        help="also show what `run --start` would start (the start column)",
    )
    plan.add_argument(
        "--restart-stopped",
        action="store_true",
        default=None,
        help="with --start: as `run --start --restart-stopped` would",
    )
    plan.add_argument("--all", action="store_true", help="list already created jobs too")
    add_output_flags(plan, "every job's action")
    plan.set_defaults(handler=plan_command)


class Action(StrEnum):
    """What a run would do for one job."""

    CREATE = "create"
    ADOPT = "adopt"  # exists on the server, not as created in the ledger: recorded, not sent
    RETRY = "retry"  # failed before (ledger failed/retrying): sent again
    RECONCILE = "reconcile"  # in doubt (submitting/unknown): looked up by name, sent if absent
    DRIFTED = "drifted"  # created, but the manifest changed since: not sent
    INVALID = "invalid"
    ALREADY_CREATED = "already_created"


_ACTION_STYLES = {
    Action.CREATE: "green",
    Action.ADOPT: "cyan",
    Action.RETRY: "yellow",
    Action.RECONCILE: "yellow",
    Action.DRIFTED: "magenta",
    Action.INVALID: "red",
    Action.ALREADY_CREATED: "dim",
}


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One job of a plan."""

    source: str
    name: str | None
    action: Action
    job_id: int | None = None
    detail: str = ""
    drift: tuple[str, ...] = ()
    # --start: what the start rule (``start_rules.decide_start``) would do, and why not.
    start: str | None = None
    start_detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON output shows it."""
        return {
            "source": self.source,
            "name": self.name,
            "action": self.action.value,
            "job_id": self.job_id,
            "detail": self.detail,
            "drift": list(self.drift),
            "start": self.start,
            "start_detail": self.start_detail,
        }


def plan_job(
    spec: JobSpec, record: LedgerRecord | None, remote: Mapping[str, int] | None
) -> PlanRow:
    """The action a run would take for ``spec``, given its ledger row and the remote names.

    The submitter's own decision (``decide_create``): a created row ends the job (drifted if
    the body changed); any other job found on the server by name is adopted; the rest are sent.
    """
    decision = decide_create(spec, record)
    action = decision.action
    if record is not None and action is CreateAction.DRIFTED:
        detail, drift = decision.reason or "", decision.drift
        return PlanRow(spec.source, spec.name, Action.DRIFTED, record.job_id, detail, drift)
    if record is not None and action is CreateAction.EXISTS:
        detail = ""
        if remote is not None and spec.name not in remote:
            detail = "not found remotely (deleted?); the ledger says created, so it is not sent"
        return PlanRow(spec.source, spec.name, Action.ALREADY_CREATED, record.job_id, detail)
    remote_id = remote.get(spec.name) if remote is not None else None
    if remote_id is not None:
        was = f"ledger: {record.state.value}; " if record is not None else ""
        return PlanRow(spec.source, spec.name, Action.ADOPT, remote_id, was + "exists remotely")
    if record is None:
        return PlanRow(spec.source, spec.name, Action.CREATE)
    error = f": {record.error}" if record.error else ""
    if action is CreateAction.RECONCILE:
        if remote is not None:  # looked up already: not there, so it will be sent
            detail = f"was {record.state.value}{error}; not found remotely"
            return PlanRow(spec.source, spec.name, Action.CREATE, detail=detail)
        detail = f"{record.state.value}{error}; looked up by name before sending"
        return PlanRow(spec.source, spec.name, Action.RECONCILE, detail=detail)
    detail = f"{record.state.value} after {plural(record.attempts, 'attempt')}{error}"
    return PlanRow(spec.source, spec.name, Action.RETRY, detail=detail)


# Plan actions after which the run creates the job: it starts in job_init.
_NEW_JOBS = frozenset({Action.CREATE, Action.RETRY, Action.RECONCILE})


def plan_start(
    row: PlanRow,
    record: LedgerRecord | None,
    statuses: Mapping[int, JobStatus] | None,
    rules: StartOptions,
) -> PlanRow:
    """``row`` with what ``run --start`` would do for its job: the starter's own decision.

    A job to be created starts in ``job_init``. One that exists is decided on its status as
    listed (``--check-remote``), else on the status the ledger saw last (``job_init`` for one
    never started), which the detail says.
    """
    if row.action is Action.INVALID:
        return row
    start = record.start if record is not None else None
    if start is not None and start.job_id != row.job_id:
        start = None  # about another job of that name
    detail = ""
    seen: JobStatus | None
    if row.action in _NEW_JOBS or row.job_id is None:
        start, seen = None, JobStatus(0, row.name or "", INIT)
    elif statuses is not None:
        seen = statuses.get(row.job_id)  # None: gone
    else:
        last = start.last_status if start is not None and start.last_status else INIT
        seen = JobStatus(row.job_id, row.name or "", last)
        detail = f"as the ledger last saw it ({last}); --check-remote reads its status"
    decision = decide_start(start, seen, rules)
    why = decision.reason or ""
    if decision.action is StartAction.START and detail:
        why = detail
    return replace(row, start=decision.action.value, start_detail=why)


async def plan_rows(
    items: AsyncIterator[ManifestItem],
    ledger: Ledger | None,
    project_id: str,
    remote: Mapping[str, int] | None,
    *,
    rules: StartOptions | None = None,
    statuses: Mapping[int, JobStatus] | None = None,
) -> AsyncIterator[PlanRow]:
    """The plan of every item, streamed; ``ledger`` is open, or None when none exists yet.

    ``rules`` (``--start``): each row says what the start would do (``plan_start``).
    """
    batch: list[ManifestItem] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= PLAN_BATCH:
            for row in await _plan_batch(batch, ledger, project_id, remote, rules, statuses):
                yield row
            batch = []
    for row in await _plan_batch(batch, ledger, project_id, remote, rules, statuses):
        yield row


async def _plan_batch(
    batch: list[ManifestItem],
    ledger: Ledger | None,
    project_id: str,
    remote: Mapping[str, int] | None,
    rules: StartOptions | None,
    statuses: Mapping[int, JobStatus] | None,
) -> list[PlanRow]:
    names = [item.name for item in batch if item.name is not None]
    records = await ledger.get_many(project_id, names) if ledger is not None and names else {}
    rows = []
    for item in batch:
        if isinstance(item, InvalidManifest):
            detail = item.error.removeprefix(f"{item.source}: ")
            row = PlanRow(item.source, item.name, Action.INVALID, detail=detail)
        elif isinstance(item, RememberedJob):
            row = PlanRow(item.source, item.name, Action.ALREADY_CREATED, item.job_id)
        else:
            row = plan_job(item, records.get(item.name), remote)
        if rules is not None:
            row = plan_start(row, records.get(row.name or ""), statuses, rules)
        rows.append(row)
    return rows


async def list_remote_statuses(settings: Settings, project_id: str) -> dict[int, JobStatus]:
    """Job id -> status of every Flink Jar job of the project: list pages only."""
    async with remote_api(settings, project_id) as api:
        found: dict[int, JobStatus] = {}
        offset = 0
        while True:
            page = await api.caller.call(
                "list", functools.partial(api.client.status_page, status=None, offset=offset)
            )
            found.update((job.job_id, job) for job in page.jobs)
            offset += len(page.jobs)
            if not page.jobs or offset >= page.total_count:
                return found


async def list_remote_jobs(settings: Settings, project_id: str) -> dict[str, int]:
    """Name -> lowest job_id of every Flink Jar job of the project: list calls only."""
    async with remote_api(settings, project_id) as api:
        return await Reconciler(api.client, api.caller).list_jobs()


def plan_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub plan DIR``: 1 if a manifest is invalid (or none exists), else 0."""
    project_id = settings.project_id
    if not project_id:
        raise ConfigError(NO_PROJECT + " (the ledger is keyed by project)")
    source = DirectorySource(args.directory)  # a missing directory fails before any call
    if args.check_remote:
        configure_command_logging(settings, quiet=True)
    counts: Counter[Action] = Counter()
    with stdout_may_close():
        counts = asyncio.run(_plan(settings, args, source, project_id))
    if not counts:
        say("error", f"no manifests (*.json, *.yaml, *.yml) under {args.directory}")
        return 1
    return 1 if counts[Action.INVALID] else 0


async def _plan(
    settings: Settings, args: argparse.Namespace, source: DirectorySource, project_id: str
) -> Counter[Action]:
    remote = await list_remote_jobs(settings, project_id) if args.check_remote else None
    rules = lifecycle(settings, endless=False).options.rules if settings.start else None
    statuses = None
    if rules is not None and args.check_remote:
        statuses = await list_remote_statuses(settings, project_id)
    ledger: Ledger | None = None
    if ledger_exists(settings.ledger):
        # A missing SQLite file means nothing was sent yet; opening it would create it.
        ledger = open_ledger(settings.ledger, read_only=True)
    if ledger is not None:
        await ledger.open()
    fmt = chosen_format(args)
    output: _PlanJson | _PlanRows = (
        _PlanJson(settings, project_id, remote)
        if fmt is Format.JSON
        else _PlanRows(fmt, show_all=args.all, starts=rules is not None)
    )
    try:
        with output:
            rows = plan_rows(
                source.items(), ledger, project_id, remote, rules=rules, statuses=statuses
            )
            async for row in rows:
                output.add(row)
    finally:
        if ledger is not None:
            await ledger.close()
    if fmt is not Format.JSON:
        _print_plan_footer(fmt, settings, project_id, ledger is not None, remote, output.counts)
        if output.starts:
            shown = ", ".join(f"{n} {what}" for what, n in sorted(output.starts.items()))
            note(fmt, f"Start (run --start): {shown}.")
    return output.counts


class _PlanJson:
    """Streams ``{"jobs": [...], "counts": {...}}`` to stdout as rows come."""

    def __init__(
        self, settings: Settings, project_id: str, remote: Mapping[str, int] | None
    ) -> None:
        self.counts: Counter[Action] = Counter()
        self.starts: Counter[str] = Counter()  # --start: jobs by start decision
        self._head = {
            "project_id": project_id,
            "ledger": mask_url(settings.ledger),
            "remote_checked": remote is not None,
        }
        self._first = True

    def __enter__(self) -> _PlanJson:
        sys.stdout.write(orjson.dumps(self._head).decode()[:-1] + ', "jobs": [')
        return self

    def add(self, row: PlanRow) -> None:
        self.counts[row.action] += 1
        if row.start is not None:
            self.starts[row.start] += 1
        sys.stdout.write(("\n" if self._first else ",\n") + orjson.dumps(row.as_dict()).decode())
        self._first = False

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # leave the JSON unterminated: a script must not trust it
            sys.stdout.write("\n")
            return
        counts = {action.value: self.counts[action] for action in Action}
        tail = f', "starts": {orjson.dumps(dict(self.starts)).decode()}' if self.starts else ""
        sys.stdout.write('\n], "counts": ' + orjson.dumps(counts).decode() + tail + "}\n")


class _PlanRows:
    """The rows worth showing (not already created, unless asked): a table, or plain lines."""

    def __init__(self, fmt: Format, *, show_all: bool, starts: bool = False) -> None:
        self.counts: Counter[Action] = Counter()
        self.starts: Counter[str] = Counter()  # --start: jobs by start decision
        self._show_all = show_all
        self._with_start = starts  # --start: a start column, what the start rule would do
        columns = ("action", "name", "source", "detail", *(["start"] * starts))
        self._rows = Rows(fmt, columns, title="batchsub plan")

    def __enter__(self) -> _PlanRows:
        return self

    def add(self, row: PlanRow) -> None:
        self.counts[row.action] += 1
        if row.start is not None:
            self.starts[row.start] += 1
        quiet = not row.detail and row.start in (None, "active")  # nothing to do or say
        if row.action is Action.ALREADY_CREATED and not self._show_all and quiet:
            return
        cells: tuple[str | None, ...] = (row.action.value, row.name, row.source, row.detail)
        if self._with_start:
            shown = row.start or "-"
            cells += (f"{shown}: {row.start_detail}" if row.start_detail else shown,)
        self._rows.add(cells, style=_ACTION_STYLES[row.action])

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._rows.close()


def _print_plan_footer(
    fmt: Format,
    settings: Settings,
    project_id: str,
    ledger_exists: bool,
    remote: Mapping[str, int] | None,
    counts: Counter[Action],
) -> None:
    if not ledger_exists:
        note(fmt, f"ledger {settings.ledger} does not exist yet: no job was sent with it")
    checked = (
        f"{len(remote)} jobs listed remotely"
        if remote is not None
        else "remote not checked (--check-remote lists it)"
    )
    shown = mask_url(settings.ledger)
    note(fmt, f"project {project_id} · ledger {shown} · {checked}")
    note(
        fmt,
        f"Plan: {counts[Action.CREATE]} to create, {counts[Action.ADOPT]} to adopt, "
        f"{counts[Action.RETRY]} to retry, {counts[Action.RECONCILE]} to reconcile, "
        f"{counts[Action.ALREADY_CREATED]} already created, {counts[Action.DRIFTED]} drifted, "
        f"{counts[Action.INVALID]} invalid.",
    )
