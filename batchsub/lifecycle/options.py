"""What a run does after its creates (``--start``, ``--wait`` and their knobs), as one value.

Apart from ``rollout`` so that building it from the settings (``wiring.lifecycle``) does not
import the engine: a run without ``--start`` or ``--wait`` never loads the starter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchsub.lifecycle.start_rules import StartOptions
from batchsub.lifecycle.waiter import WaitSettings


@dataclass(frozen=True, slots=True)
class RolloutOptions:
    """What the user asked for beyond creating: ``--start``, ``--wait`` and their knobs."""

    start: bool = False
    wait: bool = False
    resume_savepoint: bool = False
    rules: StartOptions = field(default_factory=StartOptions)
    waiting: WaitSettings = field(default_factory=WaitSettings)
    in_doubt_grace: float = 5.0
    batch_size: int = 100
    linger: float = 1.0  # seconds a batch waits to fill up (fewer, fuller run calls)

    @property
    def active(self) -> bool:
        """True when anything is to be done after the creates."""
        return self.start or self.wait
