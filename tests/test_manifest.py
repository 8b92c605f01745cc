"""Manifest parsing and validation: bodies as written, one-line errors naming file and field."""

from __future__ import annotations

import hashlib
import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchsub.errors import ManifestError
from batchsub.jobs import InvalidManifest, JobSpec, ManifestItem
from batchsub.manifest import (
    MAX_MANIFEST_BYTES,
    diff_fields,
    job_from_object,
    parse_manifest_bytes,
    parse_manifest_file,
)
from batchsub.model import MAX_PROBLEMS, FlinkJarJob

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def one(items: list[ManifestItem]) -> ManifestItem:
    assert len(items) == 1, items
    return items[0]


def job(data: bytes, suffix: str = ".json", source: str = "m.json") -> JobSpec:
    item = one(parse_manifest_bytes(data, source, suffix=suffix))
    assert isinstance(item, JobSpec), item
    return item


def error(data: bytes, suffix: str = ".json", source: str = "m.json") -> str:
    item = one(parse_manifest_bytes(data, source, suffix=suffix))
    assert isinstance(item, InvalidManifest), item
    assert "\n" not in item.error
    return item.error


def obj_error(obj: dict[str, Any]) -> str:
    item = job_from_object(obj, "m.json")
    assert isinstance(item, InvalidManifest), item
    return item.error


# --- the API's own example ------------------------------------------------------------------


def test_api_example_is_valid_and_sent_unchanged() -> None:
    path = EXAMPLES / "manifests" / "api-example.json"
    expected = json.loads(path.read_text())  # the stdlib keeps the key order of the file
    item = one(parse_manifest_file(path, "examples/manifests/api-example.json"))
    assert isinstance(item, JobSpec)
    assert item.name == "test"
    assert item.source == "examples/manifests/api-example.json"
    assert item.body == orjson.dumps(expected)
    assert list(orjson.loads(item.body)) == list(expected)  # field order as written
    canonical = orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)
    assert item.body_hash == hashlib.sha256(canonical).hexdigest()


def test_every_example_manifest_is_valid_with_a_unique_name() -> None:
    items = [
        item
        for path in sorted((EXAMPLES / "manifests").rglob("*"))
        if path.is_file()
        for item in parse_manifest_file(path, str(path))
    ]
    assert all(isinstance(item, JobSpec) for item in items), items
    names = [item.name for item in items]
    assert len(items) >= 12
    assert len(set(names)) == len(names)


# --- one invalid manifest per kind ----------------------------------------------------------

BROKEN = {
    "broken-json.json": "invalid JSON at line 4, column 17: trailing comma is not allowed",
    "broken-yaml.yaml": "invalid YAML at line 5, column 1: found unexpected end of stream",
    "empty.json": "empty file",
    "binary-junk.json": "binary file, not a JSON or YAML manifest",
    "name-too-long.json": "name: must be 1 to 57 characters (got 58)",
    "desc-too-long.yaml": "desc: must be at most 512 characters (got 513)",
    "string-for-int.json": 'cu_number: expected an integer, got "two"',
    "typo.json": "parallel_numbr: unknown field (not in the DLI create API)"
    " (did you mean parallel_number?)",
    "resume-max-num-zero.yaml": "resume_max_num: must be -1 or greater than 0 (got 0)",
    "missing-name.json": "name: required field is missing",
    "tag-without-value.yaml": "tags[0].value: required field is missing",
    "int-as-bool.json": "log_enabled: expected true or false, got 1",
    "bool-as-int.json": "cu_number: expected an integer, got true",
    "duplicate-key.json": "name: duplicate key in the same object",
    "date-in-yaml.yaml": (
        "desc: expected a string, got a date (2024-03-01; quote it to make it a string)"
    ),
}


@pytest.mark.parametrize("filename", sorted(BROKEN))
def test_broken_example_gives_one_precise_error(filename: str) -> None:
    display = f"examples/broken/{filename}"
    item = one(parse_manifest_file(EXAMPLES / "broken" / filename, display))
    assert isinstance(item, InvalidManifest)
    assert item.source == display
    assert item.error == f"{display}: {BROKEN[filename]}"


def test_every_broken_example_is_covered() -> None:
    assert sorted(p.name for p in (EXAMPLES / "broken").iterdir()) == sorted(BROKEN)


def test_invalid_manifest_keeps_the_name_when_it_is_a_string() -> None:
    item = one(parse_manifest_bytes(b'{"name": "x", "cu_number": 0}', "m.json", suffix=".json"))
    assert isinstance(item, InvalidManifest)
    assert item.name == "x"
    item = one(parse_manifest_bytes(b'{"name": 7}', "m.json", suffix=".json"))
    assert isinstance(item, InvalidManifest)
    assert item.name is None
    assert item.error == "m.json: name: expected a string, got 7"


def test_several_wrong_fields_are_all_listed() -> None:
    body = b'{"name": "x", "cu_number": "two", "tm_cus": 0, "extra": 1, "tags": [{"value": "v"}]}'
    assert error(body) == (
        'm.json: cu_number: expected an integer, got "two"; tm_cus: must be at least 1 (got 0); '
        "tags[0].key: required field is missing; extra: unknown field (not in the DLI create API)"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "name: must be 1 to 57 characters (got 0)"),
        ({"name": "   "}, "name: must not be blank"),
        ({"name": "x", "desc": None}, "desc: must not be null (leave the field out instead)"),
        ({"name": "x", "queue_name": "q" * 129}, "queue_name: must be at most 128 characters"),
        ({"name": "x", "cu_number": 2.0}, "cu_number: expected an integer, got 2.0"),
        ({"name": "x", "cu_number": 2**31}, "cu_number: must be at most 2147483647"),
        ({"name": "x", "resume_max_num": -2}, "resume_max_num: must be -1 or greater than 0"),
        ({"name": "x", "checkpoint_interval": 3601}, "checkpoint_interval: must be at most 3600"),
        ({"name": "x", "checkpoint_mode": 3}, "checkpoint_mode: must be 1 (exactly_once) or 2"),
        ({"name": "x", "checkpoint_mode": True}, "checkpoint_mode: expected an integer, got true"),
        ({"name": "x", "feature": "fancy"}, 'feature: must be "basic" or "custom" (got "fancy")'),
        (
            {"name": "x", "resource_config_version": "v3"},
            'resource_config_version: must be "v1" or "v2" (got "v3")',
        ),
        ({"name": "x", "log_enabled": "true"}, 'log_enabled: expected true or false, got "true"'),
        (
            {"name": "x", "dependency_jars": "a.jar"},
            'dependency_jars: expected a list, got "a.jar"',
        ),
        ({"name": "x", "dependency_jars": ["a.jar", 3]}, "dependency_jars[1]: expected a string"),
        (
            {"name": "x", "tags": [{"key": "k", "value": "v" * 44}]},
            "tags[0].value: must be at most 43",
        ),
        ({"name": "x", "tags": [{"key": "k", "value": "v", "x": 1}]}, "tags[0].x: unknown field"),
        ({"name": "x", "resource_config": {"max_slot": 0}}, "resource_config.max_slot: must be at"),
        (
            {"name": "x", "resource_config": {"jobmanager_resource_spec": {"cpu": True}}},
            "resource_config.jobmanager_resource_spec.cpu: expected a number, got true",
        ),
        (
            {"name": "x", "resource_config": {"taskmanager_resource_spec": {"cpu": 1, "gpu": 1}}},
            "resource_config.taskmanager_resource_spec.gpu: unknown field",
        ),
        ({"name": "x", "weird key": 1}, '"weird key": unknown field'),
    ],
)
def test_field_errors(fields: dict[str, Any], message: str) -> None:
    assert obj_error(fields).startswith(f"m.json: {message}")


def test_bool_is_not_an_int_nor_an_int_a_bool() -> None:
    # bool is a subclass of int in Python; strict validation must still tell them apart.
    assert obj_error({"name": "x", "tm_slot_num": True}).endswith("expected an integer, got true")
    assert obj_error({"name": "x", "resume_checkpoint": 0}).endswith(
        "expected true or false, got 0"
    )


def test_an_int_is_a_valid_float() -> None:
    spec = {"cpu": 1, "memory": "4G"}
    body = {"name": "x", "resource_config": {"jobmanager_resource_spec": spec}}
    item = job_from_object(body, "m.json")
    assert isinstance(item, JobSpec)
    assert (
        item.body
        == b'{"name":"x","resource_config":{"jobmanager_resource_spec":{"cpu":1,"memory":"4G"}}}'
    )


def test_name_charset_is_not_restricted_beyond_length() -> None:
    # The console allows letters, digits, - and _ only; the create API states only the length.
    for name in ("Zürich job #1 (v2)", "etl.orders.v2", "订单-清洗", "a b"):
        item = job_from_object({"name": name}, "m.json")
        assert isinstance(item, JobSpec), item
        assert item.name == name


# --- what no string may hold: control characters, lone surrogates ---------------------------

# What a string field may hold: anything but lone surrogates and control characters, except
# tab and line breaks; a name holds printable characters only.
_chars = st.characters(exclude_categories=("Cs", "Cc"), include_characters="\t\n\r")
_name_chars = st.characters().filter(str.isprintable)

# Every code point of the class: C0 but tab, LF and CR; DEL; C1; the surrogates.
FORBIDDEN = [
    chr(c)
    for c in (*range(0x20), *range(0x7F, 0xA0), *range(0xD800, 0xE000))
    if c not in (9, 10, 13)
]
TEXT_RULE = "must not contain control characters other than tab and line breaks"
NAME_RULE = "must contain printable characters only"
# Where a string sits in a body: (the object with "@" where the string goes, the field shown).
TEXT_FIELDS = (
    "desc", "queue_name", "obs_bucket", "smn_topic", "main_class", "entrypoint_args",
    "entrypoint", "checkpoint_path", "runtime_config", "flink_version", "image",
    "flink_log_config", "execution_agency_urn",
)  # fmt: skip
STRING_FIELDS: list[tuple[dict[str, Any], str]] = [
    *(({name: "@"}, name) for name in TEXT_FIELDS),
    ({"dependency_jars": ["ok", "@"]}, "dependency_jars[1]"),
    ({"dependency_files": ["@"]}, "dependency_files[0]"),
    ({"tags": [{"key": "k", "value": "v"}, {"key": "@", "value": "v"}]}, "tags[1].key"),
    ({"tags": [{"key": "k", "value": "@"}]}, "tags[0].value"),
    ({"resource_config": {"taskmanager_resource_spec": {"memory": "@"}}},
     "resource_config.taskmanager_resource_spec.memory"),
]  # fmt: skip


def _put(template: object, text: str) -> Any:
    """``template`` with its "@" string replaced by ``text``."""
    if template == "@":
        return text
    if isinstance(template, dict):
        return {key: _put(value, text) for key, value in template.items()}
    if isinstance(template, list):
        return [_put(value, text) for value in template]
    return template


def test_every_string_field_is_checked() -> None:
    # Every other field of the model is a number, a boolean, a literal, a list or an object.
    others = {k for k, v in FlinkJarJob.model_fields.items() if "str" in str(v.annotation)}
    assert others == {"name", *TEXT_FIELDS, "dependency_jars", "dependency_files"}
    for template, where in STRING_FIELDS:
        obj = {"name": "job", **_put(template, "ab\x00")}
        assert obj_error(obj) == (
            f"m.json: {where}: {TEXT_RULE} (U+0000 at position 3: a control character)"
        )


def test_every_control_character_and_surrogate_is_refused_in_text_and_in_names() -> None:
    for char in FORBIDDEN:
        code = f"U+{ord(char):04X} at position 2"
        cases = (({"name": "j", "desc": f"a{char}b"}, "desc"), ({"name": f"a{char}"}, "name"))
        for obj, where in cases:
            message = obj_error(obj)
            assert message.startswith(f"m.json: {where}: must "), message
            assert code in message, message
            message.encode()  # a report, a log line and an AMQP header can carry it


def test_tab_and_line_breaks_are_allowed_in_text_but_not_in_names() -> None:
    assert isinstance(job_from_object({"name": "j", "desc": "a\tb\r\nc"}, "m.json"), JobSpec)
    for char, kind in (
        ("\t", "a control character"),
        ("\n", "a control character"),
        ("\u200b", "an invisible format character"),
        ("\u202e", "an invisible format character"),
        ("\u00a0", "a space other than the ASCII space"),
        ("\u2028", "a line separator"),
        ("\u2029", "a paragraph separator"),
        ("\ue000", "a private-use character"),
    ):
        assert obj_error({"name": f"ab{char}"}) == (
            f"m.json: name: {NAME_RULE} (U+{ord(char):04X} at position 3: {kind})"
        )


@settings(max_examples=200, deadline=None)
@given(
    st.text(_chars, max_size=40),
    st.sampled_from(FORBIDDEN),
    st.integers(min_value=0, max_value=40),
    st.sampled_from(STRING_FIELDS),
)
def test_the_first_bad_character_is_named_with_its_position(
    text: str, bad: str, at: int, field: tuple[dict[str, Any], str]
) -> None:
    at = min(at, len(text))
    template, where = field
    value = text[:at] + bad + text[at:]
    item = job_from_object({"name": "job", **_put(template, value)}, "m.json")
    assert isinstance(item, InvalidManifest)
    assert f"{where}: {TEXT_RULE}" in item.error
    assert f"(U+{ord(bad):04X} at position {at + 1}: " in item.error


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=57))
def test_a_name_is_valid_exactly_when_printable_and_not_blank(name: str) -> None:
    item = job_from_object({"name": name}, "m.json")
    assert isinstance(item, JobSpec) == (name.isprintable() and name.strip() != "")
    if isinstance(item, InvalidManifest):
        item.error.encode()


@pytest.mark.parametrize(
    ("data", "suffix", "message"),
    [
        (b'{"name": "a\\u0000b"}', ".json", f"name: {NAME_RULE} (U+0000 at position 2"),
        (b'{"name": "j", "desc": "\x7f"}', ".json", f"desc: {TEXT_RULE} (U+007F at position 1"),
        (b'{"name": "j", "desc": "\xc2\x85"}', ".json", f"desc: {TEXT_RULE} (U+0085 at position 1"),
        (b'{"name": "a\\ud800"}', ".json", "invalid JSON at line 1, column 12: no low surrogate"),
        (b'{"name": "a\\udc00"}', ".json", "invalid JSON at line 1, column 12: invalid high surr"),
        (b'{"name": "a\x00"}', ".json", "binary file, not a JSON or YAML manifest"),
        (b'{"name": "caf\xe9"}', ".json", "not UTF-8 text (byte 0xe9 at offset 13)"),
        (b'name: "a\\x00b"', ".yaml", f"name: {NAME_RULE} (U+0000 at position 2"),
        (b'tags: [{key: "\\e"}]', ".yaml", f"tags[0].key: {TEXT_RULE} (U+001B at position 1"),
        (b'name: "a\\ud800"', ".yaml", "invalid YAML at line 1, column 11: found invalid Unicode"),
        (b'name: "a\xed\xa0\x80"', ".yaml", "not UTF-8 text (byte 0xed at offset 8)"),
    ],
)  # fmt: skip
def test_what_parsers_decode_is_checked_too(data: bytes, suffix: str, message: str) -> None:
    source = f"m{suffix}"
    found = error(data, suffix, source)
    assert found.startswith(f"{source}: ")
    assert f" {message}" in found


def test_an_unknown_key_with_a_surrogate_is_named_safely() -> None:
    message = obj_error({"name": "j", "\ud800x": 1})
    assert message == (
        f'm.json: key "\\ud800x": {TEXT_RULE}'
        " (U+D800 at position 1: a lone surrogate, not valid Unicode text)"
    )
    assert obj_error({"name": "j", "cu_number": "\udc80"}) == (
        'm.json: cu_number: expected an integer, got "\\udc80"'
    )


def test_yaml_aliases_that_expand_beyond_the_size_limit_are_refused() -> None:
    # "Billion laughs": nine levels of nine aliases stand for 387 million strings.
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level, prev in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"{level}: &{level} [{', '.join([f'*{prev}'] * 9)}]")
    lines.append("name: bomb\ndependency_files: *i")
    assert error("\n".join(lines).encode(), ".yaml", "m.yaml") == (
        "m.yaml: invalid YAML: its aliases expand it to more than 1 MiB"
    )
    big = "x" * 200_000  # one long string repeated by 100,000 aliases
    data = f'd: &s "{big}"\nname: j\ndependency_jars: [{", ".join(["*s"] * 100_000)}]'
    assert error(data.encode(), ".yaml", "m.yaml").endswith("expand it to more than 1 MiB")
    merged = b"- &base {name: a, queue_name: q}\n- {<<: *base, name: b}\n"
    items = parse_manifest_bytes(merged, "m.yaml", suffix=".yaml")
    assert [item.name for item in items] == ["a", "b"]


def test_job_from_object_rejects_non_objects() -> None:
    item = job_from_object(["name"], "m.json#3")
    assert isinstance(item, InvalidManifest)
    assert item.error == "m.json#3: expected a job object, got a list"


# --- files: formats, lists, odd content -----------------------------------------------------


def test_list_file_gives_one_item_per_entry_with_index_sources() -> None:
    data = b"- name: a\n- 5\n- name: c\n  cu_number: two\n- name: d\n"
    items = parse_manifest_bytes(data, "jobs.yaml", suffix=".yaml")
    assert [item.source for item in items] == [
        "jobs.yaml#0",
        "jobs.yaml#1",
        "jobs.yaml#2",
        "jobs.yaml#3",
    ]
    assert [type(item) for item in items] == [JobSpec, InvalidManifest, InvalidManifest, JobSpec]
    assert isinstance(items[1], InvalidManifest)
    assert items[1].error == "jobs.yaml#1: expected a job object, got an integer (5)"
    assert isinstance(items[2], InvalidManifest)
    assert items[2].error == 'jobs.yaml#2: cu_number: expected an integer, got "two"'
    assert items[2].name == "c"


@pytest.mark.parametrize(
    ("data", "suffix", "message"),
    [
        (b"[]", ".json", "empty list: no jobs"),
        (b"null", ".json", "expected a job object or a list of job objects, got null"),
        (
            b'"text"',
            ".json",
            'expected a job object or a list of job objects, got a string ("text")',
        ),
        (
            b"# only a comment\n",
            ".yaml",
            "expected a job object or a list of job objects, got an empty document",
        ),
        (b"  \n\t\n", ".yml", "empty file"),
        (b"\xff\xfename: x", ".yaml", "not UTF-8 text (byte 0xff at offset 0)"),
        (b'{"name": "x"}', ".toml", "unsupported file type '.toml'"),
        (b"name: x\nname: y\n", ".yaml", "name: duplicate key (line 2, column 1)"),
        (b"name: x\n1: 2\n", ".yaml", "(top level): key 1 is not a string"),
        (
            b"name: x\n? [a]\n: b\n",
            ".yaml",
            "invalid YAML at line 2, column 3: found unhashable key",
        ),
        (
            b"name: !!python/object:os.system x\n",
            ".yaml",
            "invalid YAML at line 1, column 7: could not determine a constructor",
        ),
        (b"name: x\ndesc: !!binary aGk=\n", ".yaml", "desc: expected a string, got a YAML bytes"),
        (
            b"name: x\ndependency_jars: !!set {a}\n",
            ".yaml",
            "dependency_jars: expected a list, got",
        ),
        (b"name: x\n---\nname: y\n", ".yaml", "invalid YAML at line 2, column 1"),
        (b'{"tags": [{"key": "a", "key": "b", "value": ""}], "name": "x"}', ".json", "key: dup"),
    ],
)
def test_odd_files(data: bytes, suffix: str, message: str) -> None:
    assert error(data, suffix, "f").startswith(f"f: {message}")


def test_yaml_timestamps_and_nan_are_refused_not_crashed_on() -> None:
    data = b"name: x\ndesc: 2024-01-01 10:00:00\nresource_config:\n"
    data += b"  jobmanager_resource_spec: {cpu: .nan}\n"
    assert error(data, ".yaml", "f") == (
        "f: desc: expected a string, got a date (2024-01-01T10:00:00; "
        "quote it to make it a string); "
        "resource_config.jobmanager_resource_spec.cpu: must be a finite number (got nan)"
    )


def test_yaml_merge_keys_may_be_overridden() -> None:
    data = b"- &base {name: a, cu_number: 2}\n- <<: *base\n  name: b\n"
    items = parse_manifest_bytes(data, "f.yaml", suffix=".yaml")
    assert [i.name for i in items if isinstance(i, JobSpec)] == ["a", "b"]
    assert orjson.loads(items[1].body if isinstance(items[1], JobSpec) else b"") == {
        "name": "b",
        "cu_number": 2,
    }


def test_json_with_embedded_json_strings_is_not_mistaken_for_duplicates() -> None:
    body = (
        b'{"name": "x", "flink_log_config": "{\\"a\\":1, \\"b\\" : 2}", "runtime_config": "\\":"}'
    )
    assert job(body).body == orjson.dumps(orjson.loads(body))
    dup = b'{"name": "x", "flink_log_config": "{\\"a\\":1}", "name" : "y"}'
    assert error(dup) == "m.json: name: duplicate key in the same object"


@pytest.mark.parametrize(
    "data",
    [
        b'{"name": "x", "name": "y"}',
        b'{"name": "x", "name"\n: "y"}',
        b'{"name": "x", "tags": [{"key": "a", "key": "b", "value": "v"}]}',
        b'{"name": "x", "resource_config": {"max_slot": 1, "max_slot": 2}}',
        b'{"name": "x", "desc": "\\":", "name": "y"}',
    ],
)
def test_every_duplicate_key_is_found(data: bytes) -> None:
    assert "duplicate key in the same object" in error(data)


def test_utf8_bom_is_accepted() -> None:
    assert job(b'\xef\xbb\xbf{"name": "bom"}').name == "bom"


@pytest.mark.parametrize("size", [MAX_MANIFEST_BYTES + 1, 8 * MAX_MANIFEST_BYTES])
def test_file_over_one_mib_is_refused_with_its_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"name": "big", "desc": "' + b" " * (size - 27) + b'"}')
    assert path.stat().st_size == size
    item = one(parse_manifest_file(path, "big.json"))
    assert isinstance(item, InvalidManifest)
    assert item.error == f"big.json: file is larger than 1 MiB ({size} bytes)"


def test_a_fifo_with_a_manifest_name_is_refused_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    item = one(parse_manifest_file(tmp_path / "pipe.json", "pipe.json"))
    assert isinstance(item, InvalidManifest)
    assert item.error == "pipe.json: not a regular file (a FIFO)"


def test_an_empty_file_is_still_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_bytes(b"")
    item = one(parse_manifest_file(tmp_path / "empty.json", "empty.json"))
    assert isinstance(item, InvalidManifest) and item.error == "empty.json: empty file"


def test_400000_bad_list_items_make_one_short_line_in_about_a_second() -> None:
    data = orjson.dumps({"name": "bad", "dependency_jars": [1] * 400_000})
    started = time.monotonic()
    message = error(data)
    elapsed = time.monotonic() - started
    first = "dependency_jars[0]: expected a string, got 1"
    assert message.startswith(f"m.json: {first}; dependency_jars[1]: ")
    assert message.endswith(
        "; dependency_jars[4]: expected a string, got 1; and 399995 more problems"
    )
    assert message.count("; ") == MAX_PROBLEMS
    assert elapsed < 10  # about 1 s; 20 MB of text before


def test_huge_keys_and_names_are_clipped_in_messages() -> None:
    long_key = "k" * 100_000
    message = obj_error({"name": "x", long_key: 1, f"{long_key}!": 2})
    assert len(message) < 300 and "unknown field" in message
    item = job_from_object({"name": "n" * 500_000}, "m.json")
    assert isinstance(item, InvalidManifest)
    assert item.error == "m.json: name: must be 1 to 57 characters (got 500000)"
    assert item.name is None  # a name no job can have is not repeated in every output


def test_a_list_file_bigger_than_the_first_read_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    jobs = [{"name": f"job-{i:04d}", "desc": "x" * 200} for i in range(400)]
    path.write_bytes(orjson.dumps(jobs))
    assert 64 * 1024 < path.stat().st_size < MAX_MANIFEST_BYTES
    items = parse_manifest_file(path, "many.json")
    assert [i.name for i in items if isinstance(i, JobSpec)] == [j["name"] for j in jobs]


def test_unreadable_file_names_the_os_error(tmp_path: Path) -> None:
    item = one(parse_manifest_file(tmp_path / "gone.json", "gone.json"))
    assert isinstance(item, InvalidManifest)
    assert item.error == "gone.json: cannot read: No such file or directory"
    (tmp_path / "dir.json").mkdir()
    item = one(parse_manifest_file(tmp_path / "dir.json", "dir.json"))
    assert isinstance(item, InvalidManifest)
    assert item.error == "dir.json: cannot read: Is a directory"


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "JOB.YML"
    path.write_text("name: upper\n")
    assert isinstance(one(parse_manifest_file(path, "JOB.YML")), JobSpec)


# --- body and hash --------------------------------------------------------------------------


def test_json_and_yaml_of_the_same_job_hash_equal_but_keep_their_own_order() -> None:
    from_json = job(
        b'{\n  "name": "same",\n  "cu_number": 2,\n  "tags": [{"key": "k", "value": "v"}]\n}'
    )
    from_yaml = job(b"tags:\n- value: v\n  key: k\ncu_number: 2\nname: same\n", ".yaml", "m.yaml")
    assert from_json.body_hash == from_yaml.body_hash
    assert from_json.body == b'{"name":"same","cu_number":2,"tags":[{"key":"k","value":"v"}]}'
    assert from_yaml.body == b'{"tags":[{"value":"v","key":"k"}],"cu_number":2,"name":"same"}'
    changed = job(b'{"name": "same", "cu_number": 3, "tags": [{"key": "k", "value": "v"}]}')
    assert changed.body_hash != from_json.body_hash


def test_diff_fields() -> None:
    old = b'{"name": "a", "cu_number": 2, "desc": "d", "tags": [{"key": "k", "value": "v"}]}'
    new = (
        b'{"name": "a", "cu_number": 2.0, "queue_name": "q", "tags": [{"value": "w", "key": "k"}]}'
    )
    assert diff_fields(old, new) == ["cu_number", "desc", "queue_name", "tags"]
    reordered = b'{"tags": [{"value": "v", "key": "k"}], "desc": "d", "cu_number": 2, "name": "a"}'
    assert diff_fields(old, reordered) == []
    with pytest.raises(ManifestError):
        diff_fields(old, b"[1]")


# --- property: any valid job is sent exactly as written -------------------------------------

_text = st.text(_chars, max_size=30)
_count = st.integers(min_value=1, max_value=2**31 - 1)
_resource_spec = st.fixed_dictionaries(
    {},
    optional={
        "cpu": st.one_of(_count, st.floats(min_value=0.1, max_value=64)),
        "memory": st.text(_chars, min_size=1, max_size=8),
    },
)
_OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "desc": st.text(_chars, max_size=512),
    "queue_name": st.text(_chars, max_size=128),
    "cu_number": _count,
    "manager_cu_number": _count,
    "parallel_number": _count,
    "log_enabled": st.booleans(),
    "obs_bucket": _text,
    "smn_topic": _text,
    "main_class": _text,
    "entrypoint_args": _text,
    "restart_when_exception": st.booleans(),
    "entrypoint": _text,
    "dependency_jars": st.lists(_text, max_size=3),
    "dependency_files": st.lists(_text, max_size=3),
    "tm_cus": _count,
    "tm_slot_num": _count,
    "resume_checkpoint": st.booleans(),
    "resume_max_num": st.one_of(st.just(-1), _count),
    "checkpoint_path": _text,
    "tags": st.lists(
        st.fixed_dictionaries(
            {
                "key": st.text(_chars, min_size=1, max_size=128),
                "value": st.text(_chars, max_size=43),
            }
        ),
        max_size=3,
    ),
    "runtime_config": _text,
    "checkpoint_enabled": st.booleans(),
    "checkpoint_mode": st.sampled_from([1, 2]),
    "checkpoint_interval": st.integers(min_value=1, max_value=3600),
    "feature": st.sampled_from(["basic", "custom"]),
    "flink_version": _text,
    "image": _text,
    "flink_log_config": _text,
    "execution_agency_urn": _text,
    "resource_config_version": st.sampled_from(["v1", "v2"]),
    "resource_config": st.fixed_dictionaries(
        {},
        optional={
            "max_slot": _count,
            "parallel_number": _count,
            "jobmanager_resource_spec": _resource_spec,
            "taskmanager_resource_spec": _resource_spec,
        },
    ),
}


@st.composite
def valid_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job with its fields in a random order."""
    name = draw(st.text(_name_chars, min_size=1, max_size=57).filter(lambda s: s.strip() != ""))
    fields = draw(st.fixed_dictionaries({"name": st.just(name)}, optional=_OPTIONAL_FIELDS))
    order = draw(st.permutations(list(fields)))
    return {key: fields[key] for key in order}


def test_the_model_knows_every_field_the_property_uses() -> None:
    assert set(FlinkJarJob.model_fields) == {"name", *_OPTIONAL_FIELDS}


@settings(max_examples=150, deadline=None)
@given(valid_jobs())
def test_any_valid_job_round_trips_as_written(obj: dict[str, Any]) -> None:
    item = job_from_object(obj, "p.json")
    assert isinstance(item, JobSpec), item
    assert item.name == obj["name"]
    assert item.body == orjson.dumps(obj)
    canonical = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    assert item.body_hash == hashlib.sha256(canonical).hexdigest()
    parsed = job(item.body, ".json", "p.json")  # the body itself parses back to the same job
    assert (parsed.body, parsed.body_hash) == (item.body, item.body_hash)


def test_a_list_of_55000_small_jobs_holds_little_more_than_its_jobs() -> None:
    data = orjson.dumps([{"name": f"j{i:05d}"} for i in range(55_000)])
    assert len(data) < MAX_MANIFEST_BYTES
    tracemalloc.start()
    try:
        items = parse_manifest_bytes(data, "list.json", suffix=".json")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(items) == 55_000 and all(isinstance(item, JobSpec) for item in items)
    # About 450 bytes a job (name, body, hash, source); each body kept orjson's 4 KiB buffer.
    assert held / len(items) < 1024



def test_an_unknown_field_close_to_a_known_one_says_which(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(
        '{"name": "a", "parallel_numbr": 2, "tags": [{"key": "k", "value": "v", "valeu": 1}],'
        ' "zzz": 1}'
    )
    item = one(parse_manifest_file(path, "a.json"))
    assert isinstance(item, InvalidManifest)
    unknown = "unknown field (not in the DLI create API)"
    assert f"parallel_numbr: {unknown} (did you mean parallel_number?)" in item.error
    assert f"tags[0].valeu: {unknown} (did you mean value?)" in item.error
    assert f"zzz: {unknown}" in item.error and f"zzz: {unknown} (" not in item.error
