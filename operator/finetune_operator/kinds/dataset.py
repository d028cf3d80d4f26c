"""Dataset: build instruction pairs from raw documents in attempts (one build pod each), then be Ready.

    inputs = gather(body, indices, settings)   # its Jobs and Pods
    plan(inputs, now) -> Plan                  # pure: attempts (attempts.py), Ready

Woken by its own events and its Jobs and Pods. It wakes the FineTuneJobs and EvalRuns whose datasetRef
names it when what they read changes (`mirrored`): its phase, or the prefix it published.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api import DATASET, EVALRUN, FINETUNEJOB, Kind, format_validation_error
from ..api.contract import TrainerResult
from ..api.dataset import DatasetOutcome, DatasetSpec
from ..attempts import Workload, invalid, observe, plan_attempts
from ..conditions import make_condition
from ..config import OperatorSettings
from ..manifests.dataset import build_dataset_children
from ..manifests.job import spec_hash
from ..plan import Plan
from ..status import Judge, Outcome
from .base import EVALRUNS_BY_DATASET, FINETUNEJOBS_BY_DATASET, Controller, Gathered, Indices, children_of

OUTCOME_FIELDS = tuple(DatasetOutcome.model_fields[name].alias or name for name in DatasetOutcome.model_fields)
"""The status fields a build's result fills (documents, failures, chunks, pairs, splits, output, samples)."""


def gather(body: Mapping[str, Any], indices: Indices, settings: OperatorSettings) -> Gathered:
    return Gathered(body, *children_of(indices, body), settings)


def _built(result: TrainerResult) -> Outcome | None:
    found = result.dataset
    if found is None or found.output is None:
        return None
    message = (
        f"{found.pairs.kept} pairs from {found.chunks} chunks of {found.documents.read} documents "
        f"(train {found.splits.train}, validation {found.splits.validation}, test {found.splits.test})"
    )
    if found.documents.failed:
        message += f"; {found.documents.failed} documents skipped (status.failures)"
    return Outcome("Succeeded", "DatasetBuilt", f"{message}; published to {found.output.uri}", result)


BUILD_JUDGE = Judge(success=_built, produces="a published dataset", memory_hint="resources.memory")


def result_fields(outcome: Outcome) -> dict[str, Any]:
    """The build's counts (also from a failed attempt that got that far); the output only when it succeeded."""
    found = outcome.result.dataset if outcome.result else None
    if found is None:
        return {}
    fields = found.to_json_dict()
    if outcome.phase != "Succeeded":
        fields.pop("output", None)
    return fields


def ready_condition(outcome: Outcome) -> dict[str, Any]:
    """Ready: what a datasetRef waits for."""
    if outcome.phase == "Succeeded":
        return make_condition("Ready", True, "Published", outcome.message)
    if outcome.phase == "Failed":
        return make_condition("Ready", False, "BuildFailed", f"the build failed: {outcome.reason}")
    return make_condition("Ready", False, "Building", "the splits are not published yet")


def plan(inputs: Gathered, now: datetime) -> Plan:
    obs = observe(inputs.body, inputs.jobs)
    try:
        spec = DatasetSpec.model_validate(inputs.body.get("spec") or {})
    except ValidationError as error:
        return invalid(format_validation_error(error), obs, now)
    work = Workload(
        spec=spec,
        digest=spec_hash(spec),
        judge=BUILD_JUDGE,
        children=lambda run: build_dataset_children(obs.owner, spec, run, inputs.settings),
        attempt_fields=("progress", *OUTCOME_FIELDS, "startTime", "completionTime"),
        result_fields=result_fields,
        extra_conditions=lambda outcome: [ready_condition(outcome)],
    )
    return plan_attempts(obs, work, inputs.pods, inputs.settings, now)


def mirrored(body: Mapping[str, Any]) -> tuple[object, ...]:
    """What a datasetRef reads: its phase, its attempt and the prefix it published."""
    status = body.get("status") or {}
    return status.get("phase"), status.get("attempt"), (status.get("output") or {}).get("uri")


def dependents(event_type: str | None, body: Mapping[str, Any], indices: Indices) -> list[tuple[Kind, str]]:
    """The FineTuneJobs and EvalRuns whose datasetRef names it."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name"))
    return [
        *((FINETUNEJOB, name) for name in sorted(set(indices[FINETUNEJOBS_BY_DATASET].get(key, [])))),
        *((EVALRUN, name) for name in sorted(set(indices[EVALRUNS_BY_DATASET].get(key, [])))),
    ]


CONTROLLER: Controller[Gathered] = Controller(
    kind=DATASET, gather=gather, plan=plan, mirrored=mirrored, dependents=dependents
)
