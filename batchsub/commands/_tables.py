"""The tables and counts the commands print for a person (``--json`` prints every row).

rich is imported where a table is drawn: ``retry``, ``report`` and ``config show`` draw none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

TABLE_LIMIT = 500  # rows a human table shows at most; --json always has every row


def new_console() -> Console:
    """A console on stdout that highlights nothing (manifest names are shown as they are)."""
    from rich.console import Console

    return Console(highlight=False)


def plural(count: int, noun: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def more(console: Console, total: int) -> None:
    """Say how many rows a table of ``total`` left out, if it left any out."""
    if total > TABLE_LIMIT:
        console.print(f"... and {total - TABLE_LIMIT} more (use --json for all)", markup=False)
