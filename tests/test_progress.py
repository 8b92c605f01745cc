"""The progress bar: bar, count and ETA at any width, jobs counted, and honest after a stop."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from batchsub.console import FileCount, JobTotal, ProgressDisplay
from batchsub.jobs import JobResult, Outcome
from batchsub.limiter import RateLimiter
from batchsub.report import RunAccount
from tests.support import FakeClock


def recording(width: int) -> Console:
    return Console(
        file=io.StringIO(), width=width, record=True, force_terminal=True, legacy_windows=False
    )


class Bar:
    """A display drawn into a recording console, with a fake clock and a stop flag."""

    def __init__(self, total: int | None, *, width: int = 80) -> None:
        self.clock = FakeClock(0.0)
        self.stopping = False
        self.account = RunAccount()
        self.display = ProgressDisplay(
            self.account,
            RateLimiter(10),
            enabled=True,
            total=total,
            stopped=lambda: self.stopping,
            console=recording(width),
            clock=self.clock,
        )

    def results(self, count: int, outcome: Outcome = Outcome.CREATED, *, prefix: str = "j") -> None:
        for index in range(count):
            self.account.add(JobResult(f"m/{prefix}{index}.json", f"{prefix}{index}", outcome))

    def frame(self, width: int) -> list[str]:
        """The lines the display draws now at ``width`` columns."""
        self.display.refresh()
        console = recording(width)
        console.print(self.display)
        return console.export_text().splitlines()


def bar_of(line: str) -> str:
    return "".join(char for char in line if char in "━─")


@pytest.mark.parametrize("width", [40, 80, 120])
def test_bar_count_and_eta_stay_on_one_line_at_every_width(width: int) -> None:
    bar = Bar(300)
    with bar.display:
        bar.frame(width)
        bar.clock.now = 10.0
        bar.results(100, prefix="a")
        bar.results(10, Outcome.ALREADY_CREATED, prefix="b")
        bar.results(3, Outcome.FAILED, prefix="c")
        bar.results(2, Outcome.INVALID, prefix="d")
        lines = bar.frame(width)
    # 115 jobs in 10 s: 11.5 a second, 185 to go: 16 s.
    first = lines[0]
    assert "115/300" in first and first.endswith("ETA 0:16"), lines
    assert len(bar_of(first)) >= 10
    filled = first.count("━")
    assert filled == len(bar_of(first)) * 115 // 300
    assert all(len(line) <= width for line in lines)
    counts = " ".join(lines[1:])
    for shown in ("created 100", "exists 10", "failed 3", "invalid 2", "rate 10.0/s", "429s 0"):
        assert shown in counts, lines
    if width >= 80:
        assert first.startswith("batchsub ") and " 38% " in first and " 0:10 " in first
        assert len(lines) == 2  # every count on one line
    else:
        assert len(lines) >= 3  # the counts wrap by whole items
    if width == 120:
        assert len(bar_of(first)) == 40


def test_eta_follows_the_speed_of_the_last_half_minute() -> None:
    bar = Bar(1000)
    with bar.display:
        assert bar.frame(80)[0].endswith("ETA -:--")  # nothing done yet: no guess
        bar.clock.now = 60.0
        bar.results(100, prefix="slow")
        assert bar.frame(80)[0].endswith("ETA 9:00")  # 100 a minute, 900 left
        bar.clock.now = 80.0
        bar.results(100, prefix="faster")
        bar.frame(80)
        bar.clock.now = 90.0
        bar.results(100, prefix="fastest")
        # Over the last 30 s: 200 jobs, 700 left (over the whole run it would say 3:30).
        assert bar.frame(80)[0].endswith("ETA 1:45")


def test_the_total_counts_jobs_growing_from_the_files_as_lists_show_more() -> None:
    bar = Bar(FileCount(3))
    with bar.display:
        assert "0/~3 " in bar.frame(80)[0]
        bar.account.add(JobResult("m/list.yaml#4", "l4", Outcome.CREATED))
        assert "1/~7 " in bar.frame(80)[0]  # list.yaml holds 5 at least, 2 files to come
        for index in (0, 1, 2, 3, 5):
            bar.account.add(JobResult(f"m/list.yaml#{index}", f"l{index}", Outcome.CREATED))
        bar.account.add(JobResult("m/a.json", "a", Outcome.CREATED))
        bar.account.add(JobResult("m/b.json", None, Outcome.INVALID))
        assert "8/~8 " in bar.frame(80)[0]  # a list's end is never seen: still "~"
    assert "8/8 100% " in bar.frame(80)[0]  # the run ended: every job has its result
    assert bar.frame(80)[0].endswith(" done")


def test_an_exact_total_is_shown_as_exact() -> None:
    bar = Bar(5)
    with bar.display:
        bar.results(2)
        assert "2/5 " in bar.frame(80)[0]


def test_without_a_total_it_counts_with_no_bar_and_no_eta() -> None:
    bar = Bar(None)  # a daemon's endless source
    with bar.display:
        bar.clock.now = 5.0
        bar.results(7)
        first = bar.frame(80)[0]
    assert first == "batchsub 7 0:05", first


def test_job_total_bounds() -> None:
    total = JobTotal(2)
    assert (total.estimate, total.exact) == (2, False)
    total.add("m/a#b.json")  # a "#" in a file's name is no list item
    total.add("m/c.json")
    assert (total.estimate, total.exact) == (2, True)


def test_after_a_stop_the_bar_stays_where_it_was_and_says_what_was_left() -> None:
    bar = Bar(FileCount(3000))
    with bar.display:
        bar.clock.now = 6.0
        bar.results(310)
        bar.frame(80)
        bar.stopping = True  # Ctrl-C: the rest of the files end unresolved, not sent
        bar.results(2, prefix="drained")  # in flight at the stop, finished during the drain
        bar.results(2688, Outcome.UNRESOLVED, prefix="left")
        lines = bar.frame(80)
        assert "312/3,000" in lines[0] and lines[0].endswith(" stopping"), lines
    lines = bar.frame(80)
    first = lines[0]
    assert "312/3,000 10% " in first and first.endswith(" 0:06 stopped"), lines
    assert first.count("━") == len(bar_of(first)) * 312 // 3000  # not 3000/3000
    assert "not done 2,688" in " ".join(lines[1:])
    assert "unresolved" not in " ".join(lines[1:])


def test_an_unresolved_job_before_any_stop_is_counted_as_such() -> None:
    bar = Bar(4)
    with bar.display:
        bar.results(1, Outcome.UNRESOLVED)
        bar.results(1, Outcome.DUPLICATED, prefix="d")
        counts = " ".join(bar.frame(80)[1:])
    assert "unresolved 1" in counts and "duplicated 1" in counts and "not done" not in counts
    assert "drifted" not in counts  # a count that never happened takes no room


def test_a_new_count_needs_no_change_to_the_layout() -> None:
    bar = Bar(4)
    with bar.display:
        bar.display.tally("started", 3)
        assert "started 3" in " ".join(bar.frame(80)[1:])


def test_the_live_display_writes_its_last_frame_and_nothing_when_off() -> None:
    console = Console(file=io.StringIO(), width=80, record=True, legacy_windows=False)
    account = RunAccount()
    display = ProgressDisplay(
        account, RateLimiter(0), enabled=True, total=2, console=console, clock=FakeClock(0.0)
    )
    with display:
        account.add(JobResult("m/a.json", "a", Outcome.CREATED))
        account.add(JobResult("m/b.json", "b", Outcome.CREATED))
        display.refresh()
    # Not a terminal: rich draws the final frame once, at the end.
    text = console.export_text()
    assert text.splitlines()[0].startswith("batchsub ━━━━") and "2/2 100% 0:00 done" in text
    assert "rate ∞" in text

    off = RunAccount()
    quiet = ProgressDisplay(off, RateLimiter(0), enabled=False, total=2)
    with quiet:
        off.add(JobResult("m/a.json", "a", Outcome.CREATED))
        quiet.refresh()


def test_starts_are_counted_beside_the_creates_in_their_order() -> None:
    bar = Bar(4)
    with bar.display:
        bar.results(2, Outcome.CREATED)
        bar.display.tally("running")
        bar.display.tally("started", 2)
        bar.display.tally("start failed")
        counts = " ".join(bar.frame(120)[1:])
    assert "held" not in counts  # not happened: no room taken
    order = [counts.index(word) for word in ("created 2", "started 2", "running 1", "failed 1")]
    assert order == sorted(order), counts
