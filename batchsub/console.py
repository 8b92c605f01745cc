"""What a person sees: a progress bar on a terminal and the summary table at the end."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batchsub.jobs import Outcome
from batchsub.limiter import RateLimiter
from batchsub.report import RunAccount


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


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """The end-of-run table: one row per outcome, then the first errors."""
    console = console or Console(highlight=False)
    table = Table(title="batchsub run", show_header=True, header_style="bold")
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    for outcome in Outcome:
        table.add_row(outcome.value, str(summary.get(outcome.value, 0)))
    table.add_row("total", str(summary.get("total", 0)), style="bold")
    console.print(table)
    details = (
        f"creates sent {summary.get('creates_sent', 0)} · list calls {summary.get('list_calls', 0)}"
        f" · 429s {summary.get('throttled', 0)} · adopted {summary.get('adopted', 0)}"
        f" · {summary.get('duration_s', 0)} s"
    )
    console.print(details, markup=False)
    errors = summary.get("first_errors") or []
    if errors:
        console.print("first problems:", style="bold")
        for err in errors:
            error = str(err["error"])
            where = "" if error.startswith(f"{err['source']}:") else f"{err['source']}: "
            console.print(f"  {err['outcome']}: {where}{error}", markup=False)
    if summary.get("fatal"):
        console.print(f"run stopped: {summary['fatal']}", style="bold red", markup=False)
