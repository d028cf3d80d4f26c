"""kopf handlers for FineTuneJob. Thin: gather what is observed, call `plan_finetunejob`, execute the plan.

Three watches wake the same reconcile: the FineTuneJob itself (create, spec update, operator
resume), its trainer Jobs and their Pods. Jobs and Pods are kept in kopf indices keyed by the
owner's uid, so a reconcile costs one GET (the FineTuneJob, fresh) and only writes what changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from ..api import GROUP, VERSION
from ..kube import AdoptionConflictError, create_or_adopt, delete_job, get_custom, patch_custom_status, patch_job
from ..manifests.names import LABEL_FINETUNEJOB, LABEL_MANAGED_BY, LABEL_OWNER_UID, MANAGED_BY
from ..reconcile import Plan, merge_patch, plan_finetunejob
from .runtime import MEMO_KEY, Runtime

PLURAL = "finetunejobs"
CHILD_RETRY_DELAYS = (1.0, 3.0, 9.0)
_CHILDREN: dict[str, Any] = {
    LABEL_FINETUNEJOB: kopf.PRESENT,
    LABEL_OWNER_UID: kopf.PRESENT,
    LABEL_MANAGED_BY: MANAGED_BY,
}


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


@kopf.index("batch", "v1", "jobs", labels=_CHILDREN)
def trainer_jobs(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {labels[LABEL_OWNER_UID]: _trim(body, keep_spec=True)}


@kopf.index("", "v1", "pods", labels=_CHILDREN)
def trainer_pods(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {labels[LABEL_OWNER_UID]: _trim(body, keep_spec=False)}


def _execute(runtime: Runtime, ftj: Mapping[str, Any], plan: Plan) -> None:
    namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
    for obj in plan.create:
        create_or_adopt(runtime.api, obj)
    if plan.job_patch:
        patch_job(runtime.api, namespace, *plan.job_patch)
    if plan.delete_job:
        delete_job(runtime.api, namespace, plan.delete_job)
    previous = ftj.get("status") or {}
    patch = merge_patch(previous, plan.status)
    if patch:
        patch_custom_status(runtime.api, PLURAL, namespace, name, patch)
    for event in plan.events:
        kopf.event(cast(kopf.Body, ftj), type=event.type, reason=event.reason, message=event.message)
    new_phase = plan.status.get("phase")
    if new_phase and new_phase != previous.get("phase"):
        runtime.metrics.observe_transition(new_phase, plan.events[-1].reason if plan.events else "")
    if plan.finished:
        merged = {**previous, **plan.status}
        runtime.metrics.observe_finished(plan.finished.phase, merged.get("startTime"), merged.get("completionTime"))


def reconcile(
    runtime: Runtime,
    *,
    namespace: str,
    name: str,
    jobs: kopf.Index[str, dict[str, Any]],
    pods: kopf.Index[str, dict[str, Any]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    with runtime.locks((namespace, name)):
        ftj = get_custom(runtime.api, PLURAL, namespace, name)
        if ftj is None or ftj["metadata"].get("deletionTimestamp"):
            return  # gone or going: the garbage collector removes the children
        uid = ftj["metadata"]["uid"]
        plan = plan_finetunejob(ftj, list(jobs.get(uid, [])), list(pods.get(uid, [])), runtime.settings, runtime.now())
        try:
            _execute(runtime, ftj, plan)
        except (ApiException, AdoptionConflictError) as error:
            runtime.metrics.reconcile_errors.labels("FineTuneJob", type(error).__name__).inc()
            reason = getattr(error, "reason", None) or str(error)
            raise kopf.TemporaryError(f"reconcile of {namespace}/{name} failed: {reason}", delay=10) from error
    if plan.recheck_after is not None:
        runtime.rechecks.schedule(
            (namespace, name),
            plan.recheck_after + 1,
            lambda: reconcile(runtime, namespace=namespace, name=name, jobs=jobs, pods=pods, logger=logger),
        )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def finetunejob_changed(
    *,
    namespace: str | None,
    name: str,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    reconcile(
        memo[MEMO_KEY],
        namespace=namespace or "",
        name=name,
        jobs=kwargs["trainer_jobs"],
        pods=kwargs["trainer_pods"],
        logger=logger,
    )


@kopf.on.event("batch", "v1", "jobs", labels=_CHILDREN)
@kopf.on.event("", "v1", "pods", labels=_CHILDREN)
def child_changed(
    *,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    # Event handlers are not retried by kopf, so ride out short API blips here (bounded); a longer
    # outage is healed by the owner's next event or the operator's resume on restart.
    for delay in (*CHILD_RETRY_DELAYS, None):
        try:
            reconcile(
                memo[MEMO_KEY],
                namespace=namespace or "",
                name=labels[LABEL_FINETUNEJOB],
                jobs=kwargs["trainer_jobs"],
                pods=kwargs["trainer_pods"],
                logger=logger,
            )
            return
        except kopf.TemporaryError as error:
            if delay is None:
                logger.warning("%s (giving up until the next event)", error)
                return
            time.sleep(delay)


@kopf.on.event(GROUP, VERSION, PLURAL)
def observe_finetunejob(
    *, type: str, namespace: str | None, name: str, status: Mapping[str, Any], memo: Any, **_: Any
) -> None:
    runtime: Runtime = memo[MEMO_KEY]
    namespace = namespace or ""
    if type == "DELETED":
        runtime.metrics.forget(namespace, name)
        runtime.locks.discard((namespace, name))
        runtime.rechecks.cancel((namespace, name))
    else:
        runtime.metrics.observe_status(namespace, name, status)
