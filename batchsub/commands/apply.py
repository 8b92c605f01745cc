"""``batchsub apply DIR``: make a directory of manifests the source of truth, safely.

Two passes over DIR, one ledger:

1. updates: every job the ledger records as created whose manifest changed since batchsub
   last created or updated it is updated (``lifecycle.apply_plan`` decides, the ``Updater``
   carries it out: in place, or stop with ``--savepoint``, PUT, start again); an update a
   crash left unfinished is finished first; a job deleted on the server since is ``missing``.
2. creates: the rest goes through ``run``'s own path (``runner.run_source``): jobs missing
   from the ledger are created or adopted exactly as ``run`` does. Since a finished update
   made the new body the job's body in the ledger, ``run`` now sees those jobs as they are.

The report is ``run``'s, with ``updated`` (and its ``changes``), ``missing`` and update
failures in place of ``already_created``/``drifted`` for the jobs of pass 1. ``--start``,
``--wait`` and ``--waves`` are ``run``'s (pass 2): with ``--wait``, the jobs restarted by pass
1 are waited for until healthy like every other job already started.

Exit codes: 0 every job matches its manifest; 1 some job invalid, failed, missing, drifted
(a change no update can make), duplicated or unresolved; 2 a usage or configuration error, a
credential the API refused, or a report that could not be written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import structlog

from batchsub.client import DliClient
from batchsub.commands._flags import add_run_flags, add_send_flags, add_start_flags
from batchsub.errors import ApiError
from batchsub.jobs import (
    JobResult,
    JobSpec,
    LedgerRecord,
    LedgerState,
    ManifestItem,
    Outcome,
    RememberedJob,
    UpdateState,
)
from batchsub.ledgers.outage import Outage
from batchsub.lifecycle.apply_plan import (
    UPDATES,
    ApplyAction,
    ApplyDecision,
    change_rows,
    decide_apply,
)
from batchsub.lifecycle.pruner import PruneJob, Pruner, PruneResult
from batchsub.lifecycle.status_reader import StatusReader
from batchsub.lifecycle.updater import UpdateJob, UpdateKind, Updater, UpdateResult
from batchsub.limiter import RateLimiter
from batchsub.protocols import Ledger, Source, UpdateLedger
from batchsub.report import RunAccount
from batchsub.retry import GIVE_UP_AFTER, RetryingCaller, RetryPolicy
from batchsub.settings import Settings
from batchsub.sources.directory import DirectorySource
from batchsub.wiring import (
    client_for,
    project_id_for,
    resolve_target,
    retry_policy,
    sending_ledger,
    session_for,
)

log = structlog.get_logger("batchsub.apply")
_BATCH = 256  # jobs looked up in the ledger per query


def add_parser(commands: Any) -> None:
    """Register ``apply`` with the CLI."""
    apply: argparse.ArgumentParser = commands.add_parser(
        "apply", help="create what is missing and update what changed, keeping job state"
    )
    apply.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    add_send_flags(apply)
    add_run_flags(apply)
    add_start_flags(apply, waves=True)
    apply.add_argument(
        "--savepoint",
        action="store_true",
        help="a running job that must restart is stopped with a savepoint and resumes from it",
    )
    apply.add_argument(
        "--recreate-missing",
        action="store_true",
        help="create again the jobs batchsub created that were deleted on the server since"
        " (without it they are reported missing)",
    )
    apply.add_argument(
        "--prune",
        action="store_true",
        help="stop and delete the jobs batchsub created or adopted in this project that no"
        " manifest of DIR names (listed first; `plan` shows them as orphaned)",
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="show what apply would do (as `plan`); send nothing"
    )
    apply.add_argument(
        "--parse-workers",
        type=int,
        help="processes that read and parse manifests beside the sender; 0: none (default: 1)",
    )
    apply.set_defaults(handler=apply_command)


def apply_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub apply DIR`` (or, with ``--dry-run``, ``batchsub plan DIR``)."""
    if args.dry_run:
        from batchsub.commands.plan import plan_command

        project_id = project_id_for(settings, simulator=args.simulator)  # as apply would send
        settings = settings.model_copy(update={"project_id": project_id})

        plan_args = argparse.Namespace(
            directory=args.directory,
            check_remote=False,
            json=False,
            all=False,
            savepoint=args.savepoint,
        )
        return plan_command(settings, plan_args)
    from batchsub import eventloop

    return eventloop.run(
        apply_directory(
            settings,
            args.directory,
            args.report,
            simulator=args.simulator,
            savepoint=args.savepoint,
            prune=args.prune,
            recreate_missing=args.recreate_missing,
        ),
        settings.event_loop,
    )


async def apply_directory(
    settings: Settings,
    directory: Path,
    report: Path | None,
    *,
    simulator: bool,
    savepoint: bool,
    prune: bool = False,
    recreate_missing: bool = False,
) -> int:
    """Update what changed (and prune), then create what is missing; returns the exit code."""
    from batchsub.logs import configure_command_logging
    from batchsub.parse_pool import ParserPool
    from batchsub.runner import EXIT_SOME_FAILED, refused_as_empty, run_source

    interactive = configure_command_logging(settings)
    if refused_as_empty(directory, report):
        return EXIT_SOME_FAILED
    started = time.monotonic()
    notes = ApplyNotes()
    if not simulator:  # the built-in simulator starts empty: there is nothing to update
        notes = await update_pass(
            settings,
            directory,
            savepoint=savepoint,
            prune=prune,
            recreate_missing=recreate_missing,
        )
    parser = ParserPool(settings.parse_workers)
    parser.start()
    try:
        account = ApplyAccount(report, notes)
        for record, result in notes.pruned:
            outcome = Outcome.PRUNED if result.pruned else Outcome.FAILED
            account.add(JobResult(record.source, record.name, outcome, record.job_id, result.error))
        code = await run_source(
            settings,
            DirectorySource(directory, parser=parser),
            account,
            simulator=simulator,
            progress=settings.progress_shown(interactive),
        )
    finally:
        parser.close()
    log.info(
        "apply.finished",
        updated=account.counts[Outcome.UPDATED],
        missing=account.counts[Outcome.MISSING],
        duration_s=round(time.monotonic() - started, 3),
    )
    return code


# --- pass 1: updates ---------------------------------------------------------------------


@dataclass(slots=True)
class Note:
    """What pass 1 did to one job, for its report row."""

    outcome: Outcome
    changes: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class ApplyNotes:
    """Pass 1's word on each job it touched, and its calls."""

    jobs: dict[str, Note] = field(default_factory=dict)
    puts: int = 0
    calls: int = 0
    fatal: str | None = None
    pruned: list[tuple[LedgerRecord, PruneResult]] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)  # name -> the job_id deleted


_KIND_OUTCOMES = {
    UpdateKind.UPDATED: Outcome.UPDATED,
    UpdateKind.FAILED: Outcome.FAILED,
    UpdateKind.MISSING: Outcome.MISSING,
    UpdateKind.UNRESOLVED: Outcome.UNRESOLVED,
}


async def update_pass(
    settings: Settings,
    directory: Path,
    *,
    savepoint: bool,
    prune: bool = False,
    recreate_missing: bool = False,
) -> ApplyNotes:
    """Pass 1: finish unfinished updates, then update every created job whose manifest changed;
    with ``prune``, then stop and delete the created jobs no manifest names."""
    notes = ApplyNotes()
    orphans: list[LedgerRecord] = []
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(resolve_target(settings, simulator=False))
        outage = Outage(limit=settings.ledger_outage_limit, startup_limit=0.0)
        ledger = sending_ledger(settings, outage)
        await ledger.open()
        stack.push_async_callback(ledger.close)
        updates = _update_ledger(ledger)
        if updates is None:
            return notes
        session = session_for(settings)
        stack.push_async_callback(session.close)
        limiter = RateLimiter(settings.rate)
        policy = retry_policy(settings)
        client = client_for(session, target, settings)
        caller = RetryingCaller(limiter, policy, give_up_after=GIVE_UP_AFTER)
        reader = StatusReader(client, caller)
        project = target.project_id
        work, names = await _decide(directory, ledger, updates, reader, project, notes)
        if recreate_missing and notes.missing:
            # Their rows go back to retrying: pass 2 (the create path) creates them again.
            moved = await updates.forget_missing(project, sorted(notes.missing.items()))
            for name in moved:
                notes.jobs.pop(name, None)
            log.info("apply.recreating", jobs=len(moved))
        if prune and notes.fatal is None:
            orphans = await _orphans(ledger, updates, project, names)
        updater = Updater(
            client=client,
            reader=reader,
            caller=caller,
            ledger=updates,
            limiter=limiter,
            policy=policy,
            savepoint=savepoint,
            concurrency=settings.concurrency,
            in_doubt_grace=settings.in_doubt_grace,
        )
        results = await updater.update([job for job, _ in work]) if work else []
        decisions = {job.name: decision for job, decision in work}
        for result in results:
            _note(notes, result, decisions.get(result.name))
        notes.puts, notes.calls = updater.puts_sent, updater.calls
        notes.fatal = str(updater.fatal) if updater.fatal is not None else None
        if prune and notes.fatal is None and orphans:
            _announce(orphans)
            pruner = Pruner(
                client=client,
                reader=reader,
                caller=caller,
                ledger=updates,
                limiter=limiter,
                policy=policy,
                in_doubt_grace=settings.in_doubt_grace,
            )
            jobs = [PruneJob(r.name, r.job_id or 0, r.body, r.body_hash) for r in orphans]
            done = await pruner.prune(jobs)
            records = {record.name: record for record in orphans}
            notes.pruned = [(records[result.name], result) for result in done]
            notes.calls += pruner.deletes_sent
    return notes


async def _orphans(
    ledger: Ledger, updates: UpdateLedger, project: str, names: set[str]
) -> list[LedgerRecord]:
    """The jobs batchsub created or adopted in this project that no manifest of DIR names."""
    found = [
        record
        async for record in ledger.records(project)
        if record.state is LedgerState.CREATED
        and record.job_id is not None
        and record.name not in names
    ]
    rows = await updates.update_records(project, [record.name for record in found])
    return [
        record
        for record in found
        if not ((row := rows.get(record.name)) and row.job_id == record.job_id
                and row.state is UpdateState.PRUNED)
    ]  # fmt: skip


def _announce(orphans: Sequence[LedgerRecord]) -> None:
    """The list --prune deletes, printed before anything is sent."""
    print(
        f"batchsub: --prune: stopping and deleting {len(orphans)} job(s) batchsub created or"
        " adopted in this project that no manifest of DIR names:",
        file=sys.stderr,
    )
    for record in orphans:
        print(f"  {record.name} (job {record.job_id}, from {record.source})", file=sys.stderr)


def _update_ledger(ledger: Ledger) -> UpdateLedger | None:
    """The ledger's update records (both SQL ledgers keep them)."""
    return cast(UpdateLedger, ledger) if hasattr(ledger, "begin_update") else None


async def _decide(
    directory: Path,
    ledger: Any,
    updates: UpdateLedger,
    reader: StatusReader,
    project: str,
    notes: ApplyNotes,
) -> tuple[list[tuple[UpdateJob, ApplyDecision | None]], set[str]]:
    """The updates to carry out (unfinished ones first, then the changed created jobs), and
    the names of every job of DIR."""
    unfinished = await updates.update_records(project)
    work: list[tuple[UpdateJob, ApplyDecision | None]] = [
        (UpdateJob(row.name, row.job_id, record=row), None) for row in unfinished.values()
    ]
    changed: list[tuple[JobSpec, LedgerRecord]] = []
    created: dict[str, int] = {}  # every created job of DIR: its id, to see it still exists
    source = DirectorySource(directory)
    batch: list[JobSpec] = []
    names: set[str] = set()
    async for item in source.items():
        if item.name is not None:
            names.add(item.name)
        if isinstance(item, RememberedJob) and item.job_id is not None:
            created[item.name] = item.job_id
        elif isinstance(item, JobSpec):
            batch.append(item)
            if len(batch) >= _BATCH:
                await _sort(ledger, project, batch, changed, created)
                batch = []
    await _sort(ledger, project, batch, changed, created)
    try:
        seen = await reader.read({job_id: None for job_id in created.values()})
    except ApiError as exc:
        notes.fatal = f"statuses unreadable: {exc}"
        log.error("apply.statuses_unreadable", error=str(exc))
        return work, names
    rows = await updates.update_records(project, [spec.name for spec, _ in changed])
    for name, job_id in created.items():
        if name not in unfinished and job_id in seen and seen[job_id] is None:
            error = f"job {job_id} was deleted on the server (--recreate-missing creates it)"
            notes.jobs[name] = Note(Outcome.MISSING, error=error)
            notes.missing[name] = job_id
    for spec, record in changed:
        if spec.name in unfinished or spec.name in notes.jobs:
            continue
        assert record.job_id is not None
        sighting = seen.get(record.job_id)
        status = sighting.status.status if sighting is not None else None
        decision = decide_apply(spec, record, rows.get(spec.name), status)
        if decision.action in UPDATES:
            work.append((UpdateJob(spec.name, record.job_id, spec, decision), decision))
        elif decision.action is not ApplyAction.UNCHANGED:
            outcome = Outcome.DRIFTED if decision.changes else Outcome.UNRESOLVED
            notes.jobs[spec.name] = Note(outcome, change_rows(decision), decision.reason)
    return work, names


async def _sort(
    ledger: Any,
    project: str,
    batch: Sequence[JobSpec],
    changed: list[tuple[JobSpec, LedgerRecord]],
    created: dict[str, int],
) -> None:
    """Of ``batch``, the created jobs (by id) and, of those, the ones whose body changed."""
    if not batch:
        return
    records: dict[str, LedgerRecord] = await ledger.get_many(project, [s.name for s in batch])
    for spec in batch:
        record = records.get(spec.name)
        if record is None or record.state is not LedgerState.CREATED or record.job_id is None:
            continue
        created[spec.name] = record.job_id
        if record.body != spec.body:
            changed.append((spec, record))


def _note(notes: ApplyNotes, result: UpdateResult, decision: ApplyDecision | None) -> None:
    changes = change_rows(decision) if decision is not None else _resumed_changes(result)
    notes.jobs[result.name] = Note(_KIND_OUTCOMES[result.kind], changes, result.error)


def _resumed_changes(result: UpdateResult) -> list[dict[str, object]]:
    """An update finished from the ledger: its fields (old values are not recorded)."""
    how = "restart" if result.restarted else "update"
    return [{"field": name, "old": None, "new": None, "how": how} for name in result.fields]


# --- the report ------------------------------------------------------------------------


class ApplyAccount(RunAccount):
    """``run``'s account, with pass 1's outcome in place of ``already_created``/``drifted``."""

    def __init__(self, report_path: Path | None, notes: ApplyNotes) -> None:
        super().__init__(report_path)
        self.notes = notes

    def add(self, result: JobResult, *args: Any, **kwargs: Any) -> None:
        """Count one result (rewritten by pass 1's note) and append its report row."""
        super().add(self._rewritten(result, done=kwargs.get("row", True)), *args, **kwargs)

    def add_row(self, result: JobResult) -> None:
        """The row of a result counted before, once its start and wait ended (rewritten)."""
        super().add_row(self._rewritten(result, done=True))

    def _rewritten(self, result: JobResult, *, done: bool) -> JobResult:
        """The result as pass 1 saw it; ``done``: its row is written, its note used up (a
        daemon sees the same name again, unchanged, as already created)."""
        notes = self.notes.jobs
        note = notes.pop(result.name or "", None) if done else notes.get(result.name or "")
        if note is None or result.outcome not in (Outcome.ALREADY_CREATED, Outcome.DRIFTED):
            return result
        if note.outcome is Outcome.UPDATED and result.outcome is Outcome.DRIFTED:
            # An update a crash left was finished, to the body recorded then; the manifest
            # changed again since: the next apply makes that change.
            error = "finished an earlier update; the manifest changed since: apply again"
            return replace(result, outcome=Outcome.UNRESOLVED, error=error, changes=note.changes)
        return replace(
            result, outcome=note.outcome, error=note.error, changes=note.changes, drift=[]
        )

    def summary(self, **extra: Any) -> dict[str, Any]:
        """``run``'s summary, with the update calls of pass 1."""
        summary = super().summary(**extra)
        summary["update_calls"] = self.notes.puts
        summary["stop_run_calls"] = self.notes.calls
        if self.notes.fatal and not summary.get("fatal"):
            summary["fatal"] = self.notes.fatal
            summary["exit_code"] = max(int(summary.get("exit_code", 0)), 1)
        return summary


# --- the daemons: ``watch --apply`` and ``consume --apply`` --------------------------------


class ApplyingSource:
    """A daemon's source whose changed manifests update their jobs (``--apply``).

    Each manifest of a job the ledger records as created whose body changed is updated (the
    same decision and ``Updater`` as ``apply``) before the create path sees it: the create path
    then finds the job holding its manifest, and the drop folder moves the file to ``done/``
    (an update refused leaves it ``drifted``: ``failed/``). Updates a crash left unfinished are
    finished first. One manifest at a time: updates are rare in a daemon, and a restart takes
    seconds whoever waits. ``runner.run_source`` hands it the run's parts (``use_parts``).
    """

    def __init__(self, inner: Source, notes: ApplyNotes, settings: Settings, *, savepoint: bool):
        self._inner = inner
        self._notes = notes
        self._settings = settings
        self._savepoint = savepoint
        self._ledger: Ledger | None = None
        self._updates: UpdateLedger | None = None
        self._updater: Updater | None = None
        self._reader: StatusReader | None = None
        self._project = ""

    def use_parts(
        self,
        ledger: Ledger,
        client: DliClient,
        caller: RetryingCaller,
        limiter: RateLimiter,
        policy: RetryPolicy,
    ) -> None:
        """The run's ledger, client and pacing, shared with its creates."""
        self._ledger, self._updates = ledger, _update_ledger(ledger)
        if self._updates is None:
            return
        self._project = client.project_id
        self._reader = StatusReader(client, caller)
        self._updater = Updater(
            client=client,
            reader=self._reader,
            caller=caller,
            ledger=self._updates,
            limiter=limiter,
            policy=policy,
            savepoint=self._savepoint,
            concurrency=self._settings.concurrency,
            in_doubt_grace=self._settings.in_doubt_grace,
        )

    async def items(self) -> AsyncIterator[ManifestItem]:
        """The inner source's items, each changed job updated before it is yielded."""
        if self._updater is not None and self._updates is not None:
            rows = await self._updates.update_records(self._project)
            if rows:
                jobs = [UpdateJob(row.name, row.job_id, record=row) for row in rows.values()]
                for result in await self._updater.update(jobs):
                    _note(self._notes, result, None)
        async for item in self._inner.items():
            if isinstance(item, JobSpec):
                await self._apply(item)
            yield item

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        """Told once per item, after its outcome is committed."""
        await self._inner.finish(item, result)

    async def _apply(self, spec: JobSpec) -> None:
        ledger, updates, updater, reader = self._ledger, self._updates, self._updater, self._reader
        if ledger is None or updates is None or updater is None or reader is None:
            return
        record = (await ledger.get_many(self._project, [spec.name])).get(spec.name)
        if record is None or record.state is not LedgerState.CREATED or record.job_id is None:
            return
        if record.body == spec.body:
            return
        row = (await updates.update_records(self._project, [spec.name])).get(spec.name)
        try:
            seen = await reader.read({record.job_id: None})
        except ApiError as exc:
            self._notes.jobs[spec.name] = Note(Outcome.UNRESOLVED, error=f"status: {exc}")
            return
        sighting = seen.get(record.job_id)
        status = sighting.status.status if sighting is not None else None
        decision = decide_apply(spec, record, row, status, gone=sighting is None)
        if decision.action is ApplyAction.RESUME and row is not None:
            job, decided = UpdateJob(spec.name, record.job_id, record=row), None
        elif decision.action in UPDATES:
            job, decided = UpdateJob(spec.name, record.job_id, spec, decision), decision
        elif decision.action is ApplyAction.MISSING:
            self._notes.jobs[spec.name] = Note(Outcome.MISSING, error=decision.reason)
            return
        else:
            if decision.action is not ApplyAction.UNCHANGED:
                outcome = Outcome.DRIFTED if decision.changes else Outcome.UNRESOLVED
                self._notes.jobs[spec.name] = Note(outcome, change_rows(decision), decision.reason)
            return
        for result in await updater.update([job]):
            _note(self._notes, result, decided)


def add_apply_flags(parser: argparse.ArgumentParser) -> None:
    """``--apply`` and ``--savepoint`` of the daemons (``watch``, ``consume``)."""
    parser.add_argument(
        "--apply",
        action="store_true",
        help="a manifest of a job batchsub created that changed updates the job (as `apply`)",
    )
    parser.add_argument(
        "--savepoint",
        action="store_true",
        help="with --apply: a running job that must restart keeps its state through a savepoint",
    )


def applying(
    settings: Settings, source: Source, report: Path | None, *, savepoint: bool
) -> tuple[ApplyingSource, ApplyAccount]:
    """A daemon's source and account with ``--apply``: changed jobs are updated."""
    notes = ApplyNotes()
    return ApplyingSource(source, notes, settings, savepoint=savepoint), ApplyAccount(report, notes)
