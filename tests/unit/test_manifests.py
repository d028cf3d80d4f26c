"""Builders: spec -> ServiceAccount, Role, RoleBinding and Job, checked field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_operator.api import FINETUNEJOB, FineTuneJobSpec
from finetune_operator.api.contract import RUN_SPEC_ENV, TrainingRunSpec
from finetune_operator.config import OperatorSettings
from finetune_operator.manifests import build_children
from finetune_operator.manifests.job import build_training_job, spec_hash
from finetune_operator.manifests.launch import Run
from finetune_operator.manifests.names import Owner, job_name, trainer_account_name
from finetune_operator.manifests.rbac import build_trainer_role
from tests.factories import MINIMAL_SPEC, UID

OWNER = Owner(kind="FineTuneJob", namespace="team-a", name="support-bot", uid=UID)
SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1.2.3", output_uri="s3://adapters")


def _job(**overrides: Any) -> dict[str, Any]:
    spec = FineTuneJobSpec.model_validate({**MINIMAL_SPEC, **overrides})
    return build_training_job(OWNER, spec, 1, SETTINGS)


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pod(job)["containers"][0]
    return container


def _env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in _container(job)["env"]}


def test_gpu_job_requests_gpus_and_tolerates_the_gpu_taint() -> None:
    job = _job(resources={"gpus": 2, "cpu": "8", "memory": "64Gi"})
    resources = _container(job)["resources"]
    assert resources["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == resources["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod(job)["tolerations"]


def test_other_gpu_resource_names_are_honoured() -> None:
    job = _job(resources={"gpus": 1, "gpuResourceName": "amd.com/gpu"})
    assert _container(job)["resources"]["limits"]["amd.com/gpu"] == "1"
    assert _pod(job)["tolerations"][0]["key"] == "amd.com/gpu"


def test_cpu_only_job_has_no_gpu_limit_and_no_gpu_toleration() -> None:
    job = _job(resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    assert _container(job)["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert "tolerations" not in _pod(job)


def test_placement_fields_pass_through() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    job = _job(
        resources={
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "affinity": affinity,
            "priorityClassName": "training-low",
        }
    )
    pod = _pod(job)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"][0] == {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "training-low"


def test_retry_deadline_and_cleanup_settings() -> None:
    job = _job(backoffLimit=5, activeDeadlineSeconds=7200)
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.job_ttl_seconds
    assert _pod(job)["restartPolicy"] == "Never"
    assert "activeDeadlineSeconds" not in _job()["spec"]


def test_pod_failure_policy_does_not_retry_bad_input_nor_count_preemption() -> None:
    rules = _job()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


@pytest.mark.parametrize(("queue", "suspend"), [(None, False), ("team-a-queue", True)])
def test_kueue_label_and_suspend_follow_queue_name(queue: str | None, suspend: bool) -> None:
    job = _job(queueName=queue) if queue else _job()
    assert job["spec"]["suspend"] is suspend
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue


def test_user_suspend_creates_a_suspended_job() -> None:
    assert _job(suspend=True)["spec"]["suspend"] is True


def test_pod_meets_pod_security_restricted() -> None:
    """The checks of https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted."""
    pod = _pod(_job())
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in volume for volume in pod["volumes"])
    assert "ports" not in container


def test_termination_message_falls_back_to_logs() -> None:
    container = _container(_job())
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["terminationMessagePath"] == "/dev/termination-log"


def test_credentials_arrive_only_as_secret_key_refs() -> None:
    job = _job(
        baseModel={"uri": "hf://meta-llama/Llama-3.1-8B", "secretRef": {"name": "hf-token"}},
        dataset={"uri": "s3://data/train.jsonl", "secretRef": {"name": "data-reader"}},
    )
    env = _env(job)
    assert env["FINETUNE_BASE_MODEL_HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf-token",
        "key": "HF_TOKEN",
        "optional": False,
    }
    assert env["FINETUNE_DATASET_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "data-reader"
    assert env["FINETUNE_DATASET_AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # The output has no secretRef: the operator's default storage secret is used.
    assert env["FINETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "finetune-storage"
    for name, item in env.items():
        if any(word in name for word in ("TOKEN", "SECRET", "ACCESS_KEY")):
            assert "value" not in item, name
    assert "secret" not in env[RUN_SPEC_ENV]["value"].lower().replace("secretref", "")


def test_public_and_local_sources_get_no_secrets() -> None:
    env = _env(
        _job(
            baseModel={"uri": "hf://org/public-model"},
            dataset={"uri": "file:///data/train.jsonl"},
            output={"uri": "pvc://adapters/out"},
        )
    )
    assert not [name for name in env if name.startswith("FINETUNE_") and name != RUN_SPEC_ENV]


def test_run_spec_carries_the_resolved_spec_and_output_locations() -> None:
    job = _job(training={"learningRate": 1e-4})
    run = TrainingRunSpec.model_validate(json.loads(_env(job)[RUN_SPEC_ENV]["value"]))
    assert run.resource.name == "support-bot" and run.resource.uid == UID
    assert run.job.training.epochs == 3.0  # the default is resolved by the operator, not the trainer
    assert run.job.training.learning_rate == 1e-4
    assert run.job.quantization is not None and run.job.quantization.quant_type == "nf4"
    assert run.output.adapter_uri == f"s3://adapters/team-a/support-bot/{UID}/attempt-1/adapter/"
    assert run.output.checkpoints_uri == f"s3://adapters/team-a/support-bot/{UID}/attempt-1/checkpoints/"
    assert run.output.merged_model_uri is None
    assert run.trainer_image == _container(job)["image"] == "registry.example/trainer:1.2.3"


def test_spec_image_and_output_override_settings() -> None:
    job = _job(image="my.registry/trainer:dev", output={"uri": "s3://mine/", "merge": True})
    run = TrainingRunSpec.model_validate(json.loads(_env(job)[RUN_SPEC_ENV]["value"]))
    assert _container(job)["image"] == "my.registry/trainer:dev"
    assert run.output.merged_model_uri == f"s3://mine/team-a/support-bot/{UID}/attempt-1/merged/"


def test_pvc_sources_are_mounted_read_only_and_outputs_writable() -> None:
    job = _job(
        baseModel={"uri": "pvc://models/llama-8b"},
        dataset={"uri": "pvc://models/data/train.jsonl"},
        output={"uri": "pvc://adapters/runs"},
    )
    pod = _pod(job)
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": True, "adapters": False}
    mounts = {m["mountPath"]: m.get("readOnly") for m in _container(job)["volumeMounts"]}
    assert mounts["/mnt/pvc/models"] is True
    assert mounts["/mnt/pvc/adapters"] is False


def test_children_are_owned_labelled_and_named_deterministically() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL_SPEC)
    first = build_children(OWNER, spec, Run(1), SETTINGS)
    again = build_children(OWNER, spec, Run(1), SETTINGS)
    assert first == again
    assert [o["kind"] for o in first] == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    for obj in first:
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": "support-bot",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert obj["metadata"]["labels"]["finetune.dev/owner-uid"] == UID
    job = first[-1]
    assert job["metadata"]["name"] == "support-bot-0f1e2-1"
    assert job["spec"]["template"]["metadata"]["labels"]["finetune.dev/attempt"] == "1"
    assert _pod(job)["serviceAccountName"] == trainer_account_name(OWNER)


def test_names_fit_in_a_label_even_for_long_owner_names() -> None:
    owner = Owner(kind="FineTuneJob", namespace="ns", name="a" * 63, uid=UID)
    assert len(job_name(owner, 123)) <= 63
    assert job_name(owner, 1) != job_name(owner, 2)
    assert len(trainer_account_name(owner)) <= 63


def test_trainer_role_only_reads_and_patches_its_own_status() -> None:
    role = build_trainer_role(OWNER)
    assert role["rules"] == [
        {
            "apiGroups": ["finetune.dev"],
            "resources": [f"{FINETUNEJOB.plural}/status"],
            "resourceNames": ["support-bot"],
            "verbs": ["get", "patch"],
        }
    ]


def test_spec_hash_ignores_suspend_only() -> None:
    base = FineTuneJobSpec.model_validate(MINIMAL_SPEC)
    paused = FineTuneJobSpec.model_validate({**MINIMAL_SPEC, "suspend": True})
    changed = FineTuneJobSpec.model_validate({**MINIMAL_SPEC, "training": {"learningRate": 1e-5}})
    assert spec_hash(base) == spec_hash(paused)
    assert spec_hash(base) != spec_hash(changed)
