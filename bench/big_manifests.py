"""Hostile manifest sizes (issue 14): a manifest of 400,000 problems, and 1 MiB list files.

``python bench/big_manifests.py [--baseline REV] [--timeout S] [--write]`` (about a minute;
with a baseline as slow as that code is, each command up to ``--timeout``).

1. One 800 KB manifest whose ``dependency_jars`` holds 400,000 integers, beside one good
   manifest: wall time of ``validate`` (table and ``--json``) and of ``run --simulator
   --report``, and the size of what each writes.
2. List files: 55,000 small jobs in one 0.94 MiB file, and the densest 1 MiB list (69,904
   jobs of 3-character names), sent by ``run`` to a ``batchsub simulator`` process: peak
   RSS (``os.wait4``) beside that of a run of one manifest.

``--baseline REV`` measures the code of git revision REV too (exported into a temporary
directory and put first on PYTHONPATH), for a before/after table. ``--write`` puts the table
in ``bench/results.md`` (between its ``big-manifests`` markers).
"""

from __future__ import annotations

import argparse
import itertools
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from procs import TOKEN_ENV, Simulator, batchsub_argv, clean_env, run_child

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MARK_START = "<!-- big-manifests -->"
MARK_END = "<!-- /big-manifests -->"
BAD_ITEMS = 400_000
LIST_JOBS = 55_000


Memory = dict[str, tuple[int, float, float]]  # label -> (jobs, peak RSS MiB, wall s)


@dataclass(frozen=True, slots=True)
class Timed:
    """One command: its exit code (None: killed at the timeout), seconds, bytes written."""

    code: int | None
    seconds: float
    out_bytes: int
    err_bytes: int
    report_bytes: int | None = None

    def cell(self, timeout: float) -> str:
        """``1.3 s (exit 1)``, or ``> 120 s (killed)``."""
        if self.code is None:
            return f"> {timeout:g} s (killed)"
        return f"{self.seconds:.1f} s (exit {self.code})"


def write_bad_manifest(folder: Path) -> None:
    """The 400,000-problem manifest and one good one."""
    folder.mkdir(parents=True)
    bad = {"name": "bad", "queue_name": "q", "dependency_jars": [1] * BAD_ITEMS}
    (folder / "bad.json").write_bytes(orjson.dumps(bad))
    (folder / "good.json").write_bytes(orjson.dumps({"name": "good", "queue_name": "q"}))


def write_list(folder: Path, names: Iterator[str], limit: int | None) -> int:
    """One list file of jobs ``{"name": N}``, up to ``limit`` jobs or 1 MiB; the job count."""
    folder.mkdir(parents=True)
    jobs: list[dict[str, str]] = []
    size = 2  # the brackets
    for name in names:
        item = len(orjson.dumps({"name": name})) + 1
        if (limit is not None and len(jobs) >= limit) or size + item > 1024 * 1024:
            break
        jobs.append({"name": name})
        size += item
    (folder / "list.json").write_bytes(orjson.dumps(jobs))
    return len(jobs)


def short_names() -> Iterator[str]:
    """3-character names from letters and digits: the most jobs one 1 MiB file can hold."""
    alphabet = string.ascii_letters + string.digits
    return ("".join(chars) for chars in itertools.product(alphabet, repeat=3))


def timed(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float) -> Timed:
    """Run ``argv`` with stdout and stderr to files; killed after ``timeout`` seconds."""
    out_path, err_path = cwd / "out.txt", cwd / "err.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=out, stderr=err)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        seconds = time.perf_counter() - started
    report = cwd / "r.json"
    return Timed(
        code,
        seconds,
        out_path.stat().st_size,
        err_path.stat().st_size,
        report.stat().st_size if report.exists() else None,
    )


def problems_section(env: Mapping[str, str], work: Path, timeout: float) -> dict[str, Timed]:
    """Section 1 for one code version."""
    write_bad_manifest(work / "m")
    cli = [sys.executable, "-m", "batchsub"]
    found = {}
    for key, args in (
        ("validate", ["validate", "m"]),
        ("validate --json", ["validate", "m", "--json"]),
        (
            "run --simulator --report",
            ["run", "m", "--simulator", "--progress", "off", "--report", "r.json"],
        ),
    ):
        for leftover in ("batchsub.db", "r.json"):
            (work / leftover).unlink(missing_ok=True)
        found[key] = timed([*cli, *args], env, work, timeout)
    return found


def memory_section(env: Mapping[str, str], work: Path) -> Memory:
    """Section 2 for one code version: jobs, peak RSS MiB and wall seconds of each run."""
    cases = {
        "one manifest (start-up)": write_list(work / "one", iter(["only"]), None),
        f"{LIST_JOBS:,} jobs in one 0.94 MiB list": write_list(
            work / "list", (f"j{i:05d}" for i in itertools.count()), LIST_JOBS
        ),
    }
    cases["densest 1 MiB list"] = write_list(work / "dense", short_names(), None)
    folders = dict(zip(cases, ("one", "list", "dense"), strict=True))
    found = {}
    run_env = {**env, **TOKEN_ENV}
    for label, jobs in cases.items():
        with Simulator(work) as sim:
            ledger = work / f"{folders[label]}.db"
            argv = batchsub_argv(work / folders[label], sim.url, ledger)
            # cwd: ``python -m`` puts it first on sys.path, before PYTHONPATH's code.
            run = run_child(argv, run_env, work / f"{folders[label]}.log", cwd=work)
        if run.returncode != 0:
            raise RuntimeError(f"{label}: exit {run.returncode}; see {work}")
        found[label] = (jobs, run.maxrss_mib, run.wall_s)
    return found


@contextmanager
def code_of(rev: str | None) -> Iterator[dict[str, str]]:
    """The environment that runs batchsub at ``rev`` (None: this worktree)."""
    env = clean_env({})
    if rev is None:
        env["PYTHONPATH"] = str(REPO)
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="batchsub-baseline-") as tree:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        env["PYTHONPATH"] = tree
        yield env


def measure(rev: str | None, timeout: float) -> tuple[dict[str, Timed], Memory]:
    """Both sections for one code version."""
    with code_of(rev) as env, tempfile.TemporaryDirectory(prefix="batchsub-big-") as work:
        root = Path(work)
        (root / "p").mkdir()
        (root / "r").mkdir()
        return problems_section(env, root / "p", timeout), memory_section(env, root / "r")


def page(
    versions: dict[str, tuple[dict[str, Timed], Memory]],
    timeout: float,
) -> str:
    """The markdown section."""
    names = list(versions)
    lines = [
        MARK_START,
        "## 9. Hostile manifest sizes (issue 14, `python bench/big_manifests.py`)",
        "",
        f"1. One 800 KB manifest with {BAD_ITEMS:,} integers in `dependency_jars` (each one a"
        " problem) beside one good manifest: wall time of each command (killed after"
        f" {timeout:g} s) and what it wrote.",
        "",
        "What grew faster than linearly was rich laying out the one-line error of 20 MB (the"
        " summary's first problems, validate's table); now an error lists 5 problems and how"
        " many more.",
        "",
        "| command | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    problems = {name: found[0] for name, found in versions.items()}
    for key in next(iter(problems.values())):
        cells = []
        for name in names:
            t = problems[name][key]
            wrote = f"stdout {_size(t.out_bytes)}, stderr {_size(t.err_bytes)}"
            if t.report_bytes is not None:
                wrote += f", report {_size(t.report_bytes)}"
            cells.append(f"{t.cell(timeout)}; {wrote}")
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "2. List files sent by `run` (token auth, `--rate 0`, concurrency 32) to a `batchsub"
        " simulator` process: peak RSS of the run (`os.wait4`, the larger of the process and"
        " its parser child) and its wall time.",
        "",
        "| list file | jobs | " + " | ".join(f"{n}: peak RSS, wall" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    memory = {name: found[1] for name, found in versions.items()}
    for label in next(iter(memory.values())):
        jobs = memory[names[0]][label][0]
        cells = [f"{memory[n][label][1]:.0f} MiB, {memory[n][label][2]:.1f} s" for n in names]
        lines.append(f"| {label} | {jobs:,} | " + " | ".join(cells) + " |")
    lines += ["", MARK_END, ""]
    return "\n".join(lines)


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / 1024 / 1024:.1f} MiB"
    if count >= 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count} B"


def kept_section(results: Path) -> str:
    """The marked section of ``results`` as it stands, or "" (for bench.py to keep it)."""
    text = results.read_text() if results.exists() else ""
    start, end = text.find(MARK_START), text.find(MARK_END)
    return text[start : end + len(MARK_END)] + "\n" if 0 <= start < end else ""


def write_section(section: str, results: Path) -> None:
    """Replace the marked section of ``results`` (or append it)."""
    text = results.read_text() if results.exists() else ""
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start != -1 and end != -1:
        text = text[:start] + section + text[end + len(MARK_END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True)
    return done.stdout.decode().strip()


def main() -> int:
    """Measure, print the table, and write it into results.md with ``--write``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to measure too, e.g. de0180b")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per command")
    parser.add_argument("--write", action="store_true", help="update bench/results.md")
    args = parser.parse_args()
    head = _git("rev-parse", "--short", "HEAD")
    versions = {}
    if args.baseline:
        versions[f"before ({args.baseline})"] = measure(args.baseline, args.timeout)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    versions[f"after ({head}{'+' if dirty else ''})"] = measure(None, args.timeout)
    section = page(versions, args.timeout)
    print(section)
    if args.write:
        write_section(section, BENCH / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
