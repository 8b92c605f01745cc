"""The simulator's in-memory jobs and the counters tests and benchmarks read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

JOB_TYPE = "flink_jar_job"

# Body fields the real API echoes under ``job_config`` (the official SDK's FlinkJobConfig).
_CONFIG_KEYS = frozenset(
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


@dataclass(slots=True)
class SimJob:
    """One job created in the simulator, with its create body exactly as received."""

    job_id: int
    name: str
    body: dict[str, Any]
    create_time: int  # epoch ms
    project_id: str
    status: str = "job_init"
    deleted: bool = False  # gone from the list and the detail call; its id is not reused

    def summary(self, *, detail: bool = False) -> dict[str, Any]:
        """The job as the list call shows it (``detail`` adds ``job_config``)."""
        body = self.body
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "name": self.name,
            "desc": body.get("desc", ""),
            "user_name": "simulator",
            "job_type": JOB_TYPE,
            "status": self.status,
            "status_desc": "",
            "create_time": self.create_time,
            "start_time": 0,
            "duration": 0,
            "root_id": -1,
            "project_id": self.project_id,
            "queue_name": body.get("queue_name", ""),
            "main_class": body.get("main_class", ""),
            "entrypoint_args": body.get("entrypoint_args", ""),
            "update_time": self.create_time,
            "restart_times": 0,
            "has_savepoint": False,
        }
        if detail:
            out["job_config"] = {k: v for k, v in body.items() if k in _CONFIG_KEYS}
            out["tags"] = body.get("tags", [])
        return out


@dataclass(slots=True)
class JobStore:
    """Every job created and every request seen, for assertions; one per app, one loop."""

    jobs: list[SimJob] = field(default_factory=list)  # job_id - 1 is the index
    create_requests: int = 0  # every create request that reached the handler
    requests_by_name: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # injected faults by kind
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (clock(), path)
    _by_name: dict[str, list[SimJob]] = field(default_factory=dict)

    def add(self, name: str, body: dict[str, Any], create_time: int, project_id: str) -> SimJob:
        """Create a job with the next id."""
        job = SimJob(len(self.jobs) + 1, name, body, create_time, project_id)
        self.jobs.append(job)
        self._by_name.setdefault(name, []).append(job)
        return job

    def get(self, job_id: int) -> SimJob | None:
        """The job with that id, or None (never made, or deleted)."""
        job = self.jobs[job_id - 1] if 0 < job_id <= len(self.jobs) else None
        return None if job is None or job.deleted else job

    def delete(self, job_id: int) -> SimJob | None:
        """Delete a job (as DLI's delete call does); the job deleted, or None if none."""
        job = self.get(job_id)
        if job is not None:
            job.deleted = True
            self._by_name[job.name].remove(job)
        return job

    def named(self, name: str) -> Sequence[SimJob]:
        """Jobs created with exactly this name, oldest first, without copying (do not mutate)."""
        return self._by_name.get(name, ())

    def created_by_name(self, name: str) -> list[SimJob]:
        """Jobs created with exactly this name, oldest first."""
        return list(self._by_name.get(name, ()))

    def duplicates(self) -> dict[str, int]:
        """Names created more than once, with how many jobs carry each."""
        return {name: len(jobs) for name, jobs in self._by_name.items() if len(jobs) > 1}
