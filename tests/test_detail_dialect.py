"""The detail's dialect read back into the create model's terms, field by field, against the
simulator's detail (its own dialect) over real HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchsub.lifecycle import detail_dialect
from batchsub.lifecycle.detail_dialect import MODEL_FIELDS, differences, normalise
from batchsub.model import FlinkJarJob
from tests.lifecycle_support import rig

# A value for every field of the model, none of them a default.
EVERY: dict[str, Any] = {
    "name": "full",
    "desc": "every field",
    "queue_name": "q1",
    "cu_number": 4,
    "manager_cu_number": 2,
    "parallel_number": 3,
    "log_enabled": True,
    "obs_bucket": "bucket",
    "smn_topic": "topic",
    "main_class": "com.example.Main",
    "entrypoint_args": "-x 1",
    "restart_when_exception": True,
    "entrypoint": "g/app.jar",
    "dependency_jars": ["g/a.jar"],
    "dependency_files": ["g/a.csv"],
    "tm_cus": 2,
    "tm_slot_num": 2,
    "resume_checkpoint": True,
    "resume_max_num": 5,
    "checkpoint_path": "bucket/ckpt",
    "tags": [{"key": "team", "value": "data"}],
    "runtime_config": '[{"key":"a","value":"b"}]',
    "checkpoint_enabled": True,
    "checkpoint_mode": 2,
    "checkpoint_interval": 30,
    "feature": "custom",
    "flink_version": "1.15",
    "image": "swr/img:1",
    "flink_log_config": "log4j",
    "execution_agency_urn": "agency",
    "resource_config_version": "v2",
    "resource_config": {
        "max_slot": 2,
        "parallel_number": 3,
        "jobmanager_resource_spec": {"cpu": 1.0, "memory": "4G"},
        "taskmanager_resource_spec": {"cpu": 2.0, "memory": "8G"},
    },
}


def test_the_example_sets_every_field_of_the_model() -> None:
    assert set(EVERY) == set(FlinkJarJob.model_fields)
    FlinkJarJob.model_validate(EVERY)


async def test_every_field_reads_back_as_the_manifest_wrote_it() -> None:
    async with rig() as r:
        answer = await r.client.create(orjson.dumps(EVERY))
        assert answer.job_id is not None
        detail = await r.client.job_detail_body(answer.job_id)
        assert detail["job_config"]["checkpoint_mode"] == "at_least_once"  # the dialect
        shown = normalise(detail)
        assert shown == {k: v for k, v in EVERY.items() if k != "tags"}
        assert differences(EVERY, shown) == {}


@pytest.mark.parametrize("field", MODEL_FIELDS)
async def test_a_change_to_any_field_shows_as_drift(field: str) -> None:
    async with rig() as r:
        answer = await r.client.create(orjson.dumps(EVERY))
        assert answer.job_id is not None
        shown = normalise(await r.client.job_detail_body(answer.job_id))
        manifest = {**EVERY, field: _other(field, EVERY[field])}
        assert set(differences(manifest, shown)) == {field}


async def test_a_bare_manifest_has_no_drift_from_server_defaults() -> None:
    bare = {"name": "bare", "queue_name": "q1", "entrypoint": "app.jar"}
    async with rig() as r:
        answer = await r.client.create(orjson.dumps(bare))
        assert answer.job_id is not None
        detail = await r.client.job_detail_body(answer.job_id)
        assert detail["job_config"]["runtime_config"]  # filled in by the server
        assert detail["job_config"]["tm_slot_num"] == 1  # computed by the server
        assert differences(bare, normalise(detail)) == {}
        # Explicit defaults are no drift either; a real change is.
        assert differences({**bare, "cu_number": 2, "checkpoint_mode": 1}, normalise(detail)) == {}
        assert differences({**bare, "cu_number": 4}, normalise(detail)) == {"cu_number": (2, 4)}


def test_cleared_values_read_as_unset() -> None:
    for field in MODEL_FIELDS:
        possible, value = detail_dialect.cleared(field)
        if possible:
            assert detail_dialect.held({field: value}, field) == detail_dialect.held({}, field)


def _other(field: str, value: Any) -> Any:
    """A valid value of ``field`` other than ``value``."""
    if field == "checkpoint_mode":
        return 1
    if field == "feature":
        return "basic"
    if field == "resource_config_version":
        return "v1"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "g/more"]
    assert isinstance(value, dict)
    return {**value, "max_slot": 7}
