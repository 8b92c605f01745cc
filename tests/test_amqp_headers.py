"""The lenient header decoders read what pamqp reads, and also text that is not UTF-8."""

from __future__ import annotations

from typing import Any

import pamqp.decode
import pamqp.encode
from hypothesis import given, settings
from hypothesis import strategies as st

from batchsub.sources import amqp_headers

_text = st.text(st.characters(codec="utf-8"), max_size=20)
_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.booleans(), st.integers(-(2**31), 2**31 - 1), _text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=10,
)


def _encodable(table: dict[str, Any]) -> bool:
    try:
        pamqp.encode.field_table(table)
    except (TypeError, ValueError):  # a key over 255 bytes
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_text, _values, max_size=5).filter(_encodable))
def test_a_table_pamqp_reads_is_read_the_same(table: dict[str, Any]) -> None:
    raw = pamqp.encode.field_table(table)
    assert amqp_headers.field_table(raw) == pamqp.decode.field_table(raw) == (len(raw), table)


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=60))
def test_a_short_string_pamqp_reads_is_read_the_same(text: str) -> None:
    raw = pamqp.encode.short_string(text) if len(text.encode()) < 256 else b"\x00"
    assert amqp_headers.short_str(raw) == pamqp.decode.short_str(raw)


def test_keys_and_short_strings_that_are_not_utf8_are_read_with_replacements() -> None:
    raw = b"\x00\x00\x00\x08" + b"\x02k\xff" + b"S\x00\x00\x00\x00"
    assert amqp_headers.field_table(raw) == (12, {"k\ufffd": ""})
    assert amqp_headers.short_str(b"\x03a\xffb") == (4, "a\ufffdb")
    amqp_headers.install()  # as importing batchsub.sources.amqp does
    assert pamqp.decode.by_type(b"\x03a\xffb", "shortstr") == (4, "a\ufffdb")
    assert pamqp.decode.by_type(raw, "table") == (12, {"k\ufffd": ""})
