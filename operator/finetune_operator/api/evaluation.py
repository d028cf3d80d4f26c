"""What an evaluation measures, shared by EvalRun and FineTuneJob.spec.evaluation, and how it is judged.

`summarize` and `judge` are the one definition of "passed": the trainer uses them to write its report
and the operator to set the Passed condition, so both always agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, StringConstraints

from .common import URI_HELP, Phase, Resources, SecretRef, Uri, remote_secret_rule
from .schema import DNS_LABEL, ApiModel, Rule

Metric = Literal[
    "exact_match",
    "f1",
    "bleu",
    "rouge_l",
    "perplexity",
    "faithfulness",
    "preference_accuracy",
    "preference_accuracy_raw",
]
METRICS: tuple[str, ...] = get_args(Metric)
PREFERENCE_METRICS: tuple[str, ...] = ("preference_accuracy", "preference_accuracy_raw")
LOWER_IS_BETTER: frozenset[str] = frozenset({"perplexity"})


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
    prompt_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default="prompt", description="Column with the prompt of a pair (preference)."
    )
    chosen_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default="chosen", description="Column with the preferred response (preference)."
    )
    rejected_column: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        default="rejected", description="Column with the dispreferred response (preference)."
    )

    __rules__ = (remote_secret_rule(),)


class Benchmark(ApiModel):
    """One dataset scored with one task type."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] = Field(
        description="Name used in results and reports."
    )
    dataset: BenchmarkDataset = Field(description="The evaluation data.")
    task: Literal["qa", "completion", "perplexity", "preference"] = Field(
        description="`qa`: generate answers, compare to references. `completion`: generate continuations. "
        "`perplexity`: score the text itself. `preference`: on held-out prompt/chosen/rejected pairs, how often "
        "the model gives the chosen response the higher log-probability."
    )
    metrics: list[Metric] = Field(
        min_length=1,
        max_length=8,
        description="Metrics to compute, each from 0 to 1 except perplexity. Generation tasks: `exact_match` and "
        "`f1` (SQuAD normalisation: lower case, no punctuation, articles or extra spaces; token-overlap F1), `bleu` "
        "(sacreBLEU corpus BLEU / 100), `rouge_l` (ROUGE-L F-measure, rouge-score). `faithfulness` (qa with a "
        "context column): share of answer tokens that occur in the source passage; 1 - faithfulness is a simple "
        "hallucination-rate proxy. `perplexity` (perplexity task): exp of the mean token negative log-likelihood, "
        "lower is better. Preference task: `preference_accuracy`, the share of pairs whose chosen response has "
        "the higher mean log-probability per token (length-normalised, so a longer answer is not penalised for "
        "its length), and `preference_accuracy_raw`, the same on summed log-probabilities (what DPO's implicit "
        "reward compares); a tie counts half.",
    )
    chat_template: bool = Field(
        default=True,
        description="Render each question as a user turn with the model's chat template (as the trainer renders "
        "training prompts; the adapter's saved template wins); false feeds the raw text.",
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
            cel="(self.task == 'preference') == self.metrics.all(m, m.startsWith('preference_accuracy'))",
            message="the preference_accuracy metrics go with task preference, and only they",
            check=lambda b: (b.task == "preference") == all(m in PREFERENCE_METRICS for m in b.metrics),
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


class EvaluationSettings(ApiModel):
    """Benchmarks, generation and the pass/fail gate (an EvalRun's spec and a FineTuneJob's `evaluation`)."""

    benchmarks: list[Benchmark] = Field(min_length=1, max_length=32, description="Benchmarks to run.")
    baseline: bool = Field(
        default=True,
        description="Also score the base model without the adapter, so results carry a baseline and a delta.",
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Generation settings.")
    thresholds: dict[Metric, float] = Field(
        default_factory=dict,
        description="Pass/fail gate per metric, on its mean over the benchmarks that compute it: a minimum, or a "
        "maximum for perplexity. The Passed condition names the metrics that missed.",
        json_schema_extra={"maxProperties": 8},
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # has(): an omitted map is absent in CEL (no default), not empty.
            cel="!has(self.thresholds) || self.thresholds.all(k, self.benchmarks.exists(b, k in b.metrics))",
            message="every threshold must name a metric that some benchmark computes",
            check=lambda s: all(any(k in b.metrics for b in s.benchmarks) for k in s.thresholds),
            field="thresholds",
        ),
    )


class Evaluation(EvaluationSettings):
    """Evaluate the adapter automatically once training succeeds (the operator creates an owned EvalRun)."""

    resources: Resources | None = Field(
        default=None, description="GPUs, CPU, memory and placement of the evaluation pod (unset: the job's own)."
    )


class MetricResult(ApiModel):
    """One metric of one benchmark."""

    benchmark: Annotated[str, StringConstraints(max_length=63)] = Field(description="Benchmark name.")
    metric: Metric = Field(description="Metric name.")
    value: float = Field(description="Score of the model under test.")
    baseline: float | None = Field(default=None, description="Score of the base model alone (with baseline: true).")
    delta: float | None = Field(default=None, description="value - baseline.")


class MetricSummary(ApiModel):
    """One metric, averaged over the benchmarks that compute it: what thresholds are checked against."""

    metric: Metric = Field(description="Metric name.")
    value: float = Field(description="Mean score of the model under test.")
    baseline: float | None = Field(default=None, description="Mean score of the base model alone.")
    delta: float | None = Field(default=None, description="value - baseline.")


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def summarize(results: Sequence[MetricResult]) -> list[MetricSummary]:
    """Per-metric means over benchmarks, in the order metrics first appear."""
    by_metric: dict[Metric, list[MetricResult]] = {}
    for result in results:
        by_metric.setdefault(result.metric, []).append(result)
    summary = []
    for metric, rows in by_metric.items():
        value = _mean([r.value for r in rows])
        baselines = [r.baseline for r in rows if r.baseline is not None]
        baseline = _mean(baselines) if len(baselines) == len(rows) else None
        summary.append(
            MetricSummary(
                metric=metric,
                value=round(value, 6),
                baseline=round(baseline, 6) if baseline is not None else None,
                delta=round(value - baseline, 6) if baseline is not None else None,
            )
        )
    return summary


def judge(summary: Sequence[MetricSummary], thresholds: Mapping[str, float]) -> list[str]:
    """The thresholds that were missed, each as `metric value < minimum` (or `> maximum` for perplexity)."""
    means: dict[str, float] = {s.metric: s.value for s in summary}
    missed = []
    for metric, limit in thresholds.items():
        value = means.get(metric)
        if value is None:
            missed.append(f"{metric} was not computed")
        elif metric in LOWER_IS_BETTER and not value <= limit:
            missed.append(f"{metric} {value:.4g} > {limit:.4g}")
        elif metric not in LOWER_IS_BETTER and not value >= limit:
            missed.append(f"{metric} {value:.4g} < {limit:.4g}")
    return missed


def headline(summary: Sequence[MetricSummary]) -> float | None:
    """The score shown in `kubectl get`: the mean of the first metric listed."""
    return summary[0].value if summary else None


class EvaluationStatus(ApiModel):
    """The verdict of a FineTuneJob's own EvalRun, mirrored into the FineTuneJob's status."""

    eval_run: Annotated[str, StringConstraints(max_length=253)] = Field(description="Name of the EvalRun.")
    phase: Phase | None = Field(default=None, description="Phase of the EvalRun.")
    passed: bool | None = Field(default=None, description="Whether every threshold was met.")
    score: float | None = Field(default=None, description="Headline score of the EvalRun.")
    report_uri: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, description="Prefix with results.json, report.md and report.html."
    )
    adapter_uri: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, description="Adapter this verdict is about (the job's current adapter once it is done)."
    )
