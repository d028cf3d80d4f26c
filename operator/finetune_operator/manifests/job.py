"""Spec -> Job: the trainer run spec and the Kubernetes Job that runs it.

Pure functions of (owner, spec, attempt, settings); unit-tested with plain dicts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..api import kind_of_spec
from ..api.common import Resources, SecretRef
from ..api.contract import (
    EXIT_INVALID_INPUT,
    PVC_MOUNT_ROOT,
    RUN_SPEC_ENV,
    SECRET_KEYS,
    CleanupRunSpec,
    SecretRole,
    benchmark_role,
    judge_role,
    secret_env_name,
)
from ..api.dataset import DatasetSpec
from ..api.evalrun import EvalRunSpec, ResolvedModel
from ..api.finetunejob import FineTuneJobSpec
from ..api.schema import ApiModel
from ..config import OperatorSettings
from .names import (
    ANNOTATION_SPEC_HASH,
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    TRAINER_CONTAINER,
    Owner,
    bounded_name,
    child_labels,
    child_metadata,
    job_name,
    trainer_account_name,
)
from .runspec import build_eval_run_spec, build_run_spec, owner_prefix, resource_ref, storage_settings

WORK_DIR = "/workspace"
RUN_AS_USER = 1000


def _drop(payload: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        payload.pop(head, None)
    elif isinstance(payload.get(head), dict):
        _drop(payload[head], rest)


def spec_hash(spec: ApiModel, model: ResolvedModel | None = None) -> str:
    """Identity of what an attempt runs.

    Excluded: the kind's `attempt_neutral` fields, the same ones its CRD lets change mid-attempt
    (api.Kind). Included for an EvalRun: the resolved model, so a FineTuneJob publishing a new
    adapter starts a new evaluation.
    """
    payload = spec.to_json_dict()
    for dotted in kind_of_spec(spec).attempt_neutral:
        _drop(payload, dotted)
    if model is not None:
        payload["resolvedModel"] = model.to_json_dict()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def secret_env(role: SecretRole, uri: str, ref: SecretRef | None, default_secret: str | None) -> list[dict[str, Any]]:
    """secretKeyRef env vars for one source; s3:// without a secretRef uses the operator's storage secret."""
    scheme = uri.split("://", 1)[0]
    name = ref.name if ref else (default_secret if scheme == "s3" else None)
    if name is None:
        return []
    return [
        {
            "name": secret_env_name(role, key),
            "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": not required}},
        }
        for key, required in SECRET_KEYS.get(scheme, ())
    ]


@dataclass(frozen=True)
class PvcMount:
    claim: str
    writable: bool


def pvc_mounts(uris: Iterable[tuple[str, bool]]) -> list[PvcMount]:
    """Claims named by pvc:// URIs, each once; writable if any use writes to it."""
    claims: dict[str, bool] = {}
    for uri, writable in uris:
        if uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            claims[claim] = claims.get(claim, False) or writable
    return [PvcMount(claim, writable) for claim, writable in claims.items()]


def _volumes(mounts: list[PvcMount]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # readOnlyRootFilesystem: everything the trainer writes goes to these emptyDirs or to PVCs.
    volumes: list[dict[str, Any]] = [
        {"name": "workspace", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        # torch DataLoader workers share tensors through /dev/shm; the runtime's default is 64Mi.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
    ]
    volume_mounts: list[dict[str, Any]] = [
        {"name": "workspace", "mountPath": WORK_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for index, mount in enumerate(mounts):
        volume = f"pvc-{index}"
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": mount.claim, "readOnly": not mount.writable}}
        )
        volume_mounts.append(
            {"name": volume, "mountPath": f"{PVC_MOUNT_ROOT}/{mount.claim}", "readOnly": not mount.writable}
        )
    return volumes, volume_mounts


def container_resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Requests equal limits (Guaranteed QoS: a training pod is the last the kubelet evicts)."""
    limits = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.gpus > 0:
        limits[resources.gpu_resource_name] = str(resources.gpus)
    return {"requests": dict(limits), "limits": limits}


def tolerations(resources: Resources) -> list[dict[str, Any]]:
    """User tolerations, plus the GPU taint's when GPUs are requested (what ExtendedResourceToleration would add)."""
    result = [t.to_json_dict() for t in resources.tolerations]
    if resources.gpus > 0 and not any(t.get("key") == resources.gpu_resource_name for t in result):
        result.append({"key": resources.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"})
    return result


RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


def pod_failure_policy() -> dict[str, Any]:
    """Bad input is not retried (exit code 2); preemption and eviction do not count against backoffLimit."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": [EXIT_INVALID_INPUT]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


@dataclass(frozen=True)
class PodPlan:
    """What differs between a training Job and an evaluation Job; everything else is shared."""

    command: str
    run_spec: ApiModel
    image: str
    secrets: list[dict[str, Any]]
    pvc_uris: list[tuple[str, bool]]
    resources: Resources
    queue_name: str | None
    suspend: bool
    backoff_limit: int
    active_deadline_seconds: int | None
    spec_hash: str
    component: str = "trainer"
    reports_status: bool = True
    """Runs as the trainer ServiceAccount (patches its resource's status); False: no API token at all."""


def attempt_pod(
    command: str,
    run_spec: ApiModel,
    image: str,
    secrets: list[dict[str, Any]],
    pvc_uris: list[tuple[str, bool]],
    *,
    spec: FineTuneJobSpec | EvalRunSpec | DatasetSpec,
    digest: str,
    component: str = "trainer",
) -> PodPlan:
    """The pod of an attempt: how it runs (resources, queue, suspend, retries, deadline) is the spec's."""
    return PodPlan(
        command=command,
        run_spec=run_spec,
        image=image,
        secrets=secrets,
        pvc_uris=pvc_uris,
        resources=spec.resources,
        queue_name=spec.queue_name,
        suspend=spec.suspend,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        spec_hash=digest,
        component=component,
    )


def build_job(
    owner: Owner, attempt: int | None, plan: PodPlan, settings: OperatorSettings, name: str | None = None
) -> dict[str, Any]:
    """The Job of one attempt, or (attempt None, a `name`) a one-off such as the artifact cleanup."""
    env: list[dict[str, Any]] = [
        {"name": RUN_SPEC_ENV, "value": json.dumps(plan.run_spec.to_json_dict(), separators=(",", ":"))},
        {"name": "HOME", "value": WORK_DIR},
        {"name": "HF_HOME", "value": f"{WORK_DIR}/.cache/huggingface"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *plan.secrets,
    ]
    volumes, volume_mounts = _volumes(pvc_mounts(plan.pvc_uris))
    labels = child_labels(owner, plan.component)
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    job_labels = dict(labels)
    if plan.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = plan.queue_name
    resources = plan.resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": plan.reports_status,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": plan.image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": ["finetune-trainer", plan.command],
                "env": env,
                "resources": container_resources(resources),
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
                "volumeMounts": volume_mounts,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    if plan.reports_status:
        pod_spec["serviceAccountName"] = trainer_account_name(owner)
    if resources.node_selector:
        pod_spec["nodeSelector"] = dict(resources.node_selector)
    if tolerations_ := tolerations(resources):
        pod_spec["tolerations"] = tolerations_
    if resources.affinity:
        pod_spec["affinity"] = resources.affinity
    if resources.priority_class_name:
        pod_spec["priorityClassName"] = resources.priority_class_name
    job_spec: dict[str, Any] = {
        "backoffLimit": plan.backoff_limit,
        "ttlSecondsAfterFinished": settings.job_ttl_seconds,
        # Kueue admits a queued Job by unsuspending it.
        "suspend": bool(plan.queue_name) or plan.suspend,
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if plan.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = plan.active_deadline_seconds
    assert attempt is not None or name is not None, "a Job is named after its attempt, or explicitly"
    metadata = child_metadata(owner, name or job_name(owner, attempt or 0), plan.component)
    metadata["labels"] = job_labels
    metadata["annotations"] = {ANNOTATION_SPEC_HASH: plan.spec_hash}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_training_job(
    owner: Owner, spec: FineTuneJobSpec, attempt: int, settings: OperatorSettings, name: str | None = None
) -> dict[str, Any]:
    run_spec = build_run_spec(owner, spec, attempt, settings)
    output = run_spec.output
    secrets = [
        *secret_env("BASE_MODEL", spec.base_model.uri, spec.base_model.secret_ref, settings.storage_credentials),
        *secret_env("DATASET", spec.dataset.location, spec.dataset.secret_ref, settings.storage_credentials),
        *secret_env("OUTPUT", output.uri, spec.output.secret_ref, settings.storage_credentials),
    ]
    sources = [(spec.base_model.uri, False), (spec.dataset.location, False)]
    if spec.adapter is not None:
        start = spec.adapter.source()  # resolved by the controller (kinds/finetunejob.py)
        secrets += secret_env("ADAPTER", start.uri, start.secret_ref, settings.storage_credentials)
        sources.append((start.uri, False))
    uris = [*sources, (output.uri, True)]
    pod = attempt_pod("train", run_spec, run_spec.trainer_image, secrets, uris, spec=spec, digest=spec_hash(spec))
    return build_job(owner, attempt, pod, settings, name=name)


def build_eval_job(
    owner: Owner, spec: EvalRunSpec, model: ResolvedModel, attempt: int, settings: OperatorSettings
) -> dict[str, Any]:
    run_spec = build_eval_run_spec(owner, spec, model, attempt, settings)
    default = settings.storage_credentials
    secrets = [*secret_env("BASE_MODEL", model.base_model.uri, model.base_model.secret_ref, default)]
    uris: list[tuple[str, bool]] = [(model.base_model.uri, False), (run_spec.report_uri, True)]
    if model.adapter is not None:
        secrets += secret_env("ADAPTER", model.adapter.uri, model.adapter.secret_ref, default)
        uris.append((model.adapter.uri, False))
    for index, benchmark in enumerate(spec.benchmarks):
        if (source := benchmark.source()) is not None:
            secrets += secret_env(benchmark_role(index), *source, default)
            uris.append((source[0], False))
        if benchmark.judge is not None and benchmark.judge.model is not None:
            judge = benchmark.judge.model
            secrets += secret_env(judge_role(index), judge.uri, judge.secret_ref, default)
            uris.append((judge.uri, False))
        elif benchmark.judge is not None and benchmark.judge.endpoint is not None:
            endpoint = benchmark.judge.endpoint
            secrets += secret_env(judge_role(index), endpoint.url, endpoint.secret_ref, None)
    secrets += secret_env("OUTPUT", run_spec.report_uri, spec.output_secret_ref, default)
    digest = spec_hash(spec, model)
    pod = attempt_pod("eval", run_spec, run_spec.trainer_image, secrets, uris, spec=spec, digest=digest)
    return build_job(owner, attempt, pod, settings)


CHORE_BACKOFF_LIMIT = 2
CHORE_RESOURCES = Resources(gpus=0, cpu="500m", memory="512Mi")
"""A pod that only moves objects in the store (a cleanup, a model publish): no GPU (the API defaults to
one, which would leave it unschedulable on CPU nodes)."""


def chore_plan(
    command: str,
    run_spec: ApiModel,
    image: str,
    secrets: list[dict[str, Any]],
    pvc_uris: list[tuple[str, bool]],
    *,
    deadline_seconds: int,
    spec_hash: str,
) -> PodPlan:
    """A short pod that only moves objects in the store: no GPU, no queue, and no API token, so it
    reports only through its exit code and termination message. `command` is also its component."""
    return PodPlan(
        command=command,
        run_spec=run_spec,
        image=image,
        secrets=secrets,
        pvc_uris=pvc_uris,
        resources=CHORE_RESOURCES,
        queue_name=None,
        suspend=False,
        backoff_limit=CHORE_BACKOFF_LIMIT,
        active_deadline_seconds=deadline_seconds,
        spec_hash=spec_hash,
        component=command,
        reports_status=False,
    )


def cleanup_job_name(owner: Owner) -> str:
    return bounded_name(owner.name, f"-{owner.uid[:5]}-cleanup")


def build_cleanup_job(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """A short pod that deletes everything the job published (output.deletePolicy: Delete).

    It runs the trainer image with the output's secretRef, so the operator itself never holds store
    credentials. No owner reference: the FineTuneJob is being deleted, and a foreground deletion
    would garbage-collect the cleanup before it ran; the operator deletes it (and its TTL backs that up).
    No API token: it reports only through its exit code and termination message.
    """
    prefix = owner_prefix(owner, spec.output.uri, settings)
    run_spec = CleanupRunSpec(resource=resource_ref(owner), uri=prefix, storage=storage_settings(settings))
    secrets = secret_env("OUTPUT", prefix, spec.output.secret_ref, settings.storage_credentials)
    pod = chore_plan(
        "cleanup",
        run_spec,
        spec.image or settings.trainer_image,
        secrets,
        [(prefix, True)],
        deadline_seconds=settings.cleanup_deadline_seconds,
        spec_hash=spec_hash(spec),
    )
    job = build_job(owner, None, pod, settings, name=cleanup_job_name(owner))
    del job["metadata"]["ownerReferences"]
    return job
