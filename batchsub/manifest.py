"""Manifest files: read (bounded, never blocking), decoded, parsed, and made into jobs.

A manifest is a JSON or YAML file holding one job object or a list of them. Each object is
checked by the request model (``batchsub.model``) and becomes a ``JobSpec`` whose body is the
object exactly as written. Every failure becomes an ``InvalidManifest`` whose error is one
line naming the file and the field; nothing here raises on bad input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Hashable, Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

from batchsub.errors import ManifestError, one_line
from batchsub.jobs import InvalidManifest, JobSpec, ManifestItem
from batchsub.model import MAX_NAME, field_path, show, validate_object
from batchsub.text import printable

if TYPE_CHECKING:
    import yaml

MAX_MANIFEST_BYTES = 1024 * 1024
"""Manifests are small; a bigger file is a mistake (the API refuses bodies over 12 MB anyway)."""

MANIFEST_SUFFIXES = frozenset({".json", ".yaml", ".yml"})


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
            return f"{noun} ({show(value)})"
    return show(value)


def job_from_object(obj: object, source: str, *, validate: bool = True) -> ManifestItem:
    """Validate one parsed job object; the JobSpec's body is ``obj`` serialised as written.

    Never raises: anything wrong gives an InvalidManifest naming ``source`` and the fields.
    With ``validate=False`` only the shape (an object with a string name) is checked, and the
    caller must call ``validate_spec`` before sending: a rerun then skips the model for the
    jobs the ledger already records as created.
    """
    if not isinstance(obj, dict):
        return InvalidManifest(source, f"{source}: expected a job object, got {_kind(obj)}")
    raw_name = obj.get("name")
    # A name longer than any valid one is not kept: it would be repeated in every output.
    name = raw_name if isinstance(raw_name, str) and len(raw_name) <= MAX_NAME else None
    if validate or name is None:
        problem = validate_object(obj, source, name)
        if problem is not None:
            return problem
    try:
        # Copied to its exact size: orjson's result keeps the 4 KiB buffer it was written in,
        # which a list file of many small jobs multiplied (bench/results.md section 9).
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


# --- files ----------------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    """A key appears twice in one object; ``where`` locates it when the parser knows."""

    def __init__(self, key: object, where: str = "") -> None:
        super().__init__(
            f"{field_path((key,)) if isinstance(key, str) else show(key)}: duplicate key{where}"
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

    PyYAML is imported here, when the first YAML manifest is met: its import is a visible part
    of start-up (bench/results.md section 10), and most directories hold JSON only.
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
    detail = one_line(exc)
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
    return one_line(exc)


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
