"""The DLI API client on aiohttp: every request of batchsub to DLI leaves through here.

This is the one place where aiohttp errors become batchsub's own: each request's answer, or
its absence, is classified once (``batchsub.answers``). A create, a run or a stop never
raises for an API or transport failure: it returns what the answer means for its jobs. The
idempotent calls (the job list, a job's detail, a page of statuses) raise ``ApiError``
subclasses, which ``batchsub.retry.RetryingCaller`` retries.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Concatenate, ParamSpec, TypeVar

import aiohttp
import orjson
from yarl import URL

from batchsub.answers import (
    ACCEPTED,
    Answer,
    AnswerKind,
    BatchAnswer,
    BatchKind,
    CreateAnswer,
    JobPage,
    JobStatus,
    Kind,
    StatusPage,
    batch_answer,
    classify,
    create_answer,
    error_info,
    read_detail,
    read_job_page,
    read_status_page,
)
from batchsub.auth import JSON_CONTENT_TYPE
from batchsub.errors import UNREADABLE, ConfigError, FatalApiError, RetryableError
from batchsub.jobs import ErrorInfo
from batchsub.masking import mask_url
from batchsub.protocols import Auth
from batchsub.reachability import Reachability

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
    """Sends the requests of one project and classifies the answers.

    Every request leaves here, so this is where a credential is kept from being refused again
    and again (more than 5 bad AK/SK signatures in a row lock the AK for 5 minutes): until an
    answer proves it (a job list read, as the first one of a run is; a create DLI answered),
    requests go one at a time; once one is refused (401/403), no other leaves, and each gets
    that refusal back. No redirect is ever followed: it would carry the credential elsewhere.
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
        answer = await self._request("create", "POST", self._create_url, body)
        created = create_answer(answer)
        if answer.status is not None:
            self.reachability.answered()
            if answer.status == 401 and created.error is not None:
                created = replace(created, error=self._explained(answer, created.error))
            accepted = created.kind in ACCEPTED or created.throttled
            self._credential_shown(answer.status, accepted, created.error)
        return created

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
        query = self._query(offset, newest_first, limit=limit)
        if name is not None:
            query["name"] = name
        answer = await self._request("list", "GET", self._list_url.with_query(query))
        status = answer.status
        if status in (401, 403):
            refused = self._refused(status, answer)
            raise FatalApiError(f"list jobs: {refused}", code=refused.code, status=status)
        try:
            page = read_job_page(answer)
        except RetryableError as exc:
            if exc.code == UNREADABLE:
                self.reachability.lost(str(exc))
            raise
        self.reachability.answered()
        assert status is not None  # a page was read
        self._credential_shown(status, True, None)
        return page

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
        answer = await self._get("detail", self._list_url / str(job_id))
        return read_detail(job_id, answer)

    async def status_page(
        self, *, status: str | None, offset: int, newest_first: bool = True
    ) -> StatusPage:
        """One page of Flink Jar jobs with their statuses, optionally of one DLI status only.

        Newest first by default: the jobs a rollout waits for are the ones it made last.
        """
        query = self._query(offset, newest_first)
        if status is not None:
            query["status"] = status
        return read_status_page(await self._get("list", self._list_url.with_query(query)))

    @_one_at_a_time_until_proven
    async def _get(self, call: str, url: URL) -> Answer:
        """A life-cycle GET, with the guards of every request; the answer as classified."""
        if (refused := self.refusal) is not None:  # not sent
            raise FatalApiError(f"{call}: {refused}", code=refused.code, status=refused.http_status)
        answer = await self._request(call, "GET", url)
        self._lifecycle_answer_seen(answer)
        return answer

    @_one_at_a_time_until_proven
    async def _post_batch(
        self, call: str, url: URL, payload: dict[str, object], count: int
    ) -> BatchAnswer:
        if (refused := self.refusal) is not None:  # not sent
            return BatchAnswer(BatchKind.FATAL, error=refused)
        answer = await self._request(call, "POST", url, orjson.dumps(payload))
        self._lifecycle_answer_seen(answer)
        return batch_answer(answer, count)

    def _lifecycle_answer_seen(self, answer: Answer) -> None:
        """What a life-cycle answer says of the API and of the credential."""
        status = answer.status
        if status is None:
            return
        self.reachability.answered()
        if status in (401, 403):
            self._refused(status, answer)
        elif answer.kind is not Kind.FATAL and status < 500 and status != 429:
            self._credential_shown(status, True, None)

    # --- one request ---------------------------------------------------------------------

    def _query(
        self, offset: int, newest_first: bool, *, limit: int = LIST_PAGE_SIZE
    ) -> dict[str, str]:
        return {
            "job_type": "flink_jar_job",
            "limit": str(limit),
            "offset": str(offset),
            "order": "desc" if newest_first else "asc",
        }

    async def _request(self, call: str, method: str, url: URL, body: bytes = b"") -> Answer:
        """Send one signed request, following no redirect: its answer, or why none came.

        Never raises for the API or the network: no connection is ``TRANSIENT`` (the request
        never left), no answer in time or a dropped connection ``IN_DOUBT``, TLS ``FATAL``.
        """
        headers = dict(self._auth.headers(method, url, body))
        if body:
            headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._session.request(
                method,
                url,
                data=body or None,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                return classify(status, await resp.read(), resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind, problem = transport_failure(exc, self._endpoint, self._timeout)
            if kind is Kind.TRANSIENT:
                self.reachability.lost(problem)
            timed_out = kind is Kind.IN_DOUBT and isinstance(exc, TimeoutError)
            return Answer(kind, error=ErrorInfo(problem), timed_out=timed_out)
        finally:
            if self._on_answer is not None:
                self._on_answer(call, time.perf_counter() - started, status)

    def _refused(self, status: int, answer: Answer) -> ErrorInfo:
        """A 401/403 of a list or life-cycle call: noted, so nothing more is sent; its error."""
        refused = error_info(status, answer.payload, answer.raw)
        if status == 401:
            refused = self._explained(answer, refused)
        self._credential_shown(status, False, refused)
        return refused

    def _explained(self, answer: Answer, error: ErrorInfo) -> ErrorInfo:
        """A 401's error, with what the auth makes of the answer's ``Date`` (a clock off)."""
        headers: Mapping[str, str] = answer.headers or {}
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


def transport_failure(
    exc: aiohttp.ClientError | TimeoutError, peer: str, timeout: aiohttp.ClientTimeout
) -> tuple[Kind, str]:
    """What an aiohttp failure of a request to ``peer`` means, and its one line.

    The one conversion of aiohttp's errors (the API client's and the IAM login's): TLS is
    ``FATAL`` (a retry cannot fix it); no connection ``TRANSIENT`` (the request never left);
    no answer in time, or a connection dropped after sending, ``IN_DOUBT``.
    """
    # Order matters: the TLS error is a connector error, the connect timeout a timeout.
    if isinstance(exc, aiohttp.ClientSSLError):
        return Kind.FATAL, f"TLS failure talking to {peer}: {exc}; use --ca-file"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Kind.TRANSIENT, (
            f"cannot connect to {peer}: no answer to connect within {timeout.sock_connect:g} s"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Kind.TRANSIENT, f"cannot connect to {peer}: {exc}"
    if isinstance(exc, TimeoutError):
        return Kind.IN_DOUBT, "no answer before the timeout"
    return Kind.IN_DOUBT, f"answer lost: {type(exc).__name__}: {exc}"


async def close_session(session: aiohttp.ClientSession) -> None:
    """Close the session and give the connector a moment to close its transports."""
    await session.close()
    await asyncio.sleep(0)
