"""structlog set-up: JSON lines when not on a terminal (or in a daemon), pretty on a terminal.

``say`` writes the lines a command ends with (its fatal error, a warning): as JSON lines too
when the logs are JSON by choice (``--log-format json``, ``watch``), so that every line of
stderr then parses; else as ``batchsub: error: ...``; ``tell`` the lines for a person beside
them (totals, advice). No renderer here ever raises.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import structlog

from batchsub.masking import scrub
from batchsub.text import printable, safe_value, utf8

if TYPE_CHECKING:
    from batchsub.settings import Settings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_CONTEXT_PREFIX = "structlog_"  # how structlog.contextvars names its variables
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


class _JsonLine:
    """The JSON renderer: bound context, level, ISO UTC timestamp and orjson in one step.

    Same line as structlog's merge_contextvars, add_log_level, TimeStamper(iso, utc) and
    JSONRenderer in a row, at a fraction of their cost (bench/results.md section 10): a run
    logs a line per job, on the
    event loop thread that also sends the requests. The date part is formatted once a second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        for var, value in contextvars.copy_context().items():
            name = var.name
            if name.startswith(_CONTEXT_PREFIX) and value is not Ellipsis:
                event_dict.setdefault(name[len(_CONTEXT_PREFIX) :], value)
        event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
        event_dict["timestamp"] = self._stamp(time.time())
        try:
            return orjson.dumps(event_dict, default=str).decode()
        except Exception:  # a surrogate, a huge int, a key orjson refuses, a str() that raises
            return orjson.dumps(safe_value(event_dict)).decode()

    def _stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"


class _SafeConsole:
    """structlog's console processors, which never raise on a value nor return invalid text."""

    def __init__(self, colors: bool) -> None:
        self._processors: list[structlog.typing.Processor] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=colors),
        ]

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        try:
            line = self._render(logger, method_name, dict(event_dict))
        except Exception:  # a repr() that raises, a huge int: render the values made safe
            try:
                line = self._render(logger, method_name, safe_value(dict(event_dict)))
            except Exception:  # a renderer that fails on plain values: the JSON line then
                line = _JsonLine()(logger, method_name, event_dict)
        return utf8(line)

    def _render(self, logger: Any, method_name: str, event_dict: Any) -> str:
        for processor in self._processors:
            event_dict = processor(logger, method_name, event_dict)
        return str(event_dict)


def renderers(use_json: bool, *, colors: bool) -> structlog.typing.Processor:
    """The one processor that turns an event into its line: JSON, or for a person."""
    return _JsonLine() if use_json else _SafeConsole(colors)


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
    """Library warnings (aio-pika reconnects, asyncio) as structlog events, in the same format.

    A library may echo a URL it was given: the settings' secrets are scrubbed from its text.
    """

    def __init__(self, hidden: Sequence[str] = ()) -> None:
        super().__init__()
        self._hidden = hidden

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = scrub(record.getMessage(), self._hidden)
            structlog.get_logger(record.name).log(record.levelno, message, logger=record.name)
        except Exception:  # a log line must never break the run
            self.handleError(record)


def configure_logging(
    fmt: str,
    level: str,
    *,
    interactive: bool,
    stream: TextIO | None = None,
    hidden: Sequence[str] = (),
) -> None:
    """Configure structlog once per process; ``fmt`` is auto, json or console.

    ``hidden``: secrets to scrub from what libraries log (``Settings.secret_values``).
    """
    use_json = fmt == "json" or (fmt == "auto" and not interactive)
    set_json_lines(fmt == "json")  # the command's last words in its logs' format
    structlog.configure(
        processors=[renderers(use_json, colors=interactive)],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: _StreamLogger(stream),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_StdlibBridge(hidden)]
    root.setLevel(max(logging.WARNING, _LEVELS[level]))


def configure_command_logging(settings: Settings, *, quiet: bool = False) -> bool:
    """Logs as the commands that send set them up; returns whether stderr is a terminal.

    Info events as JSON lines when stderr is not a terminal; warnings only on a terminal
    (the progress bar says the rest), or for a ``quiet`` command; ``--log-level`` wins.
    """
    interactive = sys.stderr.isatty()
    level = settings.log_level or ("warning" if interactive or quiet else "info")
    configure_logging(
        settings.log_format, level, interactive=interactive, hidden=settings.secret_values()
    )
    return interactive


_JSON_LINES = {"on": False}  # set once the command knows its log format


def set_json_lines(on: bool) -> None:
    """Whether ``say`` writes JSON lines (logs in JSON by choice) or ``batchsub: ...`` lines."""
    _JSON_LINES["on"] = on


def say(level: str, message: str, **fields: Any) -> None:
    """One line on stderr that a command ends with or warns by: ``batchsub: error: ...``, or
    under JSON logs the event ``command.error`` (``command.warning``) with its ``message``."""
    if _JSON_LINES["on"]:
        event = {"event": f"command.{level}", "message": message, **fields}
        line = _JsonLine()(None, level, event)
    else:
        line = f"batchsub: {level}: {printable(message)}"
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


def tell(message: str) -> None:
    """A line for a person on stderr (a total, advice): the text alone, or under JSON logs
    the event ``command.note``, so that stderr stays JSON lines only."""
    if _JSON_LINES["on"]:
        line = _JsonLine()(None, "info", {"event": "command.note", "message": message})
    else:
        line = printable(message)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
