"""The job detail's own dialect, unlike the create body a client sent.

What differs, on purpose (it is the trap a client comparing manifest and detail must handle):

- ``checkpoint_mode`` is a string (``"exactly_once"`` for 1, ``"at_least_once"`` for 2);
- ``name``, ``desc``, ``queue_name``, ``main_class`` and ``entrypoint_args`` sit at the top
  of ``job_detail``, every other field inside ``job_config``; ``tags`` are not shown (DLI
  keeps them in its v3 tag API);
- the server fills in what the body left out: the documented defaults (``cu_number`` 2,
  ``manager_cu_number`` 1, ``parallel_number`` 1, ``tm_cus`` 1, ``tm_slot_num``
  (parallel_number * tm_cus) / (cu_number - manager_cu_number), ``resume_max_num`` -1,
  ``checkpoint_interval`` 10, ...), a ``runtime_config`` when unset (as the Terraform
  provider found), and null for the rest, as the API reference's example answer shows.
"""

from __future__ import annotations

from typing import Any

from batchsub.model import SERVER_DEFAULTS
from batchsub.simulator.store import CONFIG_KEYS, JOB_TYPE, SimJob

DEFAULT_RUNTIME_CONFIG = '[{"key":"kubernetes.jobmanager.replicas","value":"1"}]'
CHECKPOINT_MODES = {1: "exactly_once", 2: "at_least_once"}

# Fields of the SDK's FlinkJobConfig a Flink Jar job never sets; shown as the server does.
_SERVER_ONLY: dict[str, Any] = {
    "edge_group_ids": None,
    "root_id": -1,
    "graph_editor_enabled": False,
    "graph_editor_data": "",
    "idle_state_retention": 3600,
    "udf_jar_url": None,
    "dirty_data_strategy": None,
    "executor_number": None,
    "executor_cu_number": None,
    "config_url": None,
    "operator_config": None,
    "static_estimator_config": None,
}


def effective(body: dict[str, Any], key: str) -> Any:
    """The value the server holds for ``key`` (create dialect): the body's, else its default."""
    if key in body:
        return body[key]
    return SERVER_DEFAULTS.get(key)


def job_config(body: dict[str, Any]) -> dict[str, Any]:
    """``job_config`` as the detail (and a list page with ``show_detail``) shows it."""
    config: dict[str, Any] = {key: effective(body, key) for key in sorted(CONFIG_KEYS)}
    config["checkpoint_mode"] = CHECKPOINT_MODES.get(config["checkpoint_mode"], "exactly_once")
    if config["runtime_config"] is None:
        config["runtime_config"] = DEFAULT_RUNTIME_CONFIG
    if config["tm_slot_num"] is None:
        workers = config["cu_number"] - config["manager_cu_number"]
        slots = config["parallel_number"] * config["tm_cus"] // workers if workers > 0 else 1
        config["tm_slot_num"] = max(1, slots)
    config["real_cu_number"] = 0
    config.update(_SERVER_ONLY)
    return config


def detail(job: SimJob) -> dict[str, Any]:
    """``job_detail`` of the detail call."""
    body = job.body
    return {
        "job_id": job.job_id,
        "name": job.name,
        "desc": body.get("desc", ""),
        "job_type": JOB_TYPE,
        "status": job.status,
        "status_desc": job.status_desc,
        "create_time": job.create_time,
        "start_time": job.start_time,
        "update_time": job.update_time,
        "duration": job.duration(),
        "user_id": "0123456789abcdef0123456789abcdef",
        "user_name": "simulator",
        "project_id": job.project_id,
        "queue_name": body.get("queue_name"),
        "sql_body": "",
        "run_mode": "exclusive_cluster",
        "main_class": body.get("main_class"),
        "entrypoint_args": body.get("entrypoint_args"),
        "execution_graph": None,
        "root_id": -1,
        "graph_editor_enabled": False,
        "has_savepoint": job.savepoint_path is not None,
        "savepoint_path": job.savepoint_path,
        "restart_times": job.restart_times,
        "edge_group_ids": None,
        "job_config": job_config(body),
    }
