"""Log rendering: no value, however odd, makes a renderer raise or write invalid text."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from batchsub.logs import configure_logging, renderers
from batchsub.text import printable, safe_value


class _Raises:
    """An object whose str() and repr() both raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class _StrIsNotAString:
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]

    __repr__ = __str__


class _SurrogateStr:
    def __str__(self) -> str:
        return "caf\udce9"

    __repr__ = __str__


def _self_containing() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": [value]}
    return value


def _odd_values() -> list[Any]:
    return [
        _Raises(),
        _StrIsNotAString(),
        _SurrogateStr(),
        10**5000,  # str() refuses it (Python's 4,300-digit limit); orjson refuses > 64 bits
        -(2**70),
        float("nan"),
        float("inf"),
        b"\xff\xfe raw bytes",
        bytearray(b"\x00\x80"),
        _self_containing(),
        _nested(300),  # deeper than orjson's 254 levels
        {1: "int key", (2, 3): "tuple key", None: "none key"},
        {"\udcff": "surrogate key"},
        object(),
        type,
        ValueError("an exception"),
    ]


class _Odd:
    """A stand-in hypothesis can show; ``real()`` puts the odd value in its place."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"_Odd({self.index})"


def real(value: Any) -> Any:
    """``value`` with every _Odd replaced by its odd value (hypothesis reprs what it draws)."""
    if isinstance(value, _Odd):
        return _odd_values()[value.index]
    if isinstance(value, list):
        return [real(item) for item in value]
    if isinstance(value, tuple):
        return tuple(real(item) for item in value)
    if isinstance(value, dict):
        return {key: real(item) for key, item in value.items()}
    return value


_ODD = st.builds(_Odd, st.integers(0, len(_odd_values()) - 1))
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()))  # surrogates too
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT | st.binary()
_VALUES = st.recursive(
    _SCALARS | _ODD,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | st.text(), max_size=3)
        | st.dictionaries(_ANY_TEXT | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("fmt", ["json", "console"])
@settings(max_examples=150, deadline=None)
@given(event=_ANY_TEXT | _ODD, values=st.dictionaries(_ANY_TEXT, _VALUES, max_size=4))
def test_no_value_makes_a_renderer_raise(fmt: str, event: Any, values: dict[str, Any]) -> None:
    render = renderers(fmt == "json", colors=False)
    line = render(None, "info", {"event": real(event), **real(values)})
    assert isinstance(line, str)
    line.encode("utf-8")  # valid text: no lone surrogate reaches the stream
    if fmt == "json":
        parsed = orjson.loads(line)
        assert parsed["level"] == "info" and "timestamp" in parsed


def test_a_file_name_that_is_not_utf8_is_logged_escaped() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", interactive=False, stream=stream)
    structlog.get_logger("t").info("file.claimed", file="caf\udce9.json", huge=10**5000)
    line = orjson.loads(stream.getvalue())
    assert line["file"] == "caf\\xe9.json"
    assert line["huge"].startswith("an integer of ")
    assert line["event"] == "file.claimed"


def test_printable_escapes_only_what_is_not_text() -> None:
    assert printable("plain/ascii.json") == "plain/ascii.json"
    assert printable("déjà/vu.json") == "déjà/vu.json"
    assert printable("caf\udce9.json") == "caf\\xe9.json"  # a file name's byte 0xE9
    assert printable("lone \ud800 surrogate") == "lone \\ud800 surrogate"
    assert safe_value({"a": [b"\xff", 2**80]}) == {"a": ["b'\\xff'", str(2**80)]}


@pytest.mark.parametrize("json_lines", [False, True])
def test_say_writes_one_line_in_the_log_format_whatever_the_message(
    json_lines: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchsub.logs import say, set_json_lines

    set_json_lines(json_lines)
    try:
        say("error", "caf\udce9.json: bad\n value", source="caf\udce9.json", odd=_Raises())
    finally:
        set_json_lines(False)
    err = capsys.readouterr().err
    err.encode("utf-8")  # valid UTF-8
    lines = err.splitlines()
    assert len(lines) == 1
    if json_lines:
        event = orjson.loads(lines[0])
        assert event["event"] == "command.error" and event["level"] == "error"
        assert event["message"].startswith("caf\\xe9.json: bad")
    else:
        assert lines[0].startswith("batchsub: error: caf\\xe9.json: bad")


def test_json_log_format_turns_say_into_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from batchsub.logs import say, set_json_lines

    configure_logging("json", "info", interactive=False)
    try:
        say("warning", "no manifests")
    finally:
        set_json_lines(False)
    assert orjson.loads(capsys.readouterr().err)["event"] == "command.warning"
