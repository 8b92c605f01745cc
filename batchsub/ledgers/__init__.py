"""Ledger backends: where each job's state is recorded durably (``batchsub.protocols.Ledger``).

``sqlite`` (a local file, one process) and ``postgres`` (shared by workers, claims with
leases) keep the same rows (``_rows``); ``lock`` keeps a second process off a SQLite file,
``outage`` waits an unreachable or full ledger out.
"""
