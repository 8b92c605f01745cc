"""The end-of-run summary by the output rule: plain lines off a terminal (without rich), a
borderless table for a person; neither ever raises, whatever the errors hold."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from batchsub.console import plain_summary, print_summary
from batchsub.jobs import Outcome
from batchsub.output import MAX_LINE


def rich_summary(summary: dict[str, Any], width: int, rerun: str | None = None) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False, force_terminal=False)
    print_summary(summary, console, rerun=rerun)
    return out.getvalue()


def summary_of(counts: dict[str, int], **extra: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "total": sum(counts.values()),
        "creates_sent": counts.get("created", 0),
        "list_calls": 1,
        "throttled": 0,
        "adopted": 0,
        "duration_s": 0.037,
        "first_errors": [],
        "fatal": None,
        **counts,
    }
    summary.update(extra)
    return summary


def test_a_piped_summary_is_one_plain_line_per_item() -> None:
    summary = summary_of(
        {"created": 1, "invalid": 1, "failed": 1},
        first_errors=[
            {"source": "m/a.json", "name": "a", "outcome": "invalid", "error": "m/a.json: bad"},
            {"source": "m/b.json", "name": "b", "outcome": "failed", "error": "quota exceeded"},
        ],
        fatal="the API refused the credential",
    )
    out = io.StringIO()  # not a terminal
    print_summary(summary, stream=out)
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["created\t1", "already_created\t0", "invalid\t1"]
    assert "total\t3" in lines and "creates_sent\t1" in lines and "duration_s\t0.037" in lines
    assert "fatal\tthe API refused the credential" in lines
    # A figure the summary gains (a start's count) is a line too, without a change here.
    assert "running\t4" in plain_summary({**summary, "running": 4}).splitlines()
    assert lines[-2:] == ["m/a.json: invalid: bad", "m/b.json: failed: quota exceeded"]
    assert out.getvalue() == plain_summary(summary)


def test_a_summary_for_a_person_is_a_borderless_table_with_the_advice() -> None:
    summary = summary_of({"created": 2, "unresolved": 3}, interrupted=True)
    text = rich_summary(summary, 80, rerun="batchsub run m")
    assert "batchsub run" in text and "created" in text and "unresolved" in text
    assert not set(text) & set("┏┃│━─┗└┡╇")
    assert "interrupted: 3 jobs not done; run `batchsub run m` again" in text


texts = st.text(max_size=600)
errors = st.lists(
    st.fixed_dictionaries(
        {
            "source": texts,
            "name": st.none() | texts,
            "outcome": st.sampled_from([outcome.value for outcome in Outcome]),
            "error": texts,
        }
    ),
    max_size=3,
)
counts = st.fixed_dictionaries(
    {outcome.value: st.integers(0, 10**12) for outcome in Outcome}, optional={}
)


@settings(max_examples=300, deadline=None)
@given(counts=counts, first_errors=errors, fatal=st.none() | texts)
def test_plain_summary_lines_never_wrap_nor_raise(
    counts: dict[str, int], first_errors: list[dict[str, Any]], fatal: str | None
) -> None:
    summary = summary_of(counts, first_errors=first_errors, fatal=fatal)
    text = plain_summary(summary)
    lines = text.splitlines()
    figures = 5 + (fatal is not None)  # creates_sent ... duration_s, and fatal when set
    # a rare outcome at 0 is left out (batchsub.console._RARE)
    rare = sum(not counts.get(o) for o in ("duplicated", "held", "updated", "missing", "pruned"))
    assert len(lines) == len(Outcome) - rare + 1 + figures + len(first_errors)
    problems = lines[len(lines) - len(first_errors) :]
    for line in problems:
        assert len(line) <= MAX_LINE or line.index(": ") > MAX_LINE - 82  # a long path stays
    text.encode("utf-8")  # valid UTF-8, lone surrogates escaped
