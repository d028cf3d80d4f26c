"""FineTuneSchedule without a cluster: cron times across DST, the spec's rules, and the plan (when a check
starts, what a finished check starts, idempotent run names, Forbid and Replace, history)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_operator.api import format_validation_error
from finetune_operator.api.schedule import FineTuneScheduleSpec, valid_cron
from finetune_operator.config import OperatorSettings
from finetune_operator.cron import due, latest_time, next_time
from finetune_operator.kinds.chores import ChoreJobs
from finetune_operator.kinds.schedule import Inputs, pending, plan
from finetune_operator.manifests.names import Owner
from finetune_operator.manifests.schedule import ANNOTATION_RUN, RUN_NOW, check_job_name, run_name
from finetune_operator.plan import Plan
from tests import factories

NOW = datetime(2026, 12, 7, 10, 0, 30, tzinfo=UTC)
UID = "5c4d3b2a-0000-4000-8000-000000000000"
TEMPLATE = {
    "baseModel": {"uri": "s3://finetune/models/tiny"},
    "dataset": {"uri": "s3://finetune/datasets/support.jsonl"},
    "output": {"uri": "s3://finetune/out"},
}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- cron ---


def test_a_daily_time_in_a_zone_with_dst_fires_once_a_day_across_both_transitions() -> None:
    # Berlin: 2026-03-29 02:00 -> 03:00 (no 02:30 that day), 2026-10-25 03:00 -> 02:00 (02:30 twice).
    times = [next_time("30 2 * * *", "Europe/Berlin", utc("2026-03-27T12:00:00+00:00"))]
    for _ in range(3):
        times.append(next_time("30 2 * * *", "Europe/Berlin", times[-1]))
    assert [t.isoformat() for t in times] == [
        "2026-03-28T01:30:00+00:00",  # 02:30 CET
        "2026-03-29T01:30:00+00:00",  # the skipped 02:30, read with the offset before the gap: 03:30 CEST
        "2026-03-30T00:30:00+00:00",  # 02:30 CEST
        "2026-03-31T00:30:00+00:00",
    ]
    autumn = [next_time("30 2 * * *", "Europe/Berlin", utc("2026-10-24T12:00:00+00:00"))]
    for _ in range(2):
        autumn.append(next_time("30 2 * * *", "Europe/Berlin", autumn[-1]))
    # 02:30 happens twice on the 25th: it fires at the first (CEST), once.
    assert [t.isoformat() for t in autumn] == [
        "2026-10-25T00:30:00+00:00",
        "2026-10-26T01:30:00+00:00",
        "2026-10-27T01:30:00+00:00",
    ]
    # Asked from inside the repeated hour (02:00 CET, the second pass), the next time is still ahead of it.
    inside = utc("2026-10-25T01:00:00+00:00")
    assert next_time("30 2 * * *", "Europe/Berlin", inside) == utc("2026-10-26T01:30:00+00:00")
    assert next_time("0 * * * *", "Europe/Berlin", inside) > inside


def test_missed_cron_times_collapse_into_the_latest_and_none_is_due_twice() -> None:
    last = utc("2026-12-07T09:00:00+00:00")
    assert due("*/10 * * * *", "UTC", last, utc("2026-12-07T09:35:10+00:00")) == utc("2026-12-07T09:30:00+00:00")
    assert due("*/10 * * * *", "UTC", utc("2026-12-07T09:30:00+00:00"), utc("2026-12-07T09:35:10+00:00")) is None
    assert latest_time("0 3 * * *", "UTC", utc("2026-12-07T03:00:00+00:00")) == utc("2026-12-07T03:00:00+00:00")


@pytest.mark.parametrize(
    ("expression", "valid"),
    [
        ("0 3 * * *", True),
        ("*/15 9-17 * * mon-fri", True),
        ("0 0 1,15 * *", True),
        ("@daily", True),
        ("61 * * * *", False),
        ("0 24 * * *", False),
        ("* * * *", False),
        ("0 0 * * * *", False),
        ("every day", False),
    ],
)
def test_cron_expressions_are_checked_field_by_field(expression: str, valid: bool) -> None:
    assert valid_cron(expression) is valid
    spec = {"jobTemplate": {"spec": TEMPLATE}, "schedule": expression}
    if valid:
        FineTuneScheduleSpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError) as error:
            FineTuneScheduleSpec.model_validate(spec)
        assert format_validation_error(error.value).startswith("spec.schedule: schedule is not a valid cron")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"triggers": {"drift": {"threshold": 0.2}}}, "spec.triggers.drift: drift needs documents"),
        (
            {"triggers": {"feedback": {"uri": "s3://b/f/", "negativeAtMost": 4, "positiveAtLeast": 4}}},
            "spec.triggers.feedback.negativeAtMost: negativeAtMost must be below positiveAtLeast",
        ),
        (
            {"model": "support", "jobTemplate": {"spec": {**TEMPLATE, "output": {"uri": "s3://a/", "model": "other"}}}},
            "spec.model: jobTemplate.spec.output.model differs from model",
        ),
        ({"triggers": {"newData": {"uri": "file:///d/", "secretRef": {"name": "s"}}}}, "secretRef is only used"),
    ],
)
def test_bad_trigger_settings_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        FineTuneScheduleSpec.model_validate({"jobTemplate": {"spec": TEMPLATE}, **change})
    assert message in format_validation_error(error.value)


# --- the plan ---


def schedule(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneSchedule",
        "metadata": {
            "name": "support",
            "namespace": "team-a",
            "uid": UID,
            "generation": 1,
            "creationTimestamp": "2026-12-07T09:00:00Z",
            **meta,
        },
        "spec": {"jobTemplate": {"spec": TEMPLATE}, **(spec or {})},
        "status": status or {},
    }


OWNER = Owner("FineTuneSchedule", "team-a", "support", UID)


def check_pod(number: int, outcome: dict[str, Any] | None, *, failed: bool = False) -> dict[str, Any]:
    result = (
        {"result": "failed", "reason": "StorageUnavailable", "message": "unreachable"}
        if failed
        else {
            "result": "succeeded",
            "message": "checked",
            "schedule": outcome,
        }
    )
    exit_code = 1 if failed else 0
    pod = factories.pod(
        phase="Failed" if failed else "Succeeded", terminated={"exitCode": exit_code, "message": json.dumps(result)}
    )
    pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] = check_job_name(OWNER, number)
    return pod


def check_job(number: int, *, done: bool = True, failed: bool = False) -> dict[str, Any]:
    job = factories.job(conditions=[{"type": "Failed" if failed else "Complete"}] if done else None)
    job["metadata"]["name"] = check_job_name(OWNER, number)
    return job


def run_job(number: int, phase: str | None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": run_name("support", number),
            "annotations": {ANNOTATION_RUN: str(number), "finetune.dev/run-reasons": "manual"},
            "creationTimestamp": "2026-12-07T09:30:00Z",
            "ownerReferences": [{"uid": UID}],
        },
        "status": {"phase": phase} if phase else {},
    }


def run_plan(
    body: dict[str, Any],
    runs: list[dict[str, Any]] | None = None,
    children: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], []),
    now: datetime = NOW,
) -> Plan:
    return plan(Inputs(body, runs or [], OperatorSettings(), ChoreJobs(*children)), now)


def checking(number: int, due: list[str]) -> dict[str, Any]:
    job = check_job_name(OWNER, number)
    return {
        "check": {"number": number, "job": job, "state": "Checking", "due": due, "startTime": "2026-12-07T10:00:00Z"}
    }


def test_a_new_run_now_annotation_starts_one_check_with_reason_manual_and_is_remembered() -> None:
    body = schedule(annotations={RUN_NOW: "1"})
    assert pending(body)
    result = run_plan(body)
    (job,) = result.created("Job")
    assert job["metadata"]["name"] == check_job_name(OWNER, 1)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    run_spec = json.loads(env["FINETUNE_RUN_SPEC"])
    assert run_spec["kind"] == "ScheduleCheckRun" and run_spec["run"] == 1 and run_spec["due"] == ["manual"]
    assert run_spec["uri"] == f"s3://finetune/out/schedules/team-a/support/{UID}/"
    assert job["spec"]["template"]["spec"].get("automountServiceAccountToken") is False
    assert result.status["manualTrigger"] == "1" and result.status["check"]["state"] == "Checking"
    assert result.guarded
    # Once recorded, the same annotation is no news and starts nothing more.
    again = schedule(annotations={RUN_NOW: "1"}, status={"manualTrigger": "1", **checking(1, ["manual"])})
    assert not pending(again)
    assert run_plan(again, children=([check_job(1, done=False)], [])).created() == []


def test_a_check_that_finds_a_run_due_creates_the_run_named_after_it_and_deletes_itself_after() -> None:
    outcome = {
        "reasons": ["manual", "12 negative feedback records >= 10"],
        "datasetUri": f"s3://finetune/out/schedules/team-a/support/{UID}/runs/3/data/",
        "rows": 40,
        "feedback": {
            "records": 20,
            "negative": 12,
            "pendingNegative": 12,
            "corrections": 5,
            "positive": 6,
            "consumed": 0,
            "invalid": 1,
        },
        "problems": ["feedback/a.jsonl line 4: invalid JSON (Expecting value at column 1)"],
        "problemCount": 1,
    }
    body = schedule({"model": "support"}, status=checking(3, ["manual"]))
    children = ([check_job(3)], [check_pod(3, outcome)])
    result = run_plan(body, children=children)
    (run,) = result.created("FineTuneJob")
    assert run["metadata"]["name"] == "support-3"
    assert run["metadata"]["ownerReferences"][0]["uid"] == UID
    assert run["metadata"]["labels"]["finetune.dev/finetuneschedule"] == "support"
    assert run["metadata"]["annotations"][ANNOTATION_RUN] == "3"
    assert run["spec"]["dataset"]["uri"] == outcome["datasetUri"] and run["spec"]["output"]["model"] == "support"
    assert result.deleted("Job") == [check_job_name(OWNER, 3)]
    assert result.status["lastRun"]["reasons"] == outcome["reasons"]
    assert result.status["feedback"]["pendingNegative"] == 12
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["InputProblems"]["status"] == "True" and "line 4" in conditions["InputProblems"]["message"]
    # The same finished check planned again (the status write was lost, or the operator restarted before it):
    # the same name, which the executor adopts on 409 -- never a second run.
    assert run_plan(body, children=children).created("FineTuneJob")[0]["metadata"]["name"] == "support-3"


def test_a_check_that_finds_nothing_due_records_its_counts_and_the_next_poll_waits_poll_seconds() -> None:
    spec = {"triggers": {"feedback": {"uri": "s3://b/feedback/", "minNegative": 40}, "pollSeconds": 60}}
    outcome = {"drift": {"score": 0.04, "threshold": 0.25, "documents": 2, "reference": "s3://x"}, "newObjects": 0}
    result = run_plan(schedule(spec, status=checking(1, [])), children=([check_job(1)], [check_pod(1, outcome)]))
    assert result.created() == [] and result.status["drift"]["score"] == 0.04
    assert result.status["check"]["state"] == "Done"
    done = factories.applied(schedule(spec, status=checking(1, [])), result)
    assert run_plan(done, now=NOW + timedelta(seconds=30)).created() == []
    later = run_plan(done, now=NOW + timedelta(seconds=61)).created("Job")
    assert [j["metadata"]["name"] for j in later] == [check_job_name(OWNER, 2)]


def test_a_cron_time_starts_a_check_due_schedule_and_the_next_time_is_shown() -> None:
    body = schedule({"schedule": "*/15 * * * *"}, status={"lastScheduleTime": "2026-12-07T09:45:00Z"})
    result = run_plan(body)
    assert len(result.created("Job")) == 1
    assert result.status["lastScheduleTime"] == "2026-12-07T10:00:00Z"
    assert result.status["check"]["due"] == ["schedule"]
    assert result.status["nextScheduleTime"] == "2026-12-07T10:15:00Z"
    assert result.recheck_after is not None and result.recheck_after <= 14 * 60 + 30
    quiet = schedule({"schedule": "*/15 * * * *"}, status={"lastScheduleTime": "2026-12-07T10:00:00Z"})
    assert run_plan(quiet).created() == []


def test_forbid_skips_a_cron_time_while_a_run_goes_and_holds_a_manual_run_until_it_ends() -> None:
    body = schedule(
        {"schedule": "*/15 * * * *"}, status={"lastScheduleTime": "2026-12-07T09:45:00Z"}, annotations={RUN_NOW: "x"}
    )
    result = run_plan(body, runs=[run_job(1, "Running")])
    assert result.created() == []
    assert [e.reason for e in result.events] == ["RunSkipped"]
    assert result.status["lastScheduleTime"] == "2026-12-07T10:00:00Z"
    assert result.status["manualTrigger"] is None  # still to do
    assert result.status["active"] == ["support-1"]
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["Scheduled"]["reason"] == "RunActive"
    finished = run_plan(factories.applied(body, result), runs=[run_job(1, "Succeeded")])
    assert finished.created("Job")[0]["metadata"]["name"] == check_job_name(OWNER, 1)


def test_replace_deletes_the_run_still_going_when_the_next_one_starts() -> None:
    outcome = {"reasons": ["manual"], "datasetUri": "s3://finetune/out/x/runs/2/data/", "rows": 3}
    body = schedule({"concurrencyPolicy": "Replace"}, status=checking(2, ["manual"]))
    result = run_plan(body, runs=[run_job(1, "Running")], children=([check_job(2)], [check_pod(2, outcome)]))
    assert result.deleted("FineTuneJob") == ["support-1"]
    assert [r["name"] for r in result.status["runs"]] == ["support-2"]


def test_finished_runs_beyond_the_history_limit_are_deleted_oldest_first() -> None:
    runs = [run_job(n, "Succeeded") for n in range(1, 5)] + [run_job(5, "Running")]
    result = run_plan(schedule({"historyLimit": 2}), runs=runs)
    assert result.deleted("FineTuneJob") == ["support-1", "support-2"]
    assert [r["name"] for r in result.status["runs"]] == ["support-5", "support-4", "support-3"]


def test_a_failed_check_backs_off_and_keeps_the_reason_it_had() -> None:
    body = schedule(status=checking(1, ["manual"]), annotations={RUN_NOW: "1"})
    body["status"]["manualTrigger"] = "1"
    result = run_plan(body, children=([check_job(1, failed=True)], [check_pod(1, None, failed=True)]))
    assert result.status["check"]["state"] == "Failed" and result.status["check"]["failures"] == 1
    assert [e.reason for e in result.events] == ["CheckFailed"]
    failed = factories.applied(body, result)
    assert run_plan(failed, now=NOW + timedelta(seconds=10)).created() == []
    retried = run_plan(failed, now=NOW + timedelta(seconds=31))
    assert retried.status["check"]["due"] == ["manual"] and retried.status["check"]["number"] == 2


def test_an_invalid_time_zone_or_suspend_starts_nothing_and_says_why() -> None:
    bad = run_plan(schedule({"schedule": "0 3 * * *", "timeZone": "Mars/Olympus"}, annotations={RUN_NOW: "1"}))
    assert bad.created() == []
    (validated,) = bad.status["conditions"]
    assert validated["reason"] == "InvalidSpec" and "spec.timeZone" in validated["message"]
    held = run_plan(schedule({"suspend": True}, annotations={RUN_NOW: "1"}))
    assert held.created() == []
    scheduled = next(c for c in held.status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "Suspended"


def test_a_run_is_the_template_on_the_prepared_training_set_read_with_the_output_credentials() -> None:
    from finetune_operator.manifests.schedule import run_spec

    template = copy.deepcopy(TEMPLATE)
    template["dataset"]["secretRef"] = {"name": "data-reader"}
    template["output"]["secretRef"] = {"name": "store-writer"}
    spec = FineTuneScheduleSpec.model_validate({"jobTemplate": {"spec": template}, "model": "support"})
    run = run_spec(spec, "s3://finetune/out/schedules/x/runs/1/data/")
    assert run.dataset.uri.endswith("/runs/1/data/") and run.dataset.secret_ref is not None
    assert run.dataset.secret_ref.name == "store-writer"
    assert run.output.model == "support"


def test_the_same_bad_input_found_again_is_not_warned_about_again() -> None:
    outcome = {"problems": ["feedback/a.jsonl line 4: invalid JSON"], "problemCount": 1}
    children = ([check_job(2)], [check_pod(2, outcome)])
    first = run_plan(schedule(status=checking(2, [])), children=children)
    assert [e.reason for e in first.events] == ["InputProblems"]
    shown = {**checking(2, []), "problems": outcome["problems"]}
    again = run_plan(schedule(status=shown), children=children)
    assert again.events == [] and again.status["problems"] == outcome["problems"]
