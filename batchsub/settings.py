"""One typed settings object: command-line flags over ``BATCHSUB_*`` environment over a TOML file.

Nothing else in batchsub reads ``os.environ`` (``requested_log_format`` here reads the log
format before the settings can be built, to say their error in it). Credentials also come from
the official Huawei Cloud SDK's variable names (``HUAWEICLOUD_SDK_AK``, ``_SK``,
``_PROJECT_ID``) so that a user who has the SDK set up needs nothing new.
"""

from __future__ import annotations

import contextvars
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from batchsub.errors import ConfigError
from batchsub.masking import mask_url, url_passwords
from batchsub.regions import domain_of, endpoint_for

DEFAULT_CONFIG_FILE = Path("config/batchsub.toml")


def is_shared_ledger(spec: str) -> bool:
    """True for a PostgreSQL URL (a ledger shared by workers), false for a SQLite file path."""
    return spec.startswith(("postgresql://", "postgres://"))


CLOCK_SLACK = 1.0  # seconds of a claim kept for clock skew between hosts and scheduling
_DEFAULT_TIMEOUT = 30.0
_DEFAULT_GRACE = 5.0
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "batchsub_config_file", default=None
)


class Settings(BaseSettings):
    """Every setting of batchsub; the example ``config/batchsub.toml`` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHSUB_", extra="forbid", populate_by_name=True, frozen=True
    )

    # Where to send: an explicit endpoint wins over the one derived from the region.
    endpoint: str | None = None
    region: str | None = None
    # A region the built-in list (batchsub/regions.py) does not know yet is refused, to catch
    # a typo at once; true derives its endpoint anyway (dli.{region}.myhuaweicloud.com).
    allow_unknown_region: bool = False
    project_id: str | None = Field(
        None, validation_alias=AliasChoices("BATCHSUB_PROJECT_ID", "HUAWEICLOUD_SDK_PROJECT_ID")
    )
    ca_file: Path | None = None

    # Credentials: AK/SK (the official SDK's variables), an IAM token, or an IAM password.
    ak: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BATCHSUB_AK", "HUAWEICLOUD_SDK_AK")
    )
    sk: SecretStr | None = Field(
        None, validation_alias=AliasChoices("BATCHSUB_SK", "HUAWEICLOUD_SDK_SK")
    )
    auth_token: SecretStr | None = None
    # Or an IAM user's password, which batchsub trades for a token (renewed before it
    # expires). The user and its account (domain) may sit in the config file; the password
    # only in the environment or in a file (a mounted Secret, read again at each login).
    iam_user: str | None = None
    iam_domain: str | None = None
    iam_password: SecretStr | None = None
    iam_password_file: Path | None = None
    iam_endpoint: str | None = None  # default https://iam.{region}.myhuaweicloud.com

    # Ledger: a SQLite file path, or a postgresql:// URL shared by several workers.
    ledger: str = "batchsub.db"
    # Seconds each PostgreSQL connection attempt, pool acquire and statement may take: a
    # partition ends in a retry, never in a silent hang.
    ledger_timeout: float = Field(10.0, gt=0.0)
    # ``run`` and ``retry``: seconds the ledger may stay unreachable (or its disk full) before
    # the run ends with exit 2. ``watch`` and ``consume`` wait for as long as it takes.
    ledger_outage_limit: float = Field(60.0, ge=0.0)

    # Pool, pacing and retries.
    concurrency: int = Field(8, ge=1, le=1024)
    rate: float = Field(10.0, ge=0.0)
    timeout: float = Field(_DEFAULT_TIMEOUT, gt=0.0)
    # Seconds a TCP connection to the API may take: an address that never answers (a wrong
    # region's, a firewall that drops) fails in seconds rather than after the whole timeout.
    connect_timeout: float = Field(5.0, gt=0.0)
    max_attempts: int = Field(10, ge=1)
    job_deadline: float = Field(900.0, gt=0.0)
    retry_after_cap: float = Field(120.0, gt=0.0)
    backoff_base: float = Field(0.5, gt=0.0)
    backoff_max: float = Field(30.0, gt=0.0)
    drain_timeout: float = Field(30.0, ge=0.0)
    # After a lost answer, wait this long before looking the job up: the server may still be
    # creating it, and a lookup that misses it would lead to a duplicate.
    in_doubt_grace: float = Field(_DEFAULT_GRACE, ge=0.0)
    # A shared (PostgreSQL) ledger: seconds a worker's claim on a job lasts (None: 2 x timeout
    # + 10). A create leaves only while its claim still covers ``claim_window``.
    lease: float | None = Field(None, gt=0.0)
    # The server's job list is read once, then caught up (newest first) when older than this,
    # so that jobs made by hand while a daemon runs are adopted, not duplicated.
    snapshot_refresh: float = Field(60.0, gt=0.0)
    # Catching up sees no deletions: the whole list is read again this often, so that a job
    # deleted since is no longer adopted (and the snapshot shrinks with the server's list).
    snapshot_relist: float = Field(1800.0, gt=0.0)
    # ``run``: child processes that read, parse and validate manifests, off the thread that
    # sends; 0 does it all in one process.
    parse_workers: int = Field(1, ge=0, le=64)
    # The event loop of run, watch, consume and retry: uvloop when installed ("auto"), or
    # asyncio's, to rule uvloop out when chasing a problem.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    # After the creates (issue 15): start every job that exists and is not running, wait
    # until each is healthy (running for ``healthy_for`` s) or failed, roll out in waves.
    start: bool = False
    resume_savepoint: bool = False  # the run call's resume_savepoint
    restart_stopped: bool = False  # start jobs stopped on purpose too (start_rules)
    wait: bool = False  # without start: wait for the jobs already started
    wait_timeout: float = Field(1200.0, gt=0.0)
    healthy_for: float = Field(30.0, ge=0.0)
    # ``run`` and ``retry``: cumulative wave targets, "1,10%,100%" (needs start; waits for
    # each wave); ``watch`` and ``consume`` refuse them. max_failures: default 0 with waves.
    waves: str | None = None
    max_failures: int | None = Field(None, ge=0)

    # The drop-folder daemon (``batchsub watch``).
    settle_time: float = Field(1.0, ge=0.0)  # a file must stop changing this long before it is read
    rescan_interval: float = Field(30.0, gt=0.0)  # safety-net rescan besides inotify
    poll: bool = False  # poll instead of inotify (network filesystems)
    metrics_port: int | None = Field(None, ge=0, le=65535)  # /healthz and Prometheus metrics
    # Loopback unless told otherwise: the metrics say what the daemon does. The image sets
    # 0.0.0.0 (BATCHSUB_METRICS_HOST), where the container's network is the boundary.
    metrics_host: str = "127.0.0.1"

    # The queue consumer (``batchsub consume``) and publisher.
    amqp_url: SecretStr | None = None  # amqp://user:password@host/vhost: the password is secret
    queue: str | None = None

    def progress_shown(self, interactive: bool) -> bool:
        """Whether to draw a progress bar: ``--progress on``, or ``auto`` on a terminal."""
        return self.progress == "on" or (self.progress == "auto" and interactive)

    # Output.
    log_format: Literal["auto", "json", "console"] = "auto"
    # None: info, or warning on a terminal where the progress bar shows the rest.
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    progress: Literal["auto", "on", "off"] = "auto"

    # What the settings changed of their own (a timeout fitted to the lease), for the log.
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Adjustments made to the settings as given, each a sentence for the run's log."""
        return list(self._notes)

    @model_validator(mode="wrap")
    @classmethod
    def _timeout_fits_the_lease(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        # ``--lease 20`` alone, on a shared ledger, would be refused against the default 30 s
        # timeout: the lease is what the operator asked for, so the request timeout is
        # shortened to fit it. Both given, and at odds, is a usage error.
        note = None
        shared = isinstance(data, dict) and is_shared_ledger(str(data.get("ledger", "")))
        if shared and data.get("lease") is not None and data.get("timeout") is None:
            try:
                lease = float(data["lease"])
                grace = float(data.get("in_doubt_grace", _DEFAULT_GRACE))
            except (TypeError, ValueError):
                return handler(data)  # the field validators say what is wrong
            fitted = math.floor(lease - grace - CLOCK_SLACK - 1.0)
            if 1 <= fitted < _DEFAULT_TIMEOUT:
                data = {**data, "timeout": float(fitted)}
                note = (
                    f"timeout lowered from {_DEFAULT_TIMEOUT:g} s to {fitted:g} s to fit the"
                    f" {lease:g} s lease (a claim must outlast one request: timeout +"
                    f" in_doubt_grace + {CLOCK_SLACK:g} s)"
                )
        settings = handler(data)
        if note is not None:
            settings._notes.append(note)
        return settings

    @property
    def claim_window(self) -> float:
        """Seconds a claim must still hold when its create leaves.

        The request's timeout; the in-doubt grace, since the server may finish a create
        after the client gave up, and a worker taking the job over must find it; and
        ``CLOCK_SLACK`` for clock skew between hosts (leases are compared across them).
        """
        return self.timeout + self.in_doubt_grace + CLOCK_SLACK

    @property
    def lease_seconds(self) -> float:
        """The claim lease: ``lease``, else 2 x timeout + 10 (longer if the window needs it)."""
        if self.lease is not None:
            return self.lease
        return max(self.timeout * 2 + 10, self.claim_window + 10)

    @field_validator("lease")
    @classmethod
    def _lease_covers_a_request(cls, value: float | None, info: ValidationInfo) -> float | None:
        timeout, grace = info.data.get("timeout"), info.data.get("in_doubt_grace")
        if value is None or timeout is None or grace is None:
            return value
        if not is_shared_ledger(info.data.get("ledger", "")):
            return value  # a SQLite ledger has one writer: its claims never expire
        window = timeout + grace + CLOCK_SLACK
        if value <= window:
            raise PydanticCustomError(
                "lease",
                f"{value:g} s cannot cover one request: a claim must outlast timeout"
                f" ({timeout:g}) + in_doubt_grace ({grace:g}) + {CLOCK_SLACK:g} s = {window:g} s;"
                " raise --lease or lower --timeout",
            )
        return value

    @field_validator("waves")
    @classmethod
    def _waves_parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from batchsub.lifecycle.waves import parse_waves

        try:
            parse_waves(value)
        except ConfigError as exc:
            raise PydanticCustomError("waves", str(exc)) from None
        return value.strip()

    @field_validator("event_loop", mode="before")
    @classmethod
    def _loop_in_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("endpoint", "iam_endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(_ConfigFile(settings_cls, config_file))
        return tuple(sources)

    def resolved_endpoint(self) -> str:
        """The API endpoint: explicit, or derived from the region as the official SDK does."""
        if self.endpoint:
            return self.endpoint
        if self.region:
            return endpoint_for(self.region, allow_unknown=self.allow_unknown_region)
        raise ConfigError(
            "no endpoint: pass --endpoint URL or --region NAME (or set BATCHSUB_ENDPOINT)"
        )

    def resolved_iam_endpoint(self) -> str:
        """Where IAM tokens come from: explicit, or the region's IAM endpoint."""
        if self.iam_endpoint:
            return self.iam_endpoint
        if self.region:
            return f"https://iam.{self.region}.{domain_of(self.region)}"
        raise ConfigError(
            "no IAM endpoint: pass --iam-endpoint URL or --region NAME "
            "(or set BATCHSUB_IAM_ENDPOINT)"
        )

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with every secret masked, for ``config show`` and logs."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                # A URL keeps its host and user in sight (amqp://bob:***@broker/).
                shown[name] = mask_url(secret) if "://" in secret else "********" * bool(secret)
            elif isinstance(value, str):
                shown[name] = mask_url(value)  # the ledger may be postgresql://bob:pw@db/x
            elif isinstance(value, Path):
                shown[name] = str(value)
            else:
                shown[name] = value
        return shown

    def secret_values(self) -> list[str]:
        """Every secret the settings hold (keys, tokens, URL passwords), to scrub from text."""
        found: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
                found.append(value)
            if isinstance(value, str):
                found += url_passwords(value)
        return [secret for secret in found if secret]


# Secrets a config file must not hold: a file is copied, committed and mounted everywhere.
_NOT_IN_A_FILE = {"iam_password": "set BATCHSUB_IAM_PASSWORD or BATCHSUB_IAM_PASSWORD_FILE"}


class _ConfigFile(TomlConfigSettingsSource):
    """The TOML config file; a setting that must come from elsewhere is refused by name."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, toml_file=path)
        self._path = path

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for name, fix in _NOT_IN_A_FILE.items():
            if name in values:
                raise ConfigError(f"config file {self._path}: {name}: not allowed in a file; {fix}")
        return values


def config_file_in_use(explicit: Path | None) -> Path | None:
    """The TOML file the settings come from: ``--config``, else the default when it exists."""
    if explicit is not None:
        return explicit
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(flags: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Build the settings: ``flags`` (only those given) over environment over the TOML file.

    Without ``config_file`` the default ``config/batchsub.toml`` is read when it exists.
    """
    config_file = config_file_in_use(config_file)
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from None
    except ValueError as exc:  # a TOML syntax error surfaces as a ValueError subclass
        raise ConfigError(f"config file {config_file}: {exc}") from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "settings"
        problems.append(f"{field}: {err['msg']}")
    where = f" (flags, BATCHSUB_* environment or {config_file})" if config_file else ""
    return "invalid setting" + where + ": " + "; ".join(problems)


def requested_log_format(flag: str | None) -> str:
    """The log format asked for by ``--log-format`` or ``BATCHSUB_LOG_FORMAT``, before (or
    without) the settings: a usage or configuration error is logged in it too."""
    return (flag or os.environ.get("BATCHSUB_LOG_FORMAT") or "auto").strip().lower()


def setting_sources(flags: dict[str, Any], config_file: Path | None) -> dict[str, str]:
    """Where each setting's value came from: ``flag``, ``env``, ``file`` or ``default``.

    The same sources, in the same order, as ``load_settings`` reads (``config show``).
    """
    from pydantic_settings import EnvSettingsSource

    from_env = {_field_of(key) for key in EnvSettingsSource(Settings)()}
    config_file = config_file_in_use(config_file)
    from_file: set[str] = set()
    if config_file is not None and config_file.is_file():
        try:
            from_file = set(TomlConfigSettingsSource(Settings, toml_file=config_file)())
        except ValueError:
            from_file = set()
    sources = {}
    for name in Settings.model_fields:
        if flags.get(name) is not None:
            sources[name] = "flag"
        elif name in from_env:
            sources[name] = "env"
        elif name in from_file:
            sources[name] = "file"
        else:
            sources[name] = "default"
    return sources


def _field_of(key: str) -> str:
    """The field an environment source's key stands for (its name, or one of its aliases)."""
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        if key == name or key in choices:
            return name
    return key
