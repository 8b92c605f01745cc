"""A built-in, in-process simulator of the DLI Flink job API, with fault injection.

Used by the tests, the README demo (``batchsub run ... --simulator``), the benchmarks and
``batchsub simulator --port N``. Faithful to the reference pages' bodies, codes and error shapes.
"""

from batchsub.simulator.app import STORE, create_app
from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.faults import Fault
from batchsub.simulator.server import RunningSimulator, serve_forever, start_simulator
from batchsub.simulator.store import JobStore, SimJob

__all__ = [
    "STORE",
    "Fault",
    "JobStore",
    "RunningSimulator",
    "SimJob",
    "SimulatorConfig",
    "create_app",
    "serve_forever",
    "start_simulator",
]
