"""What a person sees: a progress bar on a terminal and the summary table at the end.

rich costs about 100 ms of start-up, paid by every run; it is imported only when a progress bar
is drawn or when the summary cannot be written as plain text exactly as rich would write it.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from batchsub.jobs import Outcome
from batchsub.limiter import RateLimiter
from batchsub.report import RunAccount

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class ProgressDisplay:
    """A live bar with outcome counts, the rate in use and the 429s seen (terminal only)."""

    def __init__(
        self, account: RunAccount, limiter: RateLimiter, *, enabled: bool, total: int | None
    ) -> None:
        self._account = account
        self._limiter = limiter
        self._progress: Progress | None = None
        self._task: Any = None
        if enabled:
            # imported here: rich costs about 100 ms at start-up, and most runs draw no bar.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]batchsub"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                redirect_stderr=True,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task("run", total=total, counts="")

    def refresh(self) -> None:
        """Copy the current counts into the bar (called a few times a second)."""
        if self._progress is None:
            return
        counts = self._account.counts
        rate = self._limiter.rate
        text = (
            f"created {counts[Outcome.CREATED]} · existing {counts[Outcome.ALREADY_CREATED]}"
            f" · invalid {counts[Outcome.INVALID]} · failed {counts[Outcome.FAILED]}"
            f" · rate {'∞' if rate == 0 else f'{rate:.1f}/s'} · 429s {self._limiter.throttled}"
        )
        task = self._progress.tasks[0]
        done = self._account.total
        total = task.total if task.total is None or done <= task.total else None
        self._progress.update(self._task, completed=done, total=total, counts=text)

    def __enter__(self) -> ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self.refresh()
            self._progress.stop()


def print_summary(
    summary: dict[str, Any], console: Console | None = None, *, stream: TextIO | None = None
) -> None:
    """The end-of-run table: one row per outcome, then the first errors (on ``stream``,
    stdout by default)."""
    if console is None:
        out = stream or sys.stdout
        width = _plain_width(out)
        text = None if width is None else plain_summary(summary, width)
        if text is not None:
            out.write(text)
            out.flush()
            return
        # imported here: rich costs about 100 ms at start-up; see plain_summary.
        from rich.console import Console

        console = Console(highlight=False, file=out)
    from rich.table import Table

    table = Table(title="batchsub run", show_header=True, header_style="bold")
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    for outcome, jobs in _rows(summary):
        table.add_row(outcome, jobs)
    table.add_row("total", str(summary.get("total", 0)), style="bold")
    console.print(table)
    console.print(_details(summary), markup=False)
    errors = summary.get("first_errors") or []
    if errors:
        console.print("first problems:", style="bold")
        for line in _error_lines(errors):
            console.print(line, markup=False)
    if summary.get("fatal"):
        console.print(_fatal_line(summary), style="bold red", markup=False)


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    # "duplicated" only when it happened: a row that appears is one a reader notices.
    return [
        (outcome.value, str(summary.get(outcome.value, 0)))
        for outcome in Outcome
        if outcome is not Outcome.DUPLICATED or summary.get(outcome.value)
    ]


def _details(summary: dict[str, Any]) -> str:
    return (
        f"creates sent {summary.get('creates_sent', 0)} · list calls {summary.get('list_calls', 0)}"
        f" · 429s {summary.get('throttled', 0)} · adopted {summary.get('adopted', 0)}"
        f" · {summary.get('duration_s', 0)} s"
    )


def _error_lines(errors: list[dict[str, Any]]) -> list[str]:
    lines = []
    for err in errors:
        error = str(err["error"])
        where = "" if error.startswith(f"{err['source']}:") else f"{err['source']}: "
        lines.append(f"  {err['outcome']}: {where}{error}")
    return lines


def _fatal_line(summary: dict[str, Any]) -> str:
    return f"run stopped: {summary['fatal']}"


# Text that rich writes unchanged when it fits the width: printable ASCII and "·", no
# ":name:" that rich could take for an emoji code, no trailing space.
_PLAIN_TEXT = re.compile(r"(?!.*:\S*:)[ -~·]*[!-~·]")
_PLAIN_CELL = re.compile(r"[0-9]+")


def _plain_width(stream: TextIO) -> int | None:
    """The width rich would use for ``stream`` if it is no terminal, else None.

    None also where rich would decide otherwise than by ``isatty()`` (its environment
    variables, Jupyter, IDLE, Windows) or would draw the table in ASCII.
    """
    environ = os.environ
    if (
        sys.platform == "win32"
        or "FORCE_COLOR" in environ
        or "TTY_COMPATIBLE" in environ
        or hasattr(builtins, "get_ipython")
        or "idlelib" in sys.modules
        or hasattr(stream, "rich_proxied_file")
        or not (getattr(stream, "encoding", None) or "utf-8").lower().startswith("utf")
    ):
        return None
    try:
        if stream.isatty():
            return None
    except ValueError:
        return None
    columns = environ.get("COLUMNS")
    if columns is not None and columns.isdigit():
        return int(columns)
    width: int | None = None
    for fd in _std_fds():
        try:
            width = os.get_terminal_size(fd).columns
        except (AttributeError, ValueError, OSError):
            continue
        break
    return width or 80


def _std_fds() -> tuple[int, int, int]:
    fds = []
    for stream, default in ((sys.__stdin__, 0), (sys.__stdout__, 1), (sys.__stderr__, 2)):
        try:
            fds.append(stream.fileno() if stream is not None else default)
        except Exception:
            fds.append(default)
    return fds[0], fds[1], fds[2]


def plain_summary(summary: dict[str, Any], width: int) -> str | None:
    """The summary exactly as ``print_summary`` writes it with rich to a non-terminal of
    ``width`` columns, or None where that is not certain (long lines, unusual characters).

    rich's import costs about 100 ms, more than the whole of a small run.
    """
    rows = [*_rows(summary), ("total", str(summary.get("total", 0)))]
    if not all(_PLAIN_CELL.fullmatch(jobs) for _, jobs in rows):
        return None
    left = max(len("outcome"), *(len(outcome) for outcome, _ in rows))
    right = max(len("jobs"), *(len(jobs) for _, jobs in rows))
    table_width = left + right + 7
    title = "batchsub run"
    pad = table_width - len(title)
    lines = [
        " " * (pad // 2) + title + " " * (pad - pad // 2),
        f"┏{'━' * (left + 2)}┳{'━' * (right + 2)}┓",
        f"┃ {'outcome':<{left}} ┃ {'jobs':>{right}} ┃",
        f"┡{'━' * (left + 2)}╇{'━' * (right + 2)}┩",
        *(f"│ {outcome:<{left}} │ {jobs:>{right}} │" for outcome, jobs in rows),
        f"└{'─' * (left + 2)}┴{'─' * (right + 2)}┘",
    ]
    texts = [_details(summary)]
    errors = summary.get("first_errors") or []
    if errors:
        texts += ["first problems:", *_error_lines(errors)]
    if summary.get("fatal"):
        texts.append(_fatal_line(summary))
    if table_width > width or not all(
        len(text) <= width and _PLAIN_TEXT.fullmatch(text) for text in texts
    ):
        return None
    return "\n".join([*lines, *texts]) + "\n"
