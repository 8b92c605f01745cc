"""Roll out in waves (``--waves 1,10%,100%``) and hold the rest when too many fail.

Each item of ``--waves`` is a cumulative target: a number of jobs (``10``) or a percentage
of the jobs to send (``10%``, rounded up, so a non-zero percentage is at least one job).
Targets of one kind must grow; a count larger than the jobs there are means all of them; a
target already reached adds an empty wave, which is dropped; the jobs left after the last
target form one more wave, so a rollout always ends with every job sent unless it is held.

``WaveController`` decides after each wave: when more than ``max_failures`` jobs of the waves
so far failed (to be created, to start, or to stay running), the rest is held, never sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from batchsub.errors import ConfigError

_COUNT_RE = re.compile(r"[0-9]+")
_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?) *%")


@dataclass(frozen=True, slots=True)
class WaveTarget:
    """One cumulative target of ``--waves``: a count, or a percentage of the jobs."""

    value: Fraction
    percent: bool

    def __str__(self) -> str:
        text = f"{float(self.value):g}" if self.value.denominator != 1 else str(self.value)
        return f"{text}%" if self.percent else text

    def jobs(self, total: int) -> int:
        """How many jobs, of ``total``, this target reaches."""
        if self.percent:
            return min(total, math.ceil(self.value * total / 100))
        return min(total, int(self.value))


def parse_waves(spec: str) -> tuple[WaveTarget, ...]:
    """The targets of a ``--waves`` value; ``ConfigError`` names what is wrong with it."""
    items = spec.split(",")
    targets: list[WaveTarget] = []
    for position, raw in enumerate(items, start=1):
        target = _parse_item(raw.strip(), position, spec)
        for earlier in targets:
            if earlier.percent and earlier.value == 100:
                raise ConfigError(f"--waves {spec}: wave {position} comes after 100%")
            if earlier.percent == target.percent and target.value <= earlier.value:
                raise ConfigError(
                    f"--waves {spec}: wave {position} ({target}) must be more than "
                    f"an earlier wave ({earlier}): the targets are cumulative"
                )
        targets.append(target)
    return tuple(targets)


def _parse_item(text: str, position: int, spec: str) -> WaveTarget:
    where = f"--waves {spec}: wave {position}"
    if not text:
        raise ConfigError(f"{where} is empty (write e.g. 1,10%,100%)")
    if _COUNT_RE.fullmatch(text):
        value = Fraction(int(text))
        if value == 0:
            raise ConfigError(f"{where} is 0: a wave holds at least one job")
        return WaveTarget(value, percent=False)
    match = _PERCENT_RE.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"{where} ({text!r}) is neither a number of jobs nor a percentage (e.g. 10 or 10%)"
        )
    value = Fraction(match[1])
    if value == 0:
        raise ConfigError(f"{where} is 0%: a wave holds at least one job")
    if value > 100:
        raise ConfigError(f"{where} is {text}: more than 100% of the jobs")
    return WaveTarget(value, percent=True)


def wave_sizes(targets: Sequence[WaveTarget], total: int) -> list[int]:
    """How many jobs each wave sends, for ``total`` jobs (empty waves dropped)."""
    sizes: list[int] = []
    reached = 0
    for position, target in enumerate(targets, start=1):
        cumulative = target.jobs(total)
        if cumulative < reached:
            raise ConfigError(
                f"--waves: wave {position} ({target} of {total} jobs = {cumulative}) is "
                f"smaller than the waves before it ({reached} jobs)"
            )
        if cumulative > reached:
            sizes.append(cumulative - reached)
            reached = cumulative
    if reached < total:
        sizes.append(total - reached)
    return sizes


@dataclass(frozen=True, slots=True)
class Wave:
    """One wave to send: its number (from 1) and how many jobs it holds."""

    number: int
    size: int


class WaveController:
    """Hands out the waves one at a time and holds the rest after too many failures."""

    def __init__(self, sizes: Sequence[int], max_failures: int = 0) -> None:
        if any(size <= 0 for size in sizes):
            raise ValueError(f"wave sizes must be positive, got {list(sizes)}")
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {max_failures}")
        self._sizes = list(sizes)
        self._max_failures = max_failures
        self._next = 0  # index of the next wave to hand out
        self._current: Wave | None = None
        self.sent = 0  # jobs of the waves handed out
        self.failures = 0
        self.held = 0  # jobs of the waves never handed out after a hold

    @property
    def holding(self) -> bool:
        """True once the rollout stopped for too many failures."""
        return self.failures > self._max_failures

    def next_wave(self) -> Wave | None:
        """The next wave to send, or None: every wave sent, or the rest held."""
        if self._current is not None:
            raise RuntimeError(f"wave {self._current.number} is not finished yet")
        if self.holding or self._next >= len(self._sizes):
            return None
        self._current = Wave(self._next + 1, self._sizes[self._next])
        self._next += 1
        self.sent += self._current.size
        return self._current

    def finish(self, failed: int) -> bool:
        """Record how many jobs of the current wave failed; True to go on, False to hold."""
        wave = self._current
        if wave is None:
            raise RuntimeError("no wave is being sent")
        if not 0 <= failed <= wave.size:
            raise ValueError(f"wave {wave.number} has {wave.size} jobs, not {failed} failures")
        self._current = None
        self.failures += failed
        if self.holding:
            self.held = sum(self._sizes[self._next :])
            self._next = len(self._sizes)
            return False
        return True
