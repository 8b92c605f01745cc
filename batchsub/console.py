"""What a person sees: a progress bar on a terminal and the summary table at the end.

rich costs about 100 ms of start-up, paid by every run; it is imported only when a progress bar
or a summary table is drawn for a person (piped, the summary is plain lines: batchsub.output).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from batchsub.jobs import JobResult, Outcome
from batchsub.limiter import RateLimiter
from batchsub.logs import tell
from batchsub.output import is_terminal, new_console, plain_cell, problem_line
from batchsub.report import RunAccount
from batchsub.text import printable

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live
    from rich.text import Text


class FileCount(int):
    """A number of manifest files: where a run's count of jobs starts (a list file holds more).

    Passed as the bar's ``total``, it says the total is an estimate that grows; a plain int is
    an exact count of jobs (``retry`` knows it from the ledger).
    """


@dataclass(frozen=True, slots=True)
class Count:
    """One count beside the bar: ``label``, the tally of ``key``; ``always``: shown at 0 too."""

    label: str
    key: str
    always: bool = False


NOT_DONE = "not_done"  # a job that ended unresolved after a stop: what an interrupt left
# The counts beside the bar, in this order. A key is an outcome's value or a phase's word: a
# phase that reports to the bar (``ProgressDisplay.tally("started")``) gets one line here.
# A key tallied but not listed is shown too, under its own name: nothing is hidden.
COUNTS: tuple[Count, ...] = (
    Count("created", Outcome.CREATED.value, always=True),
    Count("exists", Outcome.ALREADY_CREATED.value, always=True),
    Count("failed", Outcome.FAILED.value, always=True),
    Count("invalid", Outcome.INVALID.value, always=True),
    Count("unresolved", Outcome.UNRESOLVED.value),
    Count("drifted", Outcome.DRIFTED.value),
    Count("duplicated", Outcome.DUPLICATED.value),
    Count("held", Outcome.HELD.value),
    Count("updated", Outcome.UPDATED.value),
    Count("missing", Outcome.MISSING.value),
    Count("pruned", Outcome.PRUNED.value),
    Count("not done", NOT_DONE),
    # --start / --wait (``lifecycle.rollout`` tallies them as they happen).
    Count("started", "started"),
    Count("running", "running"),
    Count("start failed", "start failed"),
)
SPEED_WINDOW = 30.0  # seconds of progress the ETA's speed is measured over
_BAR_MIN, _BAR_MAX = 10, 40


class JobTotal:
    """A run's number of jobs, estimated from its manifest files as their jobs come.

    An exact count would need every file parsed before the first request, and parsing is
    most of a run's CPU: so each file counts one job until its jobs show more (an item
    ``path#4`` says its file holds at least 5). ``exact`` is false while it may still grow.
    """

    def __init__(self, files: int) -> None:
        self._unseen = files  # files none of whose jobs came yet
        self._seen: set[str] = set()
        self._lists: dict[str, tuple[int, int]] = {}  # list file -> (jobs at least, came)
        self._missing = 0  # jobs list files are known to hold that did not come yet
        self.jobs = 0

    def add(self, source: str) -> None:
        """Count one job (or invalid file) of ``source`` (``path`` or ``path#index``)."""
        self.jobs += 1
        path, hash_sign, index = source.rpartition("#")
        if not (hash_sign and index.isdigit()):
            path = source
        if path not in self._seen:
            self._seen.add(path)
            self._unseen = max(0, self._unseen - 1)
        if path is source:
            return
        least, came = self._lists.get(path, (0, 0))
        before = max(0, least - came)
        least, came = max(least, int(index) + 1), came + 1
        self._lists[path] = (least, came)
        self._missing += max(0, least - came) - before

    @property
    def estimate(self) -> int:
        """Jobs come, plus the least the files still to come hold."""
        return self.jobs + self._unseen + self._missing

    @property
    def exact(self) -> bool:
        """True once every file came and none was a list (whose end nothing shows)."""
        return self._unseen == 0 and not self._lists


class ProgressDisplay:
    """A live bar on a terminal: jobs done of the total, its ETA, and the outcome counts.

    It lays itself out for the terminal's width: bar, count and ETA stay on one line down to
    40 columns, the other parts (label, percent, elapsed time) going first, and the counts
    wrap by whole items. Drawn from the event loop (``refresh``), never from a thread. On a
    stop (``stopped()`` true: Ctrl-C, SIGTERM, a fatal answer) the bar stays where it was:
    jobs that end unresolved after it count as ``not done``, not as progress.
    """

    def __init__(
        self,
        account: RunAccount,
        limiter: RateLimiter,
        *,
        enabled: bool,
        total: int | None,
        stopped: Callable[[], bool] = lambda: False,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._stopped = stopped
        self._clock = clock
        self._exact = None if isinstance(total, FileCount) else total
        self._estimate = JobTotal(total) if isinstance(total, FileCount) else None
        self._tally: Counter[str] = Counter()
        self._done = 0
        self._seen = 0
        self._started = self._ended = clock()
        self._samples: deque[tuple[float, int]] = deque()
        self._state = "running"  # then "stopping", "stopped" or "done"
        self._live: Live | None = None
        if enabled:
            # imported here: rich costs about 100 ms at start-up, and most runs draw no bar.
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self,
                console=console or Console(stderr=True),
                auto_refresh=False,
                redirect_stderr=True,
            )
            account.listen(self.add)

    def add(self, result: JobResult) -> None:
        """Count one job's result (called as it comes, before the stop flag can change)."""
        self._seen += 1
        if self._estimate is not None:
            self._estimate.add(result.source)
        if result.outcome is Outcome.UNRESOLVED and self._stopped():
            self._tally[NOT_DONE] += 1
            return
        self._done += 1
        self._tally[result.outcome.value] += 1

    def tally(self, key: str, count: int = 1) -> None:
        """Count ``count`` more under ``key`` (a phase's word, e.g. ``started``)."""
        self._tally[key] += count

    def refresh(self) -> None:
        """Draw the bar again (called a few times a second)."""
        if self._live is None or self._state in ("stopped", "done"):
            return
        now = self._clock()
        self._samples.append((now, self._done))
        # The oldest sample kept is the last one at least a window old: the speed of the
        # last half minute, not of the whole run (its start-up, a 429 pause long past).
        while len(self._samples) > 2 and now - self._samples[1][0] >= SPEED_WINDOW:
            self._samples.popleft()
        if self._state == "running" and self._stopped():
            self._state = "stopping"
        self._live.refresh()

    def __enter__(self) -> ProgressDisplay:
        self._started = self._clock()
        if self._live is not None:
            self._live.start(refresh=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ended = self._clock()
        self._state = "stopped" if exc_type is not None or self._stopped() else "done"
        if self._live is not None:
            self._live.stop()  # draws the last frame

    # --- drawing ---------------------------------------------------------------------------

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        width = options.max_width
        yield self._bar_line(width, ascii_only=options.ascii_only)
        for line in _wrap(self._count_items(), width):
            yield Text(line, no_wrap=True, overflow="ellipsis")

    def _total(self) -> tuple[int | None, bool]:
        """The total shown, and whether it is exact."""
        if self._state in ("stopped", "done"):
            return max(self._seen, self._exact or 0), True  # every job has its result
        if self._estimate is not None:
            return max(self._estimate.estimate, self._done), self._estimate.exact
        return self._exact, True

    def _bar_line(self, width: int, *, ascii_only: bool) -> Text:
        from rich.text import Text

        total, exact = self._total()
        done = f"{self._done:,}"
        pieces = {
            "label": "batchsub",
            "count": done if total is None else f"{done}/{'' if exact else '~'}{total:,}",
            "percent": f"{self._done * 100 // total}%" if total else "",
            "elapsed": _clock_text(self._elapsed()),
            "status": self._status(total),
        }

        def length(names: list[str], bar: int) -> int:
            texts = [pieces[name] for name in names if pieces[name]]
            return sum(map(len, texts)) + len(texts) - 1 + (bar + 1 if bar else 0)

        # Kept at any width: the count and the status. Then, room allowing, the bar at its
        # least, the percentage, the elapsed time and the label; the bar takes what is left.
        kept = ["count", "status"]
        bar = _BAR_MIN if total is not None and length(kept, _BAR_MIN) <= width else 0
        for name in ("percent", "elapsed", "label"):
            if pieces[name] and length([*kept, name], bar) <= width:
                kept.append(name)
        if bar:
            bar = min(_BAR_MAX, width - length(kept, 0) - 1)
        line = Text(no_wrap=True, overflow="ellipsis")
        for name in ("label", "bar", "count", "percent", "elapsed", "status"):
            if name == "bar" and bar:
                line.append_text(self._bar(bar, total, ascii_only=ascii_only))
                line.append(" ")
            elif name in kept and pieces[name]:
                line.append(pieces[name], style=_STYLES.get(name, ""))
                line.append(" ")
        line.rstrip()
        line.truncate(width, overflow="ellipsis")
        return line

    def _bar(self, width: int, total: int | None, *, ascii_only: bool) -> Text:
        from rich.text import Text

        full, back = ("#", "-") if ascii_only else ("━", "─")
        filled = min(width, width * self._done // total) if total else 0
        style = {"done": "bar.finished", "running": "bar.complete"}.get(self._state, "yellow")
        bar = Text(full * filled, style=style)
        bar.append(back * (width - filled), style="bar.back")
        return bar

    def _status(self, total: int | None) -> str:
        if self._state == "done":
            return "done"
        if self._state in ("stopping", "stopped"):
            return self._state
        if total is None:
            return ""  # an endless source (a drop folder, a queue): no end to estimate
        speed = self._speed()
        if not speed:
            return "ETA -:--"
        return f"ETA {_clock_text(max(0, total - self._done) / speed)}"

    def _speed(self) -> float | None:
        """Jobs per second over the last ``SPEED_WINDOW`` seconds, None before any."""
        if len(self._samples) < 2:
            return None
        (first, done_first), (last, done_last) = self._samples[0], self._samples[-1]
        if last - first < 1.0 or done_last == done_first:
            return None
        return (done_last - done_first) / (last - first)

    def _elapsed(self) -> float:
        end = self._ended if self._state in ("stopped", "done") else self._clock()
        return end - self._started

    def _count_items(self) -> list[str]:
        items = []
        listed = set()
        for count in COUNTS:
            listed.add(count.key)
            if count.always or self._tally[count.key]:
                items.append(f"{count.label} {self._tally[count.key]:,}")
        items += [f"{key} {n:,}" for key, n in self._tally.items() if key not in listed and n]
        rate = self._limiter.rate
        items.append(f"rate {'∞' if rate == 0 else f'{rate:.1f}/s'}")
        items.append(f"429s {self._limiter.throttled:,}")
        return items


_STYLES = {"label": "bold", "count": "progress.download", "status": "progress.remaining"}


def _clock_text(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _wrap(items: list[str], width: int, separator: str = " · ") -> list[str]:
    """``items`` joined by ``separator`` into lines of at most ``width``, never splitting one."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(line) + len(separator) + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}{separator}{item}" if line else item
    if line:
        lines.append(line)
    return lines


def print_summary(
    summary: dict[str, Any],
    console: Console | None = None,
    *,
    stream: TextIO | None = None,
    rerun: str | None = None,
) -> None:
    """The end-of-run summary (on ``stream``, stdout by default), by the output rule: on a
    terminal a borderless table, the first problems and what to do next; elsewhere one plain
    line per item (``outcome<TAB>count``, then ``path: outcome: error``), the advice on stderr.

    ``rerun``: the command to run again, for a run a signal interrupted.
    """
    out = stream or sys.stdout
    if console is None and not is_terminal(out):
        out.write(plain_summary(summary))
        out.flush()
        if rerun is not None:
            tell(_rerun_line(summary, rerun))
        return
    if console is None:
        console = new_console(out)  # rich costs about 100 ms: only for a person
    from rich.table import Table

    table = Table(
        title="batchsub run", title_justify="left", title_style="bold", header_style="bold",
        box=None,
    )  # fmt: skip
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    for outcome, jobs in _rows(summary):
        table.add_row(outcome, jobs)
    table.add_row("total", str(summary.get("total", 0)), style="bold")
    console.print(table)
    console.print(_details(summary), markup=False)
    for line in _starts(summary):
        console.print(line, markup=False)
    errors = summary.get("first_errors") or []
    if errors:
        console.print("first problems:", style="bold")
        # soft_wrap: a path is never split over two lines, whatever the width (grep finds it).
        for err in errors:
            console.print("  " + _error_line(err), markup=False, soft_wrap=True)
    if summary.get("fatal"):
        console.print(_fatal_line(summary), style="bold red", markup=False, soft_wrap=True)
    if rerun is not None:
        console.print(_rerun_line(summary, rerun), style="bold yellow", markup=False)


_RARE = frozenset(
    {Outcome.DUPLICATED, Outcome.HELD, Outcome.UPDATED, Outcome.MISSING, Outcome.PRUNED}
)
# --start / --wait: how the jobs that exist ended, a line under the table (when asked for).
_LIFECYCLE_ROWS = (
    ("running", "running"),
    ("finished", "finished"),
    ("started", "started"),
    ("start failed", "start_failed"),
    ("timed out", "timed_out"),
    ("still starting", "starting"),
    ("not started", "not_started"),
)


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    # "duplicated", "held" and apply's own only when they happened: a row that appears is
    # one a reader notices.
    return [
        (outcome.value, str(summary.get(outcome.value, 0)))
        for outcome in Outcome
        if outcome not in _RARE or summary.get(outcome.value)
    ]


def _details(summary: dict[str, Any]) -> str:
    return (
        f"creates sent {summary.get('creates_sent', 0)} · list calls {summary.get('list_calls', 0)}"
        f" · 429s {summary.get('throttled', 0)} · adopted {summary.get('adopted', 0)}"
        f" · {summary.get('duration_s', 0)} s"
    )


def _starts(summary: dict[str, Any]) -> list[str]:
    """--start / --wait: how the jobs that exist ended, and the calls it took (one line)."""
    if "running" not in summary:
        return []
    counts = [
        f"{label} {summary.get(key, 0)}"
        for label, key in _LIFECYCLE_ROWS
        if key == "running" or summary.get(key)
    ]
    calls = (
        f"run calls {summary.get('run_calls', 0)} · status calls {summary.get('status_calls', 0)}"
    )
    return [f"starts: {' · '.join(counts)} · {calls}"]


def _error_line(err: dict[str, Any]) -> str:
    """``path: outcome: error`` (the error without the path it may start with)."""
    source = str(err.get("source"))
    error = str(err.get("error"))
    return f"{source}: {err.get('outcome')}: {error.removeprefix(f'{source}: ')}"


def _fatal_line(summary: dict[str, Any]) -> str:
    return f"run stopped: {summary['fatal']}"


def _rerun_line(summary: dict[str, Any], rerun: str) -> str:
    left = summary.get(Outcome.UNRESOLVED.value, 0)
    return (
        f"interrupted: {left} jobs not done; run `{rerun}` again to finish (created jobs are"
        " skipped, jobs in doubt are looked up by name first, none is sent twice)"
    )


# Summary fields the plain lines leave out: the report's own bookkeeping and where it went.
_NOT_PLAIN = frozenset({"schema_version", "batchsub_version", "first_errors"})


def plain_summary(summary: dict[str, Any]) -> str:
    """The summary as plain lines: ``outcome<TAB>count`` (every outcome and ``total``), then
    every other figure of the summary the same way, in its order (``creates_sent<TAB>14``,
    a field added to the summary included), then one ``path: outcome: error`` line per first
    problem. A field that is null (no fatal error) or a container is left out."""
    lines = [f"{outcome}\t{jobs}" for outcome, jobs in _rows(summary)]
    lines.append(f"total\t{summary.get('total', 0)}")
    shown = {outcome.value for outcome in Outcome} | {"total"}  # a rare one at 0 stays out
    for key, value in summary.items():
        if key in shown or key in _NOT_PLAIN or value is None or isinstance(value, dict | list):
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"{printable(str(key))}\t{plain_cell(value)}")
    for err in summary.get("first_errors") or []:
        lines.append(problem_line(*_error_line(err).split(": ", 1)))
    return "\n".join(lines) + "\n"
