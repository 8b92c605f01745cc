"""The output rule (batchsub/output.py): plain lines, tables for a person, a quiet closed pipe."""

from __future__ import annotations

import argparse
import io
import os

import pytest
from rich.console import Console

from batchsub.output import (
    MAX_LINE,
    Format,
    Rows,
    _QuietPipe,
    add_output_flags,
    chosen_format,
    plain_cell,
    problem_line,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_output_flags(parser, "things")
    return parser.parse_args(argv)


def test_json_is_an_alias_of_o_json_and_a_pipe_gets_plain_lines() -> None:
    assert chosen_format(parse("--json")) is Format.JSON
    assert chosen_format(parse("-o", "table"), io.StringIO()) is Format.TABLE
    assert chosen_format(parse(), io.StringIO()) is Format.PLAIN  # not a terminal


def test_plain_rows_are_one_tab_separated_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    with Rows(Format.PLAIN, ("name", "detail", "n")) as rows:
        rows.add(("a b", None, 3))
        rows.add(("line\nbreak", "tab\there", ""), style="red")
    assert capsys.readouterr().out == "a b\t-\t3\nline\\x0abreak\ttab\\x09here\t-\n"
    assert plain_cell("caf\udce9") == "caf\\xe9"


def test_a_table_for_a_person_has_no_borders_and_says_what_it_left_out() -> None:
    out = io.StringIO()
    console = Console(file=out, width=60, highlight=False)
    with Rows(Format.TABLE, ("name", "jobs"), right=("jobs",), limit=2, console=console) as rows:
        for index in range(5):
            rows.add((f"job-{index}", index))
    text = out.getvalue()
    assert "job-0" in text and "job-1" in text and "job-2" not in text
    assert "... and 3 more (-o plain or -o json shows all)" in text
    assert not set(text) & set("┏┃│━─┗└")


def test_a_problem_line_keeps_its_path_and_the_end_of_its_message() -> None:
    line = problem_line("m/a.json", "field: " + "x" * 2000 + "; and 12 more problems")
    assert len(line) <= MAX_LINE
    assert line.startswith("m/a.json: field: x") and line.endswith("; and 12 more problems")
    long_path = "d/" * 300 + "a.json"
    assert problem_line(long_path, "short").startswith(long_path + ": short")


def test_a_pipe_whose_reader_left_takes_the_rest_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone: the next write is EPIPE
    raw = _QuietPipe(write)
    assert raw.write(b"x" * 10) == 10  # no BrokenPipeError
    assert raw.broken
    assert raw.write(b"more") == 4  # now /dev/null
    assert os.readlink(f"/proc/self/fd/{write}") == os.devnull
    os.close(write)
