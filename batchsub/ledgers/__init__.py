"""Ledger backends: where each job's state is recorded durably (``batchsub.protocols.Ledger``)."""

from batchsub.ledgers.sqlite import SqliteLedger

__all__ = ["SqliteLedger"]
