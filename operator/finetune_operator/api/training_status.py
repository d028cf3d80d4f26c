"""FineTuneJob status: progress, the published artifacts, metrics, provenance, the attempts' history."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from .common import Condition, Phase, ResolvedDataset
from .evaluation import EvaluationStatus
from .schema import ApiModel

HISTORY_POINTS = 64
"""Points in status.progress.history: a loss curve in a few KiB of status, whatever the run's length."""


class LossPoint(ApiModel):
    """One point of the loss curve."""

    step: int = Field(ge=0, description="Optimizer step.")
    loss: float | None = Field(default=None, description="Training loss logged at this step.")
    eval_loss: float | None = Field(default=None, description="Validation loss computed at this step.")


class Progress(ApiModel):
    """Live training progress, patched by the trainer itself at most every few seconds."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    percent: int | None = Field(default=None, ge=0, le=100, description="step / totalSteps, in percent.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest validation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    reward_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="dpo/orpo: share of the latest batches' pairs where the chosen response out-scored the "
        "rejected one (TRL's rewards/accuracies).",
    )
    reward_margin: float | None = Field(
        default=None, description="dpo/orpo: mean reward of chosen minus rejected (TRL's rewards/margins)."
    )
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="Training throughput over the last interval."
    )
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds until training finishes.")
    history: list[LossPoint] | None = Field(
        default=None,
        max_length=HISTORY_POINTS,
        description="The loss curve so far, downsampled to at most 64 points (oldest first; the first and the "
        "newest logged step are always kept, and validation points are kept before training points), so a "
        "dashboard draws it with no store credentials. The whole log history is published beside the adapter "
        "(trainer_state.json).",
    )
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None,
        description="What the trainer is doing (e.g. downloading the model, retrying with a smaller batch).",
    )
    update_time: str | None = Field(
        default=None,
        description="When the trainer last reported (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


class Artifact(ApiModel):
    """A published, manifest-verified object-store prefix."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(
        description="Prefix holding the files and their manifest.json."
    )
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="sha256 of the published manifest.json (which lists every file's sha256)."
    )
    size_bytes: int | None = Field(default=None, ge=0, description="Total size of the published files.")


class Checkpoint(ApiModel):
    """The newest checkpoint synced to the store; a restarted pod resumes from it."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(description="Prefix of the checkpoint.")
    step: int | None = Field(default=None, ge=0, description="Optimizer step of the checkpoint.")


class TrainingMetrics(ApiModel):
    """Final figures from the trainer's result."""

    train_loss: float | None = Field(default=None, description="Mean training loss over the run.")
    eval_loss: float | None = Field(default=None, description="Validation loss at the end.")
    reward_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="dpo/orpo: the last logged share of training pairs whose chosen response out-scored the "
        "rejected one (TRL's rewards/accuracies; the held-out figure is an EvalRun preference benchmark's).",
    )
    reward_margin: float | None = Field(
        default=None, description="dpo/orpo: the last logged mean reward of chosen minus rejected."
    )
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps run.")
    train_samples: int | None = Field(default=None, ge=0, description="Training examples after refinement.")
    truncated_examples: int | None = Field(
        default=None,
        ge=0,
        description="Examples cut to training.maxSeqLength tokens: their ends were not trained on (raise it, or "
        "shorten the rows).",
    )
    tokens_per_second: float | None = Field(default=None, ge=0, description="Mean training throughput.")
    runtime_seconds: float | None = Field(default=None, ge=0, description="Wall time of the training loop.")


class Provenance(ApiModel):
    """What exactly produced the adapter, for reproducibility."""

    base_model_revision: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="Resolved revision (commit or manifest sha256) of the base model."
    )
    dataset_sha256: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="sha256 of the dataset files as read."
    )
    trainer_image: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="Trainer image that ran."
    )
    trainer_version: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="finetune-trainer version that ran."
    )


class AttemptRecord(ApiModel):
    """A finished attempt, kept when a spec change started a new one."""

    attempt: int = Field(ge=1, description="Attempt number.")
    generation: int | None = Field(default=None, ge=0, description="metadata.generation the attempt ran.")
    job_name: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Job of the attempt."
    )
    phase: Phase = Field(description="How the attempt ended.")
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Reason of the outcome."
    )
    adapter_uri: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, description="Adapter the attempt published, if it succeeded."
    )
    completion_time: str | None = Field(
        default=None, description="When the attempt ended (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class AttemptFields(ApiModel):
    """The status fields of a kind that runs its work in attempts of one Job (EvalRun, Dataset), as
    attempts.py writes them."""

    job_name: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Job of the current attempt."
    )
    attempt: int | None = Field(
        default=None, ge=1, description="Current attempt; a new spec (or what it reads, resolved anew) starts the next."
    )
    pod_failures: int | None = Field(default=None, ge=0, description="Failed pods of the current attempt.")
    start_time: str | None = Field(
        default=None, description="When the Job started (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    completion_time: str | None = Field(
        default=None, description="When it finished (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation last acted on.")
    spec_hash: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="Hash of what the current attempt runs: the spec and what it resolved."
    )
    history: list[AttemptRecord] = Field(
        default_factory=list, max_length=10, description="Earlier attempts, newest last (at most 10)."
    )


class StartAdapterStatus(ApiModel):
    """The adapter the current attempt started from, resolved from spec.adapter."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(description="Where the adapter was read from.")
    fine_tune_job: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="FineTuneJob that published it (spec.adapter.fineTuneJobRef)."
    )
    fine_tune_job_attempt: int | None = Field(default=None, ge=1, description="Its attempt that published it.")


class FineTuneJobStatus(ApiModel):
    """Observed state, written by the operator (and `progress` by the trainer)."""

    phase: Phase | None = Field(default=None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Validated, Running, Succeeded, Failed, SpecChangeDeferred and (with spec.evaluation) Evaluated, "
        "per the Kubernetes API conventions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: Progress | None = Field(default=None, description="Live progress reported by the trainer.")
    adapter: Artifact | None = Field(default=None, description="The published adapter (PEFT format).")
    merged_model: Artifact | None = Field(default=None, description="The merged model, when output.merge is set.")
    checkpoint: Checkpoint | None = Field(default=None, description="Newest synced checkpoint while running.")
    metrics: TrainingMetrics | None = Field(default=None, description="Final training figures.")
    provenance: Provenance | None = Field(default=None, description="What produced the adapter.")
    evaluation: EvaluationStatus | None = Field(
        default=None, description="Verdict of the job's own EvalRun (with spec.evaluation)."
    )
    start_adapter: StartAdapterStatus | None = Field(
        default=None, description="The adapter the current attempt started from (spec.adapter)."
    )
    dataset: ResolvedDataset | None = Field(
        default=None, description="The Dataset split the current attempt trains on (spec.dataset.datasetRef)."
    )
    job_name: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Job of the current attempt."
    )
    attempt: int | None = Field(
        default=None, ge=1, description="Current attempt; a spec change after the job finished starts the next."
    )
    pod_failures: int | None = Field(
        default=None, ge=0, description="Failed pods of the current attempt (each retried until backoffLimit)."
    )
    restarts: int | None = Field(
        default=None,
        ge=0,
        description="Times the current attempt's pod group was restarted together (resources.nodes > 1) after a "
        "pod failed; each restart resumes from the newest checkpoint and counts once against spec.backoffLimit.",
    )
    nodes: int | None = Field(default=None, ge=1, description="Pods of the current attempt (resources.nodes).")
    gpus_per_node: int | None = Field(default=None, ge=0, description="GPUs per pod (resources.gpus).")
    world_size: int | None = Field(
        default=None, ge=1, description="Training processes (ranks) of the current attempt: nodes x processes per pod."
    )
    start_time: str | None = Field(
        default=None,
        description="When the attempt's Job started (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    completion_time: str | None = Field(
        default=None, description="When the attempt finished (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the current attempt runs."
    )
    spec_hash: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None,
        description="Hash of the spec the current attempt runs (spec.suspend excluded); a different spec after the "
        "attempt finished starts the next attempt.",
    )
    history: list[AttemptRecord] = Field(
        default_factory=list, max_length=10, description="Earlier attempts, newest last (at most 10)."
    )
