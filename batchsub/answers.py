"""What an answer of the DLI API means: one classifier for every call, then each call's reading.

``classify`` reads an HTTP answer by its status and DLI error code (the client turns a request
that got no answer into the same ``Answer``), into one of five kinds:

- ``OK``: a 200. What its body says (a job id, a page, one element per job of a run) is the
  call's to read, and a body it cannot read may still mean the request was done.
- ``TRANSIENT``: known not done, send it again: a 429 (slow down first), or no connection.
- ``IN_DOUBT``: may have been done: no answer in time, a dropped connection, a 5xx, or
  ``DLI.0999``, which DLI answers with a 400 although the server is at fault.
- ``FATAL``: stop, every request would fail so: 401/403 (the credential or the project), a
  redirect (never followed: it would carry the credential elsewhere), a TLS failure.
- ``REFUSED``: this request refused (any other 4xx); sent again as it is, it fails again.

Creates and run/stop calls are not idempotent: ``create_answer`` and ``batch_answer`` say
what the answer means for their jobs (a 404 there is a wrong endpoint or project). An
idempotent call (a list, a status read) raises the ``ApiError`` of ``call_error`` for an
answer it cannot use, or, for the job list, ``UNREADABLE``: the list is never taken for empty.

Sources: the DLI API reference's error codes and its pages on creating a Flink Jar job
(``dli_02_0230``), running and stopping jobs (``dli_02_0233``, ``dli_02_0241``), a job's
detail (``dli_02_0235``) and the job list; the official SDK's models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeGuard

import orjson

from batchsub.errors import (
    CONNECT_FAILED,
    UNREADABLE,
    ApiError,
    FatalApiError,
    RetryableError,
)
from batchsub.jobs import ErrorInfo
from batchsub.masking import mask_url
from batchsub.retry import parse_retry_after

# DLI answers these with HTTP 400 although the server, not the request, is at fault.
_SERVER_SIDE_CODES = frozenset({"DLI.0999"})
_EXISTS_CODES = frozenset({"DLI.0006"})
JOB_GONE = "DLI.16001"  # the job id does not exist (any more): the provider drops the job
_GONE_ID_RE = re.compile(r"\b(\d+)\b")
_NO_MESSAGE = ErrorInfo("no error message")


class Kind(StrEnum):
    """What one answer (or its absence) means for the request that got it."""

    OK = "ok"
    TRANSIENT = "transient"
    IN_DOUBT = "in_doubt"
    FATAL = "fatal"
    REFUSED = "refused"


@dataclass(slots=True)
class Answer:
    """One classified answer; ``status`` None: no answer came (``error`` says why).

    Not frozen (a frozen dataclass's ``__init__`` costs a call per field): every request
    makes one, and nothing changes it after ``classify``.
    """

    kind: Kind
    status: int | None = None
    payload: Any = None  # the body as JSON, or None when it is not JSON
    raw: bytes = b""
    headers: Mapping[str, str] | None = None
    error: ErrorInfo | None = None  # None for OK: the call reads the body itself
    retry_after: float | None = None
    throttled: bool = False  # a 429
    timed_out: bool = False  # no answer before the timeout: the costliest kind of retry


def classify(status: int, raw: bytes, headers: Mapping[str, str]) -> Answer:
    """The kind of an HTTP answer, by its status and DLI error code (see the module docstring)."""
    if 300 <= status < 400:
        return Answer(
            Kind.FATAL, status, None, raw, headers, ErrorInfo(_redirected(status, headers))
        )
    payload = _decode(raw)
    if status == 200:  # its Retry-After is read only where a 200 asks for a retry (a list)
        return Answer(Kind.OK, status, payload, raw, headers)
    error = error_info(status, payload, raw)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 429:
        return Answer(Kind.TRANSIENT, status, payload, raw, headers, error, retry_after, True)
    if status in (401, 403):
        return Answer(Kind.FATAL, status, payload, raw, headers, error)
    if status >= 500 or error.code in _SERVER_SIDE_CODES:
        return Answer(Kind.IN_DOUBT, status, payload, raw, headers, error, retry_after)
    return Answer(Kind.REFUSED, status, payload, raw, headers, error)


def _passed_on(answer: Answer) -> dict[str, Any]:
    """What a transient, in-doubt or fatal answer tells a create or a run: error, when to retry."""
    fatal = answer.kind is Kind.FATAL
    return {
        "error": answer.error,
        "retry_after": None if fatal else answer.retry_after,
        "throttled": answer.throttled,
        "timed_out": answer.timed_out,
    }


# --- creates --------------------------------------------------------------------------------


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


# Create answers only DLI gives, past the gateway that checks the credential.
ACCEPTED = frozenset({AnswerKind.CREATED, AnswerKind.PERMANENT, AnswerKind.DUPLICATE})
_CREATE_KINDS = {
    Kind.TRANSIENT: AnswerKind.RETRY_SAFE,
    Kind.IN_DOUBT: AnswerKind.IN_DOUBT,
    Kind.FATAL: AnswerKind.FATAL,
}


def classify_create(status: int, raw: bytes, headers: Mapping[str, str]) -> CreateAnswer:
    """What an HTTP answer to a create means for the job."""
    return create_answer(classify(status, raw, headers))


def create_answer(answer: Answer) -> CreateAnswer:
    """What a classified answer to a create means for the job."""
    error = answer.error
    if answer.status == 404:
        return _fatal(f"HTTP 404 from the create URL: wrong --endpoint or --project-id? ({error})")
    if answer.kind is Kind.OK:
        return _created(answer.payload, answer.raw)
    kind = _CREATE_KINDS.get(answer.kind)
    if kind is not None:
        return CreateAnswer(kind, **_passed_on(answer))
    error = error or _NO_MESSAGE
    if error.code in _EXISTS_CODES or _names_existing_job(error.message):
        return CreateAnswer(AnswerKind.DUPLICATE, error=error)
    return CreateAnswer(AnswerKind.PERMANENT, error=error)


def _created(payload: Any, raw: bytes) -> CreateAnswer:
    if not isinstance(payload, dict):
        # A 200 we cannot read may still mean the job exists.
        return CreateAnswer(
            AnswerKind.IN_DOUBT,
            error=ErrorInfo("HTTP 200 with an unreadable body", http_status=200),
        )
    job = payload.get("job")
    job_id = job.get("job_id") if isinstance(job, dict) else None
    succeeded = truthy(payload.get("is_success"))
    if succeeded and is_int(job_id):
        return CreateAnswer(AnswerKind.CREATED, job_id=job_id)
    if succeeded:
        return CreateAnswer(
            AnswerKind.IN_DOUBT,
            error=ErrorInfo("HTTP 200 success without a job_id", http_status=200),
        )
    error = error_info(200, payload, raw)  # only now: most answers are a plain success
    if error.code in _SERVER_SIDE_CODES:
        return CreateAnswer(AnswerKind.IN_DOUBT, error=error)
    return CreateAnswer(AnswerKind.PERMANENT, error=error)


def _fatal(message: str) -> CreateAnswer:
    return CreateAnswer(AnswerKind.FATAL, error=ErrorInfo(message))


def _names_existing_job(message: str) -> bool:
    lowered = message.lower()
    return "already exist" in lowered and "job" in lowered


# --- the job list ---------------------------------------------------------------------------


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


def read_job_page(answer: Answer) -> JobPage:
    """The page, or the error: a list answer is never taken for "no jobs" unless it says so.

    What cannot be read as a job list (a proxy's HTML page, truncated JSON, another shape, an
    error DLI does not give for this call) is transient, ``UNREADABLE``: while it lasts
    nothing is created.
    """
    if answer.kind is not Kind.OK and answer.kind is not Kind.REFUSED:
        raise call_error("list jobs", answer)
    status = answer.status or 0
    headers = answer.headers or {}
    problem = _unreadable_body(answer.raw, answer.payload, headers)
    if answer.kind is Kind.OK:
        if problem is None:
            page = _read_page(answer.payload)
            if isinstance(page, JobPage):
                return page
            problem = page
        error = error_info(status, answer.payload, answer.raw)
        if error.code in _SERVER_SIDE_CODES:
            defer = parse_retry_after(headers.get("Retry-After"))
            raise RetryableError(f"list jobs: {error}", code=error.code, status=status, defer=defer)
    what = f"HTTP {status} {problem}" if problem else str(answer.error)
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
    if not truthy(payload.get("is_success", True)):
        error = error_info(200, payload, b"")
        return f"with is_success {payload.get('is_success')!r} ({error})"
    job_list = payload.get("job_list")
    total = job_list.get("total_count") if isinstance(job_list, dict) else None
    if not isinstance(job_list, dict) or not is_int(total) or total < 0:
        return "with JSON that is not a job list (no job_list.total_count)"
    listed = job_list.get("jobs") or []
    if not isinstance(listed, list) or (total and not listed and "jobs" not in job_list):
        return "with JSON that is not a job list (no job_list.jobs list)"
    jobs = []
    for j in listed:
        job_id, name = (j.get("job_id"), j.get("name")) if isinstance(j, dict) else (None, None)
        if not is_int(job_id) or not isinstance(name, str):
            return "with a job that has no integer job_id or no name"
        create_time = j.get("create_time")
        jobs.append(RemoteJob(job_id, name, create_time if is_int(create_time) else None))
    return JobPage(total_count=total, jobs=jobs)


# --- the job life cycle: run and stop answers, statuses of detail and list pages -----------


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


_BATCH_KINDS = {
    Kind.TRANSIENT: BatchKind.RETRY_SAFE,
    Kind.IN_DOUBT: BatchKind.IN_DOUBT,
    Kind.FATAL: BatchKind.FATAL,
}


def classify_batch(status: int, raw: bytes, headers: Mapping[str, str], count: int) -> BatchAnswer:
    """What an HTTP answer to a run or stop call of ``count`` job ids means for its jobs."""
    return batch_answer(classify(status, raw, headers), count)


def batch_answer(answer: Answer, count: int) -> BatchAnswer:
    """What a classified answer to a run or stop call of ``count`` job ids means.

    The array has no job ids, and its order only "probably follows job_ids": an answer of
    another length cannot be matched to the jobs and is in doubt.
    """
    error = answer.error
    if answer.status == 404:
        message = f"HTTP 404 from the jobs URL: wrong --endpoint or --project-id? ({error})"
        return BatchAnswer(BatchKind.FATAL, error=ErrorInfo(message))
    if answer.kind is Kind.OK:
        return _batch_elements(answer.payload, answer.raw, count)
    kind = _BATCH_KINDS.get(answer.kind)
    if kind is not None:
        return BatchAnswer(kind, **_passed_on(answer))
    error = error or _NO_MESSAGE
    if error.code == JOB_GONE:
        named = _GONE_ID_RE.search(error.message)
        return BatchAnswer(
            BatchKind.GONE, error=error, gone_id=int(named[1]) if named is not None else None
        )
    return BatchAnswer(BatchKind.REFUSED, error=error)


def _batch_elements(payload: Any, raw: bytes, count: int) -> BatchAnswer:
    if isinstance(payload, dict) and count == 1 and "is_success" in payload:
        payload = [payload]  # one object for one job: the 2022 pages show that shape
    if isinstance(payload, list) and all(isinstance(item, dict) for item in payload):
        if len(payload) == count:
            elements = tuple(
                BatchElement(truthy(item.get("is_success")), str(item.get("message") or ""))
                for item in payload
            )
            return BatchAnswer(BatchKind.ANSWERED, elements=elements)
        message = f"HTTP 200 with {len(payload)} elements for {count} job ids"
        return BatchAnswer(BatchKind.IN_DOUBT, error=ErrorInfo(message, http_status=200))
    if isinstance(payload, dict) and not truthy(payload.get("is_success")):
        error = error_info(200, payload, raw)
        if error.code in _SERVER_SIDE_CODES:
            return BatchAnswer(BatchKind.IN_DOUBT, error=error)
        if error.code is not None or error.message:
            return BatchAnswer(BatchKind.REFUSED, error=error)
    # A 200 we cannot match to the jobs may still mean some of them were started.
    error = ErrorInfo("HTTP 200 with a body that is not one element per job", http_status=200)
    return BatchAnswer(BatchKind.IN_DOUBT, error=error)


def read_detail(job_id: int, answer: Answer) -> JobStatus:
    """The status part of a job's detail; raises ``call_error`` (``JOB_GONE``: no such job)."""
    payload = answer.payload
    if answer.kind is Kind.OK and isinstance(payload, dict):
        found = job_status(payload.get("job_detail"))
        if found is not None and truthy(payload.get("is_success", True)):
            return found
    raise call_error(f"job {job_id} detail", answer)


def read_detail_body(job_id: int, answer: Answer) -> dict[str, Any]:
    """A job's ``job_detail`` as DLI shows it; raises ``call_error`` (``JOB_GONE``: no such job)."""
    payload = answer.payload
    if answer.kind is Kind.OK and isinstance(payload, dict):
        found = payload.get("job_detail")
        if job_status(found) is not None and truthy(payload.get("is_success", True)):
            assert isinstance(found, dict)  # job_status read it
            return found
    raise call_error(f"job {job_id} detail", answer)


def update_answer(answer: Answer) -> Answer:
    """What an answer to an update (PUT) or a delete means: ``OK`` applied; ``REFUSED`` not
    applied (a 4xx, or a 200 with ``is_success`` false); ``TRANSIENT`` not sent (429, no
    connection); ``IN_DOUBT`` maybe applied (no answer, 5xx, DLI.0999): read the job first;
    ``FATAL`` stop everything (a refused credential, TLS, a redirect, a 404 of the URL)."""
    if answer.status == 404:
        message = f"HTTP 404 from the job URL: wrong --endpoint or --project-id? ({answer.error})"
        return replace(answer, kind=Kind.FATAL, error=ErrorInfo(message, http_status=404))
    if answer.kind is not Kind.OK:
        return answer
    payload = answer.payload
    if isinstance(payload, dict) and "is_success" in payload and not truthy(payload["is_success"]):
        error = error_info(200, payload, answer.raw)
        kind = Kind.IN_DOUBT if error.code in _SERVER_SIDE_CODES else Kind.REFUSED
        return replace(answer, kind=kind, error=error)
    return answer


def read_status_page(answer: Answer) -> StatusPage:
    """One page of jobs with their statuses; raises ``call_error``."""
    payload = answer.payload
    if (
        answer.kind is Kind.OK
        and isinstance(payload, dict)
        and truthy(payload.get("is_success", True))
    ):
        job_list = payload.get("job_list")
        if isinstance(job_list, dict):
            listed = job_list.get("jobs") or []
            jobs = [j for j in map(job_status, listed) if j is not None]
            total = job_list.get("total_count")
            return StatusPage(total if is_int(total) else len(jobs), jobs)
    raise call_error("list jobs", answer)


def job_status(item: object) -> JobStatus | None:
    """A list page's job or a ``job_detail`` as a JobStatus; None without id, name, status."""
    if not isinstance(item, dict):
        return None
    job_id, name, status = item.get("job_id"), item.get("name"), item.get("status")
    if not (is_int(job_id) and isinstance(name, str) and isinstance(status, str)):
        return None
    desc = item.get("status_desc")
    create_time, start_time = item.get("create_time"), item.get("start_time")
    restarts = item.get("restart_times")
    return JobStatus(
        job_id=job_id,
        name=name,
        status=status,
        status_desc=desc if isinstance(desc, str) else "",
        create_time=create_time if is_int(create_time) else None,
        start_time=start_time if is_int(start_time) else None,
        restart_times=restarts if is_int(restarts) else None,
    )


# --- idempotent calls -----------------------------------------------------------------------


def call_error(what: str, answer: Answer) -> ApiError:
    """The error an idempotent call raises for an answer it cannot use.

    Transient and in-doubt answers are ``RetryableError`` (doing it again is harmless), fatal
    ones ``FatalApiError``, a refusal a plain ``ApiError``. A connection that could not be
    made (``CONNECT_FAILED``) or a TLS failure names the endpoint, not the call.
    """
    error = answer.error or _NO_MESSAGE
    if answer.status is None:  # no answer came
        if answer.kind is Kind.FATAL:
            return FatalApiError(error.message)
        if answer.kind is Kind.TRANSIENT:
            return RetryableError(error.message, code=CONNECT_FAILED)
        return RetryableError(f"{what}: {error.message}")
    if answer.kind is Kind.OK:  # a 200 the call cannot read
        return RetryableError(f"{what}: HTTP 200 with an unreadable body", status=200)
    message = f"{what}: {error}"
    if answer.kind in (Kind.TRANSIENT, Kind.IN_DOUBT):
        return RetryableError(
            message, code=error.code, status=answer.status, defer=answer.retry_after
        )
    if answer.kind is Kind.FATAL:
        return FatalApiError(message, code=error.code, status=answer.status)
    return ApiError(message, code=error.code, status=answer.status)


# --- reading bodies -------------------------------------------------------------------------


def _redirected(status: int, headers: Mapping[str, str]) -> str:
    location = headers.get("Location")
    where = f"to {mask_url(location[:200])}" if location else "without a Location"
    return (
        f"HTTP {status}: the API redirected {where}; not followed (a redirect would carry "
        "the credential elsewhere): check --endpoint/--region"
    )


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def truthy(value: object) -> bool:
    """``is_success``: the API sends it as a boolean in some answers, as "true" in others."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def is_int(value: object) -> TypeGuard[int]:
    """An integer of the JSON, not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def error_info(status: int, payload: Any, raw: bytes) -> ErrorInfo:
    """The error an answer's body states, whichever of the known shapes it has."""
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
