"""The one decision "what does apply do with this job", and the changes behind it.

``apply`` acts on it and ``plan`` shows it, so the two cannot disagree. The rules:

- A job the ledger does not record as created is the create path's (``create_rules``):
  created, adopted by name, or looked up after a lost answer, exactly as ``run`` does.
- A job with an unfinished update in the ledger finishes that update first (``resume``).
- A created job whose manifest is the body batchsub last created or updated it with is
  ``unchanged``; one deleted on the server since is ``missing``.
- A changed one is updated. Only changed fields are looked at (``changes``), each with its
  old and new value; a field an update cannot send (``update_fields.NOT_BY_UPDATE``, or one
  removed that cannot be cleared) makes the change ``not_applicable``: nothing is sent.
- Every change in ``update_fields.IN_PLACE_FIELDS``: PUT in place, only those fields, in any
  status. Otherwise it depends on the job's status: a running job is stopped (savepoint with
  ``--savepoint``), PUT the full body and started again (``restart``); a job not running is
  PUT the full body (``update``); a job on its way up or down, or in a status the reference
  does not name, is left for a rerun (``in_transition``); with no status read (``plan``
  without ``--check-remote``) it is ``update_unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from batchsub.jobs import UNFINISHED_UPDATES, JobSpec, LedgerRecord, LedgerState, UpdateRecord
from batchsub.lifecycle import detail_dialect, update_fields
from batchsub.lifecycle.statuses import ACTIVE, FAILED, HALTED, INIT, RUNNING


class ApplyAction(StrEnum):
    """What apply does with one job."""

    CREATE = "create"  # not created yet: the create path decides (send, adopt, reconcile)
    RESUME = "resume"  # an update left unfinished: finish it first
    UNCHANGED = "unchanged"  # the job holds this manifest
    MISSING = "missing"  # created, deleted on the server since
    IN_PLACE = "update_in_place"  # PUT only the changed in-place fields
    RESTART = "update_restart"  # running: stop, PUT, start again
    UPDATE = "update"  # not running: PUT
    UPDATE_UNKNOWN = "update_unknown"  # status not read: in place, or restart if running
    IN_TRANSITION = "in_transition"  # starting or stopping now: left for a rerun
    NOT_APPLICABLE = "not_applicable"  # a change no update can make: reported, not sent


UPDATES = frozenset({ApplyAction.IN_PLACE, ApplyAction.RESTART, ApplyAction.UPDATE})
"""The actions that send a PUT."""


@dataclass(frozen=True, slots=True)
class Change:
    """One changed field: the value batchsub last gave the job, and the manifest's now.

    ``old``/``new`` are what the server holds (a field left out is at its default); ``None``
    means not set.
    """

    field: str
    old: Any
    new: Any

    @property
    def in_place(self) -> bool:
        """A running job takes it without a restart."""
        return update_fields.in_place(self.field)

    def text(self) -> str:
        """``cu_number: 2 -> 4``."""
        return f"{self.field}: {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True, slots=True)
class ApplyDecision:
    """An action, the changes behind it, and (for an update) the PUT body."""

    action: ApplyAction
    changes: tuple[Change, ...] = ()
    put_body: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @property
    def restart(self) -> bool:
        """The update stops the job and starts it again."""
        return self.action is ApplyAction.RESTART

    def how(self, savepoint: bool) -> str:
        """How the changes are made, as ``plan`` shows it after each change."""
        return _HOW.get(self.action, "") or (
            "restart with savepoint" if savepoint else "restart without savepoint"
        )


_HOW = {
    ApplyAction.IN_PLACE: "in place",
    ApplyAction.UPDATE: "job not running: update",
    ApplyAction.UPDATE_UNKNOWN: "restart if running",
    ApplyAction.IN_TRANSITION: "job in transition: apply again",
    ApplyAction.NOT_APPLICABLE: "not applicable",
    ApplyAction.RESTART: "",
}


_HOW_SHOWN = {
    ApplyAction.IN_PLACE: "in_place",
    ApplyAction.RESTART: "restart",
    ApplyAction.UPDATE_UNKNOWN: "restart_if_running",
}


def change_rows(decision: ApplyDecision) -> list[dict[str, Any]]:
    """The changes of a decision as the report and ``plan --json`` show them."""
    how = _HOW_SHOWN.get(decision.action, "update")
    return [{"field": c.field, "old": c.old, "new": c.new, "how": how} for c in decision.changes]


def applied_body(record: LedgerRecord, update: UpdateRecord | None) -> bytes:
    """The body batchsub last created or updated this job with."""
    done = update is not None and update.job_id == record.job_id and update.state == "done"
    return update.body if done and update is not None else record.body


def changes_between(old_body: bytes, new_body: bytes) -> list[Change]:
    """The fields whose held value differs (a field left out holds its default), by name."""
    old, new = orjson.loads(old_body), orjson.loads(new_body)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if key in detail_dialect.SERVER_FILLED and key not in new:
            before, after = old.get(key), None
        else:
            before, after = detail_dialect.held(old, key), detail_dialect.held(new, key)
        if _canon(before) != _canon(after):
            changes.append(Change(key, before, after))
    return changes


def decide_apply(
    spec: JobSpec,
    record: LedgerRecord | None,
    update: UpdateRecord | None,
    status: str | None,
    *,
    gone: bool = False,
) -> ApplyDecision:
    """The decision for ``spec``; ``status`` None: not read; ``gone``: the job is deleted."""
    if record is None or record.state is not LedgerState.CREATED or record.job_id is None:
        return ApplyDecision(ApplyAction.CREATE)
    if update is not None and update.job_id == record.job_id and update.state in UNFINISHED_UPDATES:
        reason = f"finishing the update left {update.state.value}"
        return ApplyDecision(ApplyAction.RESUME, reason=reason)
    if gone:
        return ApplyDecision(ApplyAction.MISSING, reason=f"job {record.job_id} was deleted")
    base = applied_body(record, update)
    if base == spec.body:
        return ApplyDecision(ApplyAction.UNCHANGED)
    changes = tuple(changes_between(base, spec.body))
    if not changes:
        return ApplyDecision(ApplyAction.UNCHANGED)
    blocked = [c.field for c in changes if _not_applicable(c, spec.body)]
    if blocked:
        reason = "an update cannot change " + ", ".join(
            f"{name} ({update_fields.NOT_BY_UPDATE.get(name, 'cannot be cleared')})"
            for name in blocked
        )
        return ApplyDecision(ApplyAction.NOT_APPLICABLE, changes, reason=reason)
    if all(c.in_place for c in changes):
        put = {c.field: _put_value(c, spec.body) for c in changes}
        return ApplyDecision(ApplyAction.IN_PLACE, changes, put)
    put = full_body(spec.body, changes)
    if status is None:
        return ApplyDecision(ApplyAction.UPDATE_UNKNOWN, changes, put)
    if status == RUNNING:
        return ApplyDecision(ApplyAction.RESTART, changes, put)
    if status == INIT or status in HALTED or status in FAILED:
        return ApplyDecision(ApplyAction.UPDATE, changes, put)
    why = f"status {status}" + (" (starting or stopping)" if status in ACTIVE else " is unclear")
    return ApplyDecision(ApplyAction.IN_TRANSITION, changes, reason=f"not updated: {why}")


def full_body(new_body: bytes, changes: tuple[Change, ...]) -> dict[str, Any]:
    """The PUT body of an update of a stopped job: the manifest, and the removed fields cleared."""
    new = orjson.loads(new_body)
    put = {k: v for k, v in new.items() if k not in update_fields.NOT_BY_UPDATE}
    for change in changes:
        if change.field not in new:
            put[change.field] = detail_dialect.cleared(change.field)[1]
    return put


def _not_applicable(change: Change, new_body: bytes) -> bool:
    if change.field in update_fields.NOT_BY_UPDATE:
        return True
    removed = change.field not in orjson.loads(new_body)
    return removed and not detail_dialect.cleared(change.field)[0]


def _put_value(change: Change, new_body: bytes) -> Any:
    new = orjson.loads(new_body)
    return new[change.field] if change.field in new else detail_dialect.cleared(change.field)[1]


def _canon(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, str) and value and value.isprintable() and len(value) <= 60:
        return value
    text = _canon(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."
