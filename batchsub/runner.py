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

import aiohttp
import structlog

from batchsub.auth import AkSkAuth, TokenAuth
from batchsub.calls import GIVE_UP_AFTER, SafeCaller
from batchsub.client import CONNECT_TIMEOUT, DliClient, make_session
from batchsub.console import FileCount, ProgressDisplay, print_summary
from batchsub.errors import ConfigError, FatalApiError, OutputError, RetryableError
from batchsub.iam import IamDliClient, IamTokenAuth, auth_from_settings
from batchsub.jobs import JobResult
from batchsub.ledgers import SqliteLedger
from batchsub.ledgers.outage import Outage
from batchsub.limiter import RateLimiter, RetryBudget
from batchsub.logs import configure_command_logging
from batchsub.masking import mask_url
from batchsub.protocols import Auth, FileIndex, Ledger, RunObserver, Source
from batchsub.reachability import Reachability
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
    """The credential to use: a ready token (BATCHSUB_AUTH_TOKEN), else an IAM password, else
    AK/SK. The most specific wins: a token was made for this, and BATCHSUB_IAM_* are
    batchsub's own, where HUAWEICLOUD_SDK_AK/SK may be set for every tool of the machine."""
    if settings.auth_token is not None and settings.auth_token.get_secret_value():
        return TokenAuth(settings.auth_token.get_secret_value())
    if settings.iam_user or settings.iam_domain or settings.iam_password:
        return auth_from_settings(settings, project_id)
    ak = settings.ak.get_secret_value() if settings.ak else ""
    sk = settings.sk.get_secret_value() if settings.sk else ""
    if ak and sk:
        return AkSkAuth(ak, sk, project_id)
    if ak or sk:
        missing = "HUAWEICLOUD_SDK_SK" if ak else "HUAWEICLOUD_SDK_AK"
        raise ConfigError(f"incomplete AK/SK credential: {missing} is not set")
    raise ConfigError(
        "no credentials: set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK, or BATCHSUB_AUTH_TOKEN, "
        "or BATCHSUB_IAM_USER, BATCHSUB_IAM_DOMAIN and BATCHSUB_IAM_PASSWORD"
    )


def _credential_given(settings: Settings) -> bool:
    secrets = (settings.auth_token, settings.ak, settings.sk, settings.iam_password)
    return any(secrets) or bool(settings.iam_user or settings.iam_domain)


def credential_in_use(settings: Settings) -> str:
    """Which credential a command of these settings would use (``config show``), no secret."""
    try:
        return build_auth(settings, settings.project_id or "(no project id)").describe()
    except ConfigError as exc:
        return f"none: {exc}"


@contextlib.asynccontextmanager
async def opened_auth(settings: Settings, project_id: str) -> AsyncIterator[Auth]:
    """``build_auth``, with an IAM login done first: a refused password is a ConfigError.

    IAM out of reach is not: the first request tries again, as for any outage.
    """
    auth = build_auth(settings, project_id)
    if not isinstance(auth, IamTokenAuth):
        yield auth
        return
    try:
        await auth.token()
    except FatalApiError as exc:
        await auth.close()
        raise ConfigError(str(exc)) from None
    except RetryableError as exc:
        log.info("iam.unreachable", error=str(exc), effect="the first request tries again")
    try:
        yield auth
    finally:
        await auth.close()


def dli_client(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT,
    on_answer: Callable[[str, float, int | None], None] | None = None,
    reachability: Reachability | None = None,
) -> DliClient:
    """The API client of ``target``; one that renews its token for an IAM password login."""
    kind = IamDliClient if isinstance(target.auth, IamTokenAuth) else DliClient
    return kind(
        session,
        target.endpoint,
        target.project_id,
        target.auth,
        timeout=timeout,
        connect_timeout=connect_timeout,
        on_answer=on_answer,
        reachability=reachability,
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
    timeout: float = 10.0,
    outage: Outage | None = None,
) -> Ledger:
    """The ledger named by ``--ledger``: a postgresql:// URL (shared) or a SQLite file path.

    ``read_only`` SQLite ledgers take no lock, so they can be read while a run writes.
    ``lease``: seconds a claim lasts (default 2 x ``request_timeout`` + 10). ``timeout``
    bounds each PostgreSQL connection attempt and statement; ``outage`` says how long a call
    waits through an outage (by default it fails at once).
    """
    if is_shared_ledger(spec):
        from batchsub.ledgers.postgres import PostgresLedger

        # A claim must outlive the longest request its worker may still have in flight.
        return PostgresLedger(
            spec,
            lease_seconds=lease or request_timeout * 2 + 10,
            connect_timeout=timeout,
            command_timeout=timeout,
            outage=outage,
        )
    return SqliteLedger(Path(spec), read_only=read_only, outage=outage)


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
        endpoint = settings.resolved_endpoint()
        async with opened_auth(settings, project_id) as auth:
            yield Target(endpoint, project_id, auth)
        return
    from batchsub.simulator import start_simulator
    from batchsub.simulator.config import demo_token, simulator_config

    config = simulator_config(settings, project_id=project_id)
    # No credential set: the demo needs none, so simulator and client share a fresh token.
    demo = None if _credential_given(settings) else demo_token()
    if demo is not None:
        config.tokens = frozenset({demo})
    sim = await start_simulator(config)
    try:
        if demo is not None:
            origin = "the built-in simulator (a throwaway demo token)"
            yield Target(sim.url, project_id, TokenAuth(demo, origin=origin))
        else:
            # The simulator serves IAM logins too: a password login goes to it.
            local = settings.model_copy(update={"iam_endpoint": sim.url})
            async with opened_auth(local, project_id) as auth:
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
        total = FileCount(sum(1 for _ in iter_manifest_paths(directory))) if show_progress else None
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
        account.set_target(target.project_id, target.endpoint)
        # A daemon waits through a ledger outage, at start-up too; a one-shot run does not
        # start without its ledger, and gives up on it after ledger_outage_limit.
        outage = Outage(
            limit=None if endless else settings.ledger_outage_limit,
            startup_limit=None if endless else 0.0,
            on_change=observer.on_ledger if observer else None,
        )
        ledger = open_ledger(
            settings.ledger,
            request_timeout=settings.timeout,
            timeout=settings.ledger_timeout,
            outage=outage,
            lease=settings.lease_seconds,
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
        client = dli_client(
            session,
            target,
            timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            on_answer=observer.on_answer if observer else None,
            reachability=Reachability(observer.on_api_state if observer else None),
        )
        # A one-shot run with nobody listening at the endpoint says so in seconds; a daemon
        # keeps trying through an outage, as long as the retry policy allows.
        caller = SafeCaller(limiter, policy, give_up_after=None if endless else GIVE_UP_AFTER)
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
        )
        display = ProgressDisplay(
            account, limiter, enabled=progress, total=total, stopped=lambda: submitter.stopped
        )
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
    unwritten = _write_report(account, summary)
    # The report on stdout keeps stdout JSON: the summary goes to stderr then.
    print_summary(summary, stream=sys.stderr if account.report_to_stdout else None)
    log.info("run.finished", **{k: v for k, v in summary.items() if k != "first_errors"})
    if fatal is not None:
        print(f"batchsub: error: {summary['fatal']}", file=sys.stderr)
    if unwritten is not None:
        print(f"batchsub: error: {unwritten}", file=sys.stderr)
    exit_code: int = summary["exit_code"]
    return exit_code


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
        return refused_credential(auth, error)
    return str(error)


def refused_credential(auth: Auth, error: object) -> str:
    """The one line for a 401/403 of the API: which credential, and what to check."""
    if isinstance(auth, IamTokenAuth):
        fix = "check that IAM user's permissions for DLI in that project, and --project-id"
    else:
        fix = "check HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK or BATCHSUB_AUTH_TOKEN and --project-id"
    return f"the API refused the credential {auth.describe()} ({error}); {fix}"


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
