"""The commands a team uses between runs: validate, plan, status, report, retry, config show.

All but ``retry`` are read-only: ``validate`` never opens a ledger, ``plan`` sends list calls
only (with ``--check-remote``), ``status`` and ``report`` read the ledger and never create one.
``retry`` sends through ``run_source`` exactly as ``run`` does. Errors are ``BatchsubError``s,
which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import heapq
import io
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from batchsub import eventloop
from batchsub.commands._flags import add_send_flags
from batchsub.errors import ConfigError
from batchsub.files import STDOUT, check_output, is_stdout, open_output
from batchsub.jobs import (
    IN_DOUBT_STATES,
    InvalidManifest,
    JobSpec,
    LedgerRecord,
    LedgerState,
    ManifestItem,
    SettledJob,
)
from batchsub.logs import configure_command_logging
from batchsub.manifest import diff_fields
from batchsub.masking import mask_url
from batchsub.protocols import Ledger
from batchsub.reconcile import Reconciler
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import DEFAULT_CONFIG_FILE, Settings, config_file_in_use
from batchsub.sources.directory import DirectorySource
from batchsub.sources.ledger_source import LedgerFailedSource
from batchsub.wiring import (
    NO_PROJECT,
    credential_in_use,
    is_shared_ledger,
    open_ledger,
    project_id_for,
    remote_api,
)

# rich is imported where a table is drawn: retry, report and config show never draw one.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

TABLE_LIMIT = 500  # rows a human table shows at most; --json always has every row
PLAN_BATCH = 256  # jobs looked up in the ledger per query
FAILURE_STATES = frozenset({LedgerState.FAILED, LedgerState.RETRYING, LedgerState.UNKNOWN})
REPORT_FIELDS = (
    "project_id",
    "source",
    "name",
    "outcome",
    "job_id",
    "attempts",
    "adopted",
    "error_code",
    "error_message",
    "http_status",
    "created_at",
    "updated_at",
)


def add_parser(commands: Any) -> None:
    """Register validate, plan, status, report, retry and config show on the CLI."""
    validate = commands.add_parser("validate", help="check every manifest offline")
    validate.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    validate.add_argument("--json", action="store_true", help="print the problems as JSON")
    validate.set_defaults(handler=validate_command)

    plan = commands.add_parser("plan", help="show what a run would do, without creating")
    plan.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    add_send_flags(plan)
    plan.add_argument(
        "--check-remote",
        action="store_true",
        help="also list the project's jobs on the API (list calls only) to spot adoptions",
    )
    plan.add_argument("--all", action="store_true", help="list already created jobs too")
    plan.add_argument("--json", action="store_true", help="print every job's action as JSON")
    plan.set_defaults(handler=plan_command)

    status = commands.add_parser("status", help="ledger counts by state and the latest failures")
    _add_ledger_flags(status)
    status.add_argument("--limit", type=int, default=10, help="failures to show (default: 10)")
    status.add_argument("--json", action="store_true", help="print counts and failures as JSON")
    status.set_defaults(handler=status_command)

    report = commands.add_parser("report", help="every ledger row as a JSON or CSV report")
    _add_ledger_flags(report)
    report.add_argument("--format", choices=["json", "csv"], default="json")
    report.add_argument(
        "--output", type=Path, help="write to this file, atomically (default: stdout, or -)"
    )
    report.set_defaults(handler=report_command)

    retry = commands.add_parser("retry", help="send again the jobs that failed permanently")
    add_send_flags(retry)
    retry.add_argument("--report", type=Path, help="write a JSON report of every job to this file")
    retry.add_argument(
        "--simulator", action="store_true", help="start the built-in DLI simulator and send to it"
    )
    retry.add_argument(
        "--progress", choices=["auto", "on", "off"], help="progress bar (default: auto)"
    )
    retry.set_defaults(handler=retry_command)

    config = commands.add_parser("config", help="inspect the settings")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="print the merged settings, secrets masked")
    add_send_flags(show)
    show.add_argument("--json", action="store_true", help="print the settings as JSON")
    show.set_defaults(handler=config_show_command)


def _add_ledger_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", help="ledger: a SQLite file path (default: ./batchsub.db)")
    parser.add_argument("--project-id", help="only this project's jobs (default: every project)")


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _iso(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC, e.g. ``2024-05-01T10:00:00.123Z``."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def ledger_exists(spec: str) -> bool:
    """A shared (PostgreSQL) ledger, or a SQLite file that is there: reading it creates nothing."""
    return is_shared_ledger(spec) or Path(spec).is_file()


def require_ledger(spec: str) -> None:
    """Fail in one line unless the ledger named by ``--ledger`` exists."""
    if not ledger_exists(spec):
        raise ConfigError(f"ledger {spec} does not exist: pass --ledger PATH, the file a run wrote")


def existing_ledger(spec: str) -> Ledger:
    """The ledger named by ``--ledger``, which must exist: reading must not create an empty one."""
    require_ledger(spec)
    return open_ledger(spec, read_only=True)


# --- validate ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid manifest or job: its file, its job (name or list index) and what is wrong."""

    file: str
    job: str | None
    problem: str

    @classmethod
    def of(cls, item: InvalidManifest) -> Problem:
        """The problem an InvalidManifest describes, without the source prefix in its text."""
        file, index = split_source(item.source)
        job = item.name or (f"#{index}" if index is not None else None)
        return cls(file, job, item.error.removeprefix(f"{item.source}: "))


@dataclass(slots=True)
class Validation:
    """What ``validate`` found: manifest files read, valid jobs, and every problem."""

    manifests: int = 0
    valid: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)


def split_source(source: str) -> tuple[str, int | None]:
    """``"dir/a.yaml#2"`` -> ``("dir/a.yaml", 2)``; a source without an index -> (source, None)."""
    file, sep, index = source.rpartition("#")
    if sep and index.isdigit():
        return file, int(index)
    return source, None


async def validate_directory(directory: Path) -> Validation:
    """Read every manifest under ``directory`` (as ``run`` would, duplicate names included)."""
    found = Validation()
    last_file: str | None = None
    async for item in DirectorySource(directory).items():
        file, _ = split_source(item.source)
        if file != last_file:  # items arrive file by file, in path order
            found.manifests += 1
            last_file = file
        if isinstance(item, InvalidManifest):
            found.problems.append(Problem.of(item))
        else:
            found.valid += 1
    return found


def validate_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub validate DIR``: 0 when every manifest is valid, 1 otherwise."""
    from rich.table import Table
    from rich.text import Text

    found = asyncio.run(validate_directory(args.directory))
    if args.json:
        out = {
            "manifests": found.manifests,
            "valid": found.valid,
            "problems": [dataclasses.asdict(p) for p in found.problems],
        }
        print(orjson.dumps(out).decode())
    else:
        console = _console()
        if found.problems:
            table = Table(title="batchsub validate", header_style="bold")
            for column in ("file", "job", "problem"):
                table.add_column(column, overflow="fold")
            for p in found.problems[:TABLE_LIMIT]:
                table.add_row(Text(p.file), Text(p.job or "-"), Text(p.problem))
            console.print(table)
            _more(console, len(found.problems))
        console.print(
            f"{_plural(found.manifests, 'manifest')}, {_plural(found.valid, 'job')} valid, "
            f"{_plural(len(found.problems), 'problem')}",
            markup=False,
        )
    return 1 if found.problems else 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _more(console: Console, total: int) -> None:
    if total > TABLE_LIMIT:
        console.print(f"... and {total - TABLE_LIMIT} more (use --json for all)", markup=False)


# --- plan ----------------------------------------------------------------------------------


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

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON output shows it."""
        return {
            "source": self.source,
            "name": self.name,
            "action": self.action.value,
            "job_id": self.job_id,
            "detail": self.detail,
            "drift": list(self.drift),
        }


def plan_job(
    spec: JobSpec, record: LedgerRecord | None, remote: Mapping[str, int] | None
) -> PlanRow:
    """The action a run would take for ``spec``, given its ledger row and the remote names.

    Mirrors the submitter: a created row settles the job (drifted if the body changed); any
    other job found on the server by name is adopted; the rest are sent.
    """
    remote_id = remote.get(spec.name) if remote is not None else None
    if record is not None and record.state is LedgerState.CREATED:
        return _created_row(spec, record, remote)
    if remote_id is not None:
        was = f"ledger: {record.state.value}; " if record is not None else ""
        return PlanRow(spec.source, spec.name, Action.ADOPT, remote_id, was + "exists remotely")
    if record is None:
        return PlanRow(spec.source, spec.name, Action.CREATE)
    error = f": {record.error}" if record.error else ""
    if record.state in IN_DOUBT_STATES:
        if remote is not None:  # looked up already: not there, so it will be sent
            detail = f"was {record.state.value}{error}; not found remotely"
            return PlanRow(spec.source, spec.name, Action.CREATE, detail=detail)
        detail = f"{record.state.value}{error}; looked up by name before sending"
        return PlanRow(spec.source, spec.name, Action.RECONCILE, detail=detail)
    detail = f"{record.state.value} after {_plural(record.attempts, 'attempt')}{error}"
    return PlanRow(spec.source, spec.name, Action.RETRY, detail=detail)


def _created_row(spec: JobSpec, record: LedgerRecord, remote: Mapping[str, int] | None) -> PlanRow:
    if record.body_hash != spec.body_hash:
        drift = tuple(diff_fields(record.body, spec.body))
        detail = "manifest changed since the job was created: " + ", ".join(drift)
        return PlanRow(spec.source, spec.name, Action.DRIFTED, record.job_id, detail, drift)
    detail = ""
    if remote is not None and spec.name not in remote:
        detail = "not found remotely (deleted?); the ledger says created, so it is not sent"
    return PlanRow(spec.source, spec.name, Action.ALREADY_CREATED, record.job_id, detail)


async def plan_rows(
    items: AsyncIterator[ManifestItem],
    ledger: Ledger | None,
    project_id: str,
    remote: Mapping[str, int] | None,
) -> AsyncIterator[PlanRow]:
    """The plan of every item, streamed; ``ledger`` is open, or None when none exists yet."""
    batch: list[ManifestItem] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= PLAN_BATCH:
            for row in await _plan_batch(batch, ledger, project_id, remote):
                yield row
            batch = []
    for row in await _plan_batch(batch, ledger, project_id, remote):
        yield row


async def _plan_batch(
    batch: list[ManifestItem],
    ledger: Ledger | None,
    project_id: str,
    remote: Mapping[str, int] | None,
) -> list[PlanRow]:
    names = [item.name for item in batch if isinstance(item, JobSpec)]
    records = await ledger.get_many(project_id, names) if ledger is not None and names else {}
    rows = []
    for item in batch:
        if isinstance(item, InvalidManifest):
            detail = item.error.removeprefix(f"{item.source}: ")
            rows.append(PlanRow(item.source, item.name, Action.INVALID, detail=detail))
        elif isinstance(item, SettledJob):
            rows.append(PlanRow(item.source, item.name, Action.ALREADY_CREATED, item.job_id))
        else:
            rows.append(plan_job(item, records.get(item.name), remote))
    return rows


async def list_remote_jobs(settings: Settings, project_id: str) -> dict[str, int]:
    """Name -> lowest job_id of every Flink Jar job of the project: list calls only."""
    async with remote_api(settings, project_id) as api:
        return await Reconciler(api.client, api.caller).list_jobs()


def plan_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub plan DIR``: 1 if a manifest is invalid, else 0; nothing is created."""
    project_id = settings.project_id
    if not project_id:
        raise ConfigError(NO_PROJECT + " (the ledger is keyed by project)")
    source = DirectorySource(args.directory)  # a missing directory fails before any call
    if args.check_remote:
        configure_command_logging(settings, quiet=True)
    counts: Counter[Action] = Counter()
    with _stdout_may_close():
        counts = asyncio.run(_plan(settings, args, source, project_id))
    return 1 if counts[Action.INVALID] else 0


async def _plan(
    settings: Settings, args: argparse.Namespace, source: DirectorySource, project_id: str
) -> Counter[Action]:
    remote = await list_remote_jobs(settings, project_id) if args.check_remote else None
    ledger: Ledger | None = None
    if ledger_exists(settings.ledger):
        # A missing SQLite file means nothing was sent yet; opening it would create it.
        ledger = open_ledger(settings.ledger, read_only=True)
    if ledger is not None:
        await ledger.open()
    output: _PlanJson | _PlanTable = (
        _PlanJson(settings, project_id, remote) if args.json else _PlanTable(show_all=args.all)
    )
    try:
        with output:
            async for row in plan_rows(source.items(), ledger, project_id, remote):
                output.add(row)
    finally:
        if ledger is not None:
            await ledger.close()
    if not args.json:
        _print_plan_footer(settings, project_id, ledger is not None, remote, output.counts)
    return output.counts


class _PlanJson:
    """Streams ``{"jobs": [...], "counts": {...}}`` to stdout as rows come."""

    def __init__(
        self, settings: Settings, project_id: str, remote: Mapping[str, int] | None
    ) -> None:
        self.counts: Counter[Action] = Counter()
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
        sys.stdout.write(("\n" if self._first else ",\n") + orjson.dumps(row.as_dict()).decode())
        self._first = False

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # leave the JSON unterminated: a script must not trust it
            sys.stdout.write("\n")
            return
        counts = {action.value: self.counts[action] for action in Action}
        sys.stdout.write('\n], "counts": ' + orjson.dumps(counts).decode() + "}\n")


class _PlanTable:
    """Collects the rows worth showing (not already created, unless asked) into one table."""

    def __init__(self, *, show_all: bool) -> None:
        self.counts: Counter[Action] = Counter()
        self._show_all = show_all
        self._rows: list[PlanRow] = []
        self._shown = 0

    def __enter__(self) -> _PlanTable:
        return self

    def add(self, row: PlanRow) -> None:
        self.counts[row.action] += 1
        if row.action is Action.ALREADY_CREATED and not self._show_all and not row.detail:
            return
        self._shown += 1
        if len(self._rows) < TABLE_LIMIT:
            self._rows.append(row)

    def __exit__(self, *exc: object) -> None:
        from rich.table import Table
        from rich.text import Text

        if exc[0] is not None or not self._rows:
            return
        console = _console()
        table = Table(title="batchsub plan", header_style="bold")
        for column in ("action", "name", "source", "detail"):
            table.add_column(column, overflow="fold")
        for row in self._rows:
            table.add_row(
                Text(row.action.value, style=_ACTION_STYLES[row.action]),
                Text(row.name or "-"),
                Text(row.source),
                Text(row.detail),
            )
        console.print(table)
        _more(console, self._shown)


def _print_plan_footer(
    settings: Settings,
    project_id: str,
    ledger_exists: bool,
    remote: Mapping[str, int] | None,
    counts: Counter[Action],
) -> None:
    console = _console()
    if not ledger_exists:
        console.print(f"ledger {settings.ledger} does not exist yet: no job was sent with it")
    checked = (
        f"{len(remote)} jobs listed remotely"
        if remote is not None
        else "remote not checked (--check-remote lists it)"
    )
    shown = mask_url(settings.ledger)
    console.print(f"project {project_id} · ledger {shown} · {checked}", markup=False)
    console.print(
        f"Plan: {counts[Action.CREATE]} to create, {counts[Action.ADOPT]} to adopt, "
        f"{counts[Action.RETRY]} to retry, {counts[Action.RECONCILE]} to reconcile, "
        f"{counts[Action.ALREADY_CREATED]} already created, {counts[Action.DRIFTED]} drifted, "
        f"{counts[Action.INVALID]} invalid.",
        markup=False,
    )


# --- status --------------------------------------------------------------------------------


@dataclass(slots=True)
class LedgerStatus:
    """Counts by state and the latest failures of a ledger."""

    counts: dict[str, int]
    failures: list[LedgerRecord]


async def ledger_status(ledger: Ledger, project_id: str | None, limit: int) -> LedgerStatus:
    """Stream every row once: count states, keep the ``limit`` most recently updated failures."""
    counts: Counter[str] = Counter()
    latest: list[tuple[float, int, LedgerRecord]] = []  # a min-heap on updated_at
    await ledger.open()
    try:
        async for seq, record in _enumerate(ledger.records(project_id)):
            counts[record.state.value] += 1
            if record.state in FAILURE_STATES and limit > 0:
                entry = (record.updated_at, seq, record)
                if len(latest) < limit:
                    heapq.heappush(latest, entry)
                else:
                    heapq.heappushpop(latest, entry)
    finally:
        await ledger.close()
    by_state = {state.value: counts[state.value] for state in LedgerState}
    by_state["total"] = sum(counts.values())
    failures = [record for _, _, record in sorted(latest, reverse=True)]
    return LedgerStatus(by_state, failures)


async def _enumerate(
    records: AsyncIterator[LedgerRecord],
) -> AsyncIterator[tuple[int, LedgerRecord]]:
    seq = 0
    async for record in records:
        yield seq, record
        seq += 1


def failure_row(record: LedgerRecord) -> dict[str, Any]:
    """One failure as ``status --json`` shows it."""
    error = record.error
    return {
        "project_id": record.project_id,
        "source": record.source,
        "name": record.name,
        "state": record.state.value,
        "attempts": record.attempts,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "http_status": error.http_status if error else None,
        "updated_at": _iso(record.updated_at),
    }


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub status``: counts by state and the latest failures; always 0 when readable."""
    from rich.table import Table

    ledger = existing_ledger(settings.ledger)
    status = asyncio.run(ledger_status(ledger, args.project_id, args.limit))
    if args.json:
        out = {"counts": status.counts, "failures": [failure_row(r) for r in status.failures]}
        print(orjson.dumps(out).decode())
        return 0
    console = _console()
    where = f" (project {args.project_id})" if args.project_id else ""
    counts = Table(title=f"ledger {mask_url(settings.ledger)}{where}", header_style="bold")
    counts.add_column("state")
    counts.add_column("jobs", justify="right")
    for state, count in status.counts.items():
        counts.add_row(state, str(count), style="bold" if state == "total" else None)
    console.print(counts)
    if status.failures:
        console.print(_failures_table(status.failures))
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
        table.add_row(
            Text(record.name),
            Text(record.state.value),
            Text(code),
            Text(row["error_message"] or ""),
            Text(row["updated_at"]),
        )
    return table


# --- report --------------------------------------------------------------------------------


def report_row(record: LedgerRecord) -> dict[str, Any]:
    """One ledger row as the report shows it; the state is the outcome."""
    error = record.error
    return {
        "project_id": record.project_id,
        "source": record.source,
        "name": record.name,
        "outcome": record.state.value,
        "job_id": record.job_id,
        "attempts": record.attempts,
        "adopted": record.adopted,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "http_status": error.http_status if error else None,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
    }


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in row.items()}


async def write_ledger_report(
    ledger: Ledger, project_id: str | None, fmt: str, out: IO[str]
) -> int:
    """Write every ledger row to ``out`` as JSON or CSV, streamed; returns the rows written."""
    rows = 0
    await ledger.open()
    try:
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS, lineterminator="\n")
            writer.writeheader()
            async for record in ledger.records(project_id):
                writer.writerow(_csv_row(report_row(record)))
                rows += 1
        else:
            out.write('{"jobs": [')
            async for record in ledger.records(project_id):
                out.write(
                    ("\n" if rows == 0 else ",\n") + orjson.dumps(report_row(record)).decode()
                )
                rows += 1
            out.write("\n]}\n")
    finally:
        await ledger.close()
    return rows


def report_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub report``: the ledger as JSON or CSV, to stdout or atomically to ``--output``."""
    ledger = existing_ledger(settings.ledger)
    if args.output is not None:
        check_output(args.output, "--output")  # before the ledger is read
    with _stdout_may_close():
        with _output(args.output) as out:
            asyncio.run(write_ledger_report(ledger, args.project_id, args.format, out))
    return 0


@contextmanager
def _stdout_may_close() -> Iterator[None]:
    """A reader that stops early (``batchsub report | head``) is not an error."""
    try:
        yield
    except BrokenPipeError:
        # Python's documented idiom: point stdout at devnull so the flush at exit is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """Text to ``--output PATH`` (see ``batchsub.files.open_output``), or to stdout."""
    with open_output(STDOUT if path is None else path, "--output") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="", write_through=True)
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # the stream is open_output's to close (stdout: never)


# --- retry ---------------------------------------------------------------------------------


async def retry_failed(
    settings: Settings,
    report: Path | None,
    *,
    simulator: bool = False,
    progress: bool = False,
    announce: Callable[[str], None] = print,
) -> int:
    """Send again the jobs the ledger records as failed or retrying; created ones are untouched.

    Returns the run's exit code, or 0 with a message when nothing is to be sent.
    """
    project_id = project_id_for(settings, simulator=simulator)
    account = RunAccount(report)  # a bad --report path fails before anything is read
    source = LedgerFailedSource(existing_ledger(settings.ledger), project_id)
    count = await source.load()  # opened and closed again before run_source opens it
    if count == 0:
        shown = mask_url(settings.ledger)
        announce(f"nothing to retry: ledger {shown} has no failed jobs in {project_id}")
        account.write_report(account.summary(exit_code=0))
        return 0
    announce(f"sending again {count} failed jobs of project {project_id}")
    return await run_source(
        settings, source, account, simulator=simulator, progress=progress, total=count
    )


def retry_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub retry``: exit codes as ``run``."""
    require_ledger(settings.ledger)  # fail in one line before any log set-up
    interactive = configure_command_logging(settings)
    show_progress = settings.progress_shown(interactive)
    # With the report on stdout, stdout holds the JSON alone.
    announce = partial(print, file=sys.stderr) if is_stdout(args.report) else print
    return eventloop.run(
        retry_failed(
            settings,
            args.report,
            simulator=args.simulator,
            progress=show_progress,
            announce=announce,
        ),
        settings.event_loop,
    )


# --- config show ---------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(str(value)).decode()  # a JSON string is a TOML basic string


def config_show_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub config show``: the merged settings (flags > env > file), secrets masked."""
    config_file = config_file_in_use(args.config)
    shown = settings.masked()
    credential = credential_in_use(settings)
    if args.json:
        out = {
            "config_file": str(config_file) if config_file else None,
            "credential": credential,
            "settings": shown,
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    origin = str(config_file) if config_file else f"none ({DEFAULT_CONFIG_FILE} not found)"
    lines = [
        f"# config file: {origin}",
        "# precedence: flags > BATCHSUB_* environment > config file > defaults",
    ]
    try:
        lines.append(f"# endpoint in use: {mask_url(settings.resolved_endpoint())}")
    except ConfigError as exc:
        lines.append(f"# endpoint in use: none ({exc})")
    lines.append(f"# credential in use: {credential}")
    for key, value in shown.items():
        lines.append(f"# {key} = (not set)" if value is None else f"{key} = {_toml_value(value)}")
    print("\n".join(lines))
    return 0
