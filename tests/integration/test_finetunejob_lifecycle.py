"""A user applies FineTuneJobs to a real kube-apiserver; the operator (a real process) does the rest."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import OperatorProcess, wait_for
from tests.integration.conftest import GROUP, PLURAL, VERSION, Kube, quick_spec

pytestmark = pytest.mark.cluster


def test_successful_job_reports_adapter_and_is_waitable(kube: Kube) -> None:
    kube.apply_ftj("support-bot", quick_spec("success"))
    wait = kube.kubectl("wait", "--for=condition=Succeeded", "ftj/support-bot", "--timeout=60s")
    assert "condition met" in wait.stdout
    status = kube.status("support-bot")
    uid = kube.ftj("support-bot")["metadata"]["uid"]
    assert status["adapter"]["uri"] == f"file:///tmp/adapters/{kube.namespace}/support-bot/{uid}/attempt-1/adapter/"
    assert status["metrics"]["trainLoss"] == 1.5
    assert status["progress"]["loss"] == 1.75  # patched by the trainer itself, kept by the operator
    assert status["progress"]["percent"] == 100
    # Exactly one Job, owned by the FineTuneJob; its pod passed Pod Security "restricted".
    jobs = kube.jobs()
    assert [j.metadata.name for j in jobs] == [status["jobName"]]
    assert [(o.kind, o.name, o.uid, o.controller) for o in jobs[0].metadata.owner_references] == [
        ("FineTuneJob", "support-bot", uid, True)
    ]
    assert len(kube.pods()) == 1
    table = kube.kubectl("get", "ftj").stdout
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ADAPTER", "AGE"]
    assert "Succeeded" in table and "attempt-1/adapter/" in table
    events = kube.kubectl("get", "events", "--field-selector", "involvedObject.kind=FineTuneJob").stdout
    assert "AttemptStarted" in events and "TrainingComplete" in events


def test_data_error_fails_once_without_retries(kube: Kube) -> None:
    kube.apply_ftj("bad-data", quick_spec("data-error", backoffLimit=3))
    status = kube.wait_phase("bad-data", "Failed")
    failed = kube.condition("bad-data", "Failed")
    assert failed["reason"] == "DataError"
    assert "line 3: field 'output' is missing" in failed["message"]
    assert len(kube.pods()) == 1  # exit code 2 is non-retriable (podFailurePolicy)
    assert "adapter" not in status


def test_oom_killed_trainer_fails_with_out_of_memory(kube: Kube) -> None:
    # The stand-in touches memory past its cgroup limit; the kernel kills it and the kubelet says OOMKilled.
    kube.apply_ftj("too-big", quick_spec("oom", backoffLimit=0))
    kube.wait_phase("too-big", "Failed")
    failed = kube.condition("too-big", "Failed")
    assert failed["reason"] == "OutOfMemory"
    assert "spec.resources.memory=256Mi" in failed["message"]
    (pod,) = kube.pods()
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137), terminated


def test_crashing_trainer_is_retried_up_to_the_backoff_limit(kube: Kube) -> None:
    kube.apply_ftj("crashy", quick_spec("crash", backoffLimit=1))
    kube.wait_phase("crashy", "Failed", timeout=90)
    failed = kube.condition("crashy", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "illegal memory access" in failed["message"]
    assert len(kube.pods()) == 2


def test_missing_storage_secret_is_reported_not_hidden(kube: Kube) -> None:
    kube.apply_ftj("no-secret", quick_spec("success", output={"uri": "s3://adapters"}))
    kube.wait_phase("no-secret", "Pending")
    condition = _wait_reason(kube, "no-secret", "ConfigError")
    assert 'secret "finetune-storage" not found' in condition["message"]
    # Creating the Secret heals it.
    secret = {"AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "minio-secret"}
    client.CoreV1Api(kube.api).create_namespaced_secret(
        kube.namespace,
        {
            "metadata": {"name": "finetune-storage"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
        },
    )
    kube.wait_phase("no-secret", "Succeeded")


def _wait_reason(kube: Kube, name: str, reason: str) -> dict[str, Any]:
    return wait_for(
        lambda: next((c for c in kube.status(name).get("conditions", []) if c["reason"] == reason), None),
        30,
        f"a condition with reason {reason}",
        describe=lambda: str(kube.status(name)),
    )


def test_image_that_cannot_be_pulled_fails_and_stops_the_job(kube: Kube) -> None:
    kube.apply_ftj("no-image", quick_spec("success", image="registry.example.invalid/trainer:1"))
    kube.wait_phase("no-image", "Failed", timeout=60)
    failed = kube.condition("no-image", "Failed")
    assert failed["reason"] == "ImagePullError"
    assert "registry.example.invalid/trainer:1" in failed["message"]
    wait_for(lambda: not kube.jobs(), 30, "the Job to be deleted", describe=lambda: str(kube.jobs()))


def test_spec_change_after_success_runs_a_new_attempt(kube: Kube) -> None:
    kube.apply_ftj("rerun", quick_spec("success"))
    first = kube.wait_phase("rerun", "Succeeded")
    kube.apply_ftj("rerun", quick_spec("success", training={"maxSteps": 20}))
    second = wait_for(
        lambda: (s := kube.status("rerun")).get("attempt") == 2 and s.get("phase") == "Succeeded" and s,
        60,
        "attempt 2 to succeed",
        describe=lambda: str(kube.status("rerun")),
    )
    assert second["history"][0]["attempt"] == 1
    assert second["history"][0]["adapterUri"] == first["adapter"]["uri"]
    assert second["adapter"]["uri"].endswith("/attempt-2/adapter/")
    assert sorted(j.metadata.name for j in kube.jobs()) == [first["jobName"], second["jobName"]]


def test_deleting_the_finetunejob_garbage_collects_its_children(kube: Kube) -> None:
    kube.apply_ftj("short-lived", quick_spec("slow"))
    kube.wait_phase("short-lived", "Running")
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, "short-lived")
    core = client.CoreV1Api(kube.api)
    wait_for(
        lambda: not kube.jobs() and not kube.pods(),
        60,
        "Job and Pod to be garbage-collected",
        describe=lambda: f"jobs={[j.metadata.name for j in kube.jobs()]} pods={[p.metadata.name for p in kube.pods()]}",
    )
    accounts = [sa.metadata.name for sa in core.list_namespaced_service_account(kube.namespace).items]
    wait_for(
        lambda: [sa.metadata.name for sa in core.list_namespaced_service_account(kube.namespace).items] == ["default"],
        30,
        "the trainer ServiceAccount to be garbage-collected",
        describe=lambda: str(accounts),
    )


def test_spec_cannot_change_while_running_but_suspend_can(kube: Kube) -> None:
    kube.apply_ftj("busy", quick_spec("slow"))
    kube.wait_phase("busy", "Running")
    with pytest.raises(ApiException) as refused:
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, PLURAL, "busy", {"spec": {"lora": {"r": 64}}}
        )
    assert refused.value.status == 422
    assert "spec cannot change while the FineTuneJob is Pending, Queued, Running or Suspended" in refused.value.body
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, kube.namespace, PLURAL, "busy", {"spec": {"suspend": True}}
    )
    kube.wait_phase("busy", "Suspended")
    wait_for(lambda: not [p for p in kube.pods() if p.status.phase == "Running"], 30, "the trainer pod to stop")


def test_operator_restarts_adopt_instead_of_duplicating(kube: Kube, operator: OperatorProcess) -> None:
    operator.stop()
    kube.apply_ftj("while-down", quick_spec("slow"))
    operator.start().wait_ready()
    running = kube.wait_phase("while-down", "Running")
    assert operator.process is not None
    operator.process.kill()  # a crash, not a graceful stop
    operator.process.wait()
    # After a restart the operator lists every FineTuneJob and queues a reconcile of each.
    operator.start().wait_ready()
    wait_for(
        lambda: (operator.metric('finetune_reconciles_total{kind="FineTuneJob"}') or 0) >= 1,
        30,
        "the FineTuneJob to be listed and reconciled",
        describe=lambda: operator.log()[-1500:],
    )
    after = kube.status("while-down")
    assert [j.metadata.name for j in kube.jobs()] == [running["jobName"]]
    assert (after["attempt"], after["jobName"], after["phase"]) == (1, running["jobName"], "Running")
