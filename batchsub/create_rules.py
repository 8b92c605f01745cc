"""The one decision "what to do with this job's create, given the ledger".

The submitter acts on it and ``plan`` shows it, so the two cannot disagree. The rules:

- A job the ledger records as created is never sent again: ``exists`` when its manifest is the
  body it was created with, ``drifted`` (with the fields that changed) when it is not.
- A job the ledger does not know is sent; one known not created (``failed``, ``retrying``) is
  sent again.
- A job in doubt (``submitting``, ``unknown``: a request may have created it) is looked up by
  name before it is ever sent again.
- Whatever the ledger says, a job not recorded as created that the server lists by name is
  adopted, never created a second time (the submitter and ``plan --check-remote`` both look).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from batchsub.jobs import IN_DOUBT_STATES, JobSpec, LedgerRecord, LedgerState
from batchsub.manifest import diff_fields


class CreateAction(StrEnum):
    """What to do with one job's create."""

    SEND = "send"  # the ledger does not know it
    RESEND = "resend"  # known not created (failed, or retrying): send it again
    RECONCILE = "reconcile"  # in doubt: look it up by name, send it only if absent
    EXISTS = "exists"  # created, from this very body
    DRIFTED = "drifted"  # created, but the manifest changed since: not sent


@dataclass(frozen=True, slots=True)
class CreateDecision:
    """An action and, for a drifted job, the fields that changed and the sentence saying so."""

    action: CreateAction
    drift: tuple[str, ...] = ()
    reason: str | None = None


# Made once: every job of a run is decided, most of them with one of these.
_SEND = CreateDecision(CreateAction.SEND)
_RESEND = CreateDecision(CreateAction.RESEND)
_RECONCILE = CreateDecision(CreateAction.RECONCILE)
_EXISTS = CreateDecision(CreateAction.EXISTS)


def decide_create(spec: JobSpec, record: LedgerRecord | None) -> CreateDecision:
    """The decision for ``spec``, given its ledger row (None: the ledger does not know it)."""
    if record is None:
        return _SEND
    if record.state is LedgerState.CREATED:
        if record.body_hash == spec.body_hash:
            return _EXISTS
        drift = tuple(diff_fields(record.body, spec.body))
        reason = "manifest changed since the job was created: " + ", ".join(drift)
        return CreateDecision(CreateAction.DRIFTED, drift, reason)
    if record.state in IN_DOUBT_STATES:
        return _RECONCILE
    return _RESEND
