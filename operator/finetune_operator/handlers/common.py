"""What the FineTuneJob and EvalRun handlers share: the child indices and executing a Plan.

Jobs and Pods the operator created are kept in kopf indices keyed by their owner's uid, so a
reconcile costs one GET (the resource, fresh) and only writes what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from ..kube import (
    AdoptionConflictError,
    create_or_adopt,
    delete_custom,
    delete_job,
    get_custom,
    patch_custom_spec,
    patch_custom_status,
    patch_job,
)
from ..manifests.names import LABEL_MANAGED_BY, LABEL_OWNER_UID, MANAGED_BY
from ..reconcile import Plan, merge_patch
from .runtime import Runtime

CHILD_RETRY_DELAYS = (1.0, 3.0, 9.0)
CHILDREN: dict[str, Any] = {LABEL_OWNER_UID: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY}


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


@kopf.index("batch", "v1", "jobs", labels=CHILDREN)
def trainer_jobs(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {labels[LABEL_OWNER_UID]: _trim(body, keep_spec=True)}


@kopf.index("", "v1", "pods", labels=CHILDREN)
def trainer_pods(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {labels[LABEL_OWNER_UID]: _trim(body, keep_spec=False)}


def execute(runtime: Runtime, kind: str, plural: str, resource: Mapping[str, Any], plan: Plan) -> None:
    """Perform a plan's API calls in order; status last, so a crash before it just repeats the plan."""
    namespace, name = resource["metadata"]["namespace"], resource["metadata"]["name"]
    for obj in plan.create:
        create_or_adopt(runtime.api, obj)
    if plan.job_patch:
        patch_job(runtime.api, namespace, *plan.job_patch)
    if plan.delete_job:
        delete_job(runtime.api, namespace, plan.delete_job)
    previous = resource.get("status") or {}
    patch = merge_patch(previous, plan.status)
    if patch:
        patch_custom_status(runtime.api, plural, namespace, name, patch)
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


def children_of(indices: Mapping[str, Any], body: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """The trainer Jobs and Pods indexed under this resource's uid."""
    uid = body["metadata"]["uid"]
    return list(indices["trainer_jobs"].get(uid, [])), list(indices["trainer_pods"].get(uid, []))


def reconcile_resource(
    runtime: Runtime,
    kind: str,
    plural: str,
    *,
    namespace: str,
    name: str,
    plan_for: Callable[[dict[str, Any]], Plan],
    again: Callable[[], None],
) -> None:
    """One reconcile of one resource, whatever its kind: read it fresh, plan, execute, maybe recheck later.

    The per-resource lock keeps reconciles woken by different watches from interleaving.
    """
    key = (f"{plural}/{namespace}", name)
    with runtime.locks(key):
        body = get_custom(runtime.api, plural, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone or going: the garbage collector removes the children
        plan = plan_for(body)
        guarded(runtime, kind, namespace, name, lambda: execute(runtime, kind, plural, body, plan))
    if plan.recheck_after is not None:
        runtime.rechecks.schedule(key, plan.recheck_after + 1, again)


def forget_resource(runtime: Runtime, plural: str, namespace: str, name: str) -> None:
    """Drop the in-memory lock and pending recheck of a deleted resource."""
    key = (f"{plural}/{namespace}", name)
    runtime.locks.discard(key)
    runtime.rechecks.cancel(key)


def guarded(runtime: Runtime, kind: str, namespace: str, name: str, step: Callable[[], None]) -> None:
    """Run one reconcile step; API failures become a kopf retry (and a counted error)."""
    try:
        step()
    except (ApiException, AdoptionConflictError) as error:
        runtime.metrics.reconcile_errors.labels(kind, type(error).__name__).inc()
        reason = getattr(error, "reason", None) or str(error)
        raise kopf.TemporaryError(f"reconcile of {kind} {namespace}/{name} failed: {reason}", delay=10) from error


def with_retries(call: Callable[[], None], logger: Any) -> None:
    """Event handlers are not retried by kopf, so ride out short API blips here (bounded); a longer
    outage is healed by the owner's next event or the operator's resume on restart."""
    import time

    for delay in (*CHILD_RETRY_DELAYS, None):
        try:
            call()
            return
        except kopf.TemporaryError as error:
            if delay is None:
                logger.warning("%s (giving up until the next event)", error)
                return
            time.sleep(delay)
