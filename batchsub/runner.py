"""One run: source -> submitter (limiter, retry, client) -> ledger -> rollout -> report.

Every command that sends jobs (``run``, ``retry``, ``watch``, ``consume``) runs its Source
through ``run_source``, with parts built by ``batchsub.wiring``: one limiter, one retry
policy, one way to stop (a signal drains, a second one cancels) and one summary. With
``--start``/``--wait`` the jobs that exist go on to ``lifecycle.rollout`` (started, waited
for) before their report rows are written; with ``--waves``, ``lifecycle.wave_run`` sends
the source a wave at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from batchsub.console import FileCount, ProgressDisplay, print_summary
from batchsub.errors import OutputError
from batchsub.jobs import EXISTING_OUTCOMES, JobResult, Outcome
from batchsub.ledgers.outage import Outage
from batchsub.limiter import RateLimiter
from batchsub.logs import configure_command_logging, say
from batchsub.masking import mask_url

if TYPE_CHECKING:  # imported when --start/--wait asks for them: a plain run pays nothing
    from batchsub.lifecycle.rollout import Rollout
from batchsub.output import is_terminal
from batchsub.parse_pool import ParserPool
from batchsub.protocols import Auth, FileIndex, RunObserver, Source
from batchsub.reachability import Reachability
from batchsub.reconcile import Reconciler
from batchsub.report import EXIT_FATAL, RunAccount
from batchsub.retry import GIVE_UP_AFTER, RetryBudget, RetryingCaller
from batchsub.settings import Settings
from batchsub.sources.directory import DirectorySource, iter_manifest_paths
from batchsub.submitter import Submitter
from batchsub.wiring import (
    Lifecycle,
    client_for,
    lifecycle,
    refused_credential,
    resolve_target,
    retry_policy,
    sending_ledger,
    session_for,
)

log = structlog.get_logger("batchsub.run")
EXIT_SOME_FAILED = 1  # some job not as asked (or, for run, no manifest at all)



def refused_as_empty(directory: Path, report: Path | None) -> bool:
    """True (said, and the report written) when DIR holds no manifest: an error, as
    ``kubectl apply`` on no objects, since a wrong directory must not pass. A missing
    directory is a ConfigError (one line, exit 2)."""
    DirectorySource(directory)
    if next(iter_manifest_paths(directory), None) is not None:
        return False
    empty = RunAccount(report)
    empty.write_report(empty.summary(exit_code=EXIT_SOME_FAILED, interrupted=False))
    say("error", f"no manifests (*.json, *.yaml, *.yml) under {directory}: nothing to run")
    return True


async def run_directory(
    settings: Settings, directory: Path, report: Path | None, *, simulator: bool
) -> int:
    """``batchsub run DIR``: create every job of DIR once; returns the exit code."""
    interactive = configure_command_logging(settings)
    if refused_as_empty(directory, report):
        return EXIT_SOME_FAILED
    # Forked first: before the ledger, the sockets and any thread exist.
    parser = ParserPool(settings.parse_workers)
    parser.start()
    try:
        # Validated as parsed, from the object in hand (the submitter skips its own check):
        # a rerun reads only new or changed files (the file index), so it rarely pays for it.
        source = DirectorySource(directory, parser=parser)
        account = RunAccount(report)
        show_progress = settings.progress_shown(interactive)
        total = FileCount(sum(1 for _ in iter_manifest_paths(directory))) if show_progress else None
        code = await run_source(
            settings,
            source,
            account,
            simulator=simulator,
            progress=show_progress,
            total=total,
            rerun=f"batchsub run {shlex.quote(str(directory))}",
        )
    finally:
        parser.close()
    return code


async def run_source(
    settings: Settings,
    source: Source,
    account: RunAccount,
    *,
    simulator: bool = False,
    progress: bool = False,
    total: int | None = None,
    endless: bool = False,
    observer: RunObserver | None = None,
    retry_failed: bool = False,
    rerun: str | None = None,
) -> int:
    """Send every job of ``source``; print the summary, write the report, return the exit code.

    ``endless`` sources (a drop folder, a queue) stop being read on SIGTERM; a finite one is
    read to its end so that every manifest is in the report. A finite one stopped by a
    signal exits 128 + its number (130, 143) and is ``interrupted``; ``rerun`` is the command
    the summary then tells the user to run again. With ``--start``/``--wait`` a ``Rollout``
    starts each job once it exists and waits for it (``--waves``: ``WaveRun``);
    ``retry_failed``: jobs whose start failed are started again (``retry --start``).
    """
    started = time.monotonic()
    plan = lifecycle(settings, endless=endless, retry_failed=retry_failed)  # usage errors first
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(resolve_target(settings, simulator=simulator))
        account.set_target(target.project_id, target.endpoint)
        # A daemon waits through a ledger outage, at start-up too; a one-shot run does not
        # start without its ledger, and gives up on it after ledger_outage_limit.
        outage = Outage(
            limit=None if endless else settings.ledger_outage_limit,
            startup_limit=None if endless else 0.0,
            on_change=observer.on_ledger if observer else None,
        )
        ledger = sending_ledger(settings, outage)
        await ledger.open()
        stack.push_async_callback(ledger.close)
        if isinstance(source, DirectorySource) and isinstance(ledger, FileIndex):
            source.use_index(ledger, target.project_id)
        session = session_for(settings)
        stack.push_async_callback(session.close)
        limiter = RateLimiter(settings.rate)
        policy = retry_policy(settings)
        client = client_for(
            session,
            target,
            settings,
            on_answer=observer.on_answer if observer else None,
            reachability=Reachability(observer.on_api_state if observer else None),
        )
        # A one-shot run with nobody listening at the endpoint says so in seconds; a daemon
        # keeps trying through an outage, as long as the retry policy allows.
        caller = RetryingCaller(limiter, policy, give_up_after=None if endless else GIVE_UP_AFTER)
        use_parts = getattr(source, "use_parts", None)
        if use_parts is not None:  # a source that updates jobs (``watch``/``consume --apply``)
            use_parts(ledger, client, caller, limiter, policy)
        reconciler = Reconciler(
            client,
            caller,
            refresh_after=settings.snapshot_refresh,
            relist_after=settings.snapshot_relist,
        )
        rollout: Rollout | None = None
        sent = _Sent(account, observer)
        display = ProgressDisplay(
            account, limiter, enabled=progress, total=total, stopped=lambda: submitter.stopped
        )
        if plan.options.active:
            from batchsub.lifecycle.rollout import Rollout

            account.lifecycle_shown = True
            rollout = Rollout(
                plan.options,
                client=client,
                caller=caller,
                limiter=limiter,
                policy=policy,
                ledger=ledger,
                on_row=sent.row,
                on_phase=display.tally,
            )
            sent.rollout = rollout
        submitter = Submitter(
            client=client,
            ledger=ledger,
            limiter=limiter,
            policy=policy,
            budget=RetryBudget(),
            reconciler=reconciler,
            concurrency=settings.concurrency,
            on_result=sent.result,
            finish_source_on_stop=not endless,
            in_doubt_grace=settings.in_doubt_grace,
            claim_window=settings.claim_window,
            outage=outage,
        )
        if observer is not None:
            observer.on_start(limiter)
        log.info(
            "run.started",
            endpoint=mask_url(target.endpoint),
            project_id=target.project_id,
            auth=target.auth.describe(),
            ledger=mask_url(settings.ledger),
            rate=settings.rate,
            concurrency=settings.concurrency,
            start=settings.start,
            wait=plan.options.wait,
            waves=settings.waves,
        )
        for note in settings.notes:
            log.warning("settings.adjusted", note=note)
        with display:
            sending = _sending(submitter, source, rollout, plan, sent)
            signum = await _run_until_done(
                sending, display, settings.drain_timeout, submitter, rollout
            )
        fatal = submitter.fatal or (rollout.fatal if rollout is not None else None)
        extra = {}
        if rollout is not None:
            extra = {"run_calls": rollout.runs_sent, "status_calls": rollout.status_calls}
        interrupted = signum is not None and not endless
        exit_code = account.exit_code(fatal=fatal is not None)
        if interrupted and signum is not None:
            exit_code = 128 + signum  # as a shell reports a process the signal ended
        summary = account.summary(
            creates_sent=submitter.creates_sent,
            list_calls=reconciler.list_calls,
            throttled=limiter.throttled,
            retry_budget_exhausted=submitter.budget_exhausted,
            rate=round(limiter.rate, 3),
            duration_s=round(time.monotonic() - started, 3),
            exit_code=exit_code,
            interrupted=interrupted,
            fatal=_fatal_message(fatal, target.auth) if fatal else None,
            **extra,
        )
    unwritten = _write_report(account, summary)
    # The report on stdout keeps stdout JSON: the summary goes to stderr then.
    out = sys.stderr if account.report_to_stdout else sys.stdout
    if not endless or is_terminal(out):  # a daemon's summary is its run.finished event
        print_summary(summary, stream=out, rerun=rerun if interrupted else None)
    log.info("run.finished", **{k: v for k, v in summary.items() if k != "first_errors"})
    if fatal is not None:
        say("error", summary["fatal"])
    if unwritten is not None:
        say("error", str(unwritten))
    code: int = summary["exit_code"]
    return code


def _write_report(account: RunAccount, summary: dict[str, Any]) -> OutputError | None:
    """Write the report; if it cannot be (a full disk), the run still ends with its summary,
    and exit code 2."""
    try:
        account.write_report(summary)
    except OutputError as exc:
        summary["exit_code"] = EXIT_FATAL
        log.error("report.unwritten", error=str(exc))
        return exc
    return None


class _Sent:
    """Where each result goes: the account (and the observer) at once, or, for a job the
    rollout takes over, its count at once and its row once its start and wait ended."""

    def __init__(self, account: RunAccount, observer: RunObserver | None) -> None:
        self.account = account
        self.observer = observer
        self.rollout: Rollout | None = None
        self.create_failures = 0  # jobs not created (invalid manifests aside): waves count them

    def result(self, result: JobResult) -> None:
        taken = self.rollout is not None and self.rollout.take(result)
        self.account.add(result, row=not taken)
        if result.outcome not in EXISTING_OUTCOMES and result.outcome is not Outcome.INVALID:
            self.create_failures += 1
        if self.observer is not None:
            self.observer.on_result(result)

    def row(self, result: JobResult) -> None:
        self.account.add_row(result)
        if self.observer is not None:
            self.observer.on_lifecycle(result)


def _fatal_message(error: Any, auth: Auth) -> str:
    status = getattr(error, "http_status", None)
    if status in (401, 403):
        return refused_credential(auth, error)
    return str(error)


async def _sending(
    submitter: Submitter, source: Source, rollout: Rollout | None, plan: Lifecycle, sent: _Sent
) -> None:
    """Create every job of ``source``; with a rollout, start and wait for them (in waves)."""
    if rollout is None:
        await submitter.run(source)
        return
    rolling = asyncio.create_task(rollout.run())
    try:
        if plan.waves is None:
            await submitter.run(source)
        else:
            from batchsub.lifecycle.wave_run import WaveRun

            waves = WaveRun(plan.waves, plan.max_failures, submitter, rollout)
            await waves.run(source, sent.result, lambda: sent.create_failures)
    finally:
        rollout.close()
        await rolling


async def _run_until_done(
    sending: Coroutine[Any, Any, None],
    display: ProgressDisplay,
    drain: float,
    submitter: Submitter,
    rollout: Rollout | None,
) -> int | None:
    """Run ``sending``; the first SIGINT/SIGTERM drains (up to ``drain`` s), a second cancels.

    Returns the number of the first signal, or None when none came.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(sending)
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            log.warning("run.stopping", signal=signal.Signals(signum).name, drain_timeout=drain)
            submitter.stop()
            if rollout is not None:
                rollout.stop()
            loop.call_later(drain, task.cancel)
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, int(sig))
    try:
        while not task.done():
            await asyncio.wait([task], timeout=0.25)
            display.refresh()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return signals_seen[0] if signals_seen else None


def daemon_exit_code(code: int) -> int:
    """A daemon's exit code from its run's: only a fatal stop is a failure of the daemon.

    Invalid or failed jobs are not: they are filed (failed/, the dead-letter queue).
    """
    return EXIT_FATAL if code == EXIT_FATAL else 0
