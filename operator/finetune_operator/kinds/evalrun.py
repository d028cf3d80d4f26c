"""EvalRun: resolve the model to evaluate (maybe waiting for a FineTuneJob), run it in attempts, judge thresholds.

    inputs = gather(body, indices, settings)   # its Jobs and Pods, the referenced FineTuneJob as watched
    plan(inputs, now) -> Plan                  # pure: the model, then attempts (attempts.py)

Woken by its own events, its Jobs and Pods, the FineTuneJob its fineTuneJobRef names finishing, and the
Datasets its benchmarks' datasetRefs name changing (those controllers' `dependents`). An EvalRun owned by a
FineTuneJob or a Model wakes its owner when its
verdict changes (`mirrored`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api import DATASET, EVALRUN, FINETUNEJOB, MODEL, Kind, format_validation_error
from ..api.common import ResolvedDataset
from ..api.contract import TrainerResult
from ..api.dataset import DATASET_COLUMNS
from ..api.evalrun import EvalRunSpec, ResolvedModel
from ..api.evaluation import MetricSummary, judge
from ..attempts import Observed, Workload, invalid, observe, plan_attempts, waiting
from ..conditions import make_condition
from ..config import OperatorSettings
from ..manifests import build_eval_children
from ..manifests.job import spec_hash
from ..manifests.names import Owner
from ..plan import Plan
from ..status import Judge, Outcome
from .base import Controller, Gathered, Indices, children_of, dataset_split, published_adapter, watched


@dataclass(frozen=True)
class Inputs(Gathered):
    ftj: Mapping[str, Any] | None = None
    """The FineTuneJob named by spec.model.fineTuneJobRef, as watched (None if absent or not referenced)."""
    datasets: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    """The Datasets its benchmarks' datasetRefs name, as watched (None: not seen), by name."""


def dataset_names(spec: Mapping[str, Any]) -> list[str]:
    """The Datasets an EvalRun spec's benchmarks read (datasetRef), each once."""
    refs = (((b or {}).get("dataset") or {}).get("datasetRef") or {} for b in spec.get("benchmarks") or [])
    return sorted({ref["name"] for ref in refs if ref.get("name")})


def gather(body: Mapping[str, Any], indices: Indices, settings: OperatorSettings) -> Inputs:
    jobs, pods = children_of(indices, body)
    spec = body.get("spec") or {}
    ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    namespace = body["metadata"].get("namespace") or ""
    ftj = watched(indices, FINETUNEJOB, namespace, ref) if ref else None
    datasets = {name: watched(indices, DATASET, namespace, name) for name in dataset_names(spec)}
    return Inputs(body, jobs, pods, settings, ftj, datasets)


def plan(inputs: Inputs, now: datetime) -> Plan:
    body, settings = inputs.body, inputs.settings
    obs = observe(body, inputs.jobs)
    try:
        spec = EvalRunSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return invalid(format_validation_error(error), obs, now)
    recorded = obs.status.get("model")
    # A running attempt finishes with the model it started with, even if the job has moved on.
    model = ResolvedModel.model_validate(recorded) if obs.in_flight and recorded else resolve_model(spec, inputs.ftj)
    resolved = model if isinstance(model, Outcome) else resolve_datasets(spec, obs, inputs.datasets)
    if isinstance(resolved, Outcome):
        if obs.attempt:
            # The last verdict stands (e.g. the FineTuneJob is re-training); a new adapter brings a new attempt.
            return Plan(status={"observedGeneration": obs.generation})
        return waiting(obs, resolved, now, passed_too=True)
    assert not isinstance(model, Outcome)
    spec, splits = resolved
    work = evaluation_workload(obs.owner, spec, model, settings, splits)
    return plan_attempts(obs, work, inputs.pods, settings, now)


def resolve_datasets(
    spec: EvalRunSpec, obs: Observed, datasets: Mapping[str, Mapping[str, Any] | None]
) -> tuple[EvalRunSpec, list[ResolvedDataset]] | Outcome:
    """(the spec with every datasetRef as its split's URI and the Dataset's columns, status.datasets), or the
    Outcome to wait with."""
    recorded = [ResolvedDataset.model_validate(r) for r in obs.status.get("datasets") or []] if obs.in_flight else []
    before = {r.benchmark: r for r in recorded}
    benchmarks, splits = [], []
    for benchmark in spec.benchmarks:
        ref = benchmark.dataset.dataset_ref if benchmark.dataset else None
        if benchmark.dataset is None or ref is None:
            benchmarks.append(benchmark)
            continue
        found = dataset_split(ref.name, ref.split, datasets.get(ref.name), before.get(benchmark.name), benchmark.name)
        if isinstance(found, Outcome):
            return found
        columns = {f"{role}_column": column for role, column in DATASET_COLUMNS.items()}
        data = benchmark.dataset.model_copy(
            update={"uri": found.uri, "dataset_ref": None, "secret_ref": found.secret_ref, **columns}
        )
        benchmarks.append(benchmark.model_copy(update={"dataset": data}))
        splits.append(found.record)
    return spec.model_copy(update={"benchmarks": benchmarks}), splits


# --- the evaluation attempt ----------------------------------------------------------------------


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
    "datasets",
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


def evaluation_workload(
    owner: Owner,
    spec: EvalRunSpec,
    model: ResolvedModel,
    settings: OperatorSettings,
    splits: Sequence[ResolvedDataset] = (),
) -> Workload:
    thresholds: dict[str, float] = {str(k): v for k, v in spec.thresholds.items()}
    return Workload(
        spec=spec,
        digest=spec_hash(spec, model),
        judge=evaluation_judge(thresholds),
        children=lambda run: build_eval_children(owner, spec, model, run, settings),
        attempt_fields=EVAL_ATTEMPT_FIELDS,
        result_fields=lambda outcome: evaluation_result_fields(outcome, thresholds),
        extra_conditions=lambda outcome: [passed_condition(outcome, thresholds)],
        start_fields={"model": model.to_json_dict(), "datasets": [split.to_json_dict() for split in splits]},
    )


def resolve_model(spec: EvalRunSpec, ftj: Mapping[str, Any] | None) -> ResolvedModel | Outcome:
    """The model to evaluate, or why there is none yet (Pending) or will be none (Failed)."""
    model = spec.model
    if model.fine_tune_job_ref is None:
        assert model.base_model is not None  # the model's own rule: exactly one of the two
        return ResolvedModel(base_model=model.base_model, adapter=model.adapter, quantization=model.quantization)
    name = model.fine_tune_job_ref.name
    published = published_adapter(name, ftj)
    if isinstance(published, Outcome):
        return published
    return ResolvedModel(
        base_model=published.job.base_model,
        adapter=published.source,
        quantization=model.quantization or published.job.effective_quantization,
        fine_tune_job=name,
        fine_tune_job_attempt=published.attempt,
    )


# --- waking ----------------------------------------------------------------------------------------


def mirrored(body: Mapping[str, Any]) -> tuple[object, ...]:
    """What the owning FineTuneJob copies into its status; its progress patches (every few seconds) do not count."""
    status = body.get("status") or {}
    return (
        (body.get("metadata") or {}).get("generation"),
        status.get("phase"),
        status.get("passed"),
        ((status.get("model") or {}).get("adapter") or {}).get("uri"),
        (status.get("report") or {}).get("uri"),
    )


def dependents(event_type: str | None, body: Mapping[str, Any], indices: Indices) -> list[tuple[Kind, str]]:
    """The resource that owns this EvalRun, found by its owner label: a FineTuneJob (spec.evaluation: the
    verdict goes into its status) or a Model (a version's promotion gate)."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    return [(kind, labels[kind.label]) for kind in (FINETUNEJOB, MODEL) if labels.get(kind.label)]


CONTROLLER: Controller[Inputs] = Controller(
    kind=EVALRUN, gather=gather, plan=plan, mirrored=mirrored, dependents=dependents
)
