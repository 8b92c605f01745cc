"""The DLI API client on aiohttp: create a Flink Jar job, list jobs, classify every answer.

This is the one place where aiohttp errors become batchsub's own: a create never raises for
an API or transport failure, it returns a ``CreateAnswer`` whose ``kind`` tells the submitter
whether the job was created, certainly not created, or may have been created.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeGuard, TypeVar

import aiohttp
import orjson
from yarl import URL

from batchsub.auth import JSON_CONTENT_TYPE
from batchsub.errors import (
    CONNECT_FAILED,
    UNREADABLE,
    ApiError,
    ConfigError,
    FatalApiError,
    RetryableError,
)
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

    # --- the job life cycle: run, stop, detail, list pages with statuses -----------------
    # Run and stop are not idempotent in effect, so they are not retried here: like creates,
    # they return a classified answer and the starter decides. Detail and status pages raise
    # ApiError subclasses and go through retry.RetryingCaller, as the list call does.

    async def run_jobs(
        self, job_ids: Sequence[int], *, resume_savepoint: bool = False
    ) -> BatchAnswer:
        """``POST .../streaming/jobs/run`` for these ids; never raises for an API failure."""
        body = {"job_ids": list(job_ids), "resume_savepoint": resume_savepoint}
        return await self._post_batch("run", self._list_url / "run", body, len(job_ids))

    async def stop_jobs(
        self, job_ids: Sequence[int], *, trigger_savepoint: bool = False
    ) -> BatchAnswer:
        """``POST .../streaming/jobs/stop`` for these ids; never raises for an API failure."""
        body = {"job_ids": list(job_ids), "trigger_savepoint": trigger_savepoint}
        return await self._post_batch("stop", self._list_url / "stop", body, len(job_ids))

    async def job_detail(self, job_id: int) -> JobStatus:
        """The status part of ``GET .../streaming/jobs/{job_id}``; raises ApiError subclasses.

        A job that does not exist raises ``ApiError`` with code ``JOB_GONE`` (DLI.16001).
        """
        status, raw, retry_after = await self._get("detail", self._list_url / str(job_id))
        payload = _decode(raw)
        if status == 200 and isinstance(payload, dict):
            found = _job_status(payload.get("job_detail"))
            if found is not None and _truthy(payload.get("is_success", True)):
                return found
        raise _call_error(f"job {job_id} detail", status, payload, raw, retry_after)

    async def status_page(
        self, *, status: str | None, offset: int, newest_first: bool = True
    ) -> StatusPage:
        """One page of Flink Jar jobs with their statuses, optionally of one DLI status only.

        Newest first by default: the jobs a rollout waits for are the ones it made last.
        """
        query: dict[str, str] = {
            "job_type": "flink_jar_job",
            "limit": str(LIST_PAGE_SIZE),
            "offset": str(offset),
            "order": "desc" if newest_first else "asc",
        }
        if status is not None:
            query["status"] = status
        code, raw, retry_after = await self._get("list", self._list_url.with_query(query))
        payload = _decode(raw)
        if code == 200 and isinstance(payload, dict) and _truthy(payload.get("is_success", True)):
            job_list = payload.get("job_list")
            if isinstance(job_list, dict):
                listed = job_list.get("jobs") or []
                jobs = [j for j in map(_job_status, listed) if j is not None]
                total = job_list.get("total_count")
                return StatusPage(total if _is_int(total) else len(jobs), jobs)
        raise _call_error("list jobs", code, payload, raw, retry_after)

    @_one_at_a_time_until_proven
    async def _get(self, call: str, url: URL) -> tuple[int, bytes, float | None]:
        """GET ``url``: (HTTP status, body, Retry-After); transport failures as ApiError.

        The same guards as every request: nothing leaves after a refusal, no redirect is
        followed, a connection that cannot be made says so.
        """
        if (refused := self.refusal) is not None:  # not sent
            raise FatalApiError(f"{call}: {refused}", code=refused.code, status=refused.http_status)
        headers = self._auth.headers("GET", url, b"")
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._session.get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await resp.read()
                self.reachability.answered()
                self._answer_seen(call, status, raw, resp.headers)
                return status, raw, parse_retry_after(resp.headers.get("Retry-After"))
        except aiohttp.ClientSSLError as exc:
            raise FatalApiError(
                f"TLS failure talking to {self._endpoint}: {exc}; use --ca-file"
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise RetryableError(self._cannot_connect(exc), code=CONNECT_FAILED) from None
        except TimeoutError:
            raise RetryableError(f"{call}: no answer before the timeout") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{call}: {type(exc).__name__}: {exc}") from None
        finally:
            if self._on_answer is not None:
                self._on_answer(call, time.perf_counter() - started, status)

    def _answer_seen(self, call: str, status: int, raw: bytes, headers: Mapping[str, str]) -> None:
        """What a life-cycle answer says of the credential; a redirect is fatal, not followed."""
        if 300 <= status < 400:
            raise FatalApiError(f"{call}: {_redirected(status, headers)}", status=status)
        if status in (401, 403):
            refused = _error_info(status, _decode(raw), raw)
            if status == 401:
                refused = self._explained(headers, refused)
            self._credential_shown(status, False, refused)
        elif status < 500 and status != 429:
            self._credential_shown(status, True, None)

    @_one_at_a_time_until_proven
    async def _post_batch(
        self, call: str, url: URL, payload: dict[str, object], count: int
    ) -> BatchAnswer:
        if (refused := self.refusal) is not None:  # not sent
            return BatchAnswer(BatchKind.FATAL, error=refused)
        body = orjson.dumps(payload)
        headers = dict(self._auth.headers("POST", url, body))
        headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await resp.read()
                self.reachability.answered()
                try:
                    self._answer_seen(call, status, raw, resp.headers)
                except FatalApiError as exc:  # a redirect: known not to have reached DLI
                    return BatchAnswer(BatchKind.FATAL, error=ErrorInfo(str(exc)))
                return classify_batch(resp.status, raw, resp.headers, count)
        except aiohttp.ClientSSLError as exc:
            error = ErrorInfo(f"TLS failure talking to {self._endpoint}: {exc}; use --ca-file")
            return BatchAnswer(BatchKind.FATAL, error=error)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # The connection was never made, so the request never left.
            return BatchAnswer(BatchKind.RETRY_SAFE, error=ErrorInfo(self._cannot_connect(exc)))
        except TimeoutError:
            error = ErrorInfo("no answer before the timeout")
            return BatchAnswer(BatchKind.IN_DOUBT, error=error, timed_out=True)
        except aiohttp.ClientError as exc:
            error = ErrorInfo(f"answer lost: {type(exc).__name__}: {exc}")
            return BatchAnswer(BatchKind.IN_DOUBT, error=error)
        finally:
            if self._on_answer is not None:
                self._on_answer(call, time.perf_counter() - started, status)


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


# --- the job life cycle: answers of run and stop, statuses of detail and list pages --------

JOB_GONE = "DLI.16001"  # the job id does not exist (any more): the provider drops the job
_GONE_ID_RE = re.compile(r"\b(\d+)\b")


class BatchKind(StrEnum):
    """What one run or stop answer means for the jobs of the call."""

    ANSWERED = "answered"  # one element per job id: each says whether DLI took that job
    RETRY_SAFE = "retry_safe"  # nothing was done (429, no connection): send it again
    IN_DOUBT = "in_doubt"  # some or all may be done: confirm each job from its status
    REFUSED = "refused"  # the call as a whole was refused (a 400): nothing was done
    GONE = "gone"  # 400 DLI.16001: a job of the call does not exist
    FATAL = "fatal"  # stop the run: every further request would fail the same way


@dataclass(frozen=True, slots=True)
class BatchElement:
    """One element of a run or stop answer: ``{is_success, message}``, with no job id."""

    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """The classified answer to one run or stop call."""

    kind: BatchKind
    elements: tuple[BatchElement, ...] = ()  # ANSWERED only: as many as job ids were sent
    error: ErrorInfo | None = None
    retry_after: float | None = None
    throttled: bool = False
    timed_out: bool = False
    gone_id: int | None = None  # GONE: the id its message names, when it names one


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's status as a list page or its detail shows it."""

    job_id: int
    name: str
    status: str
    status_desc: str = ""
    create_time: int | None = None  # epoch ms; pages are ordered by it
    start_time: int | None = None  # epoch ms it last entered job_running, when given
    restart_times: int | None = None  # returns to running after an exception, when given


@dataclass(frozen=True, slots=True)
class StatusPage:
    """One page of the list call, with each job's status."""

    total_count: int
    jobs: list[JobStatus]


def classify_batch(status: int, raw: bytes, headers: Mapping[str, str], count: int) -> BatchAnswer:
    """Classify a run or stop answer for a call of ``count`` job ids (dli-lifecycle-api.md).

    The array has no job ids, and its order only "probably follows job_ids": an answer of
    another length cannot be matched to the jobs and is in doubt.
    """
    payload = _decode(raw)
    if status == 200:
        return _classify_batch_ok(payload, raw, count)
    error = _error_info(status, payload, raw)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 429:
        return BatchAnswer(
            BatchKind.RETRY_SAFE, error=error, retry_after=retry_after, throttled=True
        )
    if status in (401, 403):
        return BatchAnswer(BatchKind.FATAL, error=error)
    if status == 404:
        message = f"HTTP 404 from the jobs URL: wrong --endpoint or --project-id? ({error})"
        return BatchAnswer(BatchKind.FATAL, error=ErrorInfo(message))
    if status >= 500 or error.code in _SERVER_SIDE_CODES:
        return BatchAnswer(BatchKind.IN_DOUBT, error=error, retry_after=retry_after)
    if error.code == JOB_GONE:
        named = _GONE_ID_RE.search(error.message)
        return BatchAnswer(
            BatchKind.GONE, error=error, gone_id=int(named[1]) if named is not None else None
        )
    return BatchAnswer(BatchKind.REFUSED, error=error)


def _classify_batch_ok(payload: Any, raw: bytes, count: int) -> BatchAnswer:
    if isinstance(payload, dict) and count == 1 and "is_success" in payload:
        payload = [payload]  # one object for one job: the 2022 pages show that shape
    if isinstance(payload, list) and all(isinstance(item, dict) for item in payload):
        if len(payload) == count:
            elements = tuple(
                BatchElement(_truthy(item.get("is_success")), str(item.get("message") or ""))
                for item in payload
            )
            return BatchAnswer(BatchKind.ANSWERED, elements=elements)
        message = f"HTTP 200 with {len(payload)} elements for {count} job ids"
        return BatchAnswer(BatchKind.IN_DOUBT, error=ErrorInfo(message, http_status=200))
    if isinstance(payload, dict) and not _truthy(payload.get("is_success")):
        error = _error_info(200, payload, raw)
        if error.code in _SERVER_SIDE_CODES:
            return BatchAnswer(BatchKind.IN_DOUBT, error=error)
        if error.code is not None or error.message:
            return BatchAnswer(BatchKind.REFUSED, error=error)
    # A 200 we cannot match to the jobs may still mean some of them were started.
    error = ErrorInfo("HTTP 200 with a body that is not one element per job", http_status=200)
    return BatchAnswer(BatchKind.IN_DOUBT, error=error)


def _job_status(item: object) -> JobStatus | None:
    """A list page's job or a ``job_detail`` as a JobStatus; None without id, name, status."""
    if not isinstance(item, dict):
        return None
    job_id, name, status = item.get("job_id"), item.get("name"), item.get("status")
    if not (_is_int(job_id) and isinstance(name, str) and isinstance(status, str)):
        return None
    desc = item.get("status_desc")
    create_time, start_time = item.get("create_time"), item.get("start_time")
    restarts = item.get("restart_times")
    return JobStatus(
        job_id=job_id,
        name=name,
        status=status,
        status_desc=desc if isinstance(desc, str) else "",
        create_time=create_time if _is_int(create_time) else None,
        start_time=start_time if _is_int(start_time) else None,
        restart_times=restarts if _is_int(restarts) else None,
    )


def _call_error(
    what: str, status: int, payload: Any, raw: bytes, retry_after: float | None
) -> ApiError:
    """The error for an unusable answer to an idempotent call (detail, list with statuses)."""
    error = _error_info(status, payload, raw)
    if status == 200:
        return RetryableError(f"{what}: HTTP 200 with an unreadable body", status=200)
    message = f"{what}: {error}"
    if status == 429 or status >= 500 or error.code in _SERVER_SIDE_CODES:
        return RetryableError(message, code=error.code, status=status, defer=retry_after)
    if status in (401, 403):
        return FatalApiError(message, code=error.code, status=status)
    return ApiError(message, code=error.code, status=status)
