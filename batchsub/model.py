"""The DLI create request body as a model, and turning what it rejects into one line.

Each job object of a manifest is validated against ``FlinkJarJob`` (the fields of ``POST
/v1.0/{project_id}/streaming/flink-jobs`` and of the official SDK's request body); the body
sent is the object exactly as written, nothing added, reordered or changed. What the model
rejects becomes one line naming the fields (``describe_validation_error``): the first
``MAX_PROBLEMS`` problems, each clipped. ``batchsub.manifest`` reads files into such objects.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from annotated_types import MaxLen, MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from batchsub.jobs import InvalidManifest, JobSpec
from batchsub.text import clip, describe_char, printable, quoted

if TYPE_CHECKING:
    pass

MAX_PROBLEMS = 5
"""Problems listed in one manifest's error; the rest are counted ("and 399995 more")."""
_MAX_PROBLEM_CHARS = 300  # one problem's text at most: a field path is clipped, not dropped

_INT32_MAX = 2**31 - 1  # the API's "Integer" is a Java int
_NOT_NULL = "not_null"

# Not in any string: control characters other than tab, LF and CR (free text such as ``desc``
# may hold line breaks), and lone surrogates (a JSON "\ud800" escape: no UTF-8 encoding
# exists for one). PostgreSQL refuses NUL, and neither ledger can store a surrogate.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _char_error(rule: str, text: str, index: int) -> PydanticCustomError:
    """``rule (U+0000 at position 3: a control character)``; positions count from 1."""
    code, _, kind = describe_char(text[index]).partition(", ")
    return PydanticCustomError(
        "character",
        "{rule} ({code} at position {position}: {kind})",
        {"rule": rule, "code": code, "position": index + 1, "kind": kind},
    )


_TEXT_RULE = "must not contain control characters other than tab and line breaks"
_NAME_RULE = "must contain printable characters only"


def _no_control_characters(value: str) -> str:
    bad = _CONTROL.search(value)
    if bad is not None:
        raise _char_error(_TEXT_RULE, value, bad.start())
    return value


Text = Annotated[str, AfterValidator(_no_control_characters)]
"""A string field of the request body: what the API and both ledgers can hold."""


class _Strict(BaseModel):
    """Base of the request models: strict types, unknown fields refused, null refused.

    Fields are optional by leaving them out; an explicit null is refused because the body is
    sent as written and the API documents no meaning for it.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise PydanticCustomError(_NOT_NULL, "must not be null (leave the field out instead)")
        return value


class ResourceSpec(_Strict):
    """CPU and memory of the job manager or of each task manager (resource_config v2)."""

    cpu: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    memory: Text | None = Field(default=None, min_length=1)


class ResourceConfig(_Strict):
    """The ``resource_config`` object of the SDK's request body."""

    max_slot: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    parallel_number: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    jobmanager_resource_spec: ResourceSpec | None = None
    taskmanager_resource_spec: ResourceSpec | None = None


class Tag(_Strict):
    """One job tag; both key and value are required."""

    key: Text = Field(min_length=1, max_length=128)
    value: Text = Field(max_length=43)


def _count() -> Any:
    """A positive int32 field, absent by default (a count of CUs, slots, parallel tasks)."""
    return Field(default=None, ge=1, le=_INT32_MAX)


class FlinkJarJob(_Strict):
    """The body of the DLI "create a Flink Jar job" request, used to validate manifests.

    Lengths and ranges follow the API reference and the official SDK. The name must be
    printable (no control, invisible, separator or surrogate characters: DLI's console could
    not show or type it, and PostgreSQL refuses NUL), but its charset is not narrowed to the
    console's letters, digits, ``-`` and ``_``: the create API page states only the length,
    and a name the API refuses gets its own clear answer (failed, with DLI's message). No
    other string may hold a control character but tab, LF and CR (see ``Text``).
    """

    name: str = Field(min_length=1, max_length=57)
    desc: Text | None = Field(default=None, max_length=512)
    queue_name: Text | None = Field(default=None, max_length=128)
    cu_number: int | None = _count()
    manager_cu_number: int | None = _count()
    parallel_number: int | None = _count()
    log_enabled: bool | None = None
    obs_bucket: Text | None = None
    smn_topic: Text | None = None
    main_class: Text | None = None
    entrypoint_args: Text | None = None
    restart_when_exception: bool | None = None
    entrypoint: Text | None = None
    dependency_jars: list[Text] | None = None
    dependency_files: list[Text] | None = None
    tm_cus: int | None = _count()
    tm_slot_num: int | None = _count()
    resume_checkpoint: bool | None = None
    resume_max_num: int | None = Field(default=None, le=_INT32_MAX)
    checkpoint_path: Text | None = None
    tags: list[Tag] | None = None
    runtime_config: Text | None = None
    # Fields of the official SDK's CreateFlinkJarJobRequestBody beyond the create page.
    checkpoint_enabled: bool | None = None
    checkpoint_mode: int | None = None
    checkpoint_interval: int | None = Field(default=None, ge=1, le=3600)
    feature: Literal["basic", "custom"] | None = None
    flink_version: Text | None = None
    image: Text | None = None
    flink_log_config: Text | None = None
    execution_agency_urn: Text | None = None
    resource_config_version: Literal["v1", "v2"] | None = None
    resource_config: ResourceConfig | None = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must not be blank")
        if not value.isprintable():
            index = next(i for i, char in enumerate(value) if not char.isprintable())
            raise _char_error(_NAME_RULE, value, index)
        return value

    @field_validator("resume_max_num")
    @classmethod
    def _resume_max_num(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise PydanticCustomError(
                "resume_max_num", "must be -1 or greater than 0 (got {got})", {"got": value}
            )
        return value

    @field_validator("checkpoint_mode")
    @classmethod
    def _checkpoint_mode(cls, value: int) -> int:
        # Not a Literal[1, 2]: pydantic's literal check accepts true and 1.0 even when strict.
        if value not in (1, 2):
            raise PydanticCustomError(
                "checkpoint_mode",
                "must be 1 (exactly_once) or 2 (at_least_once) (got {got})",
                {"got": value},
            )
        return value


def _length_limits() -> dict[str, tuple[int, int | None]]:
    """(min, max) characters of every string field with a length limit, for error messages."""
    limits: dict[str, tuple[int, int | None]] = {}
    for model in (FlinkJarJob, Tag, ResourceSpec):
        for field_name, info in model.model_fields.items():
            lo = next((m.min_length for m in info.metadata if isinstance(m, MinLen)), 0)
            hi = next((m.max_length for m in info.metadata if isinstance(m, MaxLen)), None)
            if lo or hi is not None:
                limits[field_name] = (lo, hi)
    return limits


_LENGTH_LIMITS = _length_limits()
MAX_NAME = _LENGTH_LIMITS["name"][1] or 0

# What the server holds for a field a create body left out (the API reference's defaults, in
# the create dialect): the detail dialect expects them, the simulator fills them in.
SERVER_DEFAULTS: dict[str, Any] = {
    "cu_number": 2,
    "manager_cu_number": 1,
    "parallel_number": 1,
    "tm_cus": 1,
    "log_enabled": False,
    "restart_when_exception": False,
    "resume_checkpoint": False,
    "resume_max_num": -1,
    "checkpoint_enabled": False,
    "checkpoint_mode": 1,
    "checkpoint_interval": 10,
    "resource_config_version": "v1",
}


# --- error messages -------------------------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "float_type": "a number",
    "list_type": "a list",
    "model_type": "an object",
    "dict_type": "an object",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def show(value: object) -> str:
    """A short one-line rendering of a manifest value, JSON-style where it is JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # nan, inf: orjson would write null
    if value is None or isinstance(value, bool):
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return str(value) if len(str(value)) <= 40 else f"a number of {len(str(value))} digits"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return quoted(text)
    if isinstance(value, dt.date):  # a YAML timestamp; datetime is a subclass of date
        return f"a date ({value.isoformat()}; quote it to make it a string)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a YAML {type(value).__name__}"


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("tags", 0, "value")`` -> ``tags[0].value``; odd keys are quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if _IDENT.fullmatch(part) and len(part) <= 40 else show(part)
        out += f".{key}" if out else key
    return out or "(top level)"


# What ``field_path`` writes: keys (identifiers, or JSON strings for odd ones) and [indexes].
_KEY = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*")'
_FIELD_FIRST = re.compile(rf"((?:{_KEY}|\[\d+\])(?:\.{_KEY}|\[\d+\])*): ")


def error_field(source: str, error: str) -> str | None:
    """The first field a manifest's error names (``source: field: message``), as
    ``field_path`` wrote it; None when the error is the file's (unreadable, bad JSON, ...)."""
    match = _FIELD_FIRST.match(error, len(source) + 2) if error.startswith(f"{source}: ") else None
    return match[1] if match else None


def _length_message(field: str, value: object) -> str:
    lo, hi = _LENGTH_LIMITS.get(field, (0, None))
    got = len(value) if isinstance(value, str) else "?"
    if hi is None:
        return f"must be at least {lo} characters (got {got})"
    if lo:
        return f"must be {lo} to {hi} characters (got {got})"
    return f"must be at most {hi} characters (got {got})"


def _error_message(err: Any) -> str:
    """One pydantic error as ``field: what is wrong``."""
    kind: str = err["type"]
    loc: tuple[int | str, ...] = err["loc"]
    value = err.get("input")
    ctx: dict[str, Any] = err.get("ctx") or {}
    if kind == "invalid_key":  # a YAML key that is not a string: its loc is the key itself
        return f"{field_path(loc[:-1])}: key {show(loc[-1])} is not a string"
    where = field_path(loc)
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (not in the DLI create API){_did_you_mean(loc)}"
    if kind in _EXPECTED:
        return f"{where}: expected {_EXPECTED[kind]}, got {show(value)}"
    if kind in ("string_too_short", "string_too_long") or (
        kind in ("too_short", "too_long") and isinstance(value, str)  # checked after ``Text``
    ):
        last = next((p for p in reversed(loc) if isinstance(p, str)), "")
        return f"{where}: {_length_message(last, value)}"
    if kind == "greater_than_equal":
        return f"{where}: must be at least {ctx['ge']} (got {show(value)})"
    if kind == "less_than_equal":
        return f"{where}: must be at most {ctx['le']} (got {show(value)})"
    if kind == "greater_than":
        return f"{where}: must be greater than {ctx['gt']} (got {show(value)})"
    if kind == "literal_error":
        return f"{where}: must be {ctx['expected'].replace(chr(39), chr(34))} (got {show(value)})"
    if kind == "finite_number":
        return f"{where}: must be a finite number (got {show(value)})"
    if kind == "string_unicode" and isinstance(value, str):  # a lone surrogate
        return _surrogate_message(loc, value)
    msg: str = err["msg"]
    return f"{where}: {msg[:1].lower()}{msg[1:]}"


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean parallel_number?)`` for an unknown key close to a field of its model."""
    model: type[BaseModel] = FlinkJarJob
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            return ""
        model = inner
    key = loc[-1] if loc else None
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``list[Tag]`` -> Tag, ``ResourceConfig | None`` -> it)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _surrogate_message(loc: tuple[int | str, ...], value: str) -> str:
    """A string pydantic could not read (it holds a lone surrogate), as the rule it breaks."""
    bad = _CONTROL.search(value)
    index = bad.start() if bad is not None else 0
    if not loc:  # pydantic stops at a key it cannot read, and gives no location
        return f"key {show(value)}: {_char_error(_TEXT_RULE, value, index)}"
    rule = _NAME_RULE if loc == ("name",) else _TEXT_RULE
    return f"{field_path(loc)}: {_char_error(rule, value, index)}"


def describe_validation_error(exc: ValidationError) -> str:
    """The first MAX_PROBLEMS errors of a validation as ``field: problem``, on one line.

    Joined by "; ", then "; and N more problems": one manifest's error stays a line whatever
    it holds (an unbounded one took the summary table minutes to lay out: bench/results.md
    section 9).
    """
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:MAX_PROBLEMS]:
        try:
            text = _error_message(err)
        except Exception:  # a message must never turn a bad manifest into a crash
            text = f"{field_path(err['loc'])}: {err['msg']}"
        parts.append(clip(text, _MAX_PROBLEM_CHARS))
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more problems")
    return "; ".join(parts)


def validate_object(obj: dict[str, Any], source: str, name: str | None) -> InvalidManifest | None:
    """The problem with one job object as the model sees it (naming ``source``), or None."""
    try:
        FlinkJarJob.model_validate(obj)
    except ValidationError as exc:
        shown = None if name is None else printable(name)  # the report and logs show it
        return InvalidManifest(source, f"{source}: {describe_validation_error(exc)}", shown)
    return None


def validate_spec(spec: JobSpec) -> InvalidManifest | None:
    """The problem with a job parsed without validation, or None when it may be sent."""
    return validate_object(orjson.loads(spec.body), spec.source, spec.name)
