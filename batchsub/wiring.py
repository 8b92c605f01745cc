"""The parts a command builds from the settings: where to send, with which credential, to
which ledger, through which client and retry policy.

Every command that talks to the API or a ledger gets its parts here (``run``, ``watch``,
``consume`` and ``retry`` through ``batchsub.runner``; ``plan``, ``auth check``, ``status``
and ``report`` directly), so they share one way to build each and one way to fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import structlog

from batchsub.auth import AkSkAuth, TokenAuth
from batchsub.client import CONNECT_TIMEOUT, DliClient, close_session, make_session
from batchsub.errors import ApiError, ConfigError, FatalApiError, RetryableError
from batchsub.iam import IamDliClient, IamTokenAuth, auth_from_settings
from batchsub.ledgers.outage import Outage
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.lifecycle.options import RolloutOptions
from batchsub.lifecycle.start_rules import StartOptions
from batchsub.lifecycle.waiter import WaitSettings
from batchsub.lifecycle.waves import WaveTarget, parse_waves
from batchsub.limiter import RateLimiter
from batchsub.masking import mask_url
from batchsub.protocols import Auth
from batchsub.reachability import Reachability
from batchsub.retry import RetryingCaller, RetryPolicy
from batchsub.settings import Settings, is_shared_ledger

if TYPE_CHECKING:
    from batchsub.ledgers.postgres import PostgresLedger

log = structlog.get_logger("batchsub.run")

REMOTE_LIST_ATTEMPTS = 3  # a command asks, it does not insist: an unreachable endpoint fails fast
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


def session_for(settings: Settings) -> aiohttp.ClientSession:
    """The HTTP session of a command that talks to the API, sized and trusted as set."""
    return make_session(settings.concurrency, str(settings.ca_file) if settings.ca_file else None)


def client_for(
    session: aiohttp.ClientSession,
    target: Target,
    settings: Settings,
    *,
    on_answer: Callable[[str, float, int | None], None] | None = None,
    reachability: Reachability | None = None,
) -> DliClient:
    """``dli_client`` with the timeouts of the settings."""
    return dli_client(
        session,
        target,
        timeout=settings.timeout,
        connect_timeout=settings.connect_timeout,
        on_answer=on_answer,
        reachability=reachability,
    )


def sending_ledger(settings: Settings, outage: Outage) -> SqliteLedger | PostgresLedger:
    """The ledger of a command that sends (claims, bounds and outages as set); not opened."""
    return open_ledger(
        settings.ledger,
        request_timeout=settings.timeout,
        timeout=settings.ledger_timeout,
        outage=outage,
        lease=settings.lease_seconds,
    )


def open_ledger(
    spec: str,
    *,
    request_timeout: float = 30.0,
    read_only: bool = False,
    lease: float | None = None,
    timeout: float = 10.0,
    outage: Outage | None = None,
) -> SqliteLedger | PostgresLedger:
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


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What a run does after the creates: the rollout's options, and its waves (or None)."""

    options: RolloutOptions
    waves: tuple[WaveTarget, ...] | None = None
    max_failures: int = 0


def lifecycle(settings: Settings, *, endless: bool, retry_failed: bool = False) -> Lifecycle:
    """``--start``, ``--wait`` and ``--waves`` from the settings; ConfigError if at odds.

    ``endless`` sources (``watch``, ``consume``) refuse waves: their jobs have no end to
    take percentages of, nor a last wave. ``retry_failed``: ``retry --start`` starts jobs
    whose start failed once more (start_rules).
    """
    waves = parse_waves(settings.waves) if settings.waves is not None else None
    if waves is not None and endless:
        raise ConfigError(
            "--waves works with run and retry (a finite set of manifests); watch and consume"
            " start each job once it exists: use --start (and --wait) without --waves"
        )
    if waves is not None and not settings.start:
        raise ConfigError("--waves starts each wave and waits for it: give --start too")
    if settings.max_failures is not None and waves is None:
        raise ConfigError("--max-failures counts the failures of waves: give --waves too")
    options = RolloutOptions(
        start=settings.start,
        wait=settings.wait or waves is not None,
        resume_savepoint=settings.resume_savepoint,
        rules=StartOptions(restart_stopped=settings.restart_stopped, retry_failed=retry_failed),
        waiting=WaitSettings(healthy_for=settings.healthy_for, wait_timeout=settings.wait_timeout),
        in_doubt_grace=settings.in_doubt_grace,
    )
    return Lifecycle(options, waves, settings.max_failures or 0)


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


def refused_credential(auth: Auth, error: object) -> str:
    """The one line for a 401/403 of the API: which credential, and what to check."""
    if isinstance(auth, IamTokenAuth):
        fix = "check that IAM user's permissions for DLI in that project, and --project-id"
    else:
        fix = "check HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK or BATCHSUB_AUTH_TOKEN and --project-id"
    return f"the API refused the credential {auth.describe()} ({error}); {fix}"


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteApi:
    """What a command needs for list calls: where, with which credential, and how to call."""

    target: Target
    client: DliClient
    caller: RetryingCaller


@contextlib.asynccontextmanager
async def remote_api(settings: Settings, project_id: str) -> AsyncIterator[RemoteApi]:
    """A client and a retrying caller for list calls (any number of them).

    A list that cannot be read is never taken for an empty one: every failure here, after a
    few tries, is a one-line ConfigError with the fix.
    """
    endpoint = settings.resolved_endpoint()
    async with opened_auth(settings, project_id) as auth:
        target = Target(endpoint, project_id, auth)
        session = session_for(settings)
        try:
            # quiet: the error line says it
            client = client_for(session, target, settings, reachability=Reachability(quiet=True))
            policy = dataclasses.replace(
                retry_policy(settings),
                max_attempts=min(REMOTE_LIST_ATTEMPTS, settings.max_attempts),
            )
            yield RemoteApi(target, client, RetryingCaller(RateLimiter(settings.rate), policy))
        except ApiError as exc:
            raise ConfigError(_remote_failure(exc, mask_url(endpoint), auth)) from None
        finally:
            await close_session(session)


def _remote_failure(exc: ApiError, endpoint: str, auth: Auth) -> str:
    """The one line for a failed list call, naming the fix."""
    if exc.status in (401, 403):
        return refused_credential(auth, exc)
    if isinstance(exc, FatalApiError):  # TLS: the message already names --ca-file
        return str(exc)
    if exc.status == 404:
        return f"HTTP 404 listing jobs at {endpoint}: wrong --endpoint or --project-id? ({exc})"
    if isinstance(exc, RetryableError) and exc.status is None:
        return f"cannot reach {endpoint} ({exc}); check --endpoint/--region and the network"
    return f"cannot list jobs at {endpoint}: {exc}"
