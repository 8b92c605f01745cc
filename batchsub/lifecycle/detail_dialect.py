"""A job's detail (``GET .../streaming/jobs/{job_id}``) in the create body's terms.

The detail speaks another dialect than the create and update bodies (API reference
``dli_02_0235``, the SDK's ``FlinkJobDetail`` and ``FlinkJobConfig``):

- ``checkpoint_mode`` comes back as a string, ``"exactly_once"`` (create: 1) or
  ``"at_least_once"`` (2);
- ``name``, ``desc``, ``queue_name``, ``main_class`` and ``entrypoint_args`` sit at the top
  of ``job_detail``, every other field inside ``job_config``; ``tags`` are not shown (DLI
  keeps them in its v3 tag API), so they are never compared;
- the server fills in what a body left out: the documented defaults (``SERVER_DEFAULTS``), a
  ``runtime_config`` and a computed ``tm_slot_num`` (``SERVER_FILLED``: not compared when the
  manifest leaves them out, as the Terraform provider found for ``runtime_config``), and
  null, ``""`` or ``[]`` for the rest (all read as "not set").

``normalise`` turns a detail into a create-style body; ``differences`` compares a manifest
with it, so a naive comparison's permanent drift does not show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchsub.model import SERVER_DEFAULTS, FlinkJarJob

TOP_LEVEL = ("name", "desc", "queue_name", "main_class", "entrypoint_args")
"""Fields the detail shows at the top of ``job_detail``; the rest are in ``job_config``."""


SERVER_FILLED = frozenset({"runtime_config", "tm_slot_num"})
"""Fields the server computes when a body leaves them out: compared only when set."""

CHECKPOINT_MODES = {"exactly_once": 1, "at_least_once": 2}

MODEL_FIELDS = tuple(name for name in FlinkJarJob.model_fields if name != "tags")
"""The fields a detail can show and a comparison looks at (every field of the model but tags)."""

_UNSET: Any = object()


def normalise(job_detail: Mapping[str, Any]) -> dict[str, Any]:
    """The detail's ``job_detail`` as a create-style body: only model fields, only those set."""
    config = job_detail.get("job_config")
    config = config if isinstance(config, Mapping) else {}
    body: dict[str, Any] = {}
    for field in MODEL_FIELDS:
        value = job_detail.get(field) if field in TOP_LEVEL else config.get(field)
        if field == "checkpoint_mode" and isinstance(value, str):
            value = CHECKPOINT_MODES.get(value, value)
        value = _clean(value)
        if value is not _UNSET:
            body[field] = value
    return body


def _clean(value: Any) -> Any:
    """A value as a comparison sees it: null, ``""``, ``[]`` and ``{}`` mean "not set"."""
    if isinstance(value, Mapping):
        inner = {k: c for k, v in value.items() if (c := _clean(v)) is not _UNSET}
        return inner or _UNSET
    if value is None or value == "" or value == []:
        return _UNSET
    return value


def held(body: Mapping[str, Any], field: str) -> Any:
    """The value the server holds for ``field`` given a create-style body (None: not set)."""
    value = _clean(body[field]) if field in body else _UNSET
    if value is _UNSET:
        return SERVER_DEFAULTS.get(field)
    return value


def differences(
    manifest: Mapping[str, Any], server: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Fields where the server's normalised body differs from the manifest: (server, manifest).

    A field the manifest leaves out is expected at its default (``SERVER_DEFAULTS``) or unset; one
    the server fills in by itself (``SERVER_FILLED``) is compared only when the manifest sets
    it. ``tags`` are not compared (the detail does not show them).
    """
    drift: dict[str, tuple[Any, Any]] = {}
    for field in MODEL_FIELDS:
        if field in SERVER_FILLED and _clean(manifest.get(field)) is _UNSET:
            continue
        want, have = held(manifest, field), held(server, field)
        if want != have:
            drift[field] = (have, want)
    return drift


def cleared(field: str) -> tuple[bool, Any]:
    """What an update sends to take ``field`` back to "left out": (possible, value).

    A field with a default takes the default; a string ``""``, a list ``[]``. Others (an
    object, a server-filled field) cannot be cleared by an update.
    """
    if field in SERVER_DEFAULTS:
        return True, SERVER_DEFAULTS[field]
    if field in SERVER_FILLED or field in ("resource_config", "tags", "name"):
        return False, None
    annotation = str(FlinkJarJob.model_fields[field].annotation)
    if "list" in annotation:
        return True, []
    if "str" in annotation or "Text" in annotation or "Literal" in annotation:
        return "Literal" not in annotation, ""
    return False, None
