"""IAM password login: an IAM user's password traded for a project-scoped token, kept fresh.

``POST {iam}/v3/auth/tokens?nocatalog=true`` answers with the token in the ``X-Subject-Token``
header, valid 24 h (``token.expires_at`` in the body). ``IamTokenAuth`` asks once, sends the
token as ``X-Auth-Token``, and asks again a margin before it expires; ``IamDliClient`` also
asks again, once, when an answer says "the token must be updated" (401 ``APIG.0307``: the
account's tokens were revoked, e.g. by a password change) and resends that request: a 401
means it was not processed. Source: the IAM API reference, "Obtaining a User Token Through
Password Authentication" (``iam_30_0001``).

Neither the password nor the token is ever logged, shown by ``describe()`` or a repr, or put
in an error message. A wrong password is not retried: IAM locks a user after a few.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from yarl import URL

from batchsub.answers import AnswerKind, CreateAnswer, JobPage, Kind
from batchsub.client import DliClient, make_session, transport_failure
from batchsub.errors import (
    CONNECT_FAILED,
    ApiError,
    ConfigError,
    FatalApiError,
    RetryableError,
    one_line,
)
from batchsub.jobs import ErrorInfo
from batchsub.retry import parse_retry_after
from batchsub.settings import Settings

__all__ = [
    "IamDliClient",
    "IamLogin",
    "IamTokenAuth",
    "auth_from_settings",
    "must_update_token",
    "password_source",
]

log = structlog.get_logger("batchsub.iam")

TOKENS_PATH = "/v3/auth/tokens"
DOCUMENTED_LIFETIME = 24 * 3600.0  # used when an answer gives no readable expires_at
MAX_MARGIN = 600.0  # renew this long before expiry at most (longer than any request)
RETRY_RENEWAL_AFTER = 30.0  # a failed renewal while the token is still valid: ask again then
# A token got because the last one "must be updated", refused the same way this soon: IAM's
# tokens are not taken (another project, a clock far off), and asking again will not help.
REFUSED_AGAIN_WITHIN = 60.0
_MUST_UPDATE_CODE = "APIG.0307"
_CONTENT_TYPE = "application/json;charset=utf8"
PASSWORD_VARIABLES = "BATCHSUB_IAM_PASSWORD or BATCHSUB_IAM_PASSWORD_FILE"


@dataclass(frozen=True, slots=True, repr=False)
class IamLogin:
    """Who logs in: an IAM user of an account (domain), for one project, at one IAM endpoint.

    ``password`` returns the password each time it is needed (a file is read again, so that
    a rotated Secret is picked up); ``password_origin`` says where it comes from.
    """

    user: str
    domain: str
    project_id: str
    endpoint: str
    password: Callable[[], str]
    password_origin: str

    def describe(self) -> str:
        """The user, domain and where the password comes from; never the password."""
        return (
            f"IAM user {self.user} of domain {self.domain} "
            f"(password from {self.password_origin}, token from {self.endpoint})"
        )

    def __repr__(self) -> str:
        return f"IamLogin(user={self.user!r}, domain={self.domain!r}, password=<hidden>)"


def password_source(password: str | None, path: Path | None) -> tuple[Callable[[], str], str]:
    """The password reader and its origin; ConfigError unless exactly one is set and usable."""
    if password and path is not None:
        raise ConfigError(
            "the IAM password is set twice: set BATCHSUB_IAM_PASSWORD or "
            "BATCHSUB_IAM_PASSWORD_FILE, not both"
        )
    if password:
        return (lambda: password), "BATCHSUB_IAM_PASSWORD"
    if path is None:
        raise ConfigError(f"incomplete IAM credential: {PASSWORD_VARIABLES} is not set")

    def read() -> str:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = one_line(exc) if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"BATCHSUB_IAM_PASSWORD_FILE {path}: cannot read it: {why}") from None
        secret = text.rstrip("\r\n")  # `echo pw > file` adds a newline; a Secret mount does not
        if not secret:
            raise ConfigError(f"BATCHSUB_IAM_PASSWORD_FILE {path}: the file is empty")
        return secret

    read()  # a wrong path fails now, not at the first request
    return read, f"file {path}"


def must_update_token(error: ErrorInfo | ApiError | None) -> bool:
    """Whether an error answer says the token must be fetched again (401 APIG.0307)."""
    if error is None:
        return False
    if isinstance(error, ErrorInfo):
        status, code, message = error.http_status, error.code, error.message
    else:
        status, code, message = error.status, error.code, str(error)
    return status == 401 and (code == _MUST_UPDATE_CODE or "must be updated" in message.lower())


class IamTokenAuth:
    """A token from an IAM password login, sent as ``X-Auth-Token`` and renewed in time.

    ``token()`` returns a token valid for a while, asking IAM when there is none or it is
    within its renewal margin (one request at a time, whoever asks). ``clock`` is monotonic
    seconds, ``wall_clock`` epoch seconds (for an answer without ``issued_at``).
    """

    def __init__(
        self,
        login: IamLogin,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._login = login
        self._url = URL(login.endpoint.rstrip("/") + TOKENS_PATH).with_query(nocatalog="true")
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._token = ""
        self._renew_at = 0.0  # clock() time to ask for the next token
        self._expires_at = 0.0  # clock() time the token stops working
        self._lifetime = 0.0
        self._renewed_on_refusal: float | None = None  # clock() when renew() got the token
        self.token_requests = 0

    def headers(self, method: str, url: URL, body: bytes) -> dict[str, str]:
        """The token header; ``token()`` must have been awaited once before."""
        if not self._token:
            raise RuntimeError("IamTokenAuth.headers() before any token() call")
        return {"X-Auth-Token": self._token}

    def describe(self) -> str:
        """Which IAM user this is, never the password or the token."""
        return self._login.describe()

    def refusal_hint(self, server_time: datetime) -> str | None:
        """A token does not depend on the clock: nothing to add."""
        return None

    def __repr__(self) -> str:
        return f"IamTokenAuth({self._login!r}, token=<hidden>)"

    async def token(self) -> str:
        """A token valid for a while: the cached one, or a new one when it is due for renewal.

        Raises FatalApiError when IAM refuses the login, RetryableError when it cannot be
        reached and no valid token is left.
        """
        if self._token and self._clock() < self._renew_at:  # every request asks: no lock
            return self._token
        async with self._lock:
            if not self._token or self._clock() >= self._renew_at:
                await self._renew_or_keep("expiring" if self._token else "first")
            return self._token

    async def renew(self, stale: str) -> bool:
        """The API said ``stale`` must be updated: get a new token unless another task did.

        True when a token other than ``stale`` is now at hand (send the request again).
        """
        async with self._lock:
            if self._token != stale:
                return bool(self._token)
            now = self._clock()
            if self._renewed_on_refusal is not None:
                if now - self._renewed_on_refusal < REFUSED_AGAIN_WITHIN:
                    return False
            self._renew_at = self._expires_at = now  # it is no use any more
            await self._renew_or_keep("must be updated")
            if self._token == stale:
                return False
            self._renewed_on_refusal = now
            return True

    async def close(self) -> None:
        """Close the HTTP session of the IAM endpoint, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _renew_or_keep(self, reason: str) -> None:
        try:
            await self._login_once(reason)
        except RetryableError as exc:
            now = self._clock()
            if not self._token or now >= self._expires_at:
                raise
            # The token still works: keep it, and ask again soon (but before it expires).
            self._renew_at = now + min(RETRY_RENEWAL_AFTER, (self._expires_at - now) / 2)
            log.warning("iam.renewal_failed", error=str(exc), user=self._login.user)

    async def _login_once(self, reason: str) -> None:
        if self._session is None:
            self._session = make_session(1, self._ca_file)
        login = self._login
        try:
            password = login.password()
        except ConfigError as exc:
            raise FatalApiError(str(exc)) from None
        body = orjson.dumps(_login_body(login, password))
        sent = self._clock()
        self.token_requests += 1
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers={"Content-Type": _CONTENT_TYPE},
                timeout=self._timeout,
                allow_redirects=False,  # a password goes to the IAM endpoint and nowhere else
            ) as resp:
                status = resp.status
                raw = await resp.read()
                token = resp.headers.get("X-Subject-Token", "")
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            peer = f"the IAM endpoint {login.endpoint} (--iam-endpoint)"
            kind, problem = transport_failure(exc, peer, self._timeout)
            if kind is Kind.FATAL:
                raise FatalApiError(problem) from None
            code = CONNECT_FAILED if kind is Kind.TRANSIENT else None
            raise RetryableError(f"IAM login: {problem}", code=code) from None
        if status in (200, 201) and token:
            self._keep(token, _lifetime(raw, self._wall_clock()), sent)
            log.info("iam.token", reason=reason, user=login.user, valid_s=round(self._lifetime))
            return
        raise _refusal(login, status, raw, retry_after, token_missing=status in (200, 201))

    def _keep(self, token: str, lifetime: float, sent: float) -> None:
        self._token = token
        self._renewed_on_refusal = None
        self._lifetime = lifetime
        self._expires_at = sent + lifetime
        self._renew_at = self._expires_at - min(MAX_MARGIN, lifetime / 10)


class IamDliClient(DliClient):
    """A DliClient whose requests carry an IAM token that is fetched, renewed and retried.

    A request answered "the token must be updated" is sent again once with a new token; a
    failure to get a token is a create answer like any other (never an exception).
    """

    @property
    def _tokens(self) -> IamTokenAuth:
        assert isinstance(self._auth, IamTokenAuth), "IamDliClient needs an IamTokenAuth"
        return self._auth

    async def create(self, body: bytes) -> CreateAnswer:
        """POST one create request with a fresh token; a revoked token is renewed once."""
        try:
            used = await self._tokens.token()
        except FatalApiError as exc:
            return CreateAnswer(AnswerKind.FATAL, error=_error_of(exc))
        except RetryableError as exc:  # nothing was sent: safe to try again
            return CreateAnswer(AnswerKind.RETRY_SAFE, error=_error_of(exc), retry_after=exc.defer)
        answer = await super().create(body)
        if answer.kind is AnswerKind.FATAL and must_update_token(answer.error):
            try:
                renewed = await self._tokens.renew(used)
            except ApiError as exc:
                kind = AnswerKind.FATAL if isinstance(exc, FatalApiError) else AnswerKind.RETRY_SAFE
                return CreateAnswer(kind, error=_error_of(exc))
            if renewed:
                answer = await super().create(body)
        return answer

    def _credential_shown(self, status: int, accepted: bool, error: ErrorInfo | None) -> None:
        # "The token must be updated" is answered by a new token, not by sending nothing more:
        # requests still in flight with the old token would otherwise shut out the new one.
        if not must_update_token(error):
            super()._credential_shown(status, accepted, error)

    async def list_page(self, **query: Any) -> JobPage:
        """One page of the list call with a fresh token; a revoked token is renewed once."""
        used = await self._tokens.token()
        try:
            return await super().list_page(**query)
        except FatalApiError as exc:
            if not must_update_token(exc) or not await self._tokens.renew(used):
                raise
        return await super().list_page(**query)


def auth_from_settings(settings: Settings, project_id: str) -> IamTokenAuth:
    """The IAM login the settings describe (ConfigError when incomplete); no request yet."""
    for value, variable in ((settings.iam_user, "USER"), (settings.iam_domain, "DOMAIN")):
        if not value:
            raise ConfigError(f"incomplete IAM credential: BATCHSUB_IAM_{variable} is not set")
    password = settings.iam_password.get_secret_value() if settings.iam_password else None
    reader, origin = password_source(password, settings.iam_password_file)
    login = IamLogin(
        user=str(settings.iam_user),
        domain=str(settings.iam_domain),
        project_id=project_id,
        endpoint=settings.resolved_iam_endpoint(),
        password=reader,
        password_origin=origin,
    )
    ca_file = str(settings.ca_file) if settings.ca_file else None
    return IamTokenAuth(login, ca_file=ca_file, timeout=settings.timeout)


def _login_body(login: IamLogin, password: str) -> dict[str, Any]:
    user = {"name": login.user, "password": password, "domain": {"name": login.domain}}
    return {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": {"id": login.project_id}},
        }
    }


def _lifetime(raw: bytes, now: float) -> float:
    """Seconds the token is valid: expires_at - issued_at (both the server's clock) if given."""
    try:
        token = orjson.loads(raw)["token"]
        expires = datetime.fromisoformat(token["expires_at"]).timestamp()
        issued_at = token.get("issued_at")
        issued = datetime.fromisoformat(issued_at).timestamp() if issued_at else now
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return DOCUMENTED_LIFETIME
    lifetime = expires - issued
    return lifetime if lifetime > 0 else DOCUMENTED_LIFETIME


def _refusal(
    login: IamLogin, status: int, raw: bytes, retry_after: float | None, *, token_missing: bool
) -> ApiError:
    """The error for an IAM answer without a token: one line naming the user and the fix."""
    where = f"HTTP {status} from {login.endpoint}"
    if token_missing:
        return FatalApiError(
            f"IAM login of user {login.user}: {where} has no X-Subject-Token header; "
            "is --iam-endpoint an IAM endpoint?"
        )
    message = _iam_message(raw)
    if status == 429 or status >= 500:
        return RetryableError(f"IAM login: {message} ({where})", status=status, defer=retry_after)
    who = f"user {login.user} of domain {login.domain}"
    if status == 401:
        text = (
            f"IAM refused the password of {who}: {message} ({where}); check "
            f"BATCHSUB_IAM_USER, BATCHSUB_IAM_DOMAIN and {PASSWORD_VARIABLES}"
        )
    elif status == 404:
        text = f"IAM login of {who}: {message} ({where}); wrong --iam-endpoint?"
    else:
        text = f"IAM refused a token for project {login.project_id} to {who}: {message} ({where})"
    # No status: the line is complete as it is, not an answer of the DLI API to wrap.
    return FatalApiError(text)


def _iam_message(raw: bytes) -> str:
    """The message of an IAM error body: Keystone's ``{"error": {...}}`` or ``error_msg``."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        inner = payload.get("error")
        found = inner.get("message") if isinstance(inner, dict) else None
        found = found or payload.get("error_msg") or payload.get("message")
        if isinstance(found, str) and found.strip():
            return found.strip()[:200]
    text = raw[:200].decode("utf-8", "replace").strip()
    return text or "no error message"


def _error_of(exc: ApiError) -> ErrorInfo:
    return ErrorInfo(str(exc), code=exc.code, http_status=exc.status)
