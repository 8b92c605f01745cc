"""The summary written without rich is byte for byte what rich writes, or not written at all."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from batchsub.console import plain_summary, print_summary
from batchsub.jobs import Outcome


def rich_summary(summary: dict[str, Any], width: int) -> str:
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        highlight=False,
        force_terminal=False,
        force_jupyter=False,
        legacy_windows=False,
    )
    print_summary(summary, console)
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


def test_a_plain_summary_is_written_for_an_ordinary_run() -> None:
    summary = summary_of(
        {"created": 1},
        first_errors=[
            {"source": "m/a.json", "name": "a", "outcome": "invalid", "error": "m/a.json: bad"},
            {"source": "m/b.json", "name": "b", "outcome": "failed", "error": "quota exceeded"},
        ],
        fatal="the API refused the credential",
    )
    text = plain_summary(summary, 80)
    assert text is not None
    assert text == rich_summary(summary, 80)


# Mostly text the plain path takes, some it must leave to rich (emoji codes, wide characters,
# tabs, trailing spaces, markup-like brackets).
texts = st.text(st.sampled_from(list(" ab:/.-_[]·")), max_size=40) | st.text(
    st.sampled_from([*" ab:/.-_[]·é\t", "😀", "中"]), max_size=40
)
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


@settings(max_examples=400, deadline=None)
@given(
    counts=counts,
    first_errors=errors,
    fatal=st.none() | texts,
    duration=st.floats(0, 10**6, allow_nan=False),
    sent=st.integers(0, 10**9),
    width=st.integers(1, 130) | st.integers(90, 200),
)
def test_plain_summary_is_what_rich_writes(
    counts: dict[str, int],
    first_errors: list[dict[str, Any]],
    fatal: str | None,
    duration: float,
    sent: int,
    width: int,
) -> None:
    summary = summary_of(
        counts, first_errors=first_errors, fatal=fatal, duration_s=duration, creates_sent=sent
    )
    text = plain_summary(summary, width)
    if text is not None:
        assert text == rich_summary(summary, width)
