"""What the FineTuneJob and EvalRun handlers share: the child indices and executing a Plan.

Jobs and Pods the operator created are kept in kopf indices keyed by their owner's uid, and the
FineTuneJobs as watched, so a reconcile costs at most one GET (the resource, fresh; none when the
watched copy is current and nothing is to be done) and only writes what changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from ..api import GROUP, VERSION
from ..kube import (
    AdoptionConflictError,
    create_or_adopt,
    delete_custom,
    delete_job,
    get_custom,
    patch_custom_finalizers,
    patch_custom_spec,
    patch_custom_status,
    patch_job,
)
from ..manifests.names import LABEL_MANAGED_BY, LABEL_OWNER_UID, MANAGED_BY
from ..reconcile import Plan, is_idle, merge_patch
from .runtime import Runtime

RETRY_SECONDS = 10.0
log = logging.getLogger(__name__)
CHILDREN: dict[str, Any] = {LABEL_OWNER_UID: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY}
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass(frozen=True, slots=True)
class Packed:
    """An indexed body kept as its compact JSON, decoded when a reconcile reads it.

    The indices hold a body per trainer Job, Pod and FineTuneJob for as long as these live; decoded,
    each costs about five times its JSON in Python objects (every key a string of its own), which
    was most of the operator's memory per live resource. A reconcile reads a handful of them."""

    text: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Packed:
        return cls(json.dumps(body, separators=(",", ":")))

    def unpack(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.text))


def _trim(body: Mapping[str, Any], keep_spec: bool) -> dict[str, Any]:
    """Keep only what status derivation reads: indices hold every trainer Job and Pod in memory."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    trimmed: dict[str, Any] = {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "status": dict(body.get("status") or {}),
    }
    if keep_spec:
        trimmed["spec"] = {"suspend": spec.get("suspend")}
    else:
        trimmed["spec"] = {"containers": [{"image": c.get("image")} for c in spec.get("containers") or []]}
    return trimmed


# Indices are async: pure and cheap, they need no thread (a sync one waits for a free one).
@kopf.index("batch", "v1", "jobs", labels=CHILDREN)
async def trainer_jobs(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, Packed]:
    return {labels[LABEL_OWNER_UID]: Packed.of(_trim(body, keep_spec=True))}


@kopf.index("", "v1", "pods", labels=CHILDREN)
async def trainer_pods(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, Packed]:
    return {labels[LABEL_OWNER_UID]: Packed.of(_trim(body, keep_spec=False))}


def _watched(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as planning reads it, without the bulk nobody reads (managedFields, kubectl's
    last-applied copy of the spec)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations") or {}
    if LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


@kopf.index(GROUP, VERSION, "finetunejobs")
async def watched_finetunejobs(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Packed]:
    return {(namespace or "", name): Packed.of(_watched(body))}


INDICES = ("trainer_jobs", "trainer_pods", "watched_finetunejobs", "evalruns_by_job")


def indices_in(handler_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's indices out of a handler's arguments. They are live views, read by the queued
    reconcile when it runs; the rest of the arguments (the event's body) must not be kept for it."""
    return {index: handler_kwargs[index] for index in INDICES}


def resource_key(plural: str, namespace: str, name: str) -> tuple[str, str]:
    """A resource's key in the reconcile queue and the lock table."""
    return (f"{plural}/{namespace}", name)


def queue_reconcile(runtime: Runtime, plural: str, namespace: str, name: str, reconcile: Callable[[], None]) -> None:
    """Run a resource's reconcile on the queue's threads as soon as one is free (kube.DelayedCalls)."""
    runtime.reconciles.schedule(resource_key(plural, namespace, name), 0, reconcile)


def execute(runtime: Runtime, kind: str, plural: str, resource: Mapping[str, Any], plan: Plan) -> str | None:
    """Perform a plan's API calls in order; status last, so a crash before it just repeats the plan.

    Returns the resource's resourceVersion afterwards when known (None after a finalizer patch)."""
    meta = resource["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    version: str | None = meta.get("resourceVersion")
    # A finalizer is added before anything it guards exists, and released after everything else.
    adding = plan.finalizers is not None and set(plan.finalizers) >= set(meta.get("finalizers") or [])
    if plan.finalizers is not None and adding:
        patch_custom_finalizers(
            runtime.api, plural, namespace, name, finalizers=plan.finalizers, resource_version=meta["resourceVersion"]
        )
        version = None
    for obj in plan.create:
        create_or_adopt(runtime.api, obj)
    if plan.job_patch:
        patch_job(runtime.api, namespace, *plan.job_patch)
    if plan.delete_job:
        delete_job(runtime.api, namespace, plan.delete_job)
    previous = resource.get("status") or {}
    patch = merge_patch(previous, plan.status)
    if patch:
        version = patch_custom_status(runtime.api, plural, namespace, name, patch)
    for event in plan.events:
        kopf.event(cast(kopf.Body, resource), type=event.type, reason=event.reason, message=event.message)
    new_phase = plan.status.get("phase")
    if new_phase and new_phase != previous.get("phase"):
        runtime.metrics.observe_transition(new_phase, plan.events[-1].reason if plan.events else "", kind)
    if plan.finished:
        merged = {**previous, **plan.status}
        runtime.metrics.observe_finished(
            plan.finished.phase, merged.get("startTime"), merged.get("completionTime"), kind
        )
    # The job's own EvalRun last: the training outcome above is recorded even if this fails (and retries).
    if plan.evalrun_create:
        create_or_adopt(runtime.api, plan.evalrun_create)
    if plan.evalrun_patch:
        patch_custom_spec(runtime.api, "evalruns", namespace, *plan.evalrun_patch)
    if plan.evalrun_delete:
        delete_custom(runtime.api, "evalruns", namespace, plan.evalrun_delete)
    if plan.finalizers is not None and not adding:
        # No status patch precedes a release (only deletion plans release), so the version read still holds.
        patch_custom_finalizers(
            runtime.api, plural, namespace, name, finalizers=plan.finalizers, resource_version=meta["resourceVersion"]
        )
        version = None
    return version


def children_of(
    indices: Mapping[str, Any], body: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The trainer Jobs and Pods indexed under this resource's uid."""
    uid = body["metadata"]["uid"]
    jobs, pods = indices["trainer_jobs"].get(uid, []), indices["trainer_pods"].get(uid, [])
    return [job.unpack() for job in jobs], [pod.unpack() for pod in pods]


def reconcile_resource(
    runtime: Runtime,
    kind: str,
    plural: str,
    *,
    namespace: str,
    name: str,
    plan_for: Callable[[dict[str, Any]], Plan],
    again: Callable[[], None],
    plan_deleting: Callable[[dict[str, Any]], Plan] | None = None,
    watched: Packed | None = None,
) -> None:
    """One reconcile of one resource, whatever its kind: read it fresh, plan, execute, maybe recheck later.

    The per-resource lock keeps reconciles woken by different watches from interleaving. A resource
    being deleted is planned by `plan_deleting` (its finalizer's work), or left to the garbage
    collector, which removes the children once it is gone. An API failure is retried after
    RETRY_SECONDS, for as long as it lasts: the watch events that woke this reconcile will not come again.

    Most child events change nothing (a Job's status catching up, a pod's container starting): if
    the watched copy is at the version of our last read or write, a GET would return it, so a plan
    on it that does nothing needs no GET at all. Anything else is planned on a fresh read.
    """
    key = resource_key(plural, namespace, name)
    try:
        with runtime.locks(key):
            plan = _idle_plan(runtime, key, watched, plan_for)
            if plan is None:
                body = get_custom(runtime.api, plural, namespace, name)
                if body is None:
                    return
                if body["metadata"].get("deletionTimestamp"):
                    if plan_deleting is None:
                        return
                    plan = plan_deleting(body)
                else:
                    plan = plan_for(body)
                runtime.versions.pop(key, None)  # unknown until the plan is through
                version = execute(runtime, kind, plural, body, plan)
                if version:
                    runtime.versions[key] = version
    except (ApiException, AdoptionConflictError) as error:
        runtime.metrics.reconcile_errors.labels(kind, type(error).__name__).inc()
        reason = getattr(error, "reason", None) or str(error)
        log.warning(
            "reconcile of %s %s/%s failed (%s); retrying in %.0fs", kind, namespace, name, reason, RETRY_SECONDS
        )
        runtime.reconciles.schedule(key, RETRY_SECONDS, again)
        return
    runtime.metrics.reconciles.labels(kind).inc()
    if plan.recheck_after is not None:
        runtime.reconciles.schedule(key, plan.recheck_after + 1, again)


def _idle_plan(
    runtime: Runtime,
    key: tuple[str, str],
    packed: Packed | None,
    plan_for: Callable[[dict[str, Any]], Plan],
) -> Plan | None:
    """The plan on the watched copy if that copy is current and the plan does nothing, else None."""
    if packed is None:
        return None
    watched = packed.unpack()
    meta = watched.get("metadata") or {}
    if meta.get("deletionTimestamp") or runtime.versions.get(key) != meta.get("resourceVersion"):
        return None
    plan = plan_for(watched)
    return plan if is_idle(plan, watched.get("status") or {}) else None


def needs_reconcile(event_type: str | None, body: Mapping[str, Any], finalizer: str | None = None) -> bool:
    """Whether a watch event of the resource itself calls for a reconcile.

    Level-triggered: everything after the first reconcile of a spec generation is driven by the
    children's events (and timed rechecks), so the resource's own events matter only when it is
    listed (operator start: anything may have happened meanwhile), when its spec generation is not
    yet observed (created, or changed), or when it is being deleted holding our finalizer. Its
    other events are our own status patches and the trainer's progress reports: no reconcile,
    which is also why kopf's change-detecting handlers (and their annotation patches) are not used.
    """
    if event_type == "DELETED":
        return False
    meta = body.get("metadata") or {}
    if event_type is None:
        return True
    if meta.get("deletionTimestamp"):
        return finalizer is not None and finalizer in (meta.get("finalizers") or [])
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is None or observed != meta.get("generation")


def forget_resource(runtime: Runtime, plural: str, namespace: str, name: str) -> None:
    """Drop the in-memory lock and pending reconcile of a deleted resource."""
    key = resource_key(plural, namespace, name)
    runtime.locks.discard(key)
    runtime.reconciles.cancel(key)
    runtime.versions.pop(key, None)
