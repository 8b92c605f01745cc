"""``batchsub retry``: send again the jobs the ledger records as failed or retrying.

Each is resent with the body the ledger recorded, through ``run_source`` exactly as ``run``
sends; created jobs are never created again. With ``--start``, the jobs created before whose
start failed are started once more too (a plain ``run --start`` leaves them alone: a start
failure needs a fix first). Flags, report and exit codes as ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

from batchsub import eventloop
from batchsub.commands._flags import add_run_flags, add_send_flags, add_start_flags
from batchsub.commands._ledger import existing_ledger, require_ledger
from batchsub.commands.status import ledger_status, never_sent_advice
from batchsub.files import is_stdout
from batchsub.jobs import JobResult, LedgerState, ManifestItem, RememberedJob, StartState
from batchsub.logs import configure_command_logging
from batchsub.masking import mask_url
from batchsub.protocols import Ledger, Source
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
    add_start_flags(retry, waves=True)
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
    failed = LedgerFailedSource(existing_ledger(settings.ledger), project_id)
    count = await failed.load()  # opened and closed again before run_source opens it
    source: Source = failed
    start_failed: list[RememberedJob] = []
    if settings.start:  # --start: jobs whose start failed are started once more
        start_failed = await _start_failed(existing_ledger(settings.ledger), project_id)
        source = _WithStartFailed(failed, start_failed)
    if count == 0 and not start_failed:
        shown = mask_url(settings.ledger)
        announce(f"nothing to retry: ledger {shown} has no failed jobs in {project_id}")
        account.write_report(account.summary(exit_code=0))
        return 0
    if start_failed:
        announce(
            f"starting again {len(start_failed)} jobs of project {project_id} whose start failed"
        )
    if count:
        announce(f"sending again {count} failed jobs of project {project_id}")
    return await run_source(
        settings,
        source,
        account,
        simulator=simulator,
        progress=progress,
        total=count + len(start_failed),
        retry_failed=True,
        rerun="batchsub retry",
    )


async def _start_failed(ledger: Ledger, project_id: str) -> list[RememberedJob]:
    """The created jobs of the project whose start failed (read, then the ledger closed)."""
    await ledger.open()
    try:
        return [
            RememberedJob(record.source, record.name, record.job_id, record.adopted)
            async for record in ledger.records(project_id)
            if record.state is LedgerState.CREATED
            and record.start is not None
            and record.start.state is StartState.START_FAILED
            and record.start.job_id == record.job_id
        ]
    finally:
        await ledger.close()


class _WithStartFailed:
    """The failed jobs to send again, then the created jobs whose start failed (as jobs that
    exist: the run reports them ``already_created`` and starts them)."""

    def __init__(self, failed: Source, start_failed: list[RememberedJob]) -> None:
        self._failed = failed
        self._start_failed = start_failed

    async def items(self) -> AsyncIterator[ManifestItem]:
        async for item in self._failed.items():
            yield item
        for job in self._start_failed:
            yield job

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        await self._failed.finish(item, result)


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
