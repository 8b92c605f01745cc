"""Profile one ``batchsub run`` (6,000 manifests, --rate 0, concurrency 32, AK/SK) with py-spy.

Usage: ``python bench/hotspots.py [--jobs N] [--top N]`` (needs ``pip install py-spy``).
Samples the batchsub process at 250 Hz, idle excluded, per thread, and prints the
hottest functions of the event loop thread: cumulative (inclusive) and self time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from manifests import write_manifests
from procs import AKSK_ENV, Simulator, batchsub_argv, clean_env, run_child

_LINE = re.compile(r":\d+\)$")
_PREFIXES = re.compile(r"\((?:/[^()]*/site-packages/|/[^()]*/(?=batchsub/))")


def _frame(raw: str) -> str:
    return _PREFIXES.sub("(", _LINE.sub(")", raw))


def summarise(raw_file: Path, top: int) -> str:
    """Cumulative and self shares of the main thread's samples, from py-spy's raw output."""
    total = 0
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw_file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        thread, _, rest = stack.partition(";")
        threads[thread.split(":", 1)[-1].strip() or thread] += count
        if "MainThread" not in thread or not rest:
            continue
        frames = [_frame(f) for f in rest.split(";")]
        total += count
        for name in set(frames):
            cumulative[name] += count
        own[frames[-1]] += count
    out = [f"samples per thread: {dict(threads)}", f"main thread samples: {total}", ""]
    out.append("cumulative (inclusive) share of the main thread:")
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in cumulative.most_common(top)]
    out += ["", "self share of the main thread:"]
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(out)


def main() -> int:
    """Run batchsub under py-spy against a simulator process and print the hot spots."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="batchsub-profile-"))
    try:
        write_manifests(work / "m", args.jobs)
        raw = work / "profile.raw"
        with Simulator(work) as sim:
            argv = batchsub_argv(work / "m", sim.url, work / "ledger.db")
            record = [py_spy, "record", "--rate", "250", "--threads", "--format", "raw"]
            record += ["--output", str(raw), "--", *argv]
            run = run_child(record, clean_env(AKSK_ENV), work / "batchsub.log")
        print(f"wall {run.wall_s:.2f} s (under py-spy), exit {run.returncode}")
        print(summarise(raw, args.top))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
