"""FineTuneJob: train an adapter in attempts, own an EvalRun for spec.evaluation, clean up on deletion.

    inputs = gather(body, indices, settings)   # its Jobs, Pods and own EvalRun, from kopf's indices
    plan(inputs, now) -> Plan                  # pure: attempts (attempts.py), the EvalRun, the finalizer

Four watches wake it: the FineTuneJob itself (`needs_reconcile`), its trainer Jobs and Pods, its
own EvalRun when that one's verdict changes (the EvalRun controller's `mirrored`), and the FineTuneJob
whose adapter it starts from (spec.adapter.fineTuneJobRef) finishing (`dependents`). It wakes the Model
its spec.output.model names when it finishes or its evaluation's verdict comes in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from ..api import DATASET, EVALRUN, FINETUNEJOB, FINETUNESCHEDULE, MODEL, TERMINAL_PHASES, Kind, format_validation_error
from ..api.common import ResolvedDataset
from ..api.contract import TrainerResult
from ..api.evalrun import EvalRunSpec
from ..api.finetunejob import FineTuneJobSpec, StartAdapter
from ..api.training_status import StartAdapterStatus
from ..attempts import Observed, Workload, invalid, observe, plan_attempts, waiting
from ..conditions import make_condition, stamp_conditions
from ..config import OperatorSettings
from ..manifests import build_children
from ..manifests.evalrun import build_owned_evalrun, evalrun_name
from ..manifests.job import spec_hash
from ..manifests.names import ARTIFACTS_FINALIZER, Owner
from ..plan import Create, Delete, Event, Patch, Plan, replacing_patch, set_finalizers
from ..status import Judge, Outcome
from .base import (
    EVALRUNS_BY_JOB,
    FINETUNEJOBS_BY_ADAPTER_JOB,
    Controller,
    Gathered,
    Indices,
    children_of,
    dataset_split,
    published_adapter,
    watched,
)
from .deletion import plan_deletion


@dataclass(frozen=True)
class Inputs(Gathered):
    evalrun: Mapping[str, Any] | None = None
    """Its own EvalRun (`<name>-eval`) as watched, when spec.evaluation is or was set."""
    adapter_job: Mapping[str, Any] | None = None
    """The FineTuneJob named by spec.adapter.fineTuneJobRef, as watched (None if absent or not referenced)."""
    dataset: Mapping[str, Any] | None = None
    """The Dataset named by spec.dataset.datasetRef, as watched (None if absent or not referenced)."""


def _adapter_job_name(spec: Mapping[str, Any]) -> str | None:
    name: str | None = (((spec.get("adapter") or {}).get("fineTuneJobRef")) or {}).get("name")
    return name


def gather(body: Mapping[str, Any], indices: Indices, settings: OperatorSettings) -> Inputs:
    jobs, pods = children_of(indices, body)
    owner = Owner.from_body(body)
    evalrun = None
    if (body.get("spec") or {}).get("evaluation") or (body.get("status") or {}).get("evaluation"):
        evalrun = watched(indices, EVALRUN, owner.namespace, evalrun_name(owner))
    ref = _adapter_job_name(body.get("spec") or {})
    adapter_job = watched(indices, FINETUNEJOB, owner.namespace, ref) if ref else None
    data = (((body.get("spec") or {}).get("dataset") or {}).get("datasetRef") or {}).get("name")
    dataset = watched(indices, DATASET, owner.namespace, data) if data else None
    return Inputs(body, jobs, pods, settings, evalrun, adapter_job, dataset)


def resolve_dataset(
    spec: FineTuneJobSpec, obs: Observed, dataset: Mapping[str, Any] | None
) -> tuple[FineTuneJobSpec, ResolvedDataset | None] | Outcome:
    """(the spec with spec.dataset as the Dataset's train split, status.dataset), or the Outcome to wait with."""
    ref = spec.dataset.dataset_ref
    if ref is None:
        return spec, None
    recorded = obs.status.get("dataset") if obs.in_flight else None
    found = dataset_split(ref.name, "train", dataset, ResolvedDataset.model_validate(recorded) if recorded else None)
    if isinstance(found, Outcome):
        return found
    source = spec.dataset.model_copy(update={"uri": found.uri, "dataset_ref": None, "secret_ref": found.secret_ref})
    return spec.model_copy(update={"dataset": source}), found.record


def resolve_start(spec: FineTuneJobSpec, obs: Observed, adapter_job: Mapping[str, Any] | None) -> Any:
    """(the spec with spec.adapter as a URI, status.startAdapter), or the Outcome to wait with.

    A running attempt keeps the adapter it started from, even if the referenced job has moved on."""
    start = spec.adapter
    if start is None:
        return spec, None
    if start.fine_tune_job_ref is None:
        return spec, StartAdapterStatus(uri=start.uri or "")
    recorded = obs.status.get("startAdapter")
    if obs.in_flight and recorded and recorded.get("fineTuneJob") == start.fine_tune_job_ref.name:
        status = StartAdapterStatus.model_validate(recorded)
        secret = None
    else:
        published = published_adapter(start.fine_tune_job_ref.name, adapter_job)
        if isinstance(published, Outcome):
            return published
        status = StartAdapterStatus(
            uri=published.source.uri,
            fine_tune_job=start.fine_tune_job_ref.name,
            fine_tune_job_attempt=published.attempt,
        )
        secret = published.source.secret_ref
    if secret is None and adapter_job is not None:
        secret = FineTuneJobSpec.model_validate(adapter_job.get("spec") or {}).output.secret_ref
    resolved = StartAdapter(uri=status.uri, secret_ref=secret)
    return spec.model_copy(update={"adapter": resolved}), status


def plan(inputs: Inputs, now: datetime) -> Plan:
    body = inputs.body
    obs = observe(body, inputs.jobs)
    try:
        spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return invalid(format_validation_error(error), obs, now)
    started = resolve_start(spec, obs, inputs.adapter_job)
    resolved = started if isinstance(started, Outcome) else resolve_dataset(started[0], obs, inputs.dataset)
    if isinstance(resolved, Outcome):
        if obs.attempt:
            # The last attempt's result stands (e.g. the referenced job is re-training, the Dataset rebuilding);
            # its new adapter or split brings a new attempt.
            return Plan(status={"observedGeneration": obs.generation})
        return waiting(obs, resolved, now)
    spec, split = resolved
    start = started[1]
    work = training_workload(obs.owner, spec, inputs.settings, start, split)
    result = plan_attempts(obs, work, inputs.pods, inputs.settings, now)
    _mirror_evaluation(result, obs, spec, inputs.evalrun, now)
    finalizers = _finalizers(body, spec)
    if finalizers is not None:
        change = set_finalizers(FINETUNEJOB.kind, body, finalizers)
        result.actions = [change, *result.actions] if change.stage == "before" else [*result.actions, change]
    return result


def plan_deleting(inputs: Inputs, now: datetime) -> Plan:
    return plan_deletion(inputs.body, inputs.jobs, inputs.pods, inputs.settings, now)


def _finalizers(body: Mapping[str, Any], spec: FineTuneJobSpec) -> list[str] | None:
    """The artifacts finalizer is held exactly while output.deletePolicy is Delete; None: no change."""
    current = list(body["metadata"].get("finalizers") or [])
    holding = ARTIFACTS_FINALIZER in current
    if spec.output.delete_policy == "Delete" and not holding:
        return [*current, ARTIFACTS_FINALIZER]
    if spec.output.delete_policy == "Retain" and holding:
        return [f for f in current if f != ARTIFACTS_FINALIZER]
    return None


# --- the training attempt --------------------------------------------------------------------------


def _training_success(result: TrainerResult) -> Outcome | None:
    if result.adapter is None:
        return None
    return Outcome("Succeeded", "TrainingComplete", f"adapter published to {result.adapter.uri}", result)


TRAINING_JUDGE = Judge(
    success=_training_success,
    produces="an adapter",
    memory_hint="training.batchSize or training.maxSeqLength",
)

TRAINING_ATTEMPT_FIELDS = (
    "progress",
    "dataset",
    "adapter",
    "mergedModel",
    "checkpoint",
    "metrics",
    "provenance",
    "evaluation",
    "startTime",
    "completionTime",
)


def result_fields(outcome: Outcome) -> dict[str, Any]:
    """Status fields taken from the trainer's termination message.

    Artifacts only from a succeeded attempt: status must never point at an adapter that a failed
    attempt may have left half-published.
    """
    result = outcome.result
    if result is None:
        return {}
    artifacts = outcome.phase == "Succeeded"
    fields: dict[str, Any] = {}
    for key, value in (
        ("adapter", result.adapter if artifacts else None),
        ("mergedModel", result.merged_model if artifacts else None),
        ("checkpoint", result.checkpoint),
        ("metrics", result.metrics),
        ("provenance", result.provenance),
    ):
        if value is not None:
            fields[key] = value.to_json_dict()
    return fields


def training_workload(
    owner: Owner,
    spec: FineTuneJobSpec,
    settings: OperatorSettings,
    start: StartAdapterStatus | None = None,
    split: ResolvedDataset | None = None,
) -> Workload:
    return Workload(
        spec=spec,
        digest=spec_hash(spec),
        judge=TRAINING_JUDGE,
        children=lambda run: build_children(owner, spec, run, settings),
        attempt_fields=TRAINING_ATTEMPT_FIELDS,
        result_fields=result_fields,
        start_fields={
            "nodes": spec.resources.nodes,
            "gpusPerNode": spec.resources.gpus,
            "worldSize": spec.world_size,
            "restarts": 0 if spec.resources.nodes > 1 else None,
            "startAdapter": start.to_json_dict() if start else None,
            "dataset": split.to_json_dict() if split else None,
        },
    )


# --- its own EvalRun (spec.evaluation) -------------------------------------------------------------


def _owned_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _same_eval_spec(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    try:
        return EvalRunSpec.model_validate(current) == EvalRunSpec.model_validate(desired)
    except ValidationError:
        return False


def _evaluated(
    owner: Owner, spec: FineTuneJobSpec, status: Mapping[str, Any], evalrun: Mapping[str, Any] | None, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Evaluated condition, status.evaluation) of a succeeded job with spec.evaluation; may add to `plan`."""
    name = evalrun_name(owner)
    desired = build_owned_evalrun(owner, spec)
    summary: dict[str, Any] = {"evalRun": name}
    if evalrun is None:
        plan.actions.append(Create(desired, stage="after"))
        return make_condition("Evaluated", None, "EvaluationPending", f"creating EvalRun {name}"), summary
    if not _owned_by(evalrun, owner):
        message = f"EvalRun {name} exists and is not owned by this job; delete or rename it"
        return make_condition("Evaluated", False, "EvalRunConflict", message), summary
    ev_status: Mapping[str, Any] = evalrun.get("status") or {}
    phase = ev_status.get("phase")
    summary["phase"] = phase
    up_to_date = _same_eval_spec(evalrun.get("spec") or {}, desired["spec"])
    if not up_to_date:
        if phase in TERMINAL_PHASES or phase is None:
            # Active EvalRuns refuse spec changes (CEL); this one is done or has not started.
            spec_patch = replacing_patch(evalrun.get("spec") or {}, desired["spec"])
            plan.actions.append(Patch(EVALRUN.kind, name, {"spec": spec_patch}, stage="after"))
        return make_condition("Evaluated", None, "Evaluating", f"EvalRun {name} runs the new evaluation spec"), summary
    adapter = (status.get("adapter") or {}).get("uri")
    evaluated = ((ev_status.get("model") or {}).get("adapter") or {}).get("uri")
    if phase not in TERMINAL_PHASES or evaluated != adapter:
        message = f"EvalRun {name} is {phase or 'starting'}"
        return make_condition("Evaluated", None, "Evaluating", message), summary
    summary.update(
        passed=ev_status.get("passed"),
        score=ev_status.get("score"),
        reportUri=(ev_status.get("report") or {}).get("uri"),
        adapterUri=evaluated,
    )
    conditions = {c.get("type"): c for c in ev_status.get("conditions") or []}
    if phase == "Failed":
        why = conditions.get("Failed", {}).get("message", "")
        return make_condition("Evaluated", False, "EvaluationFailed", f"EvalRun {name} failed: {why}"), summary
    verdict = conditions.get("Passed", {})
    passed = ev_status.get("passed") is True
    reason = verdict.get("reason") or ("ThresholdsMet" if passed else "ThresholdsMissed")
    return make_condition("Evaluated", passed, reason, f"EvalRun {name}: {verdict.get('message', '')}"), summary


def _mirror_evaluation(
    plan: Plan, obs: Observed, spec: FineTuneJobSpec, evalrun: Mapping[str, Any] | None, now: datetime
) -> None:
    """Own an EvalRun once training succeeded (spec.evaluation) and copy its verdict into this job's status.

    Evaluated is True only when the evaluation of the current adapter finished and met every
    threshold, so `kubectl wait --for=condition=Evaluated` waits for a passing model.
    """
    merged = {**obs.status, **plan.status}
    conditions: list[dict[str, Any]] = list(merged.get("conditions") or [])
    others = [c for c in conditions if c.get("type") != "Evaluated"]
    if spec.evaluation is None or merged.get("phase") != "Succeeded":
        if spec.evaluation is None and evalrun is not None and _owned_by(evalrun, obs.owner):
            plan.actions.append(Delete(EVALRUN.kind, evalrun_name(obs.owner), stage="after"))
        if merged.get("evaluation") is not None:
            plan.status["evaluation"] = None
        if len(others) != len(conditions):
            plan.status["conditions"] = others
        return
    condition, summary = _evaluated(obs.owner, spec, merged, evalrun, plan)
    previous = obs.status.get("conditions") or []
    stamped = stamp_conditions([condition], previous, obs.generation, now)
    plan.status["conditions"] = [*others, *stamped]
    plan.status["evaluation"] = summary
    before: Mapping[str, Any] = next((c for c in previous if c.get("type") == "Evaluated"), {})
    if condition["status"] != "Unknown" and before.get("status") != condition["status"]:
        kind: Literal["Normal", "Warning"] = "Normal" if condition["status"] == "True" else "Warning"
        plan.events.append(Event(kind, condition["reason"], condition["message"]))


# --- waking ----------------------------------------------------------------------------------------


def mirrored(body: Mapping[str, Any]) -> tuple[object, ...]:
    """What the resources that read this job see of it: its spec generation, phase, attempt and adapter
    (an EvalRun's fineTuneJobRef, a FineTuneJob's start adapter), and its evaluation's verdict (the
    Model its spec.output.model names)."""
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    evaluation = status.get("evaluation") or {}
    return (
        meta.get("generation"),
        status.get("phase"),
        status.get("attempt"),
        (status.get("adapter") or {}).get("uri"),
        evaluation.get("phase"),
        evaluation.get("adapterUri"),
    )


def dependents(event_type: str | None, body: Mapping[str, Any], indices: Indices) -> list[tuple[Kind, str]]:
    """EvalRuns that reference this job, and FineTuneJobs that start from its adapter, wait for it to
    finish (or run again on its new adapter); the Model it publishes into registers what it published; the
    FineTuneSchedule whose run it is may start the next run (concurrencyPolicy Forbid) or drop old ones."""
    status = body.get("status") or {}
    if event_type != "DELETED" and status.get("phase") not in TERMINAL_PHASES:
        return []
    key = (body["metadata"].get("namespace") or "", body["metadata"]["name"])
    evalruns = [(EVALRUN, name) for name in indices[EVALRUNS_BY_JOB].get(key, [])]
    model = ((body.get("spec") or {}).get("output") or {}).get("model")
    schedule = (body["metadata"].get("labels") or {}).get(FINETUNESCHEDULE.label)
    return [
        *([(FINETUNESCHEDULE, schedule)] if schedule else []),
        *evalruns,
        *((FINETUNEJOB, name) for name in indices[FINETUNEJOBS_BY_ADAPTER_JOB].get(key, [])),
        *([(MODEL, model)] if model else []),
    ]


CONTROLLER: Controller[Inputs] = Controller(
    kind=FINETUNEJOB,
    gather=gather,
    plan=plan,
    plan_deletion=plan_deleting,
    finalizer=ARTIFACTS_FINALIZER,
    mirrored=mirrored,
    dependents=dependents,
)
