"""Multi-rank jobs without a cluster: the API's rules, the launcher's objects, group restarts in the planner.

What the real node shows (pods resolving each other, torchrun over gloo) is in tests/e2e/test_distributed.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_operator.api import FineTuneJobSpec, format_validation_error
from finetune_operator.config import OperatorSettings
from finetune_operator.kinds.finetunejob import Inputs, plan
from finetune_operator.manifests.launch import Run, launch
from finetune_operator.manifests.names import Owner
from finetune_operator.plan import Plan
from tests.factories import MINIMAL_SPEC, UID, finetunejob, result_message, succeeded_result, with_field

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()
OWNER = Owner("FineTuneJob", "team-a", "support-bot", UID)
TWO_NODES = with_field(MINIMAL_SPEC, "resources", {"nodes": 2, "gpus": 0, "cpu": "1", "memory": "4Gi"})


def _spec(raw: dict[str, Any]) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(raw)


INVALID = [
    ("fsdp on one GPU", {"distributed": {"strategy": "fsdp"}, "resources": {"gpus": 1}}, "distributed.strategy"),
    ("fsdp on CPU", {"distributed": {"strategy": "fsdp"}, "resources": {"gpus": 0, "nodes": 2}}, "on CPU"),
    ("ranks other than GPUs", {"distributed": {"processesPerNode": 2}, "resources": {"gpus": 4}}, "processesPerNode"),
    (
        "fsdp with 8-bit",
        {"distributed": {"strategy": "fsdp"}, "resources": {"gpus": 2}, "quantization": {"bits": 8}},
        "quantization.bits",
    ),
    ("file output on two nodes", {"resources": {"nodes": 2}, "output": {"uri": "file:///out"}}, "output.uri"),
    ("zero nodes", {"resources": {"nodes": 0}}, "spec.resources.nodes"),
    ("too short a timeout", {"distributed": {"timeoutSeconds": 5}}, "spec.distributed.timeoutSeconds"),
    ("unknown strategy", {"distributed": {"strategy": "zero3"}}, "spec.distributed.strategy"),
]


@pytest.mark.parametrize(("case", "fields", "named"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_distributed_specs_are_rejected_naming_the_field(case: str, fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as rejected:
        _spec({**MINIMAL_SPEC, **fields})
    assert named in format_validation_error(rejected.value), case


def test_ranks_default_to_the_gpus_and_to_one_on_cpu() -> None:
    assert _spec({**MINIMAL_SPEC, "resources": {"gpus": 4, "nodes": 2}}).world_size == 8
    assert _spec({**MINIMAL_SPEC, "resources": {"gpus": 0}}).world_size == 1
    cpu = _spec({**MINIMAL_SPEC, "resources": {"gpus": 0}, "distributed": {"processesPerNode": 2}})
    assert cpu.world_size == 2 and cpu.distributed.timeout_seconds == 300


def _env(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_one_rank_runs_without_torchrun_and_one_pod_of_two_ranks_with_it() -> None:
    (single,) = launch(OWNER, _spec(MINIMAL_SPEC), Run(1), SETTINGS)
    assert not any(name.startswith("PET_") for name in _env(single))
    ranks = _spec({**MINIMAL_SPEC, "resources": {"gpus": 2}})
    (job,) = launch(OWNER, ranks, Run(1), SETTINGS)
    env = _env(job)
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"]) == ("1", "2", "0")
    assert env["PET_MASTER_ADDR"] == "127.0.0.1" and "completionMode" not in job["spec"]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_two_nodes_are_a_headless_service_and_an_indexed_job_that_never_retries_a_pod_alone() -> None:
    service, job = launch(OWNER, _spec(TWO_NODES), Run(1), SETTINGS)
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"]["finetune.dev/owner-uid"] == UID
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        2,
        2,
        0,
    )
    name, subdomain = job["metadata"]["name"], service["metadata"]["name"]
    assert spec["template"]["spec"]["subdomain"] == subdomain
    env = _env(job)
    assert env["PET_MASTER_ADDR"] == f"{name}-0.{subdomain}" and env["PET_MASTER_PORT"] == "29500"
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["PET_NODE_RANK"] == {"fieldRef": {"fieldPath": index}}
    long = Owner("FineTuneJob", "team-a", "x" * 63, UID)
    restarted = launch(long, _spec(TWO_NODES), Run(1, restart=12), SETTINGS)[1]["metadata"]["name"]
    assert len(restarted) <= 57 and restarted.endswith("-1-r12")  # room for "-<index>" in a hostname


# --- group restarts in the planner -------------------------------------------------------------------


def _observed(job: dict[str, Any], failed: int = 0, conditions: list[dict[str, str]] | None = None) -> dict[str, Any]:
    job = copy.deepcopy(job)
    job["status"] = {"failed": failed, "startTime": "2026-11-23T09:00:00Z"}
    if conditions:
        job["status"]["conditions"] = [
            {"status": "True", "lastTransitionTime": "2026-11-23T09:30:00Z", **c} for c in conditions
        ]
    return job


def _pod(job: dict[str, Any], index: int, *, code: int, at: str, message: str = "", **extra: Any) -> dict[str, Any]:
    name = job["metadata"]["name"]
    state = {"exitCode": code, "reason": extra.pop("reason", "Error"), "finishedAt": at, "message": message}
    return {
        "metadata": {
            "name": f"{name}-{index}-abcde",
            "labels": {"finetune.dev/attempt": "1", "batch.kubernetes.io/job-name": name},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": {"containers": [{"image": "trainer:1"}]},
        "status": {
            "phase": "Failed" if code else "Succeeded",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": state}}],
            "conditions": extra.pop("conditions", []),
        },
    }


def _started() -> tuple[dict[str, Any], dict[str, Any]]:
    body = finetunejob(spec=TWO_NODES)
    first = plan(Inputs(body, [], [], SETTINGS), NOW)
    body["status"] = first.status
    return body, first.created("Job")[0]


def _plan(body: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Plan:
    return plan(Inputs(body, jobs, pods, SETTINGS), NOW)


def test_a_new_two_node_job_records_its_shape_and_creates_the_service_before_the_job() -> None:
    body = finetunejob(spec=TWO_NODES)
    first = plan(Inputs(body, [], [], SETTINGS), NOW)
    assert [o["kind"] for o in first.created()][-2:] == ["Service", "Job"]
    assert (first.status["nodes"], first.status["gpusPerNode"], first.status["worldSize"]) == (2, 0, 2)
    assert first.status["restarts"] == 0


def test_a_killed_pod_restarts_the_whole_group_once_counted_naming_the_pod() -> None:
    body, job = _started()
    failed = _observed(job, failed=1, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])
    pods = [
        _pod(job, 1, code=137, at="2026-11-23T09:29:00Z"),
        _pod(job, 0, code=143, at="2026-11-23T09:29:30Z"),  # stopped by the Job controller afterwards
    ]
    restart = _plan(body, [failed], pods)
    (created,) = restart.created("Job")
    assert created["metadata"]["name"].endswith("-1-r1")
    assert created["metadata"]["annotations"]["finetune.dev/counted-restarts"] == "1"
    assert restart.status["phase"] == "Pending" and restart.status["jobName"] == created["metadata"]["name"]
    assert restart.status["restarts"] == 1
    running = next(c for c in restart.status["conditions"] if c["type"] == "Running")
    assert running["reason"] == "Restarting", running
    assert f"pod {job['metadata']['name']}-1-abcde (node rank 1) failed (exit code 137)" in running["message"]
    assert "1 of spec.backoffLimit=3" in running["message"]
    assert [(e.type, e.reason) for e in restart.events] == [("Warning", "Restarting")]

    # The next reconcile follows the new Job and ignores the old one's pods.
    body["status"] = {**body["status"], **restart.status}
    follow = _plan(body, [failed, _observed(created)], pods)
    assert follow.created("Job") == [] and follow.status.get("phase", "Pending") == "Pending"


def test_a_preempted_pod_restarts_the_group_without_counting() -> None:
    body, job = _started()
    failed = _observed(job, failed=1, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])
    preempted = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    pods = [
        _pod(job, 1, code=143, at="2026-11-23T09:29:00Z", conditions=preempted),
        _pod(job, 0, code=143, at="2026-11-23T09:29:10Z"),
    ]
    (created,) = _plan(body, [failed], pods).created("Job")
    assert created["metadata"]["annotations"]["finetune.dev/counted-restarts"] == "0"


def test_restarts_stop_at_the_backoff_limit_and_bad_input_never_restarts() -> None:
    body, job = _started()
    spent = copy.deepcopy(job)
    spent["metadata"]["annotations"]["finetune.dev/counted-restarts"] = "3"
    spent["metadata"]["labels"]["finetune.dev/restart"] = "3"
    failed = _observed(spent, failed=1, conditions=[{"type": "Failed", "reason": "BackoffLimitExceeded"}])
    out = _plan(body, [failed], [_pod(spent, 1, code=1, at="2026-11-23T09:29:00Z")])
    assert out.created("Job") == [] and out.status["phase"] == "Failed"
    failed_condition = next(c for c in out.status["conditions"] if c["type"] == "Failed")
    assert "the pod group failed 4 time(s) (spec.backoffLimit=3)" in failed_condition["message"]

    bad = _observed(job, failed=1, conditions=[{"type": "Failed", "reason": "PodFailurePolicy"}])
    data = result_message(result="failed", reason="DataError", message="rank 1: train.jsonl line 3: no output")
    out = _plan(body, [bad], [_pod(job, 1, code=2, at="2026-11-23T09:29:00Z", message=data)])
    assert out.created("Job") == [] and out.status["phase"] == "Failed"
    reason = next(c for c in out.status["conditions"] if c["type"] == "Failed")
    assert reason["reason"] == "DataError" and "(node rank 1): rank 1: train.jsonl line 3" in reason["message"]


def test_the_result_is_pod_zeros_even_when_another_pod_finished_last() -> None:
    body, job = _started()
    done = _observed(job, conditions=[{"type": "Complete"}])
    rank1 = result_message(result="succeeded", message="rank 1 of 2 trained; rank 0 publishes", rank=1)
    pods = [
        _pod(job, 0, code=0, at="2026-11-23T09:29:00Z", message=succeeded_result(), reason="Completed"),
        _pod(job, 1, code=0, at="2026-11-23T09:29:30Z", message=rank1, reason="Completed"),
    ]
    out = _plan(body, [done], pods)
    assert out.status["phase"] == "Succeeded" and out.status["adapter"]["uri"].endswith("/attempt-1/adapter/")


def test_the_operators_job_index_keeps_what_makes_a_job_a_group() -> None:
    """The index trims each Job to what status derivation reads; a group must stay a group there
    (the real-node fault test caught an index that dropped completionMode: no restart, a plain failure)."""
    from finetune_operator.handlers.children import _trim
    from finetune_operator.status import view_job

    _, job = launch(OWNER, _spec(TWO_NODES), Run(1, restart=2, counted_restarts=1), SETTINGS)
    seen = view_job(job)
    assert (seen.group, seen.restart, seen.counted_restarts) == (True, 2, 1)
    assert view_job(_trim(job, keep_spec=True)) == seen


def test_an_event_message_fits_the_apiservers_limit() -> None:
    """A group failure quotes the failed pod's log tail; an Event over 1024 characters is refused and lost."""
    from finetune_operator.plan import EVENT_MESSAGE_LIMIT, Event

    event = Event("Warning", "BackoffLimitExceeded", "x" * 3000)
    assert len(event.message) == EVENT_MESSAGE_LIMIT and event.message.endswith("...")
    bars = Event("Warning", "Restarting", "Loading weights: ██████████ " * 100)  # 3 bytes per block
    assert len(bars.message.encode()) <= EVENT_MESSAGE_LIMIT
    assert Event("Normal", "Started", "short").message == "short"
