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
from dataclasses import dataclass, field, replace
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
    LedgerState,
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
    plan.add_argument(
        "--savepoint",
        action="store_true",
        help="show the restarts of `apply --savepoint` (stop with a savepoint, resume from it)",
    )
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
    UPDATE = "update"  # created, its manifest changed: ``apply`` updates it (``run``: drifted)
    ORPHANED = "orphaned"  # created (in the ledger), in no manifest of DIR


_ACTION_STYLES = {
    Action.CREATE: "green",
    Action.ADOPT: "cyan",
    Action.RETRY: "yellow",
    Action.RECONCILE: "yellow",
    Action.DRIFTED: "magenta",
    Action.INVALID: "red",
    Action.ALREADY_CREATED: "dim",
    Action.UPDATE: "blue",
    Action.ORPHANED: "magenta",
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
    # UPDATE (and a change apply cannot make): {field, old, new, how} per changed field.
    changes: tuple[dict[str, Any], ...] = ()
    # --check-remote: fields the server's detail holds otherwise than batchsub left them.
    remote_drift: tuple[dict[str, Any], ...] = ()
    # A created job's manifest and ledger row, for --check-remote (not shown).
    spec: JobSpec | None = field(default=None, compare=False, repr=False)
    record: LedgerRecord | None = field(default=None, compare=False, repr=False)
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
            "changes": list(self.changes),
            "remote_drift": list(self.remote_drift),
            "start": self.start,
            "start_detail": self.start_detail,
        }


def plan_job(
    spec: JobSpec,
    record: LedgerRecord | None,
    remote: Mapping[str, int] | None,
    *,
    savepoint: bool = False,
) -> PlanRow:
    """The action a run would take for ``spec``, given its ledger row and the remote names.

    The submitter's own decision (``decide_create``): a created row ends the job (drifted if
    the body changed); any other job found on the server by name is adopted; the rest are sent.
    A changed job is shown as ``apply`` updates it (``apply_plan.decide_apply``), field by field.
    """
    decision = decide_create(spec, record)
    action = decision.action
    if record is not None and action is CreateAction.DRIFTED:
        row = _update_row(spec, record, decision.reason or "", decision.drift, savepoint, None)
        return replace(row, spec=spec, record=record)
    if record is not None and action is CreateAction.EXISTS:
        detail = ""
        if remote is not None and spec.name not in remote:
            detail = "not found remotely (deleted?); the ledger says created, so it is not sent"
        row = PlanRow(spec.source, spec.name, Action.ALREADY_CREATED, record.job_id, detail)
        return replace(row, spec=spec, record=record)
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


def _update_row(
    spec: JobSpec,
    record: LedgerRecord,
    reason: str,
    drift: tuple[str, ...],
    savepoint: bool,
    status: str | None,
) -> PlanRow:
    """``update  name  cu_number: 2 -> 4 (restart if running)``, or drifted when apply cannot;
    ``status`` (``--check-remote``) says whether the job runs, so how it is updated."""
    from batchsub.lifecycle.apply_plan import UPDATES, ApplyAction, change_rows, decide_apply

    applied = decide_apply(spec, record, None, status)
    changes = tuple(change_rows(applied))
    if applied.action not in (*UPDATES, ApplyAction.UPDATE_UNKNOWN):
        detail = f"{reason}; {applied.reason}" if applied.reason else reason
        row = PlanRow(spec.source, spec.name, Action.DRIFTED, record.job_id, detail, drift)
        return replace(row, changes=changes)
    how = applied.how(savepoint)
    detail = "; ".join(f"{change.text()} ({how})" for change in applied.changes)
    return PlanRow(spec.source, spec.name, Action.UPDATE, record.job_id, detail, drift, changes)


async def remote_rows(
    rows: AsyncIterator[PlanRow], settings: Settings, project_id: str, savepoint: bool
) -> AsyncIterator[PlanRow]:
    """``--check-remote``: each created job's detail (one call each), in the create dialect
    (``detail_dialect``), against the body batchsub left it with: a change made by hand (in
    the console) shows as ``drifted``; its status says how ``apply`` would update it."""
    from batchsub.answers import JOB_GONE
    from batchsub.errors import ApiError
    from batchsub.lifecycle.detail_dialect import differences, normalise

    async with remote_api(settings, project_id) as api:
        async for row in rows:
            spec, record = row.spec, row.record
            if spec is None or record is None or record.job_id is None:
                yield row
                continue
            try:
                detail = await api.caller.call(
                    "job_detail", functools.partial(api.client.job_detail_body, record.job_id)
                )
            except ApiError as exc:
                if exc.code != JOB_GONE:
                    raise
                gone = f"job {record.job_id} not found remotely (deleted?): apply says missing"
                yield replace(row, detail=gone)
                continue
            status = str(detail.get("status") or "") or None
            if row.action is Action.UPDATE:
                reason = row.detail
                row = _update_row(spec, record, reason, row.drift, savepoint, status)
            base = orjson.loads(record.body)
            drift = differences(base, normalise(detail))
            if drift:
                found = tuple(
                    {"field": name, "server": have, "batchsub": want}
                    for name, (have, want) in drift.items()
                )
                shown = "; ".join(f"{d['field']}: {d['server']!r} on the server" for d in found)
                detail_text = f"changed outside batchsub: {shown}"
                row = replace(row, action=Action.DRIFTED, detail=detail_text, remote_drift=found)
            yield row


async def orphan_rows(
    ledger: Ledger, project_id: str, names: set[str]
) -> AsyncIterator[PlanRow]:
    """Jobs the ledger records as created in this project that no manifest of DIR names
    (those ``apply --prune`` deleted already left out)."""
    found = [
        record
        async for record in ledger.records(project_id)
        if record.state is LedgerState.CREATED and record.name not in names
    ]
    pruned: set[str] = set()
    if found and hasattr(ledger, "update_records"):
        rows = await ledger.update_records(project_id, [record.name for record in found])
        pruned = {name for name, row in rows.items() if row.state.value == "pruned"}
    for record in found:
        if record.name in pruned:
            continue
        who = "adopted" if record.adopted else "created"
        detail = f"{who} by batchsub, in no manifest of DIR (apply --prune deletes it)"
        yield PlanRow(record.source, record.name, Action.ORPHANED, record.job_id, detail)


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
    savepoint: bool = False,
    orphans: bool = False,
) -> AsyncIterator[PlanRow]:
    """The plan of every item, streamed; ``ledger`` is open, or None when none exists yet.

    ``rules`` (``--start``): each row says what the start would do (``plan_start``).
    ``orphans``: then the created jobs of the ledger no item names (``orphaned``).
    """
    batch: list[ManifestItem] = []
    names: set[str] = set()
    async for item in items:
        batch.append(item)
        if orphans and item.name is not None:
            names.add(item.name)
        if len(batch) >= PLAN_BATCH:
            for row in await _plan_batch(
                batch, ledger, project_id, remote, rules, statuses, savepoint
            ):
                yield row
            batch = []
    for row in await _plan_batch(batch, ledger, project_id, remote, rules, statuses, savepoint):
        yield row
    if orphans and ledger is not None:
        async for row in orphan_rows(ledger, project_id, names):
            yield row


async def _plan_batch(
    batch: list[ManifestItem],
    ledger: Ledger | None,
    project_id: str,
    remote: Mapping[str, int] | None,
    rules: StartOptions | None,
    statuses: Mapping[int, JobStatus] | None,
    savepoint: bool = False,
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
            row = plan_job(item, records.get(item.name), remote, savepoint=savepoint)
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
                source.items(),
                ledger,
                project_id,
                remote,
                rules=rules,
                statuses=statuses,
                savepoint=getattr(args, "savepoint", False),
                orphans=True,
            )
            if args.check_remote:
                rows = remote_rows(
                    rows, settings, project_id, getattr(args, "savepoint", False)
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
        f"{counts[Action.INVALID]} invalid; apply: {counts[Action.UPDATE]} to update, "
        f"{counts[Action.ORPHANED]} orphaned.",
    )
