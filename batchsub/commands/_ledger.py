"""The ledger a reading command names: it must exist, since reading must not create one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from batchsub.errors import ConfigError
from batchsub.jobs import ErrorInfo, LedgerRecord, LedgerState, Outcome
from batchsub.protocols import Ledger
from batchsub.settings import is_shared_ledger
from batchsub.wiring import open_ledger


def add_ledger_flags(parser: argparse.ArgumentParser) -> None:
    """``--ledger`` and ``--project-id`` of the commands that read a ledger."""
    parser.add_argument(
        "--ledger", help="ledger: a SQLite file or a postgresql:// URL (default: batchsub.db)"
    )
    parser.add_argument("--project-id", help="only this project's jobs (default: every project)")


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


def row_of(record: LedgerRecord) -> dict[str, Any]:
    """Which ledger row this is, as ``report`` and ``status --json`` show it."""
    return {"project_id": record.project_id, "source": record.source, "name": record.name}


def error_fields(error: ErrorInfo | None) -> dict[str, Any]:
    """A ledger row's error as ``report`` and ``status --json`` show it, field by field."""
    return {
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "http_status": error.http_status if error else None,
    }


# One vocabulary: a ledger row read as the outcome the run report gives such a job. The ledger
# keeps finer states; ``status`` and ``report`` show both (README, "One vocabulary").
OUTCOME_OF_STATE: dict[LedgerState, Outcome] = {
    LedgerState.CREATED: Outcome.CREATED,
    LedgerState.FAILED: Outcome.FAILED,  # refused for good
    LedgerState.RETRYING: Outcome.FAILED,  # with an error: gave up after retries
    LedgerState.SUBMITTING: Outcome.UNRESOLVED,  # in doubt: a run stopped with it in flight
    LedgerState.UNKNOWN: Outcome.UNRESOLVED,  # in doubt: its answer was lost
}


def outcome_of(record: LedgerRecord) -> Outcome:
    """The run report's outcome for a ledger row: ``retrying`` with an error gave up after
    retries (failed); without one, a run stopped before sending it (unresolved)."""
    if record.state is LedgerState.RETRYING and record.error is None:
        return Outcome.UNRESOLVED
    return OUTCOME_OF_STATE[record.state]
