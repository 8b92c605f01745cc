"""What a test of --start/--wait reads back: the simulator's own stats and job list, and the
report's rows by name."""

from __future__ import annotations

from typing import Any

from tests.process_support import get_json
from tests.support import PROJECT


def sim_stats(endpoint: str) -> dict[str, Any]:
    """``GET /_simulator/stats`` of the test project: calls by kind, runs per job."""
    return get_json(f"{endpoint}/_simulator/stats?project_id={PROJECT}")


def calls(stats: dict[str, Any]) -> int:
    """Every DLI call the simulator answered (the stats endpoint itself is not one)."""
    return sum(int(n) for n in stats["calls"].values())


def started_twice(stats: dict[str, Any]) -> list[str]:
    """Jobs that got more than one run call that took effect, or a run while running."""
    return [
        job["name"] for job in stats["jobs"] if job["runs"] > 1 or job["runs_while_running"] > 0
    ]


def listed(endpoint: str) -> list[dict[str, Any]]:
    """Every job of the project as the list call shows it (status, create_time, start_time)."""
    found: list[dict[str, Any]] = []
    while True:
        url = f"{endpoint}/v1.0/{PROJECT}/streaming/jobs?limit=100&offset={len(found)}&order=asc"
        page = get_json(url)["job_list"]
        found.extend(page["jobs"])
        if not page["jobs"] or len(found) >= page["total_count"]:
            return found


def rows_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's job rows by name."""
    return {row["name"]: row for row in report["jobs"]}
