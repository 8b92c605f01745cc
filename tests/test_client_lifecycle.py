"""The client's run, stop, detail and status-page calls: answers classified, over real HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchsub.answers import JOB_GONE, BatchElement, BatchKind, classify_batch
from batchsub.errors import ApiError, FatalApiError, RetryableError
from tests.lifecycle_support import rig

OK = {"is_success": "true", "message": "delivered"}
NO = {"is_success": "false", "message": "DLI.13024 No job-running queue selected."}


def raw(payload: object) -> bytes:
    return orjson.dumps(payload)


@pytest.mark.parametrize(
    ("status", "body", "count", "kind"),
    [
        (200, raw([OK, OK]), 2, BatchKind.ANSWERED),
        (200, raw([OK, NO]), 2, BatchKind.ANSWERED),
        (200, raw([{"is_success": True, "message": "x"}]), 1, BatchKind.ANSWERED),
        (200, raw(OK), 1, BatchKind.ANSWERED),  # one object for one job (the 2022 pages)
        (200, raw(OK), 2, BatchKind.IN_DOUBT),  # one object for two jobs: which?
        (200, raw([OK]), 2, BatchKind.IN_DOUBT),  # fewer elements than ids
        (200, raw([OK, OK, OK]), 2, BatchKind.IN_DOUBT),
        (200, b"<html>proxy</html>", 1, BatchKind.IN_DOUBT),
        (200, b"", 1, BatchKind.IN_DOUBT),
        (200, raw(["true"]), 1, BatchKind.IN_DOUBT),
        (200, raw({"is_success": False, "error_code": "DLI.0999"}), 2, BatchKind.IN_DOUBT),
        (
            200,
            raw({"is_success": False, "error_code": "DLI.0001", "error_msg": "x"}),
            2,
            BatchKind.REFUSED,
        ),
        (400, raw({"error_code": "DLI.0001", "error_msg": "too many ids"}), 3, BatchKind.REFUSED),
        (
            400,
            raw({"error_code": "DLI.16001", "error_msg": "The Flink job 12 does not exist"}),
            2,
            BatchKind.GONE,
        ),
        (400, raw({"error_code": "DLI.0999", "error_msg": "server"}), 1, BatchKind.IN_DOUBT),
        (
            429,
            raw({"error_code": "APIG.0308", "error_msg": "limit:5,time:1 second"}),
            1,
            BatchKind.RETRY_SAFE,
        ),
        (401, raw({"error_code": "APIG.0301", "error_msg": "auth"}), 1, BatchKind.FATAL),
        (403, raw({"error_code": "APIG.0302", "error_msg": "denied"}), 1, BatchKind.FATAL),
        (404, raw({"error_code": "APIG.0101", "error_msg": "no route"}), 1, BatchKind.FATAL),
        (500, raw({"error_code": "DLI.0999", "error_msg": "x"}), 1, BatchKind.IN_DOUBT),
        (502, b"bad gateway", 1, BatchKind.IN_DOUBT),
        (
            504,
            raw({"error_code": "APIG.0203", "error_msg": "Backend timeout"}),
            4,
            BatchKind.IN_DOUBT,
        ),
    ],
)
def test_classify_batch(status: int, body: bytes, count: int, kind: BatchKind) -> None:
    answer = classify_batch(status, body, {}, count)
    assert answer.kind is kind
    if kind is BatchKind.ANSWERED:
        assert len(answer.elements) == count
    else:
        assert answer.elements == ()
        assert answer.error is not None and answer.error.message


def test_elements_keep_their_order_and_messages() -> None:
    answer = classify_batch(200, raw([NO, OK, {"is_success": "TRUE "}]), {}, 3)
    assert answer.elements == (
        BatchElement(False, NO["message"]),
        BatchElement(True, "delivered"),
        BatchElement(True, ""),
    )


def test_gone_names_the_job_and_throttle_carries_retry_after() -> None:
    gone = classify_batch(400, raw({"error_code": JOB_GONE, "error_msg": "job 77 gone"}), {}, 2)
    assert (gone.kind, gone.gone_id) == (BatchKind.GONE, 77)
    unnamed = classify_batch(400, raw({"error_code": JOB_GONE, "error_msg": "no such job"}), {}, 2)
    assert unnamed.gone_id is None
    throttled = classify_batch(429, b"{}", {"Retry-After": "3"}, 1)
    assert (throttled.throttled, throttled.retry_after) == (True, 3.0)


async def test_run_stop_detail_and_status_pages_against_the_simulator() -> None:
    async with rig(start_seconds=(1.0, 1.0)) as r:
        jobs = await r.create(3)
        ids = [job.job_id for job in jobs]
        page = await r.client.status_page(status=None, offset=0)
        assert page.total_count == 3
        assert [j.job_id for j in page.jobs] == ids[::-1]  # newest first
        assert {j.status for j in page.jobs} == {"job_init"}
        assert all(j.create_time is not None for j in page.jobs)
        answer = await r.client.run_jobs(ids[:2])
        assert answer.kind is BatchKind.ANSWERED
        assert [e.ok for e in answer.elements] == [True, True]
        submitting = await r.client.status_page(status="job_submitting", offset=0)
        assert sorted(j.job_id for j in submitting.jobs) == ids[:2]
        r.clock.now += 1.0
        shown = await r.client.job_detail(ids[0])
        assert (shown.job_id, shown.name, shown.status) == (ids[0], jobs[0].name, "job_running")
        assert shown.start_time == int(r.clock.now * 1000) and shown.restart_times == 0
        stopped = await r.client.stop_jobs(ids[:1], trigger_savepoint=False)
        assert stopped.kind is BatchKind.ANSWERED and stopped.elements[0].ok
        refused = await r.client.stop_jobs(ids[2:])  # never started: DLI refuses the stop
        assert refused.kind is BatchKind.ANSWERED and not refused.elements[0].ok
        assert r.sim.store.calls["run"] == 1 and r.sim.store.calls["stop"] == 2


async def test_status_page_of_the_second_hundred_and_an_invalid_filter() -> None:
    async with rig() as r:
        await r.create(130)
        second = await r.client.status_page(status=None, offset=100)
        assert (second.total_count, len(second.jobs)) == (130, 30)
        with pytest.raises(ApiError) as caught:
            await r.client.status_page(status="job_nonsense", offset=0)
        assert caught.value.code == "DLI.0001" and not isinstance(caught.value, RetryableError)


@pytest.mark.parametrize("fault", ["drop_after_run", "error_504_after_run"])
async def test_a_run_whose_answer_is_lost_is_in_doubt_and_took_effect(fault: str) -> None:
    faults: dict[str, Any] = {fault: 1.0}
    async with rig(**faults) as r:
        [job] = await r.create(1)
        answer = await r.client.run_jobs([job.job_id])
        assert answer.kind is BatchKind.IN_DOUBT
        assert r.status(job.job_id) == "job_submitting"  # done, answer lost


async def test_gone_jobs_throttling_and_refused_credentials() -> None:
    async with rig(unknown_job_ids="error", rate_limit=1) as r:
        [job] = await r.create(1)
        # The rate window runs on real time: the create filled this second's one request.
        throttled = await r.client.run_jobs([job.job_id])
        assert throttled.kind is BatchKind.RETRY_SAFE and throttled.throttled
    async with rig(unknown_job_ids="error") as r:
        [job] = await r.create(1)
        gone = await r.client.run_jobs([job.job_id, 999])
        assert (gone.kind, gone.gone_id) == (BatchKind.GONE, 999)
        assert r.status(job.job_id) == "job_init"  # the simulator did nothing
        with pytest.raises(ApiError) as caught:
            await r.client.job_detail(999)
        assert caught.value.code == JOB_GONE
        bad = r.client_for("wrong-token")
        assert (await bad.run_jobs([job.job_id])).kind is BatchKind.FATAL
        with pytest.raises(FatalApiError):
            await bad.job_detail(job.job_id)
        with pytest.raises(FatalApiError):
            await bad.status_page(status=None, offset=0)


async def test_nobody_listening_is_retry_safe_for_runs_and_retryable_for_reads() -> None:
    async with rig() as r:
        await r.sim.close()
        answer = await r.client.run_jobs([1])
        assert answer.kind is BatchKind.RETRY_SAFE
        with pytest.raises(RetryableError):
            await r.client.status_page(status=None, offset=0)
