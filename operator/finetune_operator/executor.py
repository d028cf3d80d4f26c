"""Perform a Plan: its `before` actions, the status write, events and metrics, its `after` actions.

The executor knows actions, not children: a new child object is a new action in some plan, never a
new branch here. It talks to the API through `Api`, a protocol of the calls it makes; kube.KubeApi
implements it over the kubernetes client, and the unit tests over a recording stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .api import Kind
from .metrics import OperatorMetrics
from .plan import Action, Create, Delete, Event, Patch, Plan, Stage, merge_patch


class Api(Protocol):
    """The API calls the reconcile loop makes, keyed by kind name, in the resource's namespace."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create_or_adopt(self, obj: Mapping[str, Any]) -> bool: ...
    def patch(
        self, kind: str, namespace: str, name: str, body: Mapping[str, Any], patch_type: str = "merge"
    ) -> None: ...
    def patch_status(
        self, kind: str, namespace: str, name: str, status_patch: Mapping[str, Any], resource_version: str | None = None
    ) -> str: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...


PostEvent = Callable[[Mapping[str, Any], Event], None]
"""Posts an Event about the resource (kopf.event in the operator)."""


def _perform(api: Api, namespace: str, action: Action) -> None:
    if isinstance(action, Create):
        api.create_or_adopt(action.obj)
    elif isinstance(action, Patch):
        api.patch(action.kind, namespace, action.name, action.body, action.patch_type)
    elif isinstance(action, Delete):
        api.delete(action.kind, namespace, action.name)


def _perform_stage(api: Api, plan: Plan, stage: Stage, kind: Kind, meta: Mapping[str, Any]) -> bool:
    """Perform one stage's actions in order; whether one of them changed the resource itself (its
    finalizers), so that its resourceVersion moved."""
    touched = False
    for action in (a for a in plan.actions if a.stage == stage):
        _perform(api, meta["namespace"], action)
        touched |= isinstance(action, Patch) and action.kind == kind.kind and action.name == meta["name"]
    return touched


def execute(
    api: Api, kind: Kind, resource: Mapping[str, Any], plan: Plan, *, post_event: PostEvent, metrics: OperatorMetrics
) -> str | None:
    """Perform the plan in order; the status in the middle, so a crash before it just repeats the plan.

    Returns the resource's resourceVersion afterwards when known (None after a patch of the
    resource's own metadata not followed by a status write)."""
    meta = resource["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    version: str | None = meta.get("resourceVersion")
    if _perform_stage(api, plan, "before", kind, meta):
        version = None
    previous = resource.get("status") or {}
    patch = merge_patch(previous, plan.status)
    if patch:
        guard = version if plan.guarded else None
        version = api.patch_status(kind.kind, namespace, name, patch, guard)
    for event in plan.events:
        post_event(resource, event)
    new_phase = plan.status.get("phase")
    if new_phase and new_phase != previous.get("phase"):
        metrics.observe_transition(new_phase, plan.events[-1].reason if plan.events else "", kind.kind)
    if plan.finished:
        merged = {**previous, **plan.status}
        metrics.observe_finished(plan.finished.phase, merged.get("startTime"), merged.get("completionTime"), kind.kind)
    if _perform_stage(api, plan, "after", kind, meta):
        version = None
    return version
