"""``batchsub retry``: send again the jobs the ledger records as failed or retrying.

Each is resent with the body the ledger recorded, through ``run_source`` exactly as ``run``
sends; created jobs are never touched. Flags, report and exit codes as ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from batchsub import eventloop
from batchsub.commands._flags import add_run_flags, add_send_flags
from batchsub.commands._ledger import existing_ledger, require_ledger
from batchsub.commands.status import ledger_status, never_sent_advice
from batchsub.files import is_stdout
from batchsub.logs import configure_command_logging
from batchsub.masking import mask_url
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import Settings
from batchsub.sources.failed import LedgerFailedSource
from batchsub.wiring import project_id_for


def add_parser(commands: Any) -> None:
    """Register ``retry`` with the CLI."""
    retry = commands.add_parser("retry", help="send again the jobs that failed permanently")
    add_send_flags(retry)
    add_run_flags(retry)
    retry.set_defaults(handler=retry_command)


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
    unsent = never_sent_advice(await ledger_status(existing_ledger(settings.ledger), project_id, 0))
    if unsent is not None:
        announce(unsent)
    source = LedgerFailedSource(existing_ledger(settings.ledger), project_id)
    count = await source.load()  # opened and closed again before run_source opens it
    if count == 0:
        shown = mask_url(settings.ledger)
        announce(f"nothing to retry: ledger {shown} has no failed jobs in {project_id}")
        account.write_report(account.summary(exit_code=0))
        return 0
    announce(f"sending again {count} failed jobs of project {project_id}")
    return await run_source(
        settings,
        source,
        account,
        simulator=simulator,
        progress=progress,
        total=count,
        rerun="batchsub retry",
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
