"""The DLI API client on aiohttp: create a Flink Jar job, list jobs, classify every answer.

This is the one place where aiohttp errors become batchsub's own: a create never raises for
an API or transport failure, it returns a ``CreateAnswer`` whose ``kind`` tells the submitter
whether the job was created, certainly not created, or may have been created.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeGuard, TypeVar

import aiohttp
import orjson
from yarl import URL

from batchsub.auth import JSON_CONTENT_TYPE
from batchsub.errors import ConfigError, FatalApiError, RetryableError
from batchsub.jobs import ErrorInfo
from batchsub.masking import mask_url
from batchsub.protocols import Auth
from batchsub.reachability import Reachability
from batchsub.retry import parse_retry_after


class AnswerKind(StrEnum):
    """What one create answer means for the job."""

    CREATED = "created"
    PERMANENT = "permanent"  # not created, and sending it again as is will not help
    RETRY_SAFE = "retry_safe"  # transient, and known not to have created the job
    IN_DOUBT = "in_doubt"  # transient, and the job may exist: reconcile before resending
    DUPLICATE = "duplicate"  # the server says the name exists: find and adopt it
    FATAL = "fatal"  # stop the run: every further request would fail the same way


@dataclass(frozen=True, slots=True)
class CreateAnswer:
    """The classified answer to one create request."""

    kind: AnswerKind
    job_id: int | None = None
    error: ErrorInfo | None = None
    retry_after: float | None = None
    throttled: bool = False
    timed_out: bool = False  # no answer before the timeout: the costliest kind of retry


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """A job as the list call shows it."""

    job_id: int
    name: str
    create_time: int | None = None  # epoch ms, when the API gives it


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of the list call."""

    total_count: int
    jobs: list[RemoteJob]


# Create answers only DLI gives, past the gateway that checks the credential.
_ACCEPTED = frozenset({AnswerKind.CREATED, AnswerKind.PERMANENT, AnswerKind.DUPLICATE})
# DLI answers these with HTTP 400 although the server, not the request, is at fault.
_SERVER_SIDE_CODES = frozenset({"DLI.0999"})
_EXISTS_CODES = frozenset({"DLI.0006"})
LIST_PAGE_SIZE = 100
CONNECT_FAILED = "CONNECT"  # RetryableError code: no connection could be made at all
UNREADABLE = "UNREADABLE"  # RetryableError code: a list answer that is not a job list
# Seconds a TCP connection may take: an address that never answers (a wrong region's, a
# firewall that drops) fails in seconds, not after the whole request timeout.
CONNECT_TIMEOUT = 5.0


def make_session(concurrency: int, ca_file: str | None = None) -> aiohttp.ClientSession:
    """An HTTP session sized for the pool; ``ca_file`` adds a private CA for TLS."""
    ssl_context: ssl.SSLContext | bool = True
    if ca_file:
        try:
            ssl_context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ca-file {ca_file}: cannot load it: {exc}") from None
    connector = aiohttp.TCPConnector(limit=concurrency + 4, ssl=ssl_context, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda o: orjson.dumps(o).decode(),
        # The API needs no cookies: a gateway's load-balancer cookie would only cost a jar
        # lookup on every request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _one_at_a_time_until_proven(
    send: Callable[Concatenate[DliClient, _P], Awaitable[_T]],
) -> Callable[Concatenate[DliClient, _P], Awaitable[_T]]:
    """A request method that waits for the one in flight until the credential is proven."""

    @functools.wraps(send)
    async def gated(client: DliClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if client._proven:
            return await send(client, *args, **kwargs)
        async with client._alone:
            return await send(client, *args, **kwargs)

    return gated


class DliClient:
    """Sends create and list requests for one project and classifies the answers.

    Every request leaves here, so this is where a credential is kept from being refused again
    and again (more than 5 bad AK/SK signatures in a row lock the AK for 5 minutes): until an
    answer proves it (a job list read, as the first one of a run is; a create DLI answered),
    requests go one at a time; once one is refused (401/403), no other leaves, and each gets
    that refusal back.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        project_id: str,
        auth: Auth,
        *,
        timeout: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        on_answer: Callable[[str, float, int | None], None] | None = None,
        reachability: Reachability | None = None,
    ) -> None:
        base = URL(endpoint.rstrip("/"))
        # Called after every request with (call, seconds, HTTP status or None): for metrics.
        self._on_answer = on_answer
        self._session = session
        self._auth = auth
        self._endpoint = mask_url(endpoint)  # for messages
        self._create_url = base / "v1.0" / project_id / "streaming" / "flink-jobs"
        self._list_url = base / "v1.0" / project_id / "streaming" / "jobs"
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(timeout, connect_timeout)
        )
        self.reachability = reachability or Reachability()
        self.project_id = project_id
        self._proven = False  # an answer showed the credential is accepted
        self._alone = asyncio.Lock()  # held by the one request in flight until then
        self.refusal: ErrorInfo | None = None  # the API refused the credential: send nothing

    def credential_renewed(self) -> None:
        """The credential was replaced (a new token): requests may leave again."""
        self.refusal = None

    @_one_at_a_time_until_proven
    async def create(self, body: bytes) -> CreateAnswer:
        """POST one create request; never raises for an API or transport failure."""
        if self.refusal is not None:
            return CreateAnswer(AnswerKind.FATAL, error=self.refusal)  # not sent
        headers = dict(self._auth.headers("POST", self._create_url, body))
        headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        started = time.perf_counter()
        status: int | None = None
        try:
            # No redirect is followed: it would carry the credential to another address.
            async with self._session.post(
                self._create_url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                self.reachability.answered()
                answer = classify_create(resp.status, raw, resp.headers)
                if status == 401 and answer.error is not None:
                    answer = replace(answer, error=self._explained(resp.headers, answer.error))
                accepted = answer.kind in _ACCEPTED or answer.throttled
                self._credential_shown(status, accepted, answer.error)
                return answer
        except aiohttp.ClientSSLError as exc:
            return _fatal(f"TLS failure talking to {self._endpoint}: {exc}; use --ca-file")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # The connection was never made, so the request never left.
            problem = self._cannot_connect(exc)
            return CreateAnswer(AnswerKind.RETRY_SAFE, error=ErrorInfo(problem))
        except TimeoutError:
            return CreateAnswer(
                AnswerKind.IN_DOUBT, error=ErrorInfo("no answer before the timeout"), timed_out=True
            )
        except aiohttp.ClientError as exc:
            what = type(exc).__name__
            return CreateAnswer(AnswerKind.IN_DOUBT, error=ErrorInfo(f"answer lost: {what}: {exc}"))
        finally:
            if self._on_answer is not None:
                self._on_answer("create", time.perf_counter() - started, status)

    @_one_at_a_time_until_proven
    async def list_page(
        self,
        *,
        name: str | None,
        offset: int,
        newest_first: bool = False,
        limit: int = LIST_PAGE_SIZE,
    ) -> JobPage:
        """One page of Flink Jar jobs, optionally filtered by name; raises ApiError subclasses.

        Oldest first (a stable order for paging), or newest first to catch up on new jobs.
        """
        if (refused := self.refusal) is not None:  # not sent
            raise FatalApiError(
                f"list jobs: {refused}", code=refused.code, status=refused.http_status
            )
        query: dict[str, str] = {
            "job_type": "flink_jar_job",
            "limit": str(limit),
            "offset": str(offset),
            "order": "desc" if newest_first else "asc",
        }
        if name is not None:
            query["name"] = name
        url = self._list_url.with_query(query)
        headers = self._auth.headers("GET", url, b"")
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._session.get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await resp.read()
                answer_headers = resp.headers
        except aiohttp.ClientSSLError as exc:
            raise FatalApiError(
                f"TLS failure talking to {self._endpoint}: {exc}; use --ca-file"
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise RetryableError(self._cannot_connect(exc), code=CONNECT_FAILED) from None
        except TimeoutError:
            raise RetryableError("list jobs: no answer before the timeout") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"list jobs: {type(exc).__name__}: {exc}") from None
        finally:
            if self._on_answer is not None:
                self._on_answer("list", time.perf_counter() - started, status)
        try:
            page = _parse_page(status, raw, answer_headers)
        except RetryableError as exc:
            if exc.code == UNREADABLE:
                self.reachability.lost(str(exc))
            raise
        except FatalApiError as exc:
            if status not in (401, 403):
                raise
            refused = _error_info(status, _decode(raw), raw)
            if status == 401:
                refused = self._explained(answer_headers, refused)
            self._credential_shown(status, False, refused)
            raise FatalApiError(f"list jobs: {refused}", code=exc.code, status=status) from None
        self.reachability.answered()
        self._credential_shown(status, True, None)
        return page

    def _explained(self, headers: Mapping[str, str], error: ErrorInfo) -> ErrorInfo:
        """A 401's error, with what the auth makes of the answer's ``Date`` (a clock off)."""
        try:
            server_time = parsedate_to_datetime(headers.get("Date", ""))
        except (TypeError, ValueError, IndexError, OverflowError):
            return error
        if server_time.tzinfo is None:
            server_time = server_time.replace(tzinfo=UTC)
        hint = self._auth.refusal_hint(server_time)
        return replace(error, message=f"{error.message}; {hint}") if hint else error

    def _credential_shown(self, status: int, accepted: bool, error: ErrorInfo | None) -> None:
        """Note what an answer says of the credential: accepted, refused, or nothing yet."""
        if status in (401, 403):
            if self.refusal is None:
                self.refusal = error or ErrorInfo("the credential was refused", http_status=status)
        elif accepted:
            self._proven = True

    def _cannot_connect(self, exc: aiohttp.ClientError) -> str:
        reason: object = exc
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            reason = f"no answer to connect within {self._timeout.sock_connect:g} s"
        problem = f"cannot connect to {self._endpoint}: {reason}"
        self.reachability.lost(problem)
        return problem


def classify_create(status: int, raw: bytes, headers: Mapping[str, str]) -> CreateAnswer:
    """Classify a create answer by HTTP status and DLI error code (see dli-api-notes.md)."""
    if 300 <= status < 400:
        # Known not created by the API we meant; every request would be redirected.
        return _fatal(_redirected(status, headers))
    payload = _decode(raw)
    if status == 200:
        return _classify_ok(payload, raw)
    error = _error_info(status, payload, raw)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 429:
        return CreateAnswer(
            AnswerKind.RETRY_SAFE, error=error, retry_after=retry_after, throttled=True
        )
    if status in (401, 403):
        return CreateAnswer(AnswerKind.FATAL, error=error)
    if status == 404:
        return _fatal(f"HTTP 404 from the create URL: wrong --endpoint or --project-id? ({error})")
    if status >= 500 or error.code in _SERVER_SIDE_CODES:
        return CreateAnswer(AnswerKind.IN_DOUBT, error=error, retry_after=retry_after)
    if error.code in _EXISTS_CODES or _names_existing_job(error.message):
        return CreateAnswer(AnswerKind.DUPLICATE, error=error)
    return CreateAnswer(AnswerKind.PERMANENT, error=error)


def _classify_ok(payload: Any, raw: bytes) -> CreateAnswer:
    if not isinstance(payload, dict):
        # A 200 we cannot read may still mean the job exists.
        return CreateAnswer(
            AnswerKind.IN_DOUBT,
            error=ErrorInfo("HTTP 200 with an unreadable body", http_status=200),
        )
    job = payload.get("job")
    job_id = job.get("job_id") if isinstance(job, dict) else None
    succeeded = _truthy(payload.get("is_success"))
    if succeeded and _is_int(job_id):
        return CreateAnswer(AnswerKind.CREATED, job_id=job_id)
    if succeeded:
        return CreateAnswer(
            AnswerKind.IN_DOUBT,
            error=ErrorInfo("HTTP 200 success without a job_id", http_status=200),
        )
    error = _error_info(200, payload, raw)  # only now: most answers are a plain success
    if error.code in _SERVER_SIDE_CODES:
        return CreateAnswer(AnswerKind.IN_DOUBT, error=error)
    return CreateAnswer(AnswerKind.PERMANENT, error=error)


def _parse_page(status: int, raw: bytes, headers: Mapping[str, str]) -> JobPage:
    """The page, or the error: a list answer is never taken for "no jobs" unless it says so.

    What cannot be read as a job list (a proxy's HTML page, truncated JSON, another shape, an
    error DLI does not give for this call) is transient: while it lasts nothing is created.
    """
    if 300 <= status < 400:
        raise FatalApiError(f"list jobs: {_redirected(status, headers)}", status=status)
    payload = _decode(raw)
    problem = _unreadable_body(raw, payload, headers)
    if status == 200 and problem is None:
        page = _read_page(payload)
        if isinstance(page, JobPage):
            return page
        problem = page
    error = _error_info(status, payload, raw)
    if status in (401, 403):
        raise FatalApiError(f"list jobs: {error}", code=error.code, status=status)
    if status == 429 or status >= 500 or error.code in _SERVER_SIDE_CODES:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        raise RetryableError(
            f"list jobs: {error}", code=error.code, status=status, defer=retry_after
        )
    what = f"HTTP {status} {problem}" if problem else str(error)
    raise RetryableError(f"the job list cannot be read: {what}", code=UNREADABLE, status=status)


def _unreadable_body(raw: bytes, payload: Any, headers: Mapping[str, str]) -> str | None:
    """What is wrong with a body that is not JSON at all (None when it is JSON)."""
    if payload is not None:
        return None
    content_type = headers.get("Content-Type") or "no Content-Type"
    if not raw.strip():
        return f"with an empty body ({content_type})"
    if "html" in content_type.lower() or raw.lstrip()[:1] == b"<":
        return f"with an HTML body ({content_type})"
    return f"with a body that is not JSON ({content_type}, {len(raw)} bytes)"


def _read_page(payload: Any) -> JobPage | str:
    """The page a 200 JSON answer holds, or what keeps it from being one."""
    if not isinstance(payload, dict):
        return "with JSON that is not an object"
    if not _truthy(payload.get("is_success", True)):
        error = _error_info(200, payload, b"")
        return f"with is_success {payload.get('is_success')!r} ({error})"
    job_list = payload.get("job_list")
    total = job_list.get("total_count") if isinstance(job_list, dict) else None
    if not isinstance(job_list, dict) or not _is_int(total) or total < 0:
        return "with JSON that is not a job list (no job_list.total_count)"
    listed = job_list.get("jobs") or []
    if not isinstance(listed, list) or (total and not listed and "jobs" not in job_list):
        return "with JSON that is not a job list (no job_list.jobs list)"
    jobs = []
    for j in listed:
        job_id, name = (j.get("job_id"), j.get("name")) if isinstance(j, dict) else (None, None)
        if not _is_int(job_id) or not isinstance(name, str):
            return "with a job that has no integer job_id or no name"
        create_time = j.get("create_time")
        jobs.append(RemoteJob(job_id, name, create_time if _is_int(create_time) else None))
    return JobPage(total_count=total, jobs=jobs)


def _redirected(status: int, headers: Mapping[str, str]) -> str:
    location = headers.get("Location")
    where = f"to {mask_url(location[:200])}" if location else "without a Location"
    return (
        f"HTTP {status}: the API redirected {where}; not followed (a redirect would carry "
        "the credential elsewhere): check --endpoint/--region"
    )


def _fatal(message: str) -> CreateAnswer:
    return CreateAnswer(AnswerKind.FATAL, error=ErrorInfo(message))


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _truthy(value: object) -> bool:
    # The API sends is_success as a boolean in some answers and as "true" in others.
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _error_info(status: int, payload: Any, raw: bytes) -> ErrorInfo:
    code: str | None = None
    message: str | None = None
    if isinstance(payload, dict):
        # DLI says error_code/error_msg; some gateways errorCode/errorMsg or code/message.
        for code_key, msg_key in (
            ("error_code", "error_msg"),
            ("errorCode", "errorMsg"),
            ("code", "message"),
        ):
            if payload.get(code_key) or payload.get(msg_key):
                code = str(payload.get(code_key) or "") or None
                message = str(payload.get(msg_key) or "")
                break
        else:
            message = str(payload.get("message") or "") or None
    if not message:
        text = raw[:200].decode("utf-8", "replace").strip()
        message = text or "no error message"
    return ErrorInfo(message=message, code=code, http_status=status)


def _names_existing_job(message: str) -> bool:
    lowered = message.lower()
    return "already exist" in lowered and "job" in lowered


async def close_session(session: aiohttp.ClientSession) -> None:
    """Close the session and give the connector a moment to close its transports."""
    await session.close()
    await asyncio.sleep(0)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
