"""Realistic Flink Jar job manifests for the benchmarks, written as indented JSON files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

_QUEUES = ("flink_queue_01", "flink_queue_02", "streaming_prod")
_TEAMS = ("data-platform", "risk", "growth", "search")
_JOBS = (
    ("clickstream", "com.example.etl.ClickstreamJob"),
    ("orders", "com.example.etl.OrdersEnrichJob"),
    ("fraud", "com.example.risk.FraudScoreJob"),
    ("sessions", "com.example.etl.SessionizeJob"),
)


def manifest(index: int, prefix: str, rng: random.Random) -> dict[str, Any]:
    """One create body like a user's manifest: entry point, resources, checkpointing, tags."""
    kind, main_class = _JOBS[index % len(_JOBS)]
    cu = rng.choice((2, 4, 8))
    return {
        "name": f"{prefix}{kind}-{index:06d}",
        "desc": f"{kind} pipeline, shard {index}",
        "queue_name": rng.choice(_QUEUES),
        "cu_number": cu,
        "manager_cu_number": 1,
        "parallel_number": cu,
        "log_enabled": True,
        "main_class": main_class,
        "entrypoint": f"obs://dli-jobs/jars/{kind}-1.4.{index % 7}.jar",
        "entrypoint_args": f"--shard {index} --env prod",
        "dependency_jars": ["obs://dli-jobs/jars/common-2.1.jar"],
        "restart_when_exception": True,
        "checkpoint_enabled": True,
        "checkpoint_mode": 1,
        "checkpoint_interval": 60,
        "tags": [{"key": "team", "value": rng.choice(_TEAMS)}],
    }


def write_manifests(directory: Path, count: int, *, prefix: str = "bench-", seed: int = 7) -> None:
    """Write ``count`` manifests ``job-NNNNNN.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        data = orjson.dumps(manifest(index, prefix, rng), option=orjson.OPT_INDENT_2)
        (directory / f"job-{index:06d}.json").write_bytes(data)
