"""``batchsub report``: every ledger row, streamed as JSON or CSV, to stdout or ``--output``.

``--output`` is written as ``--report`` is (``batchsub.files.open_output``). Reads the ledger
without locking it and never creates one. ``outcome`` is the run report's word for the row's
ledger state (``_ledger.OUTCOME_OF_STATE``: ``retrying`` is ``failed``); ``ledger_state``
keeps the finer state. A CSV cell that a spreadsheet would run as a formula (it starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is written with a ``'`` before it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
from pathlib import Path
from typing import IO, Any

import orjson

from batchsub.commands._ledger import (
    add_ledger_flags,
    error_fields,
    existing_ledger,
    outcome_of,
    row_of,
)
from batchsub.files import check_output, stdout_may_close, text_output
from batchsub.jobs import LedgerRecord
from batchsub.protocols import Ledger
from batchsub.settings import Settings
from batchsub.text import iso_utc

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
    "ledger_state",
    "start_state",
    "start_attempts",
    "status",
    "status_seen_at",
    "started_at",
    "running_at",
    "start_error",
)
# OWASP's advice against CSV injection: a leading quote makes the cell text in a spreadsheet.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def add_parser(commands: Any) -> None:
    """Register ``report`` with the CLI."""
    report = commands.add_parser("report", help="every ledger row as a JSON or CSV report")
    add_ledger_flags(report)
    report.add_argument("--format", choices=["json", "csv"], default="json")
    report.add_argument(
        "--output", type=Path, help="write to this file, atomically (default: stdout, or -)"
    )
    report.set_defaults(handler=report_command)


def report_row(record: LedgerRecord) -> dict[str, Any]:
    """One ledger row as the report shows it: its outcome in the run report's words."""
    return {
        **row_of(record),
        "outcome": outcome_of(record).value,
        "job_id": record.job_id,
        "attempts": record.attempts,
        "adopted": record.adopted,
        **error_fields(record.error),
        "created_at": iso_utc(record.created_at),
        "updated_at": iso_utc(record.updated_at),
        "ledger_state": record.state.value,
        **start_fields(record),
    }


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: booleans as true/false, text a spreadsheet would run escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def start_fields(record: LedgerRecord) -> dict[str, Any]:
    """What the ledger knows of a job's start (``--start``, ``--wait``), all None if nothing.

    A start record about another job of that name (created since) is not this job's.
    """
    start = record.start
    if start is not None and start.job_id != record.job_id:
        start = None
    return {
        "start_state": start.state.value if start and start.state else None,
        "start_attempts": start.attempts if start else 0,
        "status": start.last_status if start else None,
        "status_seen_at": _iso(start.status_seen_at if start else None),
        "started_at": _iso(start.started_at if start else None),
        "running_at": _iso(start.running_at if start else None),
        "start_error": start.error if start else None,
    }


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: csv_cell(v) for k, v in row.items()}


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
    with stdout_may_close():
        with text_output(args.output, "--output") as out:
            asyncio.run(write_ledger_report(ledger, args.project_id, args.format, out))
    return 0
