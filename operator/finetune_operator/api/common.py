"""Types shared by FineTuneJob and EvalRun: sources, secrets, quantization, scheduling, conditions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .schema import DNS_SUBDOMAIN, ApiModel, FreeFormObject, ObjectName, Quantity, Rule

URI_PATTERN = r"^(hf|s3|pvc|file)://[^\s]+$"
ImageRef = Annotated[str, StringConstraints(pattern=r"^[^\s]+$", max_length=512)]
Uri = Annotated[str, StringConstraints(pattern=URI_PATTERN, max_length=2048)]

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})

URI_HELP = (
    "Supported schemes: `hf://org/name[@revision]` (Hugging Face Hub; needs network), "
    "`s3://bucket/key/` (S3 or MinIO; endpoint from the operator settings or the secret's "
    "`AWS_ENDPOINT_URL`), `pvc://claim/path` (a PersistentVolumeClaim in the same namespace, mounted "
    "read-only into the trainer pod) and `file:///path` (a path inside the trainer container; for "
    "local development)."
)


class SecretRef(ApiModel):
    """A Secret in the same namespace as the resource; credentials never appear in a spec.

    For `s3://` the Secret holds `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (optionally
    `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL`); for `hf://` it holds `HF_TOKEN`. The trainer receives
    them as `secretKeyRef` environment variables only.
    """

    name: ObjectName = Field(description="Name of a Secret in the resource's own namespace.")


def remote_secret_rule(uri_field: str = "uri", *, optional: bool = False) -> Rule:
    """secretRef only means something for s3:// and hf:// sources; reject it elsewhere instead of ignoring it
    (`optional`: the URI field may be unset, and a secretRef without it is rejected too)."""
    remote = f"self.{uri_field}.startsWith('s3://') || self.{uri_field}.startsWith('hf://')"
    return Rule(
        cel="!has(self.secretRef) || " + (f"(has(self.{uri_field}) && ({remote}))" if optional else remote),
        message="secretRef is only used with s3:// and hf:// URIs",
        check=lambda source: (
            source.secret_ref is None or (getattr(source, uri_field) or "").startswith(("s3://", "hf://"))
        ),
        field="secretRef",
    )


class ModelSource(ApiModel):
    """Where the base model's weights and tokenizer come from."""

    uri: Uri = Field(description="Location of the base model (a Hugging Face-format folder). " + URI_HELP)
    secret_ref: SecretRef | None = Field(
        default=None, description="Secret with the credentials for `uri`; omit for public or local models."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run (`trust_remote_code`). Off by "
        "default: it executes code from the model source inside the trainer.",
    )

    __rules__ = (remote_secret_rule(),)


class LocalRef(ApiModel):
    """A resource in the same namespace."""

    name: ObjectName = Field(description="Name of the resource in this namespace.")


SPLITS = ("train", "validation", "test")
Split = Literal["train", "validation", "test"]


class DatasetRef(ApiModel):
    """A Dataset in the same namespace, and which of its splits to read."""

    name: ObjectName = Field(
        description="Name of the Dataset. The reader waits (Pending, WaitingForDataset) until the Dataset is "
        "Ready, fails if it failed, and runs again when it publishes anew."
    )
    split: Split = Field(default="test", description="`train`, `validation` or `test`.")


class ResolvedDataset(ApiModel):
    """A datasetRef as the operator resolved it for the current attempt (kept while the attempt runs, even if
    the Dataset is rebuilt meanwhile)."""

    name: ObjectName = Field(description="The Dataset.")
    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(description="The split file read.")
    attempt: int | None = Field(default=None, ge=1, description="The Dataset's attempt that published it.")
    benchmark: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="The benchmark that reads it (an EvalRun's)."
    )


class AdapterSource(ApiModel):
    """A published PEFT adapter."""

    uri: Uri = Field(description="Prefix holding the adapter (with its manifest.json). " + URI_HELP)
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")

    __rules__ = (remote_secret_rule(),)


class Quantization(ApiModel):
    """bitsandbytes quantization of the frozen base weights (QLoRA)."""

    bits: Literal[4, 8] = Field(default=4, description="Bits per base weight: 4 (QLoRA, default) or 8.")
    quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="4-bit data type: `nf4` (NormalFloat4, the QLoRA paper's choice) or `fp4`."
    )
    double_quant: bool = Field(
        default=True, description="Also quantize the quantization constants (saves ~0.4 bit per weight)."
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="dtype of the matrix products: `auto` picks bfloat16 on GPUs that support it, float16 on "
        "older GPUs and float32 on CPU.",
    )


class Toleration(ApiModel):
    """A pod toleration, as in the Kubernetes Pod API."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = Field(
        default=None, description="Taint key to tolerate; empty with operator Exists tolerates every taint."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="`Equal` (key and value match) or `Exists`."
    )
    value: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Taint value to match when operator is Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


EXTENDED_RESOURCE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
)


class Resources(ApiModel):
    """What the trainer pod asks of the cluster and where it may run."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs for the trainer container (limit of `gpuResourceName`); 0 runs on CPU.",
    )
    gpu_resource_name: Annotated[str, StringConstraints(pattern=EXTENDED_RESOURCE, max_length=253)] = Field(
        default="nvidia.com/gpu",
        description="Extended resource that counts GPUs (`nvidia.com/gpu`, `amd.com/gpu`, a MIG profile such as "
        "`nvidia.com/mig-3g.40gb`). When gpus > 0 the pod also tolerates the `NoSchedule` taint of that name.",
    )
    cpu: Quantity = Field(default="4", description="CPU request and limit of the trainer container.")
    memory: Quantity = Field(
        default="32Gi",
        description="Memory request and limit of the trainer container. Loading and quantizing a 7-8B model "
        "needs about 16-24Gi of host memory.",
    )
    node_selector: dict[
        Annotated[str, StringConstraints(max_length=316)], Annotated[str, StringConstraints(max_length=63)]
    ] = Field(
        default_factory=dict,
        max_length=32,
        description="Node labels the trainer pod must match (e.g. `nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Extra tolerations for the trainer pod."
    )
    affinity: FreeFormObject | None = Field(
        default=None, description="Pod affinity and anti-affinity, as in the Kubernetes Pod API."
    )
    priority_class_name: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)] | None = Field(
        default=None, description="PriorityClass of the trainer pod (lets training preempt or be preempted)."
    )


class Condition(ApiModel):
    """A condition as in the Kubernetes API conventions."""

    type: Annotated[str, StringConstraints(max_length=316)] = Field(
        description="Condition type, e.g. Validated, Running, Succeeded, Failed (the kind's docs list them)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, StringConstraints(max_length=1024)] = Field(
        default="", description="CamelCase machine-readable reason (e.g. `OutOfMemory`, `DataError`)."
    )
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        default="", description="Human-readable detail: what happened and what to do about it."
    )
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this condition was computed for."
    )


QUEUE_AND_SUSPEND = Rule(
    cel="!(has(self.queueName) && self.suspend)",
    message="suspend cannot be combined with queueName: Kueue decides when a queued job runs",
    check=lambda spec: not (spec.queue_name and spec.suspend),
    field="suspend",
)
