"""What differs between a FineTuneJob attempt and an EvalRun attempt; reconcile.py runs both the same way.

A `Workload` bundles the pure functions one kind contributes: the children of an attempt, what a
successful trainer result must contain, which status fields it fills, and extra conditions. Also
here: resolving an EvalRun's `fineTuneJobRef`, and the EvalRun a FineTuneJob's `spec.evaluation` asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .api import API_VERSION
from .api.contract import TrainerResult
from .api.evalrun import AdapterSource, EvalModel, EvalRunSpec, LocalRef, ResolvedModel
from .api.evaluation import MetricSummary, judge
from .api.finetunejob import FineTuneJobSpec
from .config import OperatorSettings
from .manifests import build_children, build_eval_children
from .manifests.job import spec_hash
from .manifests.names import Owner, bounded_name, child_metadata
from .status import TRAINING_JUDGE, Judge, Outcome, Scheduling, make_condition, result_fields


@dataclass(frozen=True)
class Workload:
    spec: Scheduling
    digest: str
    judge: Judge
    children: Callable[[int], list[dict[str, Any]]]
    """attempt -> the objects that attempt needs, in creation order."""
    attempt_fields: tuple[str, ...]
    """Status fields that describe one attempt; cleared when the next starts."""
    result_fields: Callable[[Outcome], dict[str, Any]]
    extra_conditions: Callable[[Outcome], list[dict[str, Any]]] = lambda _: []
    start_fields: Mapping[str, Any] = field(default_factory=dict)
    """Status fields set when an attempt starts."""


# --- FineTuneJob ---------------------------------------------------------------------------------


TRAINING_ATTEMPT_FIELDS = (
    "progress",
    "adapter",
    "mergedModel",
    "checkpoint",
    "metrics",
    "provenance",
    "evaluation",
    "startTime",
    "completionTime",
)


def training_workload(owner: Owner, spec: FineTuneJobSpec, settings: OperatorSettings) -> Workload:
    return Workload(
        spec=spec,
        digest=spec_hash(spec),
        judge=TRAINING_JUDGE,
        children=lambda attempt: build_children(owner, spec, attempt, settings),
        attempt_fields=TRAINING_ATTEMPT_FIELDS,
        result_fields=result_fields,
    )


# --- EvalRun -------------------------------------------------------------------------------------


def _format_summary(summary: list[MetricSummary]) -> str:
    parts = []
    for item in summary:
        text = f"{item.metric} {item.value:.4g}"
        if item.baseline is not None:
            text += f" (baseline {item.baseline:.4g})"
        parts.append(text)
    return ", ".join(parts)


def verdict(result: TrainerResult, thresholds: Mapping[str, float]) -> tuple[bool, list[str]]:
    """(passed, missed thresholds) of a finished evaluation, judged by the operator from the summary."""
    summary = result.evaluation.summary if result.evaluation else []
    missed = judge(summary, thresholds)
    return not missed, missed


def evaluation_judge(thresholds: Mapping[str, float]) -> Judge:
    def success(result: TrainerResult) -> Outcome | None:
        if result.evaluation is None:
            return None
        passed, missed = verdict(result, thresholds)
        gate = (
            "" if not thresholds else "; all thresholds met" if passed else f"; thresholds missed: {', '.join(missed)}"
        )
        message = f"{_format_summary(result.evaluation.summary)}{gate}"
        return Outcome("Succeeded", "EvaluationComplete", message[:2048], result)

    return Judge(success=success, produces="evaluation results", memory_hint="generation.batchSize")


EVAL_ATTEMPT_FIELDS = (
    "progress",
    "model",
    "results",
    "summary",
    "score",
    "passed",
    "report",
    "startTime",
    "completionTime",
)


def passed_condition(outcome: Outcome, thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Passed: True when every threshold was met, False (naming the misses) when not or when the run failed."""
    if outcome.phase == "Failed":
        return make_condition("Passed", False, "EvaluationFailed", f"the evaluation failed: {outcome.reason}")
    if outcome.phase != "Succeeded" or outcome.result is None:
        return make_condition("Passed", None, "Evaluating", "the evaluation has not finished")
    passed, missed = verdict(outcome.result, thresholds)
    if not thresholds:
        return make_condition("Passed", True, "NoThresholds", "no thresholds are set, so nothing can fail")
    if passed:
        limits = ", ".join(f"{k} {v:g}" for k, v in thresholds.items())
        return make_condition("Passed", True, "ThresholdsMet", f"every threshold was met ({limits})")
    return make_condition("Passed", False, "ThresholdsMissed", "missed: " + "; ".join(missed))


def evaluation_result_fields(outcome: Outcome, thresholds: Mapping[str, float]) -> dict[str, Any]:
    evaluation = outcome.result.evaluation if outcome.result else None
    if outcome.phase != "Succeeded" or evaluation is None:
        return {}
    summary = evaluation.summary
    return {
        "results": [r.to_json_dict() for r in evaluation.results],
        "summary": [s.to_json_dict() for s in summary],
        "score": summary[0].value if summary else None,
        "passed": verdict(outcome.result, thresholds)[0] if outcome.result else None,
        "report": evaluation.report.to_json_dict(),
    }


def evaluation_workload(owner: Owner, spec: EvalRunSpec, model: ResolvedModel, settings: OperatorSettings) -> Workload:
    thresholds: dict[str, float] = {str(k): v for k, v in spec.thresholds.items()}
    return Workload(
        spec=spec,
        digest=spec_hash(spec, model),
        judge=evaluation_judge(thresholds),
        children=lambda attempt: build_eval_children(owner, spec, model, attempt, settings),
        attempt_fields=EVAL_ATTEMPT_FIELDS,
        result_fields=lambda outcome: evaluation_result_fields(outcome, thresholds),
        extra_conditions=lambda outcome: [passed_condition(outcome, thresholds)],
        start_fields={"model": model.to_json_dict()},
    )


def resolve_model(spec: EvalRunSpec, ftj: Mapping[str, Any] | None) -> ResolvedModel | Outcome:
    """The model to evaluate, or why there is none yet (Pending) or will be none (Failed)."""
    model = spec.model
    if model.fine_tune_job_ref is None:
        assert model.base_model is not None  # the model's own rule: exactly one of the two
        return ResolvedModel(base_model=model.base_model, adapter=model.adapter, quantization=model.quantization)
    name = model.fine_tune_job_ref.name
    if ftj is None:
        return Outcome("Pending", "WaitingForFineTuneJob", f"FineTuneJob {name} does not exist (yet)")
    status = ftj.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        why = next((c.get("message") for c in status.get("conditions") or [] if c.get("type") == "Failed"), "")
        return Outcome("Failed", "FineTuneJobFailed", f"FineTuneJob {name} failed: {why}"[:2048])
    adapter = (status.get("adapter") or {}).get("uri")
    if phase != "Succeeded" or not adapter:
        return Outcome(
            "Pending", "WaitingForFineTuneJob", f"waiting for FineTuneJob {name} to succeed (it is {phase or 'new'})"
        )
    try:
        job = FineTuneJobSpec.model_validate(ftj.get("spec") or {})
    except ValidationError:
        return Outcome("Failed", "FineTuneJobFailed", f"FineTuneJob {name} has an invalid spec")
    return ResolvedModel(
        base_model=job.base_model,
        adapter=AdapterSource(uri=adapter, secret_ref=job.output.secret_ref),
        quantization=model.quantization or job.effective_quantization,
        fine_tune_job=name,
        fine_tune_job_attempt=status.get("attempt"),
    )


# --- FineTuneJob.spec.evaluation -> an owned EvalRun ---------------------------------------------


def evalrun_name(owner: Owner) -> str:
    return bounded_name(owner.name, "-eval")


def build_owned_evalrun(owner: Owner, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The EvalRun a FineTuneJob's spec.evaluation stands for: same image, queue, output and (default) resources."""
    evaluation = spec.evaluation
    assert evaluation is not None
    eval_spec = EvalRunSpec(
        model=EvalModel(fine_tune_job_ref=LocalRef(name=owner.name)),
        benchmarks=evaluation.benchmarks,
        baseline=evaluation.baseline,
        generation=evaluation.generation,
        thresholds=evaluation.thresholds,
        resources=evaluation.resources or spec.resources,
        output_uri=spec.output.uri,
        output_secret_ref=spec.output.secret_ref,
        image=spec.image,
        queue_name=spec.queue_name,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "EvalRun",
        "metadata": child_metadata(owner, evalrun_name(owner), "evaluation"),
        "spec": eval_spec.to_json_dict(),
    }
