"""What an evaluation measures, shared by EvalRun and FineTuneJob.spec.evaluation, and how it is judged.

`summarize` and `judge` are the one definition of "passed": the trainer uses them to write its report
and the operator to set the Passed condition, so both always agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, StringConstraints

from .common import URI_HELP, DatasetRef, Phase, Resources, SecretRef, Uri, remote_secret_rule
from .harness import JudgeSettings, LmEvalSettings
from .schema import DNS_LABEL, ApiModel, Rule, exactly_one

Metric = Literal[
    "exact_match",
    "f1",
    "bleu",
    "rouge_l",
    "perplexity",
    "faithfulness",
    "preference_accuracy",
    "preference_accuracy_raw",
    "acc",
    "acc_norm",
    "mcc",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
    "win_rate",
    "tie_rate",
    "order_disagreement",
    "judge_score",
    "judge_unparsed",
]
METRICS: tuple[str, ...] = get_args(Metric)
Task = Literal["qa", "completion", "perplexity", "preference", "lmEval", "judge"]
GENERATION_METRICS = ("exact_match", "f1", "bleu", "rouge_l", "faithfulness")
# Which metrics each task computes: the one table behind the admission rule, the docs and the trainer.
# lm-eval tasks report under lm-eval's own metric names (and scales: its bleu is 0-100).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "qa": GENERATION_METRICS,
    "completion": GENERATION_METRICS,
    "perplexity": ("perplexity",),
    "preference": ("preference_accuracy", "preference_accuracy_raw"),
    "lmEval": (
        "acc",
        "acc_norm",
        "exact_match",
        "f1",
        "mcc",
        "bleu",
        "perplexity",
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
    ),
    "judge": ("win_rate", "tie_rate", "order_disagreement", "judge_score", "judge_unparsed"),
}
PAIRWISE_METRICS = ("win_rate", "tie_rate", "order_disagreement", "judge_unparsed")
SINGLE_METRICS = ("judge_score", "judge_unparsed")
PREFERENCE_METRICS: tuple[str, ...] = TASK_METRICS["preference"]
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "order_disagreement", "judge_unparsed"}
)


def _cel_list(names: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def _task_metrics_cel() -> str:
    """`metrics` against TASK_METRICS, as one CEL conditional over the task."""
    cel = "false"
    for task, names in reversed(TASK_METRICS.items()):
        cel = f"self.task == '{task}' ? self.metrics.all(m, m in {_cel_list(names)}) : {cel}"
    return cel


class BenchmarkDataset(ApiModel):
    """Evaluation data: JSONL, JSON, CSV or Parquet, or a split of a Dataset."""

    uri: Uri | None = Field(default=None, description="Location of the evaluation file or folder. " + URI_HELP)
    dataset_ref: DatasetRef | None = Field(
        default=None,
        description="Score a split of this Dataset (same namespace; default its test split), read with its "
        "output.secretRef. Its columns are the Dataset's own (instruction, output, and context: the chunk each pair "
        "came from, which faithfulness checks answers against), so the column fields below are not used. The run "
        "waits (Pending, WaitingForDataset) until the Dataset is Ready. Set this or uri.",
    )
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

    __rules__ = (exactly_one("uri", "dataset_ref"), remote_secret_rule(optional=True))

    @property
    def location(self) -> str:
        """The URI read; only once a datasetRef is resolved (by the operator: kinds/evalrun.py)."""
        assert self.uri is not None, "resolve datasetRef first"
        return self.uri


class Benchmark(ApiModel):
    """One dataset scored with one task type, a set of lm-evaluation-harness tasks, or an LLM judge."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] = Field(
        description="Name used in results and reports."
    )
    dataset: BenchmarkDataset | None = Field(
        default=None,
        description="The evaluation data (every task but lmEval, whose tasks bring their own; judge reads the "
        "questions from questionColumn and, where the rows have one, a reference answer from answerColumn).",
    )
    task: Task = Field(
        description="`qa`: generate answers, compare to references. `completion`: generate continuations. "
        "`perplexity`: score the text itself. `preference`: on held-out prompt/chosen/rejected pairs, how often "
        "the model gives the chosen response the higher log-probability. `lmEval`: run the lm-evaluation-harness "
        "tasks of `lmEval`. `judge`: an LLM judge grades the generated answers (`judge`)."
    )
    metrics: list[Metric] = Field(
        min_length=1,
        max_length=8,
        description="Metrics to compute, each from 0 to 1 unless said otherwise. Generation tasks (qa, completion): "
        "`exact_match` and `f1` (SQuAD normalisation: lower case, no punctuation, articles or extra spaces; "
        "token-overlap F1), `bleu` (sacreBLEU corpus BLEU / 100), `rouge_l` (ROUGE-L F-measure, rouge-score), "
        "`faithfulness` (qa with a context column: share of answer tokens that occur in the source passage; 1 - "
        "faithfulness is a simple hallucination-rate proxy). `perplexity` task: `perplexity`, exp of the mean "
        "token negative log-likelihood, lower is better. Preference task: `preference_accuracy`, the share of "
        "pairs whose chosen response has the higher mean log-probability per token (length-normalised), and "
        "`preference_accuracy_raw`, the same on summed log-probabilities (what DPO's implicit reward compares); "
        "a tie counts half. lmEval: the metric names the tasks report (`acc`, `acc_norm`, `exact_match`, `f1`, "
        "`mcc`, `bleu` on lm-eval's 0-100 scale, `perplexity`, `word_perplexity`, `byte_perplexity`, "
        "`bits_per_byte`; the perplexities lower is better), each the mean over the tasks. judge, pairwise: "
        "`win_rate`, `tie_rate`, `order_disagreement` (lower is better), `judge_unparsed` (share of verdicts "
        "with no readable mark, lower is better); single: `judge_score` (mean rating on the judge's scale) and "
        "`judge_unparsed`.",
    )
    lm_eval: LmEvalSettings | None = Field(default=None, description="The lm-evaluation-harness tasks (task lmEval).")
    judge: JudgeSettings | None = Field(default=None, description="The judge and its rubric (task judge).")
    chat_template: bool = Field(
        default=True,
        description="Render each question as a user turn with the model's chat template (as the trainer renders "
        "training prompts; the adapter's saved template wins); false feeds the raw text. lmEval tasks keep "
        "lm-eval's own raw prompts.",
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Evaluate at most this many examples (lmEval: use its limit)."
    )

    __rules__ = (
        Rule(
            cel=_task_metrics_cel(),
            message="every metric must be one the task computes: "
            + "; ".join(f"{task}: {', '.join(names)}" for task, names in TASK_METRICS.items()),
            check=lambda b: all(m in TASK_METRICS[b.task] for m in b.metrics),
            field="metrics",
        ),
        Rule(
            cel="(self.task == 'lmEval') != has(self.dataset)",
            message="dataset is required, except with task lmEval, whose tasks bring their own data (lmEval.include)",
            check=lambda b: (b.task == "lmEval") != (b.dataset is not None),
            field="dataset",
        ),
        Rule(
            cel="(self.task == 'lmEval') == has(self.lmEval)",
            message="lmEval is set exactly when task is lmEval",
            check=lambda b: (b.task == "lmEval") == (b.lm_eval is not None),
            field="lmEval",
        ),
        Rule(
            cel="(self.task == 'judge') == has(self.judge)",
            message="judge is set exactly when task is judge",
            check=lambda b: (b.task == "judge") == (b.judge is not None),
            field="judge",
        ),
        Rule(
            cel="!has(self.judge) || self.metrics.all(m, m in "
            f"(self.judge.mode == 'single' ? {_cel_list(SINGLE_METRICS)} : {_cel_list(PAIRWISE_METRICS)}))",
            message="judge mode pairwise computes win_rate, tie_rate, order_disagreement and judge_unparsed; mode "
            "single computes judge_score and judge_unparsed",
            check=lambda b: (
                b.judge is None
                or all(m in (SINGLE_METRICS if b.judge.mode == "single" else PAIRWISE_METRICS) for m in b.metrics)
            ),
            field="metrics",
        ),
        Rule(
            cel="!self.metrics.exists(m, m == 'faithfulness') "
            "|| (has(self.dataset) && (has(self.dataset.contextColumn) || has(self.dataset.datasetRef)))",
            message="faithfulness needs dataset.contextColumn (the source passage answers are checked against) or "
            "a dataset.datasetRef (whose chunks are the sources)",
            check=lambda b: (
                "faithfulness" not in b.metrics
                or (b.dataset is not None and (b.dataset.context_column or b.dataset.dataset_ref))
            ),
            field="metrics",
        ),
    )

    def source(self) -> tuple[str, SecretRef | None] | None:
        """What the pod fetches for this benchmark (its dataset, or its lm-eval task folder), with its Secret."""
        if self.dataset is not None:
            return self.dataset.location, self.dataset.secret_ref
        if self.lm_eval is not None and self.lm_eval.include is not None:
            return self.lm_eval.include, self.lm_eval.secret_ref
        return None


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
        Rule(
            cel="self.baseline || !self.benchmarks.exists(b, has(b.judge) && b.judge.mode == 'pairwise')",
            message="a pairwise judge compares the tuned answers with the baseline's: it needs baseline: true",
            check=lambda s: s.baseline or not any(b.judge and b.judge.mode == "pairwise" for b in s.benchmarks),
            field="baseline",
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
