"""What one reconcile decided: an ordered list of API actions, the status to write, the events to post.

A Plan is data. Planning (kinds/, attempts.py) builds it from what was observed and never calls the
API; the executor (executor.py) performs it. A new child object is a new `Create`, `Patch` or
`Delete` in the list, never a new field here or a new branch in the executor.

Each action runs in one of two stages around the status write:

- `before`: what the status about to be written refers to (the trainer identity and Job the status
  names, a finalizer that must hold before anything it guards exists). A crash after them and before
  the status just repeats the plan, which adopts what exists.
- `after`: what must not keep the status from being recorded (a FineTuneJob's own EvalRun: an RBAC
  failure there must not lose a finished training's outcome), and a finalizer release, which comes
  after everything it guarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .status import Outcome

Stage = Literal["before", "after"]
PatchType = Literal["merge", "strategic"]


@dataclass(frozen=True)
class Create:
    """Create `obj`, or adopt the object of that name if its owner is ours (kube.create_or_adopt)."""

    obj: Mapping[str, Any]
    stage: Stage = "before"

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])


@dataclass(frozen=True)
class Patch:
    """Patch an object in the resource's namespace: a JSON merge patch, or a strategic merge patch
    (built-in kinds only)."""

    kind: str
    name: str
    body: Mapping[str, Any]
    stage: Stage = "before"
    patch_type: PatchType = "merge"


@dataclass(frozen=True)
class Delete:
    """Delete an object in the resource's namespace (its dependents in the background); gone already is done."""

    kind: str
    name: str
    stage: Stage = "before"


Action = Create | Patch | Delete


EVENT_MESSAGE_LIMIT = 1024
"""Bytes: the apiserver rejects a longer Event message (UTF-8: a log tail's progress bars are 3 bytes a
character), and the Event is lost; the condition keeps the whole message."""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str

    def __post_init__(self) -> None:
        encoded = self.message.encode()
        if len(encoded) > EVENT_MESSAGE_LIMIT:
            clipped = encoded[: EVENT_MESSAGE_LIMIT - 3].decode(errors="ignore") + "..."
            object.__setattr__(self, "message", clipped)


@dataclass
class Plan:
    """API actions of one reconcile, in the order the executor performs them within each stage."""

    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    finished: Outcome | None = None
    """The attempt's final outcome, when this plan records it (for the duration histogram)."""
    recheck_after: float | None = None
    """Seconds after which to plan again with no event to wake the resource (a timeout expiring)."""
    guarded: bool = False
    """Write the status only onto the resourceVersion it was planned on (a 409 otherwise, and the
    reconcile plans again on a fresh read): for a status that is a record (a Model's versions), where a
    plan on a stale read would lose or repeat what another write added."""

    def created(self, kind: str | None = None) -> list[Mapping[str, Any]]:
        """The objects this plan creates (of one kind, or all), in order."""
        return [a.obj for a in self.actions if isinstance(a, Create) and kind in (None, a.kind)]

    def patches(self, kind: str) -> list[tuple[str, Mapping[str, Any]]]:
        """(name, body) of each patch of this kind, in order."""
        return [(a.name, a.body) for a in self.actions if isinstance(a, Patch) and a.kind == kind]

    def deleted(self, kind: str) -> list[str]:
        """Names of the objects of this kind this plan deletes, in order."""
        return [a.name for a in self.actions if isinstance(a, Delete) and a.kind == kind]


def is_idle(plan: Plan, status: Mapping[str, Any]) -> bool:
    """Whether executing the plan against this status would make no API call (a recheck aside)."""
    quiet = not plan.actions and not plan.events and plan.finished is None
    return quiet and not merge_patch(status, plan.status)


def set_finalizers(kind: str, body: Mapping[str, Any], finalizers: list[str]) -> Patch:
    """The resource's whole new metadata.finalizers list: added before anything it guards exists,
    released after everything else. The resourceVersion makes a concurrent change (another
    controller's finalizer) a 409 and a retry rather than a lost write."""
    meta = body["metadata"]
    adding = set(finalizers) >= set(meta.get("finalizers") or [])
    change: dict[str, Any] = {"finalizers": finalizers}
    if meta.get("resourceVersion"):
        change["resourceVersion"] = meta["resourceVersion"]
    return Patch(kind, meta["name"], {"metadata": change}, stage="before" if adding else "after")


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest JSON merge patch (RFC 7386) turning `current` into `desired` for the keys in `desired`.

    Keys absent from `desired` are left alone: status.progress belongs to the trainer.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if value is None:
            if old is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = merge_patch(old, value)
            if nested:
                patch[key] = nested
        elif value != old:
            patch[key] = value
    return patch


def replacing_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that makes `current` equal `desired`: unlike `merge_patch`, keys missing from
    `desired` are deleted (a dropped threshold must go)."""
    patch = merge_patch(current, desired)
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = replacing_patch(old, value)
            if nested:
                patch[key] = nested
    patch.update({key: None for key in current if key not in desired})
    return patch
