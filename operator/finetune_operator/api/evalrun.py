"""EvalRun: benchmark an adapter (and, as baseline, its base model) and gate on thresholds."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from .common import (
    QUEUE_AND_SUSPEND,
    AdapterSource,
    Condition,
    ImageRef,
    LocalRef,
    ModelSource,
    Phase,
    Quantization,
    ResolvedDataset,
    Resources,
    SecretRef,
)
from .evaluation import EvaluationSettings, MetricResult, MetricSummary
from .schema import DNS_LABEL, ApiModel, Rule, exactly_one
from .training_status import AttemptFields


class EvalModel(ApiModel):
    """The model under test: a FineTuneJob's result, or an explicit base model plus adapter."""

    fine_tune_job_ref: LocalRef | None = Field(
        default=None,
        description="Evaluate this FineTuneJob's adapter on its base model, quantized as it was trained. The run "
        "waits until the job succeeded, fails if it failed, and runs again when the job publishes a new adapter.",
    )
    base_model: ModelSource | None = Field(default=None, description="Base model, when not taken from a FineTuneJob.")
    adapter: AdapterSource | None = Field(
        default=None, description="Adapter to apply to baseModel; unset evaluates the base model alone."
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Load the base model quantized (as it was trained with QLoRA); unset loads it in its dtype "
        "(with fineTuneJobRef: the job's own quantization).",
    )

    __rules__ = (
        exactly_one("fine_tune_job_ref", "base_model", field="base_model"),
        Rule(
            cel="!has(self.adapter) || has(self.baseModel)",
            message="adapter needs baseModel (a fineTuneJobRef brings its own adapter)",
            check=lambda m: m.adapter is None or m.base_model is not None,
            field="adapter",
        ),
    )


class EvalRunSpec(EvaluationSettings):
    """What to evaluate, on which benchmarks, and what counts as passing."""

    model: EvalModel = Field(description="The model under test.")
    resources: Resources = Field(
        default_factory=Resources, description="GPUs, CPU, memory and placement of the evaluation pod."
    )
    output_uri: Annotated[str, StringConstraints(pattern=r"^(s3|pvc|file)://[^\s]+$", max_length=1024)] | None = Field(
        default=None,
        description="Prefix for the reports, which land in `<outputUri>/<namespace>/<name>/<uid>/attempt-<n>/report/` "
        "(unset: the operator's default output URI).",
    )
    output_secret_ref: SecretRef | None = Field(
        default=None, description="Secret with write credentials for outputUri (unset: the operator's storage secret)."
    )
    image: ImageRef | None = Field(default=None, description="Trainer image to run (unset: the operator's default).")
    queue_name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] | None = Field(
        default=None, description="Kueue LocalQueue to submit to."
    )
    suspend: bool = Field(default=False, description="Suspend the run.")
    backoff_limit: int = Field(default=2, ge=0, le=100, description="Pod retries for retriable failures.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, le=31_536_000, description="Fail the run after this many seconds."
    )

    __rules__ = (
        *EvaluationSettings.__rules__,
        QUEUE_AND_SUSPEND,
        Rule(
            cel="!has(self.outputSecretRef) || !has(self.outputUri) || self.outputUri.startsWith('s3://')",
            message="outputSecretRef is only used with an s3:// outputUri",
            check=lambda s: s.output_secret_ref is None or s.output_uri is None or s.output_uri.startswith("s3://"),
            field="outputSecretRef",
        ),
    )


class EvalProgress(ApiModel):
    """Live progress, patched by the evaluation pod itself at most every few seconds."""

    benchmark: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Benchmark being scored."
    )
    model: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, description="`tuned` (base model + adapter) or `baseline` (base model alone)."
    )
    samples_done: int | None = Field(default=None, ge=0, description="Examples scored so far, over all passes.")
    samples_total: int | None = Field(default=None, ge=0, description="Examples to score in all passes.")
    percent: int | None = Field(default=None, ge=0, le=100, description="samplesDone / samplesTotal, in percent.")
    samples_per_second: float | None = Field(default=None, ge=0, description="Scoring throughput.")
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="What the pod is doing."
    )
    update_time: str | None = Field(
        default=None, description="When the pod last reported (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class ResolvedModel(ApiModel):
    """The model an attempt scores, resolved by the operator (from the FineTuneJob when one is referenced)."""

    base_model: ModelSource = Field(description="Base model.")
    adapter: AdapterSource | None = Field(default=None, description="Adapter; unset scores the base model alone.")
    quantization: Quantization | None = Field(default=None, description="Load the base model quantized.")
    fine_tune_job: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="FineTuneJob that produced the adapter."
    )
    fine_tune_job_attempt: int | None = Field(default=None, ge=1, description="Its attempt that published it.")


class Report(ApiModel):
    """Where the full report lives."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(
        description="Prefix with results.json, report.md and report.html."
    )


class EvalRunStatus(AttemptFields):
    """Observed state of the evaluation."""

    phase: Phase | None = Field(default=None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Validated, Running, Succeeded, Failed and Passed (True when every threshold was met; False "
        "names the metrics that missed).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: EvalProgress | None = Field(default=None, description="Live progress reported by the evaluation pod.")
    model: ResolvedModel | None = Field(default=None, description="The model the current attempt evaluates.")
    datasets: list[ResolvedDataset] = Field(
        default_factory=list,
        max_length=32,
        description="The Dataset splits the current attempt scores (benchmarks[].dataset.datasetRef).",
    )
    results: list[MetricResult] = Field(
        default_factory=list,
        max_length=200,
        description="Scores per benchmark and metric (the full table, with every sample, is in the report).",
    )
    summary: list[MetricSummary] = Field(
        default_factory=list,
        max_length=16,
        description="Each metric averaged over the benchmarks that compute it; thresholds are checked against these.",
    )
    score: float | None = Field(default=None, description="Headline score: the first metric's mean over benchmarks.")
    passed: bool | None = Field(default=None, description="Whether every threshold was met.")
    report: Report | None = Field(default=None, description="The published report.")
