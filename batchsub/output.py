"""How every command prints: a table for a person, plain lines for a pipe, JSON for a program.

The rule (README, "Output"): on a terminal, borderless tables; piped, or with ``-o plain``,
one line per item, tab-separated, never wrapped, whole paths, and ``path: message`` for a
problem (as compilers and ruff print them), with the notes for a person on stderr; ``-o json``
(``--json``) for data. A command hands its rows to a ``Rows`` writer and never formats a line
itself, so a column added to a command is printed the same way by every format.

``guard_stdout`` makes a reader that stops early (``| head``) harmless: the rest of the
output goes to ``/dev/null`` and the command ends as it would have, with its own exit code.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from batchsub.logs import tell
from batchsub.text import printable, safe_value

if TYPE_CHECKING:
    import argparse

    from rich.console import Console

TABLE_LIMIT = 500  # rows a table for a person shows at most; plain and json show every row
MAX_LINE = 400  # characters of a plain problem line at most: its message is cut to fit


class Format(StrEnum):
    """An output format: ``-o table|plain|json``."""

    TABLE = "table"
    PLAIN = "plain"
    JSON = "json"


def add_output_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``-o/--output-format table|plain|json`` and its alias ``--json``; ``what`` is printed."""
    parser.add_argument(
        "-o",
        "--output-format",
        dest="output_format",
        choices=[f.value for f in Format],
        help=f"how to print {what}: table (a terminal's default), plain (one line per item, "
        "the default when piped) or json",
    )
    parser.add_argument(
        "--json",
        dest="output_format",
        action="store_const",
        const=Format.JSON.value,
        help="same as -o json",
    )


def chosen_format(args: argparse.Namespace, stream: TextIO | None = None) -> Format:
    """The format asked for, else a table on a terminal and plain lines anywhere else."""
    asked = getattr(args, "output_format", None)
    if asked:
        return Format(asked)
    return Format.TABLE if is_terminal(stream or sys.stdout) else Format.PLAIN


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal (a closed or odd stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def new_console(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream`` (stdout) that highlights nothing: names shown as they are."""
    from rich.console import Console

    return Console(highlight=False, file=stream)


def plain_cell(value: object) -> str:
    """One cell of a plain line: ``-`` when empty, on one line, no tab inside."""
    if value is None or value == "":
        return "-"
    return printable(str(value))


def problem_line(where: str, message: str) -> str:
    """``path: message`` on one line, the message cut in its middle (its end often says how
    many more problems there are) so that the line stays within ``MAX_LINE``."""
    where = printable(where)
    room = max(80, MAX_LINE - len(where) - 2)
    message = printable(message)
    if len(message) > room:
        tail = room // 4
        message = f"{message[: room - tail - 5]} ... {message[-tail:]}"
    return f"{where}: {message}"


class Rows:
    """Rows of one table, written as the format says: a table at ``close()``, or a line each.

    ``columns`` are the header; ``right`` the columns aligned right; ``plain`` formats one
    row's plain line (default: the cells tab-separated); cells past the columns are seen by
    ``plain`` only. JSON is the command's own document: rows are not printed then. Use it as
    a context manager.
    """

    def __init__(
        self,
        fmt: Format,
        columns: Sequence[str],
        *,
        title: str | None = None,
        right: Sequence[str] = (),
        plain: Callable[[Sequence[Any]], str] | None = None,
        limit: int = TABLE_LIMIT,
        console: Console | None = None,
    ) -> None:
        self._fmt = fmt
        self._columns = tuple(columns)
        self._title = title
        self._right = frozenset(right)
        self._plain = plain
        self._limit = limit
        self._console = console
        self._rows: list[tuple[tuple[Any, ...], str | None]] = []
        self.count = 0

    def add(self, cells: Sequence[Any], style: str | None = None) -> None:
        """One row; ``style``: a rich style for the row on a terminal (ignored elsewhere)."""
        self.count += 1
        if self._fmt is Format.PLAIN:
            if self._plain is not None:
                line = self._plain(cells)
            else:
                line = "\t".join(plain_cell(cell) for cell in cells[: len(self._columns)])
            sys.stdout.write(line + "\n")
        elif self._fmt is Format.TABLE and len(self._rows) < self._limit:
            self._rows.append((tuple(cells), style))

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def close(self) -> None:
        """Draw the table (on a terminal), with how many rows it left out."""
        if self._fmt is not Format.TABLE or not self._rows:
            return
        from rich.table import Table
        from rich.text import Text

        console = self._console or new_console()
        table = Table(
            title=self._title,
            title_justify="left",
            title_style="bold",
            header_style="bold",
            box=None,
        )
        for column in self._columns:
            if column in self._right:
                table.add_column(column, justify="right", overflow="fold")
            else:
                table.add_column(column, overflow="fold")
        for cells, style in self._rows:
            shown = cells[: len(self._columns)]
            texts = [Text("-" if c is None or c == "" else printable(str(c))) for c in shown]
            table.add_row(*texts, style=style)
        console.print(table)
        if self.count > len(self._rows):
            left = self.count - len(self._rows)
            console.print(f"... and {left} more (-o plain or -o json shows all)", markup=False)
        self._rows = []


def note(fmt: Format, text: str) -> None:
    """A line for a person (a total, advice): stdout beside a table, stderr beside data (a
    JSON event there under JSON logs)."""
    if fmt is not Format.TABLE:
        tell(text)
        return
    sys.stdout.write(printable(text) + "\n")
    sys.stdout.flush()


def print_json(data: Any, *, indent: bool = False) -> None:
    """``data`` as one JSON document on stdout (text that is not valid UTF-8 escaped)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    try:
        text = orjson.dumps(data, option=option)
    except (TypeError, orjson.JSONEncodeError):
        text = orjson.dumps(safe_value(data), option=option)
    sys.stdout.write(text.decode() + "\n")


class _QuietPipe(io.RawIOBase):
    """A file descriptor whose reader may go away: from then on, writes go to /dev/null.

    Python ignores SIGPIPE, so a closed pipe is a BrokenPipeError on some later write or at
    the flush at exit (a traceback, and exit code 120). The Python docs' advice for it is to
    point the descriptor at devnull; done here on the first EPIPE, the command runs to its end.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.broken = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if self.broken:
            return size
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            self.broken = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fd)
            os.close(devnull)
            return size

    def close(self) -> None:  # the descriptor is the process's, never closed here
        self.flush()
        super().close()


def _guarded(stream: TextIO) -> TextIO:
    raw = _QuietPipe(stream.fileno())
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=bool(stream.line_buffering),
        write_through=False,
    )


def guard_stdout() -> None:
    """Make a closed stdout or stderr (``| head``) quiet: no traceback, the same exit code.

    Only for the real standard streams (a test that captures them keeps its own).
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        original = getattr(sys, f"__{name}__")
        if stream is None or stream is not original:
            continue
        try:
            stream.flush()
            guarded = _guarded(stream)
        except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
            continue
        setattr(sys, name, guarded)
