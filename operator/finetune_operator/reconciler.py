"""The one reconcile loop every kind runs: read -> gather -> plan -> execute -> recheck.

`wake(runtime, kind, namespace, name, indices)` is how anything asks for a reconcile: watch events
of the resource, of its children and of the resources it depends on, rechecks and retries. It only
queues (workqueue.DelayedCalls: at most one pending per resource), so kopf drops the event's body
at once, and events that arrive before the reconcile starts share it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from .api import Kind
from .executor import execute
from .kinds import CONTROLLERS, Controller
from .kinds.base import OBSERVED, Indices, watched
from .kube import AdoptionConflictError
from .plan import Event, Plan, is_idle
from .runtime import Runtime
from .workqueue import Key

RETRY_SECONDS = 10.0
log = logging.getLogger(__name__)


def resource_key(kind: Kind, namespace: str, name: str) -> Key:
    """A resource's key in the reconcile queue and the lock table."""
    return (f"{kind.plural}/{namespace}", name)


def wake(runtime: Runtime, kind: Kind, namespace: str, name: str, indices: Indices) -> None:
    """Reconcile the resource on the queue's threads as soon as one is free."""
    controller = CONTROLLERS[kind.kind]
    runtime.reconciles.schedule(
        resource_key(kind, namespace, name), 0, lambda: reconcile(runtime, controller, namespace, name, indices)
    )


def post_event(resource: Mapping[str, Any], event: Event) -> None:
    kopf.event(cast(kopf.Body, resource), type=event.type, reason=event.reason, message=event.message)


def reconcile(runtime: Runtime, controller: Controller[Any], namespace: str, name: str, indices: Indices) -> None:
    """One reconcile of one resource, whatever its kind: read it fresh, plan, execute, maybe recheck later.

    The per-resource lock keeps reconciles woken by different watches from interleaving. A resource
    being deleted is planned by the controller's `plan_deletion` (its finalizer's work), or left to
    the garbage collector, which removes the children once it is gone. An API failure is retried
    after RETRY_SECONDS, for as long as it lasts: the watch events that woke this reconcile will not
    come again.

    Most child events change nothing (a Job's status catching up, a pod's container starting): if
    the watched copy is at the version of our last read or write, a GET would return it, so a plan
    on it that does nothing needs no GET at all. Anything else is planned on a fresh read.
    """
    kind = controller.kind
    key = resource_key(kind, namespace, name)

    def again() -> None:
        reconcile(runtime, controller, namespace, name, indices)

    def plan_for(body: Mapping[str, Any]) -> Plan:
        return controller.plan(controller.gather(body, with_observed(body), runtime.settings), runtime.now())

    def with_observed(body: Mapping[str, Any]) -> Indices:
        wanted = controller.observe(body)
        if not wanted:
            return indices
        found = {(k, n): [obj] if (obj := runtime.api.get(k, namespace, n)) is not None else [] for k, n in wanted}
        return {**indices, OBSERVED: found}

    try:
        with runtime.locks(key):
            plan = _idle_plan(runtime, key, watched(indices, kind, namespace, name), plan_for)
            if plan is None:
                body = runtime.api.get(kind.kind, namespace, name)
                if body is None:
                    return
                if body["metadata"].get("deletionTimestamp"):
                    if controller.plan_deletion is None:
                        return
                    plan = controller.plan_deletion(controller.gather(body, indices, runtime.settings), runtime.now())
                else:
                    plan = plan_for(body)
                runtime.versions.pop(key, None)  # unknown until the plan is through
                version = execute(runtime.api, kind, body, plan, post_event=post_event, metrics=runtime.metrics)
                if version:
                    runtime.versions[key] = version
    except (ApiException, AdoptionConflictError) as error:
        runtime.metrics.reconcile_errors.labels(kind.kind, type(error).__name__).inc()
        reason = getattr(error, "reason", None) or str(error)
        log.warning(
            "reconcile of %s %s/%s failed (%s); retrying in %.0fs", kind.kind, namespace, name, reason, RETRY_SECONDS
        )
        runtime.reconciles.schedule(key, RETRY_SECONDS, again)
        return
    runtime.metrics.reconciles.labels(kind.kind).inc()
    if plan.recheck_after is not None:
        runtime.reconciles.schedule(key, plan.recheck_after + 1, again)


def _idle_plan(
    runtime: Runtime, key: Key, copy: Mapping[str, Any] | None, plan_for: Callable[[Mapping[str, Any]], Plan]
) -> Plan | None:
    """The plan on the watched copy if that copy is current and the plan does nothing, else None."""
    if copy is None:
        return None
    meta = copy.get("metadata") or {}
    if meta.get("deletionTimestamp") or runtime.versions.get(key) != meta.get("resourceVersion"):
        return None
    plan = plan_for(copy)
    return plan if is_idle(plan, copy.get("status") or {}) else None


def wake_dependents(
    runtime: Runtime, kind: Kind, event_type: str | None, body: Mapping[str, Any], indices: Indices
) -> None:
    """Wake the resources that read this one (Controller.dependents), when what they read changed.

    Listed (operator start) and deleted always count as a change."""
    controller = CONTROLLERS[kind.kind]
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta["name"]
    key = resource_key(kind, namespace, name)
    shown = controller.mirrored(body)
    changed = event_type in (None, "DELETED") or runtime.mirrored.get(key) != shown
    if event_type == "DELETED":
        runtime.mirrored.pop(key, None)
    else:
        runtime.mirrored[key] = shown
    if changed:
        for other, other_name in controller.dependents(event_type, body, indices):
            wake(runtime, other, namespace, other_name, indices)


def forget(runtime: Runtime, kind: Kind, namespace: str, name: str) -> None:
    """Drop the in-memory lock, pending reconcile and known version of a deleted resource."""
    key = resource_key(kind, namespace, name)
    runtime.locks.discard(key)
    runtime.reconciles.cancel(key)
    runtime.versions.pop(key, None)
