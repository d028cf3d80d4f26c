"""The reconcile planner: attempts, idempotency, GitOps re-apply semantics, invalid specs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_operator.config import OperatorSettings
from finetune_operator.kinds.finetunejob import Inputs as FineTuneJobInputs
from finetune_operator.kinds.finetunejob import plan as plan_finetunejob
from finetune_operator.plan import Plan, is_idle, merge_patch
from tests.factories import MINIMAL_SPEC, applied, finetunejob, job, pod, succeeded_result

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()


def _plan(
    body: dict[str, Any], jobs: list[dict[str, Any]] | None = None, pods: list[dict[str, Any]] | None = None
) -> Plan:
    return plan_finetunejob(FineTuneJobInputs(body, jobs or [], pods or [], SETTINGS), NOW)


def _apply(body: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """What the apiserver holds after the handler sent the plan's merge patch."""
    return applied(body, plan)


def _completed_job(spec_hash: str) -> dict[str, Any]:
    return job(succeeded=1, conditions=[{"type": "Complete"}], spec_hash=spec_hash)


def _done_pod() -> dict[str, Any]:
    return pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": succeeded_result()})


def test_new_finetunejob_creates_identity_and_job_for_attempt_one() -> None:
    plan = _plan(finetunejob())
    assert [o["kind"] for o in plan.created()] == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    assert plan.status["attempt"] == 1
    assert plan.status["jobName"] == plan.created()[-1]["metadata"]["name"]
    assert plan.status["phase"] == "Pending"
    assert plan.status["observedGeneration"] == 1
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "AttemptStarted")]


def test_reconciling_again_is_a_no_op_once_status_is_recorded() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    created = _plan(finetunejob())
    plan = _plan(body, jobs=[job(spec_hash=body["status"]["specHash"])])
    assert plan.created() == []
    assert plan.patches("Job") == [] and plan.deleted("Job") == []
    again = _apply(body, plan)
    assert merge_patch(again["status"], _plan(again, jobs=[job()]).status) == {}
    assert is_idle(_plan(again, jobs=[job()]), again["status"])
    assert not is_idle(Plan(status={"phase": "Running"}), {"phase": "Pending"})
    assert is_idle(Plan(status={"phase": "Running"}, recheck_after=5), {"phase": "Running"})
    assert not is_idle(created, body["status"])  # it would create children and post an event
    assert created.created()[-1]["metadata"]["name"] == body["status"]["jobName"]


def test_a_replayed_create_computes_the_same_children() -> None:
    """A crash between creating the Job and recording the status: the retry adopts, never duplicates."""
    first, second = _plan(finetunejob()), _plan(finetunejob())
    assert [o["metadata"]["name"] for o in first.created()] == [o["metadata"]["name"] for o in second.created()]


def test_missing_job_of_an_in_flight_attempt_is_recreated() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    plan = _plan(body, jobs=[])
    assert [o["kind"] for o in plan.created()][-1] == "Job"
    assert plan.status["phase"] == "Pending"


def test_invalid_spec_fails_without_creating_anything() -> None:
    body = finetunejob(spec={**MINIMAL_SPEC, "training": {"learningRate": -1}})
    plan = _plan(body)
    assert plan.created() == []
    assert plan.status["phase"] == "Failed"
    validated = next(c for c in plan.status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False"
    assert validated["reason"] == "InvalidSpec"
    assert validated["message"].startswith("spec.training.learningRate:")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSpec")]
    # Recording it again does not repeat the Warning event.
    assert _plan(_apply(body, plan)).events == []


def test_fixing_an_invalid_spec_starts_the_first_attempt() -> None:
    invalid = finetunejob(spec={**MINIMAL_SPEC, "lora": {"r": 0}})
    failed = _apply(invalid, _plan(invalid))
    fixed = {**failed, "spec": MINIMAL_SPEC, "metadata": {**failed["metadata"], "generation": 2}}
    plan = _plan(fixed)
    assert plan.status["attempt"] == 1
    assert plan.created()[-1]["kind"] == "Job"


def test_success_records_adapter_and_full_progress() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    plan = _plan(body, jobs=[_completed_job(body["status"]["specHash"])], pods=[_done_pod()])
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["adapter"]["uri"].endswith("/adapter/")
    assert plan.status["metrics"]["trainLoss"] == 1.25
    assert plan.status["progress"] == {"percent": 100, "etaSeconds": 0}
    assert plan.status["completionTime"] == "2026-11-23T10:30:00Z"
    assert plan.finished is not None and plan.finished.phase == "Succeeded"


def test_spec_change_after_success_starts_attempt_two_and_keeps_history() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    done = _apply(body, _plan(body, jobs=[_completed_job(body["status"]["specHash"])], pods=[_done_pod()]))
    changed = {
        **done,
        "spec": {**MINIMAL_SPEC, "training": {"learningRate": 1e-5}},
        "metadata": {**done["metadata"], "generation": 2},
    }
    plan = _plan(changed, jobs=[_completed_job(done["status"]["specHash"])])
    assert plan.status["attempt"] == 2
    assert plan.created()[-1]["metadata"]["name"].endswith("-2")
    assert plan.status["history"] == [
        {
            "attempt": 1,
            "generation": 1,
            "jobName": done["status"]["jobName"],
            "phase": "Succeeded",
            "reason": "TrainingComplete",
            "adapterUri": done["status"]["adapter"]["uri"],
            "completionTime": "2026-11-23T10:30:00Z",
        }
    ]
    # The new attempt starts clean: no adapter, progress or metrics of the old one.
    assert plan.status["adapter"] is None and plan.status["progress"] is None and plan.status["metrics"] is None


def test_suspend_only_change_after_success_starts_nothing() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    done = _apply(body, _plan(body, jobs=[_completed_job(body["status"]["specHash"])], pods=[_done_pod()]))
    paused = {**done, "spec": {**MINIMAL_SPEC, "suspend": True}, "metadata": {**done["metadata"], "generation": 2}}
    plan = _plan(paused, jobs=[_completed_job(done["status"]["specHash"])])
    assert plan.created() == []
    assert plan.status == {"observedGeneration": 2}


def test_suspend_while_running_suspends_the_job() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    paused = {**body, "spec": {**MINIMAL_SPEC, "suspend": True}, "metadata": {**body["metadata"], "generation": 2}}
    running = job(active=1, spec_hash=body["status"]["specHash"])
    plan = _plan(paused, jobs=[running], pods=[pod(phase="Running")])
    assert plan.patches("Job") == [(running["metadata"]["name"], {"spec": {"suspend": True}})]
    assert plan.created() == []


def test_spec_change_while_running_is_deferred_then_runs_when_the_attempt_ends() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    first_hash = body["status"]["specHash"]
    changed = {**body, "spec": {**MINIMAL_SPEC, "lora": {"r": 64}}, "metadata": {**body["metadata"], "generation": 2}}
    plan = _plan(changed, jobs=[job(active=1, spec_hash=first_hash)], pods=[pod(phase="Running")])
    assert plan.created() == []
    assert plan.status["phase"] == "Running"
    assert plan.status["observedGeneration"] == 1
    deferred = next(c for c in plan.status["conditions"] if c["type"] == "SpecChangeDeferred")
    assert deferred["status"] == "True" and "attempt 2" in deferred["message"]
    running = _apply(changed, plan)
    finished = _plan(running, jobs=[_completed_job(first_hash)], pods=[_done_pod()])
    assert finished.status["attempt"] == 2
    assert finished.created()[-1]["metadata"]["name"].endswith("-2")
    assert finished.status["history"][0]["phase"] == "Succeeded"
    assert finished.finished is not None and finished.finished.phase == "Succeeded"


def test_image_that_never_pulls_fails_and_stops_the_job() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    stuck = pod(waiting={"reason": "InvalidImageName", "message": "couldn't parse image name"})
    plan = _plan(body, jobs=[job(active=1)], pods=[stuck])
    assert plan.status["phase"] == "Failed"
    assert plan.deleted("Job") == [job()["metadata"]["name"]]
    assert plan.events[0].type == "Warning" and plan.events[0].reason == "ImagePullError"


def test_failed_attempt_never_reports_an_adapter() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    message = '{"result": "failed", "reason": "StorageUnavailable", "adapter": {"uri": "s3://half/"}}'
    failed = pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error", "message": message})
    plan = _plan(
        body, jobs=[job(failed=4, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])], pods=[failed]
    )
    assert plan.status["phase"] == "Failed"
    assert "adapter" not in plan.status


def test_pod_failures_counts_the_failed_pod_before_the_job_controller_does() -> None:
    # backoffLimit 0: the Job says FailureTarget while its `failed` count is still 0.
    body = _apply(finetunejob(), _plan(finetunejob()))
    failed = pod(phase="Failed", terminated={"exitCode": 1, "reason": "Error", "message": "boom"})
    lagging = job(failed=0, conditions=[{"type": "FailureTarget", "reason": "BackoffLimitExceeded"}])
    plan = _plan(body, jobs=[lagging], pods=[failed])
    assert plan.status["phase"] == "Failed" and plan.status["podFailures"] == 1
    # A deleted pod is gone from the list but still in the Job's count.
    plan = _plan(body, jobs=[job(failed=2, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])])
    assert plan.status["podFailures"] == 2


def test_pods_of_an_older_attempt_are_ignored() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    old = pod(attempt=7, phase="Failed", terminated={"exitCode": 2, "reason": "Error", "message": "old failure"})
    plan = _plan(body, jobs=[job(active=1)], pods=[old, pod(phase="Running")])
    assert plan.status["phase"] == "Running"


def test_merge_patch_is_minimal_and_leaves_other_keys_alone() -> None:
    current = {"phase": "Running", "progress": {"step": 5, "loss": 2.0}, "adapter": {"uri": "s3://x/"}}
    desired = {"phase": "Running", "progress": {"percent": 100}, "adapter": None, "metrics": None}
    assert merge_patch(current, desired) == {"progress": {"percent": 100}, "adapter": None}


def test_events_mark_phase_changes_and_warnings_not_every_step() -> None:
    body = finetunejob()
    body = _apply(body, _plan(body))  # AttemptStarted
    digest = body["status"]["specHash"]
    # JobCreated already says the pod is awaited: Starting costs no write, however long it lasts.
    for seconds in (0, 60):
        starting = plan_finetunejob(
            FineTuneJobInputs(body, [job(spec_hash=digest)], [], SETTINGS), NOW + timedelta(seconds=seconds)
        )
        assert starting.status == {} and starting.events == [] and starting.recheck_after is None
    waiting = _plan(body, jobs=[job(spec_hash=digest)], pods=[pod(waiting={"reason": "CreateContainerConfigError"})])
    assert [(e.type, e.reason) for e in waiting.events] == [("Warning", "ConfigError")]
    body = _apply(body, waiting)
    running = _plan(body, jobs=[job(active=1, spec_hash=digest)], pods=[pod(phase="Running")])
    assert [(e.type, e.reason) for e in running.events] == [("Normal", "Training")]


def test_a_brief_finishing_step_is_not_written_but_a_lasting_one_is() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    digest = body["status"]["specHash"]
    body = _apply(body, _plan(body, jobs=[job(active=1, spec_hash=digest)], pods=[pod(phase="Running")]))
    exited = pod(phase="Succeeded", terminated={"exitCode": 0, "finishedAt": "2026-11-23T09:59:59Z"})
    brief = _plan(body, jobs=[job(spec_hash=digest)], pods=[exited])
    assert brief.status == {} and brief.recheck_after == 4
    later = plan_finetunejob(
        FineTuneJobInputs(body, [job(spec_hash=digest)], [exited], SETTINGS), NOW + timedelta(seconds=30)
    )
    assert later.status["conditions"][1]["reason"] == "Finishing"


def test_startime_alone_is_not_worth_a_write_and_a_restarting_pod_is_shown() -> None:
    body = _apply(finetunejob(), _plan(finetunejob()))
    digest = body["status"]["specHash"]
    assert _plan(body, jobs=[job(spec_hash=digest)]).status == {}  # the Job's startTime waits for a real change
    failed = pod(phase="Failed", name="a", terminated={"exitCode": 1})
    retrying = _apply(body, _plan(body, jobs=[job(failed=1, spec_hash=digest)], pods=[failed]))
    assert retrying["status"]["conditions"][1]["reason"] == "Retrying"
    again = [failed, pod(name="b", created="2026-11-23T09:59:00Z")]
    plan = _plan(retrying, jobs=[job(failed=1, spec_hash=digest)], pods=again)
    assert plan.status["conditions"][1]["reason"] == "Starting"  # after a retry, the new pod is news


@pytest.mark.parametrize(
    ("held", "phase", "reason"),
    [({"suspend": True}, "Suspended", "Suspended"), ({"queueName": "team-a"}, "Queued", "WaitingForAdmission")],
)
def test_a_held_job_is_recorded_held_at_once_so_its_job_costs_no_second_write(
    held: dict[str, Any], phase: str, reason: str
) -> None:
    body = finetunejob(spec={**MINIMAL_SPEC, **held})
    plan = _plan(body)
    assert plan.created()[-1]["spec"]["suspend"] is True
    assert plan.status["phase"] == phase
    running = next(c for c in plan.status["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"]) == ("False", reason)
    assert plan.events[0].message.startswith(f"created Job {plan.status['jobName']} for attempt 1; ")
    body = _apply(body, plan)
    suspended_job = job(suspend=True, spec_hash=body["status"]["specHash"])
    del suspended_job["status"]["startTime"]  # a suspended Job has not started
    observed = _plan(body, jobs=[suspended_job])
    assert observed.status == {} and observed.events == []


# --- spec.adapter.fineTuneJobRef: start from the adapter another FineTuneJob published -----------------

DPO_SPEC = {
    **MINIMAL_SPEC,
    "objective": "dpo",
    "dataset": {"uri": "s3://data/pairs.jsonl", "format": "preference"},
    "adapter": {"fineTuneJobRef": {"name": "support-sft"}},
}
SFT_ADAPTER = "s3://finetune/team-a/support-sft/u1/attempt-2/adapter/"


def _sft(phase: str, adapter: str | None = SFT_ADAPTER) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "attempt": 2}
    if adapter:
        status["adapter"] = {"uri": adapter}
    if phase == "Failed":
        status["conditions"] = [{"type": "Failed", "status": "True", "message": "OutOfMemory at step 3"}]
    return finetunejob(name="support-sft", status=status)


def _plan_dpo(body: dict[str, Any], sft: dict[str, Any] | None, jobs: list[dict[str, Any]] | None = None) -> Plan:
    inputs = FineTuneJobInputs(body, jobs or [], [], SETTINGS, None, sft)
    return plan_finetunejob(inputs, NOW)


@pytest.mark.parametrize(
    ("sft", "message"),
    [
        (None, "FineTuneJob support-sft does not exist (yet)"),
        (_sft("Running", adapter=None), "waiting for FineTuneJob support-sft to succeed (it is Running)"),
    ],
)
def test_a_job_waits_for_the_adapter_it_starts_from(sft: dict[str, Any] | None, message: str) -> None:
    plan = _plan_dpo(finetunejob(DPO_SPEC, name="support-dpo"), sft)
    assert plan.created() == []
    assert plan.status["phase"] == "Pending"
    running = next(c for c in plan.status["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"], running["message"]) == ("False", "WaitingForFineTuneJob", message)


def test_a_failed_referenced_job_fails_the_dependent_with_its_reason() -> None:
    plan = _plan_dpo(finetunejob(DPO_SPEC, name="support-dpo"), _sft("Failed"))
    assert plan.created() == [] and plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "FineTuneJobFailed" and "OutOfMemory at step 3" in failed["message"]


def test_the_published_adapter_goes_into_the_run_spec_and_the_status() -> None:
    import json

    plan = _plan_dpo(finetunejob(DPO_SPEC, name="support-dpo"), _sft("Succeeded"))
    trainer_job = plan.created()[-1]
    container = trainer_job["spec"]["template"]["spec"]["containers"][0]
    run_spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "FINETUNE_RUN_SPEC"))
    assert run_spec["job"]["adapter"] == {"uri": SFT_ADAPTER}
    assert plan.status["startAdapter"] == {"uri": SFT_ADAPTER, "fineTuneJob": "support-sft", "fineTuneJobAttempt": 2}


def test_a_running_attempt_keeps_its_start_while_the_referenced_job_retrains() -> None:
    started = _plan_dpo(finetunejob(DPO_SPEC, name="support-dpo"), _sft("Succeeded"))
    body = _apply(finetunejob(DPO_SPEC, name="support-dpo"), started)
    running = [job(spec_hash=body["status"]["specHash"])]
    plan = _plan_dpo(body, _sft("Running", adapter=None), jobs=running)
    assert plan.created() == [] and plan.status.get("phase") != "Pending"
    assert "startAdapter" not in plan.status  # unchanged: the start it recorded


def test_the_referenced_job_finishing_wakes_the_jobs_that_start_from_it() -> None:
    from finetune_operator.api import EVALRUN, FINETUNEJOB
    from finetune_operator.kinds.base import EVALRUNS_BY_JOB, FINETUNEJOBS_BY_ADAPTER_JOB
    from finetune_operator.kinds.finetunejob import dependents

    key = ("team-a", "support-sft")
    indices = {EVALRUNS_BY_JOB: {key: ["sft-eval"]}, FINETUNEJOBS_BY_ADAPTER_JOB: {key: ["support-dpo"]}}
    assert dependents("MODIFIED", _sft("Succeeded"), indices) == [(EVALRUN, "sft-eval"), (FINETUNEJOB, "support-dpo")]
    assert dependents("MODIFIED", _sft("Running", adapter=None), indices) == []
