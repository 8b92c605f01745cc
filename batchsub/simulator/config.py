"""The settings of one simulator instance: who may call it and which faults it injects."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from batchsub.settings import Settings


@dataclass(repr=False)
class SimulatorConfig:
    """What the simulated DLI endpoint accepts and how it misbehaves.

    Auth is checked only when ``tokens`` or ``aksk`` is non-empty. Fault probabilities come in
    groups (create; a started job; run, stop and update calls); within a group they are slices
    of one uniform draw per request (or per started job), in the order of the fields below, so
    a group's sum should stay <= 1 (the first fields win when it does not). Life-cycle times
    are ``(min, max)`` seconds, each delay drawn uniformly (seeded), on ``wall_clock``.
    """

    project_id: str | None = None  # None: any project id in the path is accepted
    tokens: frozenset[str] = frozenset()
    aksk: Mapping[str, str] = field(default_factory=dict)  # AK -> SK
    iam_users: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (domain, user) -> pw
    token_lifetime: float = 24 * 3600.0  # seconds an IAM token it issues is valid
    latency: float = 0.0  # seconds from a request's arrival to its answer
    rate_limit: float = 0.0  # admitted requests per sliding second, whole server; 0 = none
    fail_5xx: float = 0.0  # 500/502/503 before creating: job not created
    dli0999: float = 0.0  # 400 DLI.0999 before creating: job not created
    drop_after_create: float = 0.0  # job created, connection closed with no answer
    error_504_after_create: float = 0.0  # job created, 504 APIG.0203
    slow_after_create: float = 0.0  # job created, answer delayed by slow_seconds
    dli0999_after_create: float = 0.0  # job created, 400 DLI.0999
    slow_seconds: float = 30.0
    duplicate_names: Literal["reject", "accept"] = "reject"
    seed: int | None = None  # fault RNG seed
    max_jobs: int | None = None  # quota: creating past it answers DLI.1028
    known_queues: frozenset[str] | None = None  # None: any queue name exists
    clock: Callable[[], float] = time.monotonic  # rate window and arrival times
    wall_clock: Callable[[], float] = time.time  # create_time and X-Sdk-Date skew
    list_create_time: bool = True  # False: the list call leaves create_time out
    # --- the job life cycle (run, stop, update, delete) ---
    start_seconds: tuple[float, float] = (1.0, 2.0)  # job_submitting -> job_running / submit_fail
    savepoint_seconds: tuple[float, float] = (0.5, 1.0)  # job_savepointing -> job_canceling
    stop_seconds: tuple[float, float] = (0.5, 1.0)  # job_canceling -> job_cancel_success
    fail_after_seconds: tuple[float, float] = (2.0, 5.0)  # job_running -> job_running_exception
    submit_fail: float = 0.0  # a started job ends job_submit_fail instead of running
    fail_after_run: float = 0.0  # a started job runs, then ends job_running_exception
    drop_after_run: float = 0.0  # run call done, connection closed with no answer
    error_504_after_run: float = 0.0  # run call done, 504 APIG.0203
    drop_after_stop: float = 0.0
    error_504_after_stop: float = 0.0
    drop_after_update: float = 0.0
    error_504_after_update: float = 0.0
    run_running: Literal["reject", "accept"] = "reject"  # run of a running job: refused or a no-op
    update_running: Literal["reject", "accept"] = "reject"  # PUT outside the in-place fields
    unknown_job_ids: Literal["element", "error"] = "element"  # batch calls: failed element or 400
    deleted_jobs: Literal["hidden", "listed"] = "hidden"  # whether the list still shows them
    max_job_ids: int = 100  # most job_ids one run, stop or delete call takes (else 400)

    def __post_init__(self) -> None:
        for name in ("start_seconds", "savepoint_seconds", "stop_seconds", "fail_after_seconds"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 0 <= min <= max")
        if self.max_job_ids < 1:
            raise ValueError("max_job_ids must be at least 1")

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry a known token or a valid AK/SK signature."""
        return bool(self.tokens or self.aksk or self.iam_users)

    def __repr__(self) -> str:
        # Never show tokens or SKs.
        return (
            f"SimulatorConfig(project_id={self.project_id!r}, tokens={len(self.tokens)}, "
            f"aksk={len(self.aksk)}, iam_users={len(self.iam_users)}, "
            f"rate_limit={self.rate_limit}, latency={self.latency})"
        )


def simulator_config(settings: Settings, *, project_id: str | None) -> SimulatorConfig:
    """A simulator accepting the credentials found in the environment the client reads."""
    token = settings.auth_token.get_secret_value() if settings.auth_token else ""
    ak = settings.ak.get_secret_value() if settings.ak else ""
    sk = settings.sk.get_secret_value() if settings.sk else ""
    return SimulatorConfig(
        project_id=project_id,
        tokens=frozenset({token}) if token else frozenset(),
        aksk={ak: sk} if ak and sk else {},
        iam_users=_iam_users(settings),
    )


def _iam_users(settings: Settings) -> dict[tuple[str, str], str]:
    """The IAM user of the settings, if complete, with its password (from env or file)."""
    from batchsub.iam import password_source

    if not (settings.iam_user and settings.iam_domain):
        return {}
    password = settings.iam_password.get_secret_value() if settings.iam_password else None
    if not password and settings.iam_password_file is None:
        return {}
    read, _ = password_source(password, settings.iam_password_file)
    return {(settings.iam_domain, settings.iam_user): read()}


def demo_token() -> str:
    """A throwaway token for ``run --simulator`` when no credential is set."""
    return "demo-" + secrets.token_hex(16)
