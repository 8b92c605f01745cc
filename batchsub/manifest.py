"""Manifests: the DLI create request body as a model, and the parsing of manifest files.

A manifest is a JSON or YAML file holding one job object or a list of them. Each object is
validated against ``FlinkJarJob`` (the fields of ``POST /v1.0/{project_id}/streaming/flink-jobs``
and of the official SDK's request body), but the body sent is the object exactly as written:
nothing added, reordered or changed. Every failure becomes an ``InvalidManifest`` whose error
is one line naming the file and the field; nothing here raises on bad input.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Hashable, Iterable
from functools import cache
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

from batchsub.errors import ManifestError, os_reason
from batchsub.jobs import InvalidManifest, JobSpec, ManifestItem
from batchsub.text import clip, describe_char, printable, quoted

if TYPE_CHECKING:
    import yaml

MAX_MANIFEST_BYTES = 1024 * 1024
"""Manifests are small; a bigger file is a mistake (the API refuses bodies over 12 MB anyway)."""

MANIFEST_SUFFIXES = frozenset({".json", ".yaml", ".yml"})

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
_MAX_NAME = _LENGTH_LIMITS["name"][1] or 0


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


def _show(value: object) -> str:
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


def _where(loc: tuple[int | str, ...]) -> str:
    """``("tags", 0, "value")`` -> ``tags[0].value``; odd keys are quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if _IDENT.fullmatch(part) and len(part) <= 40 else _show(part)
        out += f".{key}" if out else key
    return out or "(top level)"


# What ``_where`` writes: keys (identifiers, or JSON strings for odd ones) and [indexes].
_KEY = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*")'
_FIELD_FIRST = re.compile(rf"((?:{_KEY}|\[\d+\])(?:\.{_KEY}|\[\d+\])*): ")


def error_field(source: str, error: str) -> str | None:
    """The first field a manifest's error names (``source: field: message``), as ``_where``
    wrote it; None when the error is the file's (unreadable, bad JSON, empty, ...)."""
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
        return f"{_where(loc[:-1])}: key {_show(loc[-1])} is not a string"
    where = _where(loc)
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (not in the DLI create API)"
    if kind in _EXPECTED:
        return f"{where}: expected {_EXPECTED[kind]}, got {_show(value)}"
    if kind in ("string_too_short", "string_too_long") or (
        kind in ("too_short", "too_long") and isinstance(value, str)  # checked after ``Text``
    ):
        last = next((p for p in reversed(loc) if isinstance(p, str)), "")
        return f"{where}: {_length_message(last, value)}"
    if kind == "greater_than_equal":
        return f"{where}: must be at least {ctx['ge']} (got {_show(value)})"
    if kind == "less_than_equal":
        return f"{where}: must be at most {ctx['le']} (got {_show(value)})"
    if kind == "greater_than":
        return f"{where}: must be greater than {ctx['gt']} (got {_show(value)})"
    if kind == "literal_error":
        return f"{where}: must be {ctx['expected'].replace(chr(39), chr(34))} (got {_show(value)})"
    if kind == "finite_number":
        return f"{where}: must be a finite number (got {_show(value)})"
    if kind == "string_unicode" and isinstance(value, str):  # a lone surrogate
        return _surrogate_message(loc, value)
    msg: str = err["msg"]
    return f"{where}: {msg[:1].lower()}{msg[1:]}"


def _surrogate_message(loc: tuple[int | str, ...], value: str) -> str:
    """A string pydantic could not read (it holds a lone surrogate), as the rule it breaks."""
    bad = _CONTROL.search(value)
    index = bad.start() if bad is not None else 0
    if not loc:  # pydantic stops at a key it cannot read, and gives no location
        return f"key {_show(value)}: {_char_error(_TEXT_RULE, value, index)}"
    rule = _NAME_RULE if loc == ("name",) else _TEXT_RULE
    return f"{_where(loc)}: {_char_error(rule, value, index)}"


def describe_validation_error(exc: ValidationError) -> str:
    """The first MAX_PROBLEMS errors of a validation as ``field: problem``, on one line.

    Joined by "; ", then "; and N more problems": one manifest's error stays a line whatever
    it holds (400,000 bad list items made a 20 MB line that the summary table took minutes
    to lay out).
    """
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:MAX_PROBLEMS]:
        try:
            text = _error_message(err)
        except Exception:  # a message must never turn a bad manifest into a crash
            text = f"{_where(err['loc'])}: {err['msg']}"
        parts.append(clip(text, _MAX_PROBLEM_CHARS))
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more problems")
    return "; ".join(parts)


# --- jobs -----------------------------------------------------------------------------------


_NOUNS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
)


def _kind(value: object) -> str:
    """What a top-level value is, for "expected a job object, got ..." messages."""
    if value is None:
        return "null"
    for types, noun in _NOUNS:
        if isinstance(value, types):
            return f"{noun} ({_show(value)})"
    return _show(value)


def job_from_object(obj: object, source: str, *, validate: bool = True) -> ManifestItem:
    """Validate one parsed job object; the JobSpec's body is ``obj`` serialised as written.

    Never raises: anything wrong gives an InvalidManifest naming ``source`` and the fields.
    With ``validate=False`` only the shape (an object with a string name) is checked, and the
    caller must call ``validate_spec`` before sending: a rerun then skips the model for the
    jobs the ledger already settles.
    """
    if not isinstance(obj, dict):
        return InvalidManifest(source, f"{source}: expected a job object, got {_kind(obj)}")
    raw_name = obj.get("name")
    # A name longer than any valid one is not kept: it would be repeated in every output.
    name = raw_name if isinstance(raw_name, str) and len(raw_name) <= _MAX_NAME else None
    if validate or name is None:
        problem = _validate(obj, source, name)
        if problem is not None:
            return problem
    try:
        # Copied to its exact size: orjson's result keeps the 4 KiB buffer it was written in,
        # and a list file of 55,000 small jobs held 214 MB of it (bench/results.md).
        body = bytes(memoryview(orjson.dumps(obj)))
        canonical = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:  # unreachable for a valid job; be safe
        return InvalidManifest(source, f"{source}: cannot be sent as JSON: {exc}", name)
    assert name is not None  # validated: a string
    return JobSpec(
        name=name,
        body=body,
        body_hash=hashlib.sha256(canonical).hexdigest(),
        source=source,
        validated=validate,
    )


def _validate(obj: dict[str, Any], source: str, name: str | None) -> InvalidManifest | None:
    try:
        FlinkJarJob.model_validate(obj)
    except ValidationError as exc:
        shown = None if name is None else printable(name)  # the report and logs show it
        return InvalidManifest(source, f"{source}: {describe_validation_error(exc)}", shown)
    return None


def validate_spec(spec: JobSpec) -> InvalidManifest | None:
    """The problem with a job parsed without validation, or None when it may be sent."""
    return _validate(orjson.loads(spec.body), spec.source, spec.name)


# --- files ----------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    """A key appears twice in one object; ``where`` locates it when the parser knows."""

    def __init__(self, key: object, where: str = "") -> None:
        super().__init__(
            f"{_where((key,)) if isinstance(key, str) else _show(key)}: duplicate key{where}"
        )


def _no_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for the stdlib JSON parser: refuse a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key, " in the same object")
        out[key] = value
    return out


def _count_keys(value: object) -> int:
    """Keys of every object in a parsed JSON document."""
    count = 0
    children: Iterable[object] = ()
    if type(value) is dict:
        count, children = len(value), value.values()
    elif type(value) is list:
        children = value
    for child in children:
        if type(child) is dict or type(child) is list:
            count += _count_keys(child)
    return count


_KEY_LIKE = re.compile(r'"[ \t\r\n]*:')
_SPACED_KEY_BYTES = re.compile(rb'"[ \t\r\n]+:')


def _load_json(text: str) -> object:
    """orjson, plus a duplicate key check that costs a regex count in the common case.

    Every key ends in ``"`` then ``:``; if the text has no more such spots than the parsed
    document has keys, no key was dropped. Otherwise (a duplicate, or a string value with
    ``":`` inside, as embedded JSON has) re-parse with the stdlib to look for duplicates.
    """
    obj = orjson.loads(text)
    if len(_KEY_LIKE.findall(text)) > _count_keys(obj):
        json.loads(text, object_pairs_hook=_no_duplicate_pairs)
    return obj


def _quick_json(data: bytes) -> object:
    """The common case of ``_load_json`` straight from bytes, or ``_SLOW`` when unsure.

    orjson checks UTF-8 itself, so a plain file skips decoding; anything unusual (a BOM, bad
    UTF-8, a syntax error, maybe a duplicate key) goes the slow way, which says what is wrong.
    """
    if b"\x00" in data:
        return _SLOW
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _SLOW
    # The key-like spots of _load_json, counted without a regex when none has blanks.
    if _SPACED_KEY_BYTES.search(data) or data.count(b'":') > _count_keys(obj):
        return _SLOW
    return obj


_SLOW = object()  # _quick_json's "parse it the careful way"


@cache
def _yaml_loader() -> Any:
    """The safe YAML loader that refuses duplicate keys.

    PyYAML is imported here, when the first YAML manifest is met: it costs about 25 ms of
    start-up, and most directories hold JSON only.
    """
    import yaml

    class _NoDuplicateKeys(yaml.constructor.SafeConstructor):
        """Mixed into the safe YAML loader: refuse a key given twice in one mapping.

        Merge keys (``<<``) are skipped: overriding a merged key is legal YAML.
        """

        def construct_mapping(
            self, node: yaml.MappingNode, deep: bool = False
        ) -> dict[Hashable, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if (
                    not isinstance(key_node, yaml.ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    mark = key_node.start_mark
                    where = f" (line {mark.line + 1}, column {mark.column + 1})"
                    raise _DuplicateKeyError(key_node.value, where)
                seen.add(ident)
            return super().construct_mapping(node, deep=deep)

    return type("_Loader", (_NoDuplicateKeys, getattr(yaml, "CSafeLoader", yaml.SafeLoader)), {})


class _YamlSyntaxError(ValueError):
    """A PyYAML error in our own type, so that callers need not import PyYAML to catch it."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        mark = getattr(exc, "problem_mark", None)
        self.where = None if mark is None else (mark.line + 1, mark.column + 1)
        self.problem = getattr(exc, "problem", None) or getattr(exc, "context", None)


def _load_yaml(text: str) -> object:
    import yaml

    try:
        doc = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise _YamlSyntaxError(exc) from exc
    if _expands_beyond(doc, MAX_MANIFEST_BYTES):
        raise ValueError("its aliases expand it to more than 1 MiB")
    return doc


def _expands_beyond(doc: object, limit: int) -> bool:
    """True when ``doc`` spelt out (each alias copied, as the JSON body would be) passes ``limit``.

    YAML aliases share one object, so a small file can stand for gigabytes of JSON (a
    "billion laughs"): validating or serialising it would take the worker's memory. The
    walk stops as soon as the budget is spent, so it costs at most ``limit`` steps.
    """
    budget = limit
    stack = [doc]
    while stack:
        value = stack.pop()
        budget -= 1
        if isinstance(value, str):
            budget -= len(value)
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        if budget < 0:
            return True
    return False


def _syntax_error(source: str, fmt: str, exc: Exception) -> str:
    """One line for a JSON or YAML syntax error, with its line and column when known."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, _YamlSyntaxError) and exc.where is not None:
        line, column = exc.where
        problem = exc.problem or "syntax error"
        return f"{source}: invalid YAML at line {line}, column {column}: {problem}"
    detail = " ".join(str(exc).split())
    return f"{source}: invalid {fmt}: {detail}"


_LOADERS: dict[str, tuple[str, Callable[[str], object]]] = {
    ".json": ("JSON", _load_json),
    ".yaml": ("YAML", _load_yaml),
    ".yml": ("YAML", _load_yaml),
}


def _too_big(size: int | None) -> str:
    shown = f"{size} bytes" if size is not None else f"more than {MAX_MANIFEST_BYTES} bytes"
    return f"file is larger than 1 MiB ({shown})"


def _decode(data: bytes, source: str) -> str | InvalidManifest:
    """The file's text, or why it is not a text manifest."""
    if len(data) > MAX_MANIFEST_BYTES:
        return InvalidManifest(source, f"{source}: {_too_big(len(data))}")
    if b"\x00" in data:
        return InvalidManifest(source, f"{source}: binary file, not a JSON or YAML manifest")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidManifest(
            source, f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        )
    text = text.removeprefix("\ufeff")
    if not text or text.isspace():
        return InvalidManifest(source, f"{source}: empty file")
    return text


def parse_manifest_bytes(
    data: bytes, source: str, *, suffix: str, validate: bool = True
) -> list[ManifestItem]:
    """The jobs of one manifest file's content: one job object, or a list of them.

    ``suffix`` (``.json``, ``.yaml``, ``.yml``) picks the parser. Items of a list get the source
    ``"{source}#{index}"``. Never raises: every failure is an InvalidManifest.
    """
    loader = _LOADERS.get(suffix.lower())
    if loader is None:
        return [InvalidManifest(source, f"{source}: unsupported file type {suffix!r}")]
    fmt, load = loader
    doc = _quick_json(data) if fmt == "JSON" and len(data) <= MAX_MANIFEST_BYTES else _SLOW
    if doc is _SLOW:
        text = _decode(data, source)
        if isinstance(text, InvalidManifest):
            return [text]
        try:
            doc = load(text)
        except _DuplicateKeyError as exc:
            return [InvalidManifest(source, f"{source}: {exc}")]
        except (ValueError, RecursionError) as exc:  # JSON's and YAML's errors are ValueErrors
            return [InvalidManifest(source, _syntax_error(source, fmt, exc))]
    if isinstance(doc, dict):
        return [job_from_object(doc, source, validate=validate)]
    if not isinstance(doc, list):
        what = _kind(doc) if doc is not None or fmt == "JSON" else "an empty document"
        return [
            InvalidManifest(
                source, f"{source}: expected a job object or a list of job objects, got {what}"
            )
        ]
    if not doc:
        return [InvalidManifest(source, f"{source}: empty list: no jobs")]
    return [job_from_object(item, f"{source}#{i}", validate=validate) for i, item in enumerate(doc)]


class _Unusable(Exception):
    """A file that is no manifest before it is even parsed: too big, or not a regular file."""


def _read_limited(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, up to MAX_MANIFEST_BYTES; _Unusable if it is bigger or not a file.

    Plain ``os`` calls, and no fstat unless the file is empty or too big: one read of 64 KiB
    takes a whole manifest of the usual size (a short read of a regular file is its end), in
    half the time of open() or of asking the size first; bigger files read on. O_NONBLOCK:
    a FIFO that took a manifest's name must not hang the run (on a regular file it is a no-op).
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        data = os.read(fd, _FIRST_READ)
        while _FIRST_READ <= len(data) <= MAX_MANIFEST_BYTES:
            more = os.read(fd, MAX_MANIFEST_BYTES + 1 - len(data))
            if not more:
                break
            data += more
        if not data or len(data) > MAX_MANIFEST_BYTES:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _Unusable(f"not a regular file ({_file_kind(info.st_mode)})")
            if data:
                raise _Unusable(_too_big(max(info.st_size, len(data))))
        return data
    finally:
        os.close(fd)


_FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _file_kind(mode: int) -> str:
    return next((noun for test, noun in _FILE_KINDS if test(mode)), "not a file")


_FIRST_READ = 64 * 1024


def parse_manifest_file(
    path: str | os.PathLike[str], display: str, *, validate: bool = True
) -> list[ManifestItem]:
    """Read and parse one manifest file; ``display`` is its source string in every message.

    The suffix of ``path`` (``.json``, ``.yaml``, ``.yml``, any case) picks the parser.
    """
    data = read_manifest(path, display)
    if isinstance(data, InvalidManifest):
        return [data]
    return parse_manifest_bytes(data, display, suffix=os.path.splitext(path)[1], validate=validate)


def read_manifest(path: str | os.PathLike[str], display: str) -> bytes | InvalidManifest:
    """A manifest file's bytes, or why it cannot be read (named ``display``); never blocks on a
    FIFO nor reads more than MAX_MANIFEST_BYTES + 1 bytes."""
    try:
        return _read_limited(path)
    except OSError as exc:
        return InvalidManifest(display, f"{display}: cannot read: {_read_error(path, exc)}")
    except _Unusable as exc:
        return InvalidManifest(display, f"{display}: {exc}")


def _read_error(path: str | os.PathLike[str], exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        try:
            target = os.fsdecode(os.readlink(path))
        except OSError:
            target = "?"
        return f"dangling symlink (its target {printable(target)} does not exist)"
    return os_reason(exc)


def diff_fields(old_body: bytes, new_body: bytes) -> list[str]:
    """Top-level fields whose values differ between two request bodies (added, removed, changed).

    Values are compared as canonical JSON, so ``1`` and ``1.0`` or ``true`` differ, as they do
    on the wire. Raises ManifestError if a body is not a JSON object.
    """
    old, new = _body_object(old_body), _body_object(new_body)
    missing = object()

    def canon(value: object) -> object:
        if value is missing:
            return missing
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)

    return sorted(
        key
        for key in old.keys() | new.keys()
        if canon(old.get(key, missing)) != canon(new.get(key, missing))
    )


def _body_object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"request body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ManifestError("request body is not a JSON object")
    return obj


__all__ = [
    "MANIFEST_SUFFIXES",
    "MAX_MANIFEST_BYTES",
    "MAX_PROBLEMS",
    "FlinkJarJob",
    "ResourceConfig",
    "ResourceSpec",
    "Tag",
    "describe_validation_error",
    "diff_fields",
    "job_from_object",
    "parse_manifest_bytes",
    "parse_manifest_file",
    "read_manifest",
]
