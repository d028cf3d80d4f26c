"""The status table: each Job/Pod situation -> phase, reason and message."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_operator import status
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.conditions import build_conditions
from finetune_operator.kinds.finetunejob import TRAINING_JUDGE
from finetune_operator.status import Outcome, view_job, view_pod
from tests.factories import MINIMAL_SPEC, job, pod, result_message, succeeded_result

# A FineTuneJob's attempts, judged as its controller judges them (the judge is the kind's, not a default).
assess_attempt = functools.partial(status.assess_attempt, judge=TRAINING_JUDGE)

NOW = datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
SPEC = FineTuneJobSpec.model_validate(
    {**MINIMAL_SPEC, "resources": {"memory": "16Gi"}, "backoffLimit": 2, "activeDeadlineSeconds": 3600}
)
QUEUED_SPEC = FineTuneJobSpec.model_validate({**MINIMAL_SPEC, "queueName": "gpu-queue"})
OOM = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-23T10:05:00Z"}

CASES: list[tuple[str, dict[str, Any] | None, list[dict[str, Any]], str, str, str]] = [
    # (case, job, pods, phase, reason, text expected in the message)
    ("no job yet", None, [], "Pending", "JobCreating", "creating"),
    ("job created, no pod", job(), [], "Pending", "Starting", "waiting for the trainer pod"),
    ("suspended by user", job(suspend=True), [], "Suspended", "Suspended", "spec.suspend"),
    (
        "pod unschedulable",
        job(active=1),
        [pod(unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")],
        "Pending",
        "Unschedulable",
        "Insufficient nvidia.com/gpu",
    ),
    ("pod running", job(active=1), [pod(phase="Running")], "Running", "Training", "is running"),
    (
        "image pull backing off",
        job(active=1),
        [
            pod(
                waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"},
                created="2026-11-23T10:00:00Z",
            )
        ],
        "Pending",
        "ImagePullBackOff",
        "cannot pull image trainer:1",
    ),
    (
        "image pull for too long",
        job(active=1),
        [pod(waiting={"reason": "ErrImagePull", "message": "not found"}, created="2026-11-23T09:00:00Z")],
        "Failed",
        "ImagePullError",
        "cannot pull image trainer:1: not found",
    ),
    (
        "invalid image name",
        job(active=1),
        [pod(waiting={"reason": "InvalidImageName", "message": "bad ref"})],
        "Failed",
        "ImagePullError",
        "bad ref",
    ),
    (
        "missing secret",
        job(active=1),
        [pod(waiting={"reason": "CreateContainerConfigError", "message": 'secret "finetune-storage" not found'})],
        "Pending",
        "ConfigError",
        'secret "finetune-storage" not found',
    ),
    (
        "trainer exited, job not complete yet",
        job(active=0),
        [pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed"})],
        "Running",
        "Finishing",
        "waiting for the Job to complete",
    ),
    (
        "succeeded with a result",
        job(succeeded=1, conditions=[{"type": "Complete"}]),
        [pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": succeeded_result()})],
        "Succeeded",
        "TrainingComplete",
        "adapter published to s3://",
    ),
    (
        "succeeded without a result",
        job(succeeded=1, conditions=[{"type": "Complete"}]),
        [pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": "done!"})],
        "Failed",
        "ResultMissing",
        "got: done!",
    ),
    (
        "data error with a result",
        job(failed=1, conditions=[{"type": "Failed", "reason": "PodFailurePolicy"}]),
        [
            pod(
                phase="Failed",
                terminated={
                    "exitCode": 2,
                    "reason": "Error",
                    "message": result_message(
                        result="failed", reason="DataError", message="train.jsonl line 7: field 'output' is missing"
                    ),
                },
            )
        ],
        "Failed",
        "DataError",
        "line 7: field 'output' is missing",
    ),
    (
        "data error with only a log tail",
        job(failed=1, conditions=[{"type": "Failed", "reason": "PodFailurePolicy"}]),
        [pod(phase="Failed", terminated={"exitCode": 2, "reason": "Error", "message": "ValueError: no rows left"})],
        "Failed",
        "DataError",
        "no rows left",
    ),
    (
        "killed for memory",
        job(failed=3, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
        [pod(phase="Failed", terminated=OOM)],
        "Failed",
        "OutOfMemory",
        "spec.resources.memory=16Gi",
    ),
    (
        "deadline",
        job(
            failed=1,
            conditions=[
                {
                    "type": "Failed",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ],
        ),
        [],
        "Failed",
        "DeadlineExceeded",
        "activeDeadlineSeconds=3600",
    ),
    (
        "crashes until backoff limit",
        job(failed=3, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
        [
            pod(
                phase="Failed",
                terminated={
                    "exitCode": 1,
                    "reason": "Error",
                    "message": "Segmentation fault",
                    "finishedAt": "2026-11-23T10:09:00Z",
                },
            )
        ],
        "Failed",
        "BackoffLimitExceeded",
        "last exit code 1: Segmentation fault",
    ),
    (
        "trainer names its own reason",
        job(failed=3, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
        [
            pod(
                phase="Failed",
                terminated={
                    "exitCode": 1,
                    "reason": "Error",
                    "message": result_message(
                        result="failed", reason="StorageUnavailable", message="s3://finetune unreachable after 5 tries"
                    ),
                },
            )
        ],
        "Failed",
        "StorageUnavailable",
        "unreachable after 5 tries",
    ),
    (
        "failure target before the job is marked failed",
        job(failed=1, conditions=[{"type": "FailureTarget", "reason": "PodFailurePolicy"}]),
        [pod(phase="Failed", terminated={"exitCode": 2, "reason": "Error", "message": "bad data"})],
        "Failed",
        "DataError",
        "bad data",
    ),
    (
        "retrying after a crash",
        job(failed=1),
        [pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error"})],
        "Pending",
        "Retrying",
        "retry 1 of spec.backoffLimit=2",
    ),
]


@pytest.mark.parametrize(("case", "job_body", "pods", "phase", "reason", "text"), CASES, ids=[c[0] for c in CASES])
def test_status_table(
    case: str, job_body: dict[str, Any] | None, pods: list[dict[str, Any]], phase: str, reason: str, text: str
) -> None:
    outcome = assess_attempt(
        view_job(job_body) if job_body else None, [view_pod(p) for p in pods], SPEC, NOW, image_pull_timeout=300
    )
    assert (outcome.phase, outcome.reason) == (phase, reason), outcome
    assert text in outcome.message


def test_queued_job_waits_for_kueue() -> None:
    outcome = assess_attempt(view_job(job(suspend=True)), [], QUEUED_SPEC, NOW, image_pull_timeout=300)
    assert (outcome.phase, outcome.reason) == ("Queued", "WaitingForAdmission")
    assert "gpu-queue" in outcome.message


def test_oom_wins_over_the_generic_backoff_reason() -> None:
    crashed = pod(
        phase="Failed", name="a", terminated={"exitCode": 1, "reason": "Error", "finishedAt": "2026-11-23T10:01:00Z"}
    )
    oom = pod(phase="Failed", name="b", terminated=OOM)
    failed = job(failed=2, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])
    outcome = assess_attempt(view_job(failed), [view_pod(crashed), view_pod(oom)], SPEC, NOW, image_pull_timeout=300)
    assert outcome.reason == "OutOfMemory"


def test_success_carries_the_trainer_result() -> None:
    done = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": succeeded_result()})
    outcome = assess_attempt(
        view_job(job(succeeded=1, conditions=[{"type": "Complete"}])),
        [view_pod(done)],
        SPEC,
        NOW,
        image_pull_timeout=300,
    )
    assert outcome.result is not None and outcome.result.metrics is not None
    assert outcome.result.metrics.train_loss == 1.25


def test_an_implausible_reason_from_the_trainer_is_not_copied() -> None:
    message = result_message(result="failed", reason="not a reason!", message="boom")
    failed = pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error", "message": message})
    outcome = assess_attempt(
        view_job(job(failed=1, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])),
        [view_pod(failed)],
        SPEC,
        NOW,
        image_pull_timeout=300,
    )
    assert outcome.reason == "BackoffLimitExceeded"
    assert "boom" in outcome.message


def test_conditions_keep_transition_time_while_status_holds() -> None:
    running = assess_attempt(view_job(job(active=1)), [view_pod(pod(phase="Running"))], SPEC, NOW, 300)
    first = build_conditions(running, [], 1, NOW)
    later = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    again = build_conditions(running, first, 2, later)
    by_type = {c["type"]: c for c in again}
    assert by_type["Running"]["status"] == "True"
    assert by_type["Running"]["lastTransitionTime"] == "2026-11-23T10:01:00Z"
    assert by_type["Running"]["observedGeneration"] == 2
    done = assess_attempt(
        view_job(job(succeeded=1, conditions=[{"type": "Complete"}])),
        [
            view_pod(
                pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": succeeded_result()})
            )
        ],
        SPEC,
        later,
        300,
    )
    final = {c["type"]: c for c in build_conditions(done, again, 2, later)}
    assert final["Running"]["lastTransitionTime"] == "2026-11-23T11:00:00Z"
    assert final["Succeeded"] | {"lastTransitionTime": None} == {
        "type": "Succeeded",
        "status": "True",
        "reason": "TrainingComplete",
        "message": done.message,
        "lastTransitionTime": None,
        "observedGeneration": 2,
    }
    assert final["Failed"]["status"] == "False"


def test_invalid_spec_condition() -> None:
    conditions = build_conditions(
        Outcome("Failed", "InvalidSpec", "spec.lora.r: too small"), [], 3, NOW, invalid="spec.lora.r: too small"
    )
    validated = next(c for c in conditions if c["type"] == "Validated")
    assert (validated["status"], validated["reason"], validated["message"]) == (
        "False",
        "InvalidSpec",
        "spec.lora.r: too small",
    )


def test_a_finished_job_waits_briefly_for_its_pods_final_status() -> None:
    """The Job and Pod watches are separate streams: Complete may arrive before the pod's exit."""
    done = view_job(job(succeeded=1, conditions=[{"type": "Complete"}]))  # completionTime 10:30
    running = [view_pod(pod(phase="Running"))]
    just_done = datetime(2026, 11, 23, 10, 30, 10, tzinfo=UTC)
    waiting = assess_attempt(done, running, SPEC, just_done, 300)
    assert (waiting.phase, waiting.reason, waiting.recheck_after) == ("Running", "Finishing", 50.0)
    # Kubernetes >= 1.31 marks SuccessCriteriaMet before Complete, with no completionTime yet.
    criteria = view_job(
        job(succeeded=1, conditions=[{"type": "SuccessCriteriaMet", "lastTransitionTime": "2026-11-23T10:30:00Z"}])
    )
    assert assess_attempt(criteria, running, SPEC, just_done, 300).reason == "Finishing"
    later = datetime(2026, 11, 23, 10, 31, 30, tzinfo=UTC)
    assert assess_attempt(done, running, SPEC, later, 300).reason == "ResultMissing"
    failed = view_job(
        job(
            failed=1,
            conditions=[
                {"type": "Failed", "reason": "BackoffLimitExceeded", "lastTransitionTime": "2026-11-23T10:30:00Z"}
            ],
        )
    )
    assert assess_attempt(failed, running, SPEC, just_done, 300).reason == "Finishing"
    assert assess_attempt(failed, running, SPEC, later, 300).reason == "BackoffLimitExceeded"
