"""Wires settings into one run: source -> submitter (limiter, retry, client) -> ledger -> report.

Every entry point that sends jobs (``run`` now; ``watch`` and ``consume`` next) builds its
parts here, so they share one limiter, one retry policy and one way to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from batchsub.auth import AkSkAuth, TokenAuth
from batchsub.calls import SafeCaller
from batchsub.client import DliClient, make_session
from batchsub.console import ProgressDisplay, print_summary
from batchsub.errors import ConfigError
from batchsub.jobs import JobResult
from batchsub.ledgers import SqliteLedger
from batchsub.limiter import RateLimiter, RetryBudget
from batchsub.logs import configure_command_logging
from batchsub.protocols import Auth, FileIndex, Ledger, RunObserver, Source
from batchsub.reconcile import Reconciler
from batchsub.report import EXIT_FATAL, RunAccount
from batchsub.retry import RetryPolicy
from batchsub.settings import Settings
from batchsub.sources.directory import DirectorySource, iter_manifest_paths
from batchsub.sources.parser_pool import ParserPool
from batchsub.submitter import Submitter

log = structlog.get_logger("batchsub.run")

DEMO_PROJECT_ID = "batchsub-demo"
NO_PROJECT = "no project id: pass --project-id or set HUAWEICLOUD_SDK_PROJECT_ID"


def build_auth(settings: Settings, project_id: str) -> Auth:
    """The credential to use: a BATCHSUB_AUTH_TOKEN wins, else AK/SK."""
    if settings.auth_token is not None and settings.auth_token.get_secret_value():
        return TokenAuth(settings.auth_token.get_secret_value())
    ak = settings.ak.get_secret_value() if settings.ak else ""
    sk = settings.sk.get_secret_value() if settings.sk else ""
    if ak and sk:
        return AkSkAuth(ak, sk, project_id)
    if ak or sk:
        missing = "HUAWEICLOUD_SDK_SK" if ak else "HUAWEICLOUD_SDK_AK"
        raise ConfigError(f"incomplete AK/SK credential: {missing} is not set")
    raise ConfigError(
        "no credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or BATCHSUB_AUTH_TOKEN"
    )


def is_shared_ledger(spec: str) -> bool:
    """True for a PostgreSQL URL, false for a SQLite file path."""
    return spec.startswith(("postgresql://", "postgres://"))


def open_ledger(
    spec: str,
    *,
    request_timeout: float = 30.0,
    read_only: bool = False,
    lease: float | None = None,
) -> Ledger:
    """The ledger named by ``--ledger``: a postgresql:// URL (shared) or a SQLite file path.

    ``read_only`` SQLite ledgers take no lock, so they can be read while a run writes.
    ``lease``: seconds a claim lasts (default 2 x ``request_timeout`` + 10).
    """
    if is_shared_ledger(spec):
        from batchsub.ledgers.postgres import PostgresLedger

        # A claim must outlive the longest request its worker may still have in flight.
        return PostgresLedger(spec, lease_seconds=lease or request_timeout * 2 + 10)
    return SqliteLedger(Path(spec), read_only=read_only)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The one retry policy, from the settings."""
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        base_delay=settings.backoff_base,
        max_delay=settings.backoff_max,
        retry_after_cap=settings.retry_after_cap,
        job_deadline=settings.job_deadline,
    )


@dataclass(slots=True)
class Target:
    """Where requests go and with which credential."""

    endpoint: str
    project_id: str
    auth: Auth


def project_id_for(settings: Settings, *, simulator: bool) -> str:
    """The project the jobs go to: the setting, or the built-in simulator's demo project."""
    project_id = settings.project_id or (DEMO_PROJECT_ID if simulator else None)
    if not project_id:
        raise ConfigError(NO_PROJECT)
    return project_id


@contextlib.asynccontextmanager
async def resolve_target(settings: Settings, *, simulator: bool) -> AsyncIterator[Target]:
    """The endpoint, project and credential; with ``simulator``, a built-in simulator too."""
    project_id = project_id_for(settings, simulator=simulator)
    if not simulator:
        yield Target(settings.resolved_endpoint(), project_id, build_auth(settings, project_id))
        return
    from batchsub.simulator import start_simulator
    from batchsub.simulator.config import demo_token, simulator_config

    config = simulator_config(settings, project_id=project_id)
    if any((settings.auth_token, settings.ak, settings.sk)):
        auth: Auth = build_auth(settings, project_id)
    else:
        # No credential set: the demo needs none, so simulator and client share a fresh token.
        token = demo_token()
        config.tokens = frozenset({token})
        auth = TokenAuth(token, origin="the built-in simulator (a throwaway demo token)")
    sim = await start_simulator(config)
    try:
        yield Target(sim.url, project_id, auth)
    finally:
        await sim.close()


async def run_directory(
    settings: Settings, directory: Path, report: Path | None, *, simulator: bool
) -> int:
    """``batchsub run DIR``: create every job of DIR once; returns the exit code."""
    interactive = configure_command_logging(settings)
    # Forked first: before the ledger, the sockets and any thread exist.
    parser = ParserPool(settings.parse_workers)
    parser.start()
    try:
        # Validated as parsed, from the object in hand (the submitter skips its own check):
        # a rerun reads only new or changed files (the file index), so it rarely pays for it.
        source = DirectorySource(directory, parser=parser)
        account = RunAccount(report)
        show_progress = settings.progress_shown(interactive)
        total = sum(1 for _ in iter_manifest_paths(directory)) if show_progress else None
        code = await run_source(
            settings, source, account, simulator=simulator, progress=show_progress, total=total
        )
    finally:
        parser.close()
    if account.total == 0:
        # Nothing to do is not a failure, but a wrong directory should not pass unnoticed.
        print(
            f"batchsub: warning: no manifests (*.json, *.yaml, *.yml) under {directory}",
            file=sys.stderr,
        )
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
) -> int:
    """Send every job of ``source``; print the summary, write the report, return the exit code.

    ``endless`` sources (a drop folder, a queue) stop being read on SIGTERM; a finite one is
    read to its end so that every manifest is in the report.
    """
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(resolve_target(settings, simulator=simulator))
        ledger = open_ledger(
            settings.ledger, request_timeout=settings.timeout, lease=settings.lease_seconds
        )
        await ledger.open()
        stack.push_async_callback(ledger.close)
        if isinstance(source, DirectorySource) and isinstance(ledger, FileIndex):
            source.use_index(ledger, target.project_id)
        session = make_session(
            settings.concurrency, str(settings.ca_file) if settings.ca_file else None
        )
        stack.push_async_callback(session.close)
        limiter = RateLimiter(settings.rate)
        policy = retry_policy(settings)
        client = DliClient(
            session,
            target.endpoint,
            target.project_id,
            target.auth,
            timeout=settings.timeout,
            on_answer=observer.on_answer if observer else None,
        )
        # A one-shot run with nobody listening at the endpoint says so in seconds; a daemon
        # keeps trying through an outage, as long as the retry policy allows.
        caller = SafeCaller(limiter, policy, connect_attempts=None if endless else 4)
        reconciler = Reconciler(
            client,
            caller,
            refresh_after=settings.snapshot_refresh,
            relist_after=settings.snapshot_relist,
        )
        submitter = Submitter(
            client=client,
            ledger=ledger,
            limiter=limiter,
            policy=policy,
            budget=RetryBudget(),
            reconciler=reconciler,
            concurrency=settings.concurrency,
            on_result=_fan_out(account, observer),
            finish_source_on_stop=not endless,
            in_doubt_grace=settings.in_doubt_grace,
            claim_window=settings.claim_window,
        )
        if observer is not None:
            observer.on_start(limiter)
        log.info(
            "run.started",
            endpoint=target.endpoint,
            project_id=target.project_id,
            auth=target.auth.describe(),
            ledger=settings.ledger,
            rate=settings.rate,
            concurrency=settings.concurrency,
        )
        display = ProgressDisplay(account, limiter, enabled=progress, total=total)
        with display:
            await _run_until_done(submitter, source, display, settings.drain_timeout)
        fatal = submitter.fatal
        summary = account.summary(
            creates_sent=submitter.creates_sent,
            list_calls=reconciler.list_calls,
            throttled=limiter.throttled,
            retry_budget_exhausted=submitter.budget_exhausted,
            rate=round(limiter.rate, 3),
            duration_s=round(time.monotonic() - started, 3),
            exit_code=account.exit_code(fatal=fatal is not None),
            fatal=_fatal_message(fatal, target.auth) if fatal else None,
        )
    account.write_report(summary)
    print_summary(summary)
    log.info("run.finished", **{k: v for k, v in summary.items() if k != "first_errors"})
    if fatal is not None:
        print(f"batchsub: error: {summary['fatal']}", file=sys.stderr)
    exit_code: int = summary["exit_code"]
    return exit_code


def _fan_out(account: RunAccount, observer: RunObserver | None) -> Callable[[JobResult], None]:
    if observer is None:
        return account.add

    def both(result: JobResult) -> None:
        account.add(result)
        observer.on_result(result)

    return both


def _fatal_message(error: Any, auth: Auth) -> str:
    status = getattr(error, "http_status", None)
    if status in (401, 403):
        return (
            f"the API refused the credential {auth.describe()} ({error}); "
            "check HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK or BATCHSUB_AUTH_TOKEN and --project-id"
        )
    return str(error)


async def _run_until_done(
    submitter: Submitter, source: Source, display: ProgressDisplay, drain: float
) -> None:
    """Run the submitter; the first SIGINT/SIGTERM drains (up to ``drain`` s), a second cancels."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(submitter.run(source))
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.warning("run.stopping", drain_timeout=drain)
            submitter.stop()
            loop.call_later(drain, task.cancel)
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        while not task.done():
            await asyncio.wait([task], timeout=0.25)
            display.refresh()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def daemon_exit_code(code: int) -> int:
    """A daemon's exit code from its run's: only a fatal stop is a failure of the daemon.

    Invalid or failed jobs are not: they are filed (failed/, the dead-letter queue).
    """
    return EXIT_FATAL if code == EXIT_FATAL else 0
