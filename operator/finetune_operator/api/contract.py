"""The operator <-> trainer contract (change both sides in one commit).

- The Job runs `finetune-trainer train` with a `TrainingRunSpec` (FineTuneJob), `finetune-trainer eval`
  with an `EvaluationRunSpec` (EvalRun), or `finetune-trainer cleanup` with a `CleanupRunSpec` (a deleted
  FineTuneJob with output.deletePolicy Delete), or `finetune-trainer publish-model` with a
  `ModelPublishRunSpec` (a Model's store copy), or `finetune-trainer check-schedule` with a
  `ScheduleCheckRunSpec` (a FineTuneSchedule's triggers and a run's training set), or
  `finetune-trainer build-dataset` with a `DatasetBuildRunSpec` (a Dataset), as JSON in `FINETUNE_RUN_SPEC`.
- Credentials arrive only as `secretKeyRef` env vars named by `secret_env_name`.
- The trainer patches `status.progress` of `resource` (its ServiceAccount may do nothing else), and
  writes a `TrainerResult` (< 4 KiB) to the termination-message file. The operator trusts that result,
  not the progress patches, for the final status.
- Exit codes: 0 success, `EXIT_INVALID_INPUT` (2) bad input or data (not retried), anything else retried.
- With several ranks (torchrun), each pod writes one result: a failed rank's if one failed (the first
  to fail, its message naming the rank), else that of the pod's lowest rank. The operator takes the
  job's result from pod 0, whose lowest rank is global rank 0; other pods' results matter only when
  they failed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .dataset import DatasetOutcome, DatasetSpec
from .evalrun import EvalRunSpec, Report, ResolvedModel
from .evaluation import MetricResult, MetricSummary
from .finetunejob import DatasetSource, FineTuneJobSpec
from .model import ModelVersion, StablePointer
from .schedule import DriftScore, FeedbackCounts, Triggers
from .schema import ApiModel
from .training_status import Artifact, Checkpoint, Provenance, TrainingMetrics

RUN_SPEC_ENV = "FINETUNE_RUN_SPEC"
EXIT_INVALID_INPUT = 2
TERMINATION_MESSAGE_LIMIT = 4096
# pvc://claim/path is mounted at PVC_MOUNT_ROOT/claim, so the trainer reads PVC_MOUNT_ROOT/claim/path.
PVC_MOUNT_ROOT = "/mnt/pvc"

# Which source a Secret's env vars are for: BASE_MODEL, DATASET, OUTPUT, ADAPTER, BENCHMARK_<index>,
# BENCHMARK_<index>_JUDGE, ADAPTER_<index> (a model publish's versions), DOCUMENTS and GENERATOR (a Dataset's).
SecretRole = str


def benchmark_role(index: int) -> SecretRole:
    """The role of an EvalRun's benchmark `index`: the operator names its env vars, the trainer reads them."""
    return f"BENCHMARK_{index}"


def judge_role(index: int) -> SecretRole:
    """The role of benchmark `index`'s judge: its model's store, or its endpoint's API key."""
    return f"BENCHMARK_{index}_JUDGE"


STABLE_POINTER = "stable.json"
"""The file beside a Model's version folders that names the stable one (storage layout, a contract)."""


def version_folder(prefix: str, version: int) -> str:
    """Where a Model's version N lies under its store prefix `<store>/models/<ns>/<model>/`."""
    return f"{prefix}v{version}/"


def version_role(index: int) -> SecretRole:
    """The role that reads the adapter of a model publish's version `index` (each has its own secretRef)."""
    return f"ADAPTER_{index}"


# A FineTuneSchedule's check pod reads each trigger's prefix under its own role.
NEW_DATA_ROLE: SecretRole = "NEW_DATA"
FEEDBACK_ROLE: SecretRole = "FEEDBACK"
DRIFT_ROLE: SecretRole = "DRIFT"

# A Dataset's build pod reads its documents and its generating model under roles of their own.
DOCUMENTS_ROLE: SecretRole = "DOCUMENTS"
GENERATOR_ROLE: SecretRole = "GENERATOR"

SCHEDULE_STATE = "state.json"
"""A FineTuneSchedule's record in the store (`<output>/schedules/<ns>/<name>/<uid>/state.json`): the consumed
feedback ids and data objects, and each run's outcome (storage layout, a contract)."""


def schedule_run_folder(prefix: str, run: int) -> str:
    """Where run N's training set lies under a FineTuneSchedule's store prefix."""
    return f"{prefix}runs/{run}/data/"


# Keys a storage Secret may hold, per URI scheme: (key, required).
SECRET_KEYS: dict[str, tuple[tuple[str, bool], ...]] = {
    "s3": (
        ("AWS_ACCESS_KEY_ID", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_SESSION_TOKEN", False),
        ("AWS_ENDPOINT_URL", False),
    ),
    "hf": (("HF_TOKEN", True),),
    # A judge endpoint's bearer token (benchmarks[].judge.endpoint.secretRef).
    "http": (("OPENAI_API_KEY", True),),
    "https": (("OPENAI_API_KEY", True),),
}


def secret_env_name(role: SecretRole, key: str) -> str:
    """Env var carrying `key` of the Secret for `role`, e.g. FINETUNE_DATASET_AWS_ACCESS_KEY_ID."""
    return f"FINETUNE_{role}_{key}"


class ResourceRef(ApiModel):
    """The custom resource the run reports to."""

    group: str = Field(description="API group.")
    version: str = Field(description="API version.")
    plural: str = Field(description="Resource plural, e.g. finetunejobs.")
    namespace: str = Field(description="Namespace of the resource.")
    name: str = Field(description="Name of the resource.")
    uid: str = Field(description="UID of the resource.")


class StorageSettings(ApiModel):
    """How to reach the S3-compatible store."""

    s3_endpoint: str | None = Field(default=None, description="host:port or URL of the S3 endpoint (unset: AWS).")
    s3_region: str | None = Field(default=None, description="S3 region.")
    s3_secure: bool = Field(default=True, description="Use HTTPS.")


class RunOutput(ApiModel):
    """Resolved output locations of this attempt."""

    uri: str = Field(description="Prefix of this attempt: <output>/<namespace>/<name>/<uid>/attempt-<n>/.")
    adapter_uri: str = Field(description="Where the adapter is published.")
    checkpoints_uri: str = Field(description="Where checkpoints are synced.")
    merged_model_uri: str | None = Field(default=None, description="Where the merged model goes, with output.merge.")


class _AttemptRunSpec(ApiModel):
    """What every run of an attempt carries: whom to report to, which attempt, the store, the image."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        default="finetune.dev/v1alpha1", description="Contract version."
    )
    resource: ResourceRef | None = Field(
        default=None, description="The resource to report to; unset when run outside Kubernetes (a laptop)."
    )
    attempt: int = Field(ge=1, description="Attempt number.")
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Object store settings.")
    trainer_image: str = Field(description="Image the Job runs (recorded in provenance).")


class TrainingRunSpec(_AttemptRunSpec):
    """Everything the trainer needs, resolved by the operator (defaults applied)."""

    kind: Literal["TrainingRun"] = Field(default="TrainingRun", description="Run kind.")
    job: FineTuneJobSpec = Field(description="The FineTuneJob spec, defaults applied.")
    output: RunOutput = Field(description="Resolved output locations.")


class EvaluationRunSpec(_AttemptRunSpec):
    """Everything `finetune-trainer eval` needs, resolved by the operator."""

    kind: Literal["EvaluationRun"] = Field(default="EvaluationRun", description="Run kind.")
    evaluation: EvalRunSpec = Field(description="The EvalRun spec, defaults applied.")
    model: ResolvedModel = Field(description="The model under test.")
    report_uri: str = Field(description="Prefix the report is published under.")


class DatasetBuildRunSpec(_AttemptRunSpec):
    """Everything `finetune-trainer build-dataset` needs, resolved by the operator."""

    kind: Literal["DatasetBuildRun"] = Field(default="DatasetBuildRun", description="Run kind.")
    dataset: DatasetSpec = Field(description="The Dataset spec, defaults applied.")
    output_uri: str = Field(
        description="Prefix the splits are published under: <output>/<namespace>/<name>/<uid>/attempt-<n>/."
    )


class CleanupRunSpec(ApiModel):
    """`finetune-trainer cleanup`: delete every object under a FineTuneJob's prefix (output.deletePolicy: Delete)."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        default="finetune.dev/v1alpha1", description="Contract version."
    )
    kind: Literal["CleanupRun"] = Field(default="CleanupRun", description="Run kind.")
    resource: ResourceRef | None = Field(default=None, description="The FineTuneJob being deleted.")
    uri: str = Field(description="Prefix to delete: <output>/<namespace>/<name>/<uid>/.")
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Object store settings.")


PUBLISH_BATCH = 10
"""Versions one publish pod writes at most: the run spec travels in an env var, the result in 4 KiB."""


class ModelPublishRunSpec(ApiModel):
    """`finetune-trainer publish-model`: copy a Model's decided versions into its store folder, each with its
    model card and manifest, then point stable.json at the stable one."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        default="finetune.dev/v1alpha1", description="Contract version."
    )
    kind: Literal["ModelPublishRun"] = Field(default="ModelPublishRun", description="Run kind.")
    resource: ResourceRef = Field(description="The Model.")
    uri: str = Field(description="`<store>/models/<namespace>/<name>/`: version N goes to `v<N>/`.")
    versions: list[ModelVersion] = Field(
        default_factory=list,
        max_length=PUBLISH_BATCH,
        description="The versions to publish; the adapter of versions[i] is read with the role ADAPTER_<i>.",
    )
    stable: StablePointer | None = Field(
        default=None,
        description="stable.json's content, written last (its version is published already, or in `versions`).",
    )
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Object store settings.")


class ScheduleCheckRunSpec(ApiModel):
    """`finetune-trainer check-schedule`: read a FineTuneSchedule's store triggers; when a run is due (given in
    `due`, or a trigger fires), build its training set under `runs/<run>/data/`, then record the consumed
    feedback and data in state.json (last). Run again for the same `run`, it answers what it recorded."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        default="finetune.dev/v1alpha1", description="Contract version."
    )
    kind: Literal["ScheduleCheckRun"] = Field(default="ScheduleCheckRun", description="Run kind.")
    resource: ResourceRef = Field(description="The FineTuneSchedule.")
    run: int = Field(ge=1, description="The check's number: the run it may start is `<schedule>-<run>`.")
    due: list[str] = Field(
        default_factory=list, max_length=4, description="Reasons a run is due regardless of the triggers."
    )
    uri: str = Field(description="The schedule's store prefix (read and written with role OUTPUT).")
    dataset: DatasetSource = Field(description="The template's dataset (role DATASET): every run's base rows.")
    objective: Literal["sft", "dpo", "orpo"] = Field(description="The template's objective.")
    triggers: Triggers = Field(description="The schedule's store triggers.")
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Object store settings.")


class ScheduleCheckOutcome(ApiModel):
    """What a check found, and the training set of the run it started (bounded for the termination message)."""

    reasons: list[str] = Field(default_factory=list, max_length=8, description="Why a run starts; empty: none.")
    dataset_uri: str | None = Field(default=None, description="The run's training set (with reasons).")
    rows: int | None = Field(default=None, ge=0, description="Rows in it.")
    new_objects: int | None = Field(default=None, ge=0, description="New data objects not consumed before.")
    feedback: FeedbackCounts | None = Field(default=None, description="Feedback counts.")
    drift: DriftScore | None = Field(default=None, description="The drift score.")
    problems: list[Annotated[str, StringConstraints(max_length=300)]] = Field(
        default_factory=list, max_length=6, description="Bad input skipped, each naming its file and line."
    )
    problem_count: int = Field(default=0, ge=0, description="All problems found (more than listed, maybe).")


class EvaluationOutcome(ApiModel):
    """An evaluation's figures, bounded to fit the termination message (the report holds everything)."""

    summary: list[MetricSummary] = Field(max_length=16, description="Per-metric means (what thresholds check).")
    results: list[MetricResult] = Field(
        default_factory=list, max_length=200, description="Per-benchmark scores, as many as fit."
    )
    results_truncated: bool = Field(default=False, description="Some per-benchmark rows were left to the report.")
    report: Report = Field(description="The published report.")
    samples: int = Field(default=0, ge=0, description="Examples scored (tuned model; baseline scores the same).")


class TrainerResult(ApiModel):
    """The termination message: the trainer's final word on the attempt."""

    result: Literal["succeeded", "failed"] = Field(description="Outcome.")
    reason: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="CamelCase reason on failure, e.g. DataError, OutOfMemory, StorageUnavailable."
    )
    message: Annotated[str, StringConstraints(max_length=2048)] | None = Field(default=None, description="Detail.")
    adapter: Artifact | None = Field(default=None, description="Published adapter.")
    merged_model: Artifact | None = Field(default=None, description="Published merged model.")
    checkpoint: Checkpoint | None = Field(default=None, description="Last synced checkpoint.")
    metrics: TrainingMetrics | None = Field(default=None, description="Final figures.")
    resumed_from_step: int | None = Field(default=None, ge=0, description="Checkpoint step the run resumed from.")
    provenance: Provenance | None = Field(default=None, description="What produced the adapter.")
    evaluation: EvaluationOutcome | None = Field(default=None, description="Figures of an evaluation run.")
    deleted_objects: int | None = Field(default=None, ge=0, description="Objects a cleanup run deleted.")
    published_versions: list[int] | None = Field(
        default=None, max_length=PUBLISH_BATCH, description="Versions a model publish wrote (model card last)."
    )
    stable_version: int | None = Field(default=None, ge=1, description="The version stable.json now points at.")
    schedule: ScheduleCheckOutcome | None = Field(default=None, description="A schedule check's findings.")
    dataset: DatasetOutcome | None = Field(default=None, description="What a Dataset build produced.")
    rank: int | None = Field(
        default=None, ge=0, description="Global rank that wrote this result, in a job of several ranks."
    )
    weights_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None,
        description="sha256 over the trained (LoRA) tensors at the end; every rank reports it, so a test or a "
        "user can check the ranks stayed in step. Pods other than pod 0 report only this.",
    )
