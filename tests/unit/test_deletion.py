"""output.deletePolicy: the finalizer is held exactly while the policy is Delete, and deletion never hangs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.config import OperatorSettings
from finetune_operator.kinds.deletion import CLEANUP_GRACE_SECONDS, plan_deletion
from finetune_operator.kinds.finetunejob import Inputs as FineTuneJobInputs
from finetune_operator.kinds.finetunejob import plan as plan_finetunejob
from finetune_operator.manifests.job import RESTRICTED_CONTAINER_SECURITY, spec_hash
from finetune_operator.manifests.names import ARTIFACTS_FINALIZER
from tests.factories import MINIMAL_SPEC, UID, finalizers_of, finetunejob, job, pod, result_message, with_field

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(output_uri="s3://adapters")
DELETE = with_field(MINIMAL_SPEC, "output.deletePolicy", "Delete")
CLEANUP = "support-bot-0f1e2-cleanup"
PREFIX = f"s3://adapters/team-a/support-bot/{UID}/"


def _deleting(
    spec: dict[str, Any] = DELETE, seconds_ago: float = 5, finalizers: tuple[str, ...] = ()
) -> dict[str, Any]:
    body = finetunejob(spec)
    body["metadata"]["deletionTimestamp"] = (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body["metadata"]["finalizers"] = [*finalizers, ARTIFACTS_FINALIZER]
    return body


def _cleanup_job(**conditions: str) -> dict[str, Any]:
    found = job(conditions=[{"type": t, "reason": r} for t, r in conditions.items()])
    found["metadata"] = {"name": CLEANUP, "labels": {"app.kubernetes.io/component": "cleanup"}}
    return found


def _cleanup_pod(message: str) -> dict[str, Any]:
    found = pod(phase="Failed", name=f"{CLEANUP}-x", terminated={"exitCode": 1, "message": message})
    found["metadata"]["labels"] = {"app.kubernetes.io/component": "cleanup"}
    return found


def test_the_finalizer_follows_the_delete_policy_and_keeps_others() -> None:
    assert finalizers_of(plan_finetunejob(FineTuneJobInputs(finetunejob(DELETE), [], [], SETTINGS), NOW)) == [
        ARTIFACTS_FINALIZER
    ]
    assert (
        finalizers_of(plan_finetunejob(FineTuneJobInputs(finetunejob(), [], [], SETTINGS), NOW)) is None
    )  # Retain: nothing to hold
    held = finetunejob(MINIMAL_SPEC)
    held["metadata"]["finalizers"] = ["other.io/keep", ARTIFACTS_FINALIZER]
    assert finalizers_of(plan_finetunejob(FineTuneJobInputs(held, [], [], SETTINGS), NOW)) == [
        "other.io/keep"
    ]  # switched back to Retain


def test_the_delete_policy_is_not_part_of_what_an_attempt_runs() -> None:
    assert spec_hash(FineTuneJobSpec.model_validate(DELETE)) == spec_hash(FineTuneJobSpec.model_validate(MINIMAL_SPEC))


def test_a_running_trainer_is_stopped_before_any_cleanup() -> None:
    plan = plan_deletion(_deleting(), [job(active=1)], [pod(phase="Running")], SETTINGS, NOW)
    assert plan.deleted("Job") == ["support-bot-0f1e2-1"]
    assert plan.created() == [] and finalizers_of(plan) is None
    # Job gone, its pod still terminating: wait for it (it may still be writing).
    waiting = plan_deletion(_deleting(), [], [pod(phase="Running")], SETTINGS, NOW)
    assert waiting.created() == [] and finalizers_of(waiting) is None and waiting.recheck_after is not None


def test_cleanup_runs_the_trainer_image_on_the_whole_prefix_without_an_api_token() -> None:
    finished = job(succeeded=1, conditions=[{"type": "Complete"}])
    plan = plan_deletion(_deleting(), [finished], [pod(phase="Succeeded")], SETTINGS, NOW)
    [cleanup] = plan.created()
    assert cleanup["metadata"]["name"] == CLEANUP and "ownerReferences" not in cleanup["metadata"]
    assert cleanup["metadata"]["labels"]["finetune.dev/owner-uid"] == UID
    pod_spec = cleanup["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False and "serviceAccountName" not in pod_spec
    container = pod_spec["containers"][0]
    assert container["command"] == ["finetune-trainer", "cleanup"]
    assert container["securityContext"] == RESTRICTED_CONTAINER_SECURITY
    # A delete of objects needs no GPU; asking for the API's default one left it unschedulable on a
    # CPU node (found on the real node, whose kubelet advertises no GPUs).
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert "tolerations" not in pod_spec
    env = {e["name"]: e for e in container["env"]}
    assert f'"uri":"{PREFIX}"' in env["FINETUNE_RUN_SPEC"]["value"]
    assert env["FINETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "finetune-storage"
    assert cleanup["spec"]["activeDeadlineSeconds"] == SETTINGS.cleanup_deadline_seconds
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "DeletingArtifacts")]
    assert finalizers_of(plan) is None


def test_a_finished_cleanup_releases_only_our_finalizer() -> None:
    body = _deleting(finalizers=("other.io/keep",))
    done = plan_deletion(body, [_cleanup_job(Complete="")], [], SETTINGS, NOW)
    assert finalizers_of(done) == ["other.io/keep"] and done.deleted("Job") == [CLEANUP]
    assert [(e.type, e.reason) for e in done.events] == [("Normal", "ArtifactsDeleted")]
    message = result_message(result="failed", reason="StorageUnavailable", message="endpoint 10.0.0.1:9000 unreachable")
    failed = plan_deletion(body, [_cleanup_job(Failed="BackoffLimitExceeded")], [_cleanup_pod(message)], SETTINGS, NOW)
    assert finalizers_of(failed) == ["other.io/keep"]
    [event] = failed.events
    assert (event.type, event.reason) == ("Warning", "ArtifactCleanupFailed")
    assert "StorageUnavailable: endpoint 10.0.0.1:9000 unreachable" in event.message and PREFIX in event.message


def test_a_failed_cleanup_is_believed_only_once_its_pod_has_stopped() -> None:
    """Past its deadline the Job is FailureTarget while its pod still retries the store (found in CI:
    the store came back, the stopping pod deleted the objects the Warning said were left)."""
    past_deadline = _cleanup_job(FailureTarget="DeadlineExceeded")
    stopping = _cleanup_pod("")
    stopping["status"]["phase"] = "Running"
    waiting = plan_deletion(_deleting(), [past_deadline], [stopping], SETTINGS, NOW)
    assert finalizers_of(waiting) is None and waiting.events == [] and waiting.recheck_after is not None
    stopped = plan_deletion(_deleting(), [past_deadline], [], SETTINGS, NOW)
    assert finalizers_of(stopped) == [] and [e.reason for e in stopped.events] == ["ArtifactCleanupFailed"]
    limit = SETTINGS.cleanup_deadline_seconds + CLEANUP_GRACE_SECONDS
    late = plan_deletion(_deleting(seconds_ago=limit), [past_deadline], [stopping], SETTINGS, NOW)
    assert finalizers_of(late) == [] and "may yet delete" in late.events[0].message


def test_deletion_never_waits_past_the_cleanup_deadline() -> None:
    limit = SETTINGS.cleanup_deadline_seconds + CLEANUP_GRACE_SECONDS
    running = plan_deletion(_deleting(seconds_ago=limit - 30), [_cleanup_job()], [], SETTINGS, NOW)
    assert finalizers_of(running) is None and running.recheck_after == 30
    late = plan_deletion(_deleting(seconds_ago=limit), [_cleanup_job()], [], SETTINGS, NOW)
    assert finalizers_of(late) == [] and late.deleted("Job") == [CLEANUP]
    assert [(e.type, e.reason) for e in late.events] == [("Warning", "ArtifactCleanupFailed")]


def test_without_our_finalizer_deletion_is_left_to_the_garbage_collector() -> None:
    body = _deleting()
    body["metadata"]["finalizers"] = ["other.io/keep"]
    plan = plan_deletion(body, [job(active=1)], [], SETTINGS, NOW)
    assert plan.created() == [] and plan.deleted("Job") == [] and finalizers_of(plan) is None


def test_own_events_reconcile_only_when_something_is_unobserved() -> None:
    from finetune_operator.kinds.base import needs_reconcile

    fresh = finetunejob(DELETE)
    seen = finetunejob(DELETE, status={"observedGeneration": 1, "phase": "Running"})
    changed = finetunejob(DELETE, status={"observedGeneration": 1}, generation=2)
    assert needs_reconcile("ADDED", fresh) and needs_reconcile("MODIFIED", changed)
    assert not needs_reconcile("MODIFIED", seen)  # our own status patch, or the trainer's progress
    assert needs_reconcile(None, seen)  # listed at start-up: anything may have happened meanwhile
    assert not needs_reconcile("DELETED", fresh)
    assert needs_reconcile("MODIFIED", _deleting(), ARTIFACTS_FINALIZER)
    assert not needs_reconcile("MODIFIED", _deleting(), None)
