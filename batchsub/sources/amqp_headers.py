"""Let pamqp read every message's headers, whatever encoding their text is in.

pamqp (aio-pika's frame decoder) reads header-table keys and short-string properties
(``message_id``, ``content_type``...) as strict UTF-8. A message whose header key is in
another encoding, which any AMQP client can publish, makes it raise mid-frame: aiormq drops
the connection, the broker redelivers the message, and it drops the next one too, forever,
starving every message behind it. Long strings already fall back to bytes there; these two
decoders are replaced here by ones that read invalid UTF-8 with replacement characters, so
the message arrives and can be dead-lettered. ``install()`` is idempotent.
"""

from __future__ import annotations

import struct

from pamqp import common, decode

_TEXT_ERRORS = "replace"


def short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``short_str``, reading bytes that are not UTF-8 as U+FFFD."""
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
        return length + 1, value[1 : length + 1].decode("utf-8", _TEXT_ERRORS)
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's ``field_table``, reading keys that are not UTF-8 as U+FFFD."""
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: common.FieldTable = {}
        end = offset + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", _TEXT_ERRORS)
            offset += key_length
            consumed, result = decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def install() -> None:
    """Route pamqp's table and short-string decoding through the lenient versions."""
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["table"] = field_table
    decode.TABLE_MAPPING[b"F"] = field_table
