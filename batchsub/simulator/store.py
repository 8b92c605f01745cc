"""The simulator's in-memory jobs, kept per project, and the counters tests and benchmarks read.

A job's status is a timeline: a call (run, stop) sets the status it enters now and schedules
the ones that follow at wall-clock times; reading ``status`` applies the steps that are due.
No background task, so a test moves a fake clock instead of sleeping.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

JOB_TYPE = "flink_jar_job"

# Body fields the real API echoes under ``job_config`` (the official SDK's FlinkJobConfig).
CONFIG_KEYS = frozenset(
    {
        "checkpoint_enabled",
        "checkpoint_mode",
        "checkpoint_interval",
        "log_enabled",
        "obs_bucket",
        "smn_topic",
        "manager_cu_number",
        "cu_number",
        "parallel_number",
        "restart_when_exception",
        "entrypoint",
        "dependency_jars",
        "dependency_files",
        "execution_agency_urn",
        "resume_checkpoint",
        "runtime_config",
        "flink_log_config",
        "resume_max_num",
        "checkpoint_path",
        "tm_cus",
        "tm_slot_num",
        "image",
        "feature",
        "flink_version",
        "resource_config_version",
        "resource_config",
    }
)


class Step(NamedTuple):
    """A status a job enters at wall-clock time ``at``, with DLI's ``status_desc``."""

    at: float
    status: str
    desc: str = ""


@dataclass(slots=True)
class JobCounts:
    """What was done to one job, for tests and benchmarks (not part of the DLI API)."""

    runs: int = 0  # run elements that started the job
    runs_while_running: int = 0  # run elements for a job not stopped: a start sent twice
    runs_refused: int = 0  # run elements answered is_success "false"
    stops: int = 0  # stop elements that stopped it
    stops_refused: int = 0  # stop elements answered is_success "false" (not running)
    savepoints: int = 0  # savepoints completed by a stop with trigger_savepoint
    resumes: list[str | None] = field(default_factory=list)  # per resume_savepoint run: from
    updates: int = 0  # PUTs applied
    updates_refused: int = 0  # PUTs refused because the job was running


def epoch_ms(seconds: float) -> int:
    """Wall-clock seconds as DLI's epoch milliseconds."""
    return int(seconds * 1000)


@dataclass(slots=True)
class SimJob:
    """One job created in the simulator, with its body (create, then every PUT) as received."""

    job_id: int
    name: str
    body: dict[str, Any]
    create_time: int  # epoch ms
    project_id: str
    clock: Callable[[], float] = time.time  # wall clock the timeline runs on
    deleted: bool = False  # gone from the calls; its id is not reused
    update_time: int = -1  # epoch ms of the last create, PUT, run or stop
    start_time: int = 0  # epoch ms it last entered job_running
    savepoint_path: str | None = None  # the latest savepoint taken
    restart_times: int = 0  # returns to running after an exception (restart_when_exception)
    counts: JobCounts = field(default_factory=JobCounts)
    _status: str = "job_init"
    _desc: str = ""
    _steps: list[Step] = field(default_factory=list)  # due in order

    def __post_init__(self) -> None:
        if self.update_time < 0:
            self.update_time = self.create_time

    @property
    def status(self) -> str:
        """The DLI status now (due steps applied)."""
        if self._steps:
            self._advance()
        return self._status

    @property
    def status_desc(self) -> str:
        """DLI's reason for the status now ("" when there is none)."""
        if self._steps:
            self._advance()
        return self._desc

    def enter(self, status: str, desc: str = "", then: Sequence[Step] = ()) -> None:
        """Enter ``status`` now, dropping what was scheduled; ``then`` is the new schedule."""
        self._steps = list(then)
        self._move(Step(self.clock(), status, desc))

    def _advance(self) -> None:
        now = self.clock()
        steps = self._steps
        while steps and steps[0].at <= now:
            self._move(steps.pop(0))

    def _move(self, step: Step) -> None:
        before = self._status
        if before == "job_savepointing" and step.status == "job_canceling":
            self.counts.savepoints += 1
            bucket = self.body.get("obs_bucket") or "dli-simulator"
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(step.at))
            # Where DLI puts a triggered savepoint (comment in the Terraform provider).
            self.savepoint_path = f"obs://{bucket}/jobs/savepoint/{self.job_id}/{stamp}/"
        if step.status == "job_running":
            self.start_time = epoch_ms(step.at)
            if before == "job_running_exception":
                self.restart_times += 1
        self._status, self._desc = step.status, step.desc

    def duration(self) -> int:
        """Milliseconds it has been running (0 when it is not running)."""
        if self.status != "job_running":
            return 0
        return max(0, epoch_ms(self.clock()) - self.start_time)

    def summary(self) -> dict[str, Any]:
        """The job as a list page shows it without ``show_detail``."""
        body = self.body
        return {
            "job_id": self.job_id,
            "name": self.name,
            "desc": body.get("desc", ""),
            "user_name": "simulator",
            "job_type": JOB_TYPE,
            "status": self.status,
            "status_desc": self._desc,
            "create_time": self.create_time,
            "start_time": self.start_time,
            "duration": self.duration(),
            "root_id": -1,
            "project_id": self.project_id,
            "queue_name": body.get("queue_name", ""),
            "main_class": body.get("main_class", ""),
            "entrypoint_args": body.get("entrypoint_args", ""),
            "update_time": self.update_time,
            "restart_times": self.restart_times,
            "has_savepoint": self.savepoint_path is not None,
        }


@dataclass(slots=True)
class _Project:
    """One project's jobs: DLI keeps every project apart, job ids are unique across them."""

    jobs: list[SimJob] = field(default_factory=list)  # oldest first, deleted ones included
    by_name: dict[str, list[SimJob]] = field(default_factory=dict)  # live jobs only


@dataclass(slots=True)
class JobStore:
    """Every job created and every request seen, for assertions; one per app, one loop."""

    jobs: list[SimJob] = field(default_factory=list)  # every project's; job_id - 1 is the index
    create_requests: int = 0  # every create request that reached the handler
    requests_by_name: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # injected faults by kind
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (clock(), path)
    calls: Counter[str] = field(default_factory=Counter)  # DLI requests arrived, by route kind
    clock: Callable[[], float] = time.time  # the wall clock job timelines run on
    _projects: dict[str, _Project] = field(default_factory=dict)

    def add(self, name: str, body: dict[str, Any], create_time: int, project_id: str) -> SimJob:
        """Create a job with the next id in ``project_id``."""
        job = SimJob(len(self.jobs) + 1, name, body, create_time, project_id, self.clock)
        self.jobs.append(job)
        project = self._project(project_id)
        project.jobs.append(job)
        project.by_name.setdefault(name, []).append(job)
        return job

    def _project(self, project_id: str) -> _Project:
        project = self._projects.get(project_id)
        if project is None:
            project = self._projects[project_id] = _Project()
        return project

    def get(self, job_id: int, project_id: str | None = None) -> SimJob | None:
        """The live job with that id (in that project, when given), or None."""
        job = self.jobs[job_id - 1] if 0 < job_id <= len(self.jobs) else None
        if job is None or job.deleted or project_id not in (None, job.project_id):
            return None
        return job

    def delete(self, job_id: int, project_id: str | None = None) -> SimJob | None:
        """Delete a job (as DLI's delete call does); the job deleted, or None if none."""
        job = self.get(job_id, project_id)
        if job is not None:
            job.deleted = True
            self._projects[job.project_id].by_name[job.name].remove(job)
        return job

    def rename(self, job: SimJob, name: str) -> None:
        """Give a live job a new name (a PUT with ``name``)."""
        by_name = self._projects[job.project_id].by_name
        by_name[job.name].remove(job)
        by_name.setdefault(name, []).append(job)
        job.name = name

    def project_jobs(self, project_id: str) -> Sequence[SimJob]:
        """A project's jobs, oldest first, deleted ones included, without copying."""
        project = self._projects.get(project_id)
        return project.jobs if project is not None else ()

    def named(self, name: str, project_id: str | None = None) -> Sequence[SimJob]:
        """Live jobs of exactly this name (in that project, or in all), oldest first.

        For one project the list is not copied: do not mutate it.
        """
        if project_id is not None:
            project = self._projects.get(project_id)
            return project.by_name.get(name, ()) if project is not None else ()
        found = [job for p in self._projects.values() for job in p.by_name.get(name, ())]
        return sorted(found, key=lambda job: job.job_id)

    def created_by_name(self, name: str) -> list[SimJob]:
        """Live jobs created with exactly this name in any project, oldest first."""
        return list(self.named(name))

    def duplicates(self) -> dict[str, int]:
        """Names carried by more than one live job of a project, with how many jobs carry each."""
        found: Counter[str] = Counter()
        for project in self._projects.values():
            for name, jobs in project.by_name.items():
                if len(jobs) > 1:
                    found[name] += len(jobs)
        return dict(found)

    def stats(self, project_id: str | None = None) -> dict[str, Any]:
        """Calls by kind and per-job counts, as ``GET /_simulator/stats`` shows them."""
        jobs = [job for job in self.jobs if project_id in (None, job.project_id)]
        rows = [_job_stats(job) for job in jobs]
        totals: Counter[str] = Counter()
        for row in rows:
            totals.update({key: row[key] for key in _COUNTED})
            totals["resumes"] += len(row["resumes"])
            totals["started_twice"] += row["runs_while_running"] > 0
            totals["refused_updates"] += row["updates_refused"] > 0
        return {
            "calls": dict(self.calls),
            "create_requests": self.create_requests,
            "throttled": self.throttled,
            "faults": dict(self.faults),
            "statuses": dict(Counter(row["status"] for row in rows if not row["deleted"])),
            "totals": {key: totals[key] for key in (*_COUNTED, *_TOTALS_ONLY)},
            "jobs": rows,
        }


_COUNTED = (
    "runs",
    "runs_while_running",
    "runs_refused",
    "stops",
    "stops_refused",
    "savepoints",
    "updates",
    "updates_refused",
)
_TOTALS_ONLY = ("resumes", "started_twice", "refused_updates")


def _job_stats(job: SimJob) -> dict[str, Any]:
    counts = job.counts
    row: dict[str, Any] = {
        "job_id": job.job_id,
        "project_id": job.project_id,
        "name": job.name,
        "status": job.status,
        "deleted": job.deleted,
        "savepoint_path": job.savepoint_path,
    }
    row.update({key: getattr(counts, key) for key in _COUNTED})
    row["resumes"] = list(counts.resumes)
    return row
