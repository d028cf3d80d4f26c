"""An attempt's Outcome -> the resource's conditions (Validated, Running, Succeeded, Failed and extras).

lastTransitionTime moves only when a condition's status changes, so `kubectl wait` and dashboards
see real transitions, not every reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .status import Outcome, format_time

CONDITION_TYPES = ("Validated", "Running", "Succeeded", "Failed")


def _condition(ctype: str, true: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": ctype, "status": "True" if true else "False", "reason": reason, "message": message}


def build_conditions(
    outcome: Outcome,
    previous: Sequence[Mapping[str, Any]],
    generation: int,
    now: datetime,
    *,
    invalid: str | None = None,
    deferred: str | None = None,
    extra: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The full condition set; lastTransitionTime only moves when a condition's status changes."""
    ended = (outcome.reason, outcome.message) if outcome.terminal else ("InProgress", "the attempt has not finished")
    conditions = [
        _condition("Validated", invalid is None, "InvalidSpec" if invalid else "SpecValid", invalid or "spec is valid"),
        _condition("Running", outcome.phase == "Running", outcome.reason, outcome.message),
        _condition("Succeeded", outcome.phase == "Succeeded", *ended),
        _condition("Failed", outcome.phase == "Failed", *ended),
    ]
    if deferred:
        conditions.append(_condition("SpecChangeDeferred", True, "AttemptInProgress", deferred))
    return stamp_conditions([*conditions, *extra], previous, generation, now)


def condition_of(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    """The condition of type `ctype` in a resource's status, or {} when it has none."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def make_condition(ctype: str, status: bool | None, reason: str, message: str) -> dict[str, Any]:
    """A condition without its timestamps; status None is Unknown."""
    condition = _condition(ctype, bool(status), reason, message)
    if status is None:
        condition["status"] = "Unknown"
    return condition


def stamp_conditions(
    conditions: Sequence[dict[str, Any]], previous: Sequence[Mapping[str, Any]], generation: int, now: datetime
) -> list[dict[str, Any]]:
    """Add lastTransitionTime (kept while a condition's status is unchanged) and observedGeneration."""
    before = {c.get("type"): c for c in previous}
    stamp = format_time(now)
    stamped = []
    for condition in conditions:
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime")
        time = old["lastTransitionTime"] if same and old else stamp
        stamped.append({**condition, "lastTransitionTime": time, "observedGeneration": generation})
    return stamped
