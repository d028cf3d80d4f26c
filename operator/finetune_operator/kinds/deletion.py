"""Deleting a FineTuneJob with output.deletePolicy Delete: (resource, its Jobs, its Pods, now) -> a Plan.

The artifacts finalizer holds the FineTuneJob while, in order: its running trainer Job is deleted and
its pods are gone (a trainer still writing would re-create what the cleanup removed), a cleanup Job
deletes `<output>/<namespace>/<name>/<uid>/`, and the finalizer is released. Deletion never hangs
on the store: a failed cleanup, or none finished within the cleanup deadline, releases the
finalizer too, with a Warning event naming what was left behind. A failed cleanup is believed only
once its pod has stopped: the Job controller marks a Job past its deadline failed (FailureTarget)
while the pod is still being terminated, and a pod still retrying could delete the objects the
Warning says were left, the moment the store came back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api import FINETUNEJOB
from ..api.finetunejob import FineTuneJobSpec
from ..config import OperatorSettings
from ..manifests.job import build_cleanup_job, cleanup_job_name
from ..manifests.names import ARTIFACTS_FINALIZER, LABEL_COMPONENT, Owner
from ..manifests.runspec import owner_prefix
from ..plan import Action, Create, Delete, Event, Plan, set_finalizers
from ..status import last_result, parse_time, view_job, view_pod

CLEANUP_GRACE_SECONDS = 60
"""Beyond the cleanup Job's own deadline: time for its pod to be scheduled and its verdict to arrive."""


def _failure(pods: Sequence[Mapping[str, Any]], job_message: str | None) -> str:
    """Why the cleanup failed, in the trainer's words when its last pod left a result."""
    result = last_result(pods, "failed")
    if result is not None:
        return f"{result.reason}: {result.message}"
    return job_message or "the cleanup Job failed"


def plan_deletion(
    body: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    settings: OperatorSettings,
    now: datetime,
) -> Plan:
    meta = body["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if ARTIFACTS_FINALIZER not in finalizers:
        return Plan()
    release = set_finalizers(FINETUNEJOB.kind, body, [f for f in finalizers if f != ARTIFACTS_FINALIZER])
    owner = Owner.from_body(body)
    try:
        spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        message = "the spec is invalid, so where its objects are is unknown; nothing was deleted from the store"
        return Plan(actions=[release], events=[Event("Warning", "ArtifactCleanupFailed", message)])
    prefix = owner_prefix(owner, spec.output.uri, settings)
    name = cleanup_job_name(owner)
    cleanup = next((view_job(j) for j in jobs if j["metadata"]["name"] == name), None)
    cleanup_pods = [p for p in pods if _component(p) == "cleanup"]
    stopping = [p for p in cleanup_pods if view_pod(p).phase not in _POD_DONE]
    left = f"the objects under {prefix} are left in the store; delete them by hand"

    if cleanup is not None and cleanup.complete:
        done = f"deleted the objects under {prefix}"
        return Plan(actions=[Delete("Job", name), release], events=[Event("Normal", "ArtifactsDeleted", done)])
    if cleanup is not None and cleanup.finished and not stopping:
        why = _failure(cleanup_pods, cleanup.failed_message)
        message = f"cleanup failed ({why}); {left}"
        failed = Event("Warning", "ArtifactCleanupFailed", message)
        return Plan(actions=[Delete("Job", name), release], events=[failed])
    deleted_at = parse_time(meta.get("deletionTimestamp")) or now
    limit = settings.cleanup_deadline_seconds + CLEANUP_GRACE_SECONDS
    waited = (now - deleted_at).total_seconds()
    if waited >= limit:
        still = "; its pod was still stopping and may yet delete some of them" if stopping else ""
        message = f"cleanup did not finish within {limit}s; {left}{still}"
        actions: list[Action] = [Delete("Job", name)] if cleanup is not None else []
        return Plan(actions=[*actions, release], events=[Event("Warning", "ArtifactCleanupFailed", message)])

    plan = Plan(recheck_after=limit - waited)
    running = [v for v in map(view_job, jobs) if v.name != name and not v.finished]
    if running:
        plan.actions = [Delete("Job", running[0].name)]  # its pods go with it; their DELETED events bring us back
        return plan
    trainer_pods = [p for p in pods if _component(p) != "cleanup" and view_pod(p).phase not in _POD_DONE]
    if not trainer_pods and cleanup is None:
        plan.actions = [Create(build_cleanup_job(owner, spec, settings))]
        plan.events = [Event("Normal", "DeletingArtifacts", f"deleting the objects under {prefix}")]
    return plan


_POD_DONE = frozenset({"Succeeded", "Failed"})


def _component(pod: Mapping[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(LABEL_COMPONENT)
