"""EvalRun: benchmark an adapter (and, as baseline, its base model) and gate on thresholds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import (
    QUEUE_AND_SUSPEND,
    URI_HELP,
    Condition,
    ModelSource,
    Phase,
    Quantization,
    Resources,
    SecretRef,
    Uri,
    remote_secret_rule,
)
from .finetunejob import ImageRef
from .schema import DNS_LABEL, ApiModel, ObjectName, Rule

Metric = Literal["exact_match", "f1", "bleu", "rouge_l", "perplexity", "faithfulness"]
METRICS: tuple[str, ...] = ("exact_match", "f1", "bleu", "rouge_l", "perplexity", "faithfulness")
LOWER_IS_BETTER: frozenset[str] = frozenset({"perplexity"})


class LocalRef(ApiModel):
    """A resource in the same namespace."""

    name: ObjectName = Field(description="Name of the resource in this namespace.")


class AdapterSource(ApiModel):
    """A published PEFT adapter."""

    uri: Uri = Field(description="Prefix holding the adapter (with its manifest.json). " + URI_HELP)
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")

    __rules__ = (remote_secret_rule(),)


class EvalModel(ApiModel):
    """The model under test: a FineTuneJob's result, or an explicit base model plus adapter."""

    fine_tune_job_ref: LocalRef | None = Field(
        default=None,
        description="Evaluate this FineTuneJob's adapter on its base model; the run waits until the job succeeded.",
    )
    base_model: ModelSource | None = Field(default=None, description="Base model, when not taken from a FineTuneJob.")
    adapter: AdapterSource | None = Field(
        default=None, description="Adapter to apply to baseModel; unset evaluates the base model alone."
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Load the base model quantized (as it was trained with QLoRA); unset loads it in its dtype.",
    )

    __rules__ = (
        Rule(
            cel="has(self.fineTuneJobRef) != has(self.baseModel)",
            message="set exactly one of fineTuneJobRef and baseModel",
            check=lambda m: (m.fine_tune_job_ref is None) != (m.base_model is None),
            field="baseModel",
        ),
        Rule(
            cel="!has(self.adapter) || has(self.baseModel)",
            message="adapter needs baseModel (a fineTuneJobRef brings its own adapter)",
            check=lambda m: m.adapter is None or m.base_model is not None,
            field="adapter",
        ),
    )


class BenchmarkDataset(ApiModel):
    """Evaluation data: JSONL, JSON, CSV or Parquet."""

    uri: Uri = Field(description="Location of the evaluation file or folder. " + URI_HELP)
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")
    question_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default="question", description="Column with the prompt or question (qa, completion)."
    )
    answer_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default="answer", description="Column with the reference answer (qa, completion)."
    )
    context_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="Column with a source passage; enables the faithfulness metric."
    )
    text_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default="text", description="Column with the text to score (perplexity)."
    )

    __rules__ = (remote_secret_rule(),)


class Benchmark(ApiModel):
    """One dataset scored with one task type."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] = Field(
        description="Name used in results and reports."
    )
    dataset: BenchmarkDataset = Field(description="The evaluation data.")
    task: Literal["qa", "completion", "perplexity"] = Field(
        description="`qa`: generate answers, compare to references. `completion`: generate continuations. "
        "`perplexity`: score the text itself."
    )
    metrics: list[Metric] = Field(
        min_length=1,
        max_length=6,
        description="Metrics to compute: exact_match, f1, bleu, rouge_l (generation tasks), faithfulness (qa with "
        "a context column), perplexity (perplexity task).",
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Evaluate at most this many examples."
    )

    __rules__ = (
        Rule(
            cel="self.task == 'perplexity' ? self.metrics.all(m, m == 'perplexity') "
            ": !self.metrics.exists(m, m == 'perplexity')",
            message="the perplexity metric goes with task perplexity, and only it",
            check=lambda b: (
                all(m == "perplexity" for m in b.metrics) if b.task == "perplexity" else "perplexity" not in b.metrics
            ),
            field="metrics",
        ),
        Rule(
            cel="!self.metrics.exists(m, m == 'faithfulness') || has(self.dataset.contextColumn)",
            message="faithfulness needs dataset.contextColumn (the source passage answers are checked against)",
            check=lambda b: "faithfulness" not in b.metrics or b.dataset.context_column is not None,
            field="metrics",
        ),
    )


class GenerationSettings(ApiModel):
    """How answers are generated."""

    max_new_tokens: int = Field(default=128, ge=1, le=32768, description="Tokens generated per answer at most.")
    temperature: float = Field(default=0.0, ge=0, le=5, description="Sampling temperature; 0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    batch_size: int = Field(default=16, ge=1, le=1024, description="Prompts generated together (left-padded).")


class EvalRunSpec(ApiModel):
    """What to evaluate, on which benchmarks, and what counts as passing."""

    model: EvalModel = Field(description="The model under test.")
    benchmarks: list[Benchmark] = Field(min_length=1, max_length=32, description="Benchmarks to run.")
    baseline: bool = Field(
        default=True,
        description="Also score the base model without the adapter, so results carry a baseline and a delta.",
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Generation settings.")
    thresholds: dict[Metric, float] = Field(
        default_factory=dict,
        description="Pass/fail gate per metric (mean over benchmarks): a minimum, or a maximum for perplexity. "
        "The Passed condition names the metrics that missed.",
        json_schema_extra={"maxProperties": 6},
    )
    resources: Resources = Field(
        default_factory=Resources, description="GPUs, CPU, memory and placement of the evaluation pod."
    )
    output_uri: Annotated[str, StringConstraints(pattern=r"^(s3|pvc|file)://[^\s]+$", max_length=1024)] | None = Field(
        default=None, description="Prefix for the reports (unset: the operator's default output URI)."
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

    __rules__ = (QUEUE_AND_SUSPEND,)


class MetricResult(ApiModel):
    """One metric of one benchmark."""

    benchmark: Annotated[str, StringConstraints(max_length=63)] = Field(description="Benchmark name.")
    metric: Metric = Field(description="Metric name.")
    value: float = Field(description="Score of the model under test.")
    baseline: float | None = Field(default=None, description="Score of the base model alone (with baseline: true).")
    delta: float | None = Field(default=None, description="value - baseline.")


class Report(ApiModel):
    """Where the full report lives."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(
        description="Prefix with results.json, report.md and report.html."
    )


class EvalRunStatus(ApiModel):
    """Observed state of the evaluation."""

    phase: Phase | None = Field(default=None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Validated, Running, Succeeded, Failed and Passed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    results: list[MetricResult] = Field(
        default_factory=list, max_length=200, description="Scores per benchmark and metric."
    )
    score: float | None = Field(default=None, description="Headline score: mean of the first metric over benchmarks.")
    passed: bool | None = Field(default=None, description="Whether every threshold was met.")
    report: Report | None = Field(default=None, description="The published report.")
    job_name: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Job running the evaluation."
    )
    start_time: str | None = Field(
        default=None, description="When the Job started (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    completion_time: str | None = Field(
        default=None, description="When it finished (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation last acted on.")
