"""Words for the counts the commands print. The tables and lines themselves are drawn by
``batchsub.output`` (one output rule for every command); its names are kept here for the
callers that import them from this module."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchsub.output import TABLE_LIMIT, new_console

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["TABLE_LIMIT", "more", "new_console", "plural"]


def plural(count: int, noun: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def more(console: Console, total: int) -> None:
    """Say how many rows a table of ``total`` left out, if it left any out."""
    if total > TABLE_LIMIT:
        console.print(f"... and {total - TABLE_LIMIT} more (-o plain or -o json shows all)")
