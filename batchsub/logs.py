"""structlog set-up: JSON lines when not on a terminal (or in a daemon), pretty on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _StreamLogger:
    """Writes each rendered event as a line to whatever ``sys.stderr`` is *now*.

    Looked up per call so that a progress display that redirects stderr keeps the
    log lines above its bar.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _StdlibBridge(logging.Handler):
    """Library warnings (aio-pika reconnects, asyncio) as structlog events, in the same format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger(record.name).log(
                record.levelno, record.getMessage(), logger=record.name
            )
        except Exception:  # a log line must never break the run
            self.handleError(record)


def configure_logging(
    fmt: str, level: str, *, interactive: bool, stream: TextIO | None = None
) -> None:
    """Configure structlog once per process; ``fmt`` is auto, json or console."""
    use_json = fmt == "json" or (fmt == "auto" and not interactive)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=interactive)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: _StreamLogger(stream),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_StdlibBridge()]
    root.setLevel(max(logging.WARNING, _LEVELS[level]))
