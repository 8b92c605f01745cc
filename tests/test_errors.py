"""errors.one_line: every exception the product words for a person becomes one short line."""

from __future__ import annotations

import errno

import pytest

from batchsub.errors import one_line


class Silent(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.json"),
         "No such file or directory"),
        (OSError("a bare OS error"), "a bare OS error"),
        (ValueError("line one\n  line two\tthree"), "line one line two three"),
        (TimeoutError(), "timed out"),
        (TimeoutError("no answer in 3 s"), "no answer in 3 s"),
        (Silent(), "Silent"),
        (RuntimeError("   "), "RuntimeError"),
        (ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("the real one")]),
         "the real one"),
        (BaseExceptionGroup("outer", [ExceptionGroup("inner", [OSError(5, "I/O error")])]),
         "I/O error"),
    ],
)  # fmt: skip
def test_an_exception_is_one_line_naming_what_happened(exc: BaseException, line: str) -> None:
    assert one_line(exc) == line
