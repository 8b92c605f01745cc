"""The job life cycle: what a run, a stop or a delete does to a job, and when its status moves.

Statuses and transitions follow the DLI API reference (run and stop jobs, ``dli_02_0233`` and
``dli_02_0241``; the job detail, ``dli_02_0235``) and the official SDK: run moves a stopped
job to ``job_submitting``, then after ``start_seconds`` to ``job_running`` (or, with the
``submit_fail`` fault, ``job_submit_fail``); with ``fail_after_run`` a running job ends
``job_running_exception`` after ``fail_after_seconds``, and comes back to ``job_running`` once
when its body has ``restart_when_exception`` true. Stop moves a running job to
``job_canceling`` (through ``job_savepointing`` first with ``trigger_savepoint``), then to
``job_cancel_success``. A stopped or failed job can be run again.

Choices where the reference is silent (documented in the README):

- a run of a job submitting or running is refused (``run_running="reject"``) or a success that
  changes nothing (``"accept"``); a run of a job being stopped is always refused;
- a stop of a job that is not running, or is already stopping, is refused (the provider: "If the
  job is not running, the API will return an error");
- ``trigger_savepoint`` takes a savepoint only from ``job_running`` (a job still submitting
  has no state to save);
- ``resume_savepoint`` on a job without a savepoint starts it afresh (as Flink does with no
  savepoint path), recorded as a resume from ``None``;
- a Jar job without ``queue_name`` does not start: ``DLI.13024`` (the known run failure);
- every element message leaves job ids out, as DLI's answer has none to match on.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.faults import (
    RUN_FAULTS,
    START_FAULTS,
    STOP_FAULTS,
    UPDATE_FAULTS,
    Fault,
    FaultPicker,
    seeded_rng,
)
from batchsub.simulator.store import JobStore, SimJob, Step, epoch_ms

ACTIVE = frozenset({"job_submitting", "job_running", "job_downloading", "job_arrearage_recovering"})
STOPPING = frozenset({"job_savepointing", "job_canceling"})
RUNNING_LIKE = ACTIVE | STOPPING  # not stopped: a PUT outside the in-place fields is refused
STATUSES = frozenset(
    {
        *RUNNING_LIKE,
        "job_init",
        "job_submit_fail",
        "job_running_exception",
        "job_idle",
        "job_cancel_success",
        "job_cancel_fail",
        "job_arrearage_stopped",
        "job_finish",
    }
)

RUN_OK = "The request for submitting the job is delivered successfully."
STOP_OK = "The request for stopping the job is delivered successfully."
DELETED = "The job is deleted."
NO_QUEUE = "DLI.13024 No job-running queue selected. Please select a queue for your job."
SUBMIT_FAILED = (
    "Failed to submit the job: the queue has too few idle CUs for the job (simulated fault)"
)
RUN_FAILED = (
    "The job failed at run time: java.lang.RuntimeException: simulated fault in the user jar"
)


def element(ok: bool, message: str) -> dict[str, Any]:
    """One element of a run, stop or delete answer (``is_success`` is a string there)."""
    return {"is_success": "true" if ok else "false", "message": message}


class Lifecycle:
    """The life-cycle rules of one simulator, with their seeded draws (one per app)."""

    def __init__(self, config: SimulatorConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self._delays = seeded_rng(config, "delays")
        self._start_faults = FaultPicker(config, START_FAULTS)
        self._call_faults = {
            "run": FaultPicker(config, RUN_FAULTS),
            "stop": FaultPicker(config, STOP_FAULTS),
            "update": FaultPicker(config, UPDATE_FAULTS),
        }

    def lost_answer(self, kind: str) -> Fault | None:
        """Whether this run, stop or update call loses its answer, and how (counted)."""
        fault = self._call_faults[kind].pick()
        if fault is not None:
            self.store.faults[fault.value] += 1
        return fault

    def _delay(self, bounds: tuple[float, float]) -> float:
        return self._delays.uniform(*bounds)

    def run(self, job: SimJob, resume: bool) -> dict[str, Any]:
        """Start one job of a run call."""
        status, counts = job.status, job.counts
        if status in RUNNING_LIKE:
            counts.runs_while_running += 1
            if status in ACTIVE and self.config.run_running == "accept":
                return element(True, RUN_OK)
            counts.runs_refused += 1
            if status in STOPPING:
                return element(False, f"The job is being stopped ({status}); run it once stopped.")
            return element(False, f"The job is already submitted or running ({status}).")
        if not job.body.get("queue_name"):
            counts.runs_refused += 1
            return element(False, NO_QUEUE)
        counts.runs += 1
        if resume:
            counts.resumes.append(job.savepoint_path)
        job.enter("job_submitting", then=self._start(job))
        job.update_time = epoch_ms(self.store.clock())
        return element(True, RUN_OK)

    def _start(self, job: SimJob) -> list[Step]:
        """What follows ``job_submitting``, drawn now: running, or one of the start faults."""
        at = self.store.clock() + self._delay(self.config.start_seconds)
        fault = self._start_faults.pick()
        if fault is not None:
            self.store.faults[fault.value] += 1
        if fault is Fault.SUBMIT_FAIL:
            return [Step(at, "job_submit_fail", SUBMIT_FAILED)]
        steps = [Step(at, "job_running")]
        if fault is Fault.FAIL_AFTER_RUN:
            at += self._delay(self.config.fail_after_seconds)
            steps.append(Step(at, "job_running_exception", RUN_FAILED))
            if job.body.get("restart_when_exception") is True:
                steps.append(Step(at + self._delay(self.config.start_seconds), "job_running"))
        return steps

    def stop(self, job: SimJob, savepoint: bool) -> dict[str, Any]:
        """Stop one job of a stop call."""
        status, counts = job.status, job.counts
        if status not in ACTIVE:
            counts.stops_refused += 1
            if status in STOPPING:
                return element(False, f"The job is already being stopped ({status}).")
            return element(False, f"The job is not running ({status}); it cannot be stopped.")
        counts.stops += 1
        now = self.store.clock()
        if savepoint and status == "job_running":
            saved = now + self._delay(self.config.savepoint_seconds)
            stopped = saved + self._delay(self.config.stop_seconds)
            then = [Step(saved, "job_canceling"), Step(stopped, "job_cancel_success")]
            job.enter("job_savepointing", then=then)
        else:
            stopped = now + self._delay(self.config.stop_seconds)
            job.enter("job_canceling", then=[Step(stopped, "job_cancel_success")])
        job.update_time = epoch_ms(now)
        return element(True, STOP_OK)

    def delete(self, job: SimJob) -> dict[str, Any]:
        """Delete one job, in any state: a job not stopped stops at once, with no savepoint."""
        status = job.status
        job.enter("job_cancel_success" if status in RUNNING_LIKE else status, job.status_desc)
        self.store.delete(job.job_id)
        return element(True, DELETED)


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
