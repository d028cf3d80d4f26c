"""Model: register the adapters FineTuneJobs publish into it, gate them, keep stable and serving in step.

    inputs = gather(body, indices, settings)   # the FineTuneJobs that name it, their EvalRuns, its own
    plan(inputs, now) -> Plan                  # pure: new versions, verdicts, stable, the serving ConfigMap

Pure control: it trains and evaluates nothing itself (its gate EvalRuns do). Its one Job is the short
publish pod that copies decided versions into the store with their model cards and points stable.json
at the stable one, because the operator holds no store credentials; one at a time, retried with
backoff. Woken by its own spec changes, a FineTuneJob that names it in spec.output.model finishing or
getting its evaluation verdict (that controller's `dependents`), its own gate EvalRuns finishing (the
EvalRun controller's, by the owner label), and its publish Job's events. A KServe LLMInferenceService
target is read fresh each reconcile (Controller.observe), since its CRD may not be installed. This
module registers and gates; what follows stable (the serving targets, the store copy) is in
model_outputs.py.

Its status is the registry, so every write is guarded by the resourceVersion it was planned on
(Plan.guarded): a plan made on a stale read is refused (409) and made again on a fresh one, and a
version number is never handed out twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from ..api import EVALRUN, FINETUNEJOB, MODEL, TERMINAL_PHASES, format_validation_error
from ..api.evaluation import MetricResult, MetricSummary
from ..api.model import ModelSpec, ModelStatus, ModelVersion, StoreStatus
from ..conditions import condition_of, make_condition, stamp_conditions
from ..config import OperatorSettings
from ..manifests.evalrun import owned_evalrun_name
from ..manifests.model import (
    build_gate_evalrun,
    gate_evalrun_name,
)
from ..manifests.names import Owner
from ..plan import Create, Event, Plan
from ..registry import (
    Aliases,
    Publication,
    Scored,
    candidate,
    check_pin,
    decided,
    judge,
    numbered,
    publication,
    register,
    replaced,
    states,
    unregistered,
    with_scores,
)
from .base import FINETUNEJOBS_BY_MODEL, Controller, Indices, children_of, observed, watched
from .chores import ChoreJobs
from .model_outputs import LLMISVC, Round, publish, ready, serve


@dataclass(frozen=True)
class Inputs:
    body: Mapping[str, Any]
    jobs: Sequence[Mapping[str, Any]]
    """The FineTuneJobs whose spec.output.model names this Model, as watched."""
    evalruns: Mapping[str, Mapping[str, Any]]
    """EvalRuns that may judge its versions (its own `<model>-v<N>`, the jobs' `<job>-eval`), by name."""
    settings: OperatorSettings
    publishing: ChoreJobs = field(default_factory=ChoreJobs)
    """Its publish Jobs and their pods."""
    llm_inference_service: Mapping[str, Any] | None = None
    """spec.serving.llmInferenceService as just read (None: it, or KServe's CRD, is missing)."""

    @cached_property
    def present(self) -> frozenset[str]:
        """The uids of those FineTuneJobs: a version's job missing from them was deleted."""
        return frozenset(job["metadata"]["uid"] for job in self.jobs)


def gather(body: Mapping[str, Any], indices: Indices, settings: OperatorSettings) -> Inputs:
    meta = body["metadata"]
    namespace, name = meta.get("namespace") or "", meta["name"]
    jobs = [
        job
        for job_name in sorted(set(indices[FINETUNEJOBS_BY_MODEL].get((namespace, name), [])))
        if (job := watched(indices, FINETUNEJOB, namespace, job_name)) is not None
    ]
    wanted = {(v.get("evaluation") or {}).get("evalRun") for v in (body.get("status") or {}).get("versions") or []}
    wanted |= {owned_evalrun_name(job["metadata"]["name"]) for job in jobs}
    evalruns = {
        run_name: run
        for run_name in sorted(n for n in wanted if n)
        if (run := watched(indices, EVALRUN, namespace, run_name)) is not None
    }
    publishing = ChoreJobs(*children_of(indices, body))
    target = next((n for k, n in observe(body) if k == LLMISVC), None)
    service = observed(indices, LLMISVC, target) if target else None
    return Inputs(body, jobs, evalruns, settings, publishing, service)


def observe(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The LLMInferenceService the spec names, to be read fresh (as given: an invalid spec reads nothing)."""
    target = (((body.get("spec") or {}).get("serving") or {}).get("llmInferenceService") or {}).get("name")
    return [(LLMISVC, target)] if isinstance(target, str) and target else []


def scored(evalrun: Mapping[str, Any] | None, adapter_uri: str) -> Scored | None:
    """A finished EvalRun's scores of this adapter, or None (absent, still running, or about another adapter)."""
    if evalrun is None:
        return None
    status = evalrun.get("status") or {}
    about = ((status.get("model") or {}).get("adapter") or {}).get("uri")
    if status.get("phase") not in TERMINAL_PHASES or about != adapter_uri:
        return None
    failed = condition_of(status, "Failed").get("message") or "no reason given" if status["phase"] == "Failed" else None
    return Scored(
        eval_run=evalrun["metadata"]["name"],
        failed=failed,
        passed=status.get("passed"),
        missed=condition_of(status, "Passed").get("message") or "",
        results=tuple(MetricResult.model_validate(r) for r in status.get("results") or []),
        summary=tuple(MetricSummary.model_validate(s) for s in status.get("summary") or []),
        report_uri=(status.get("report") or {}).get("uri"),
    )


def _publications(jobs: Sequence[Mapping[str, Any]]) -> list[Publication]:
    found = []
    for job in jobs:
        try:
            published = publication(job)
        except ValidationError:
            continue  # its own controller reports the invalid spec
        if published is not None:
            found.append(published)
    return found


def plan(inputs: Inputs, now: datetime) -> Plan:
    body = inputs.body
    meta = body["metadata"]
    generation = meta.get("generation") or 0
    status = body.get("status") or {}
    previous_conditions = status.get("conditions") or []
    try:
        spec = ModelSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        conditions = [make_condition("Validated", False, "InvalidSpec", format_validation_error(error))]
        stamped = stamp_conditions(conditions, previous_conditions, generation, now)
        return Plan(status={"conditions": stamped, "observedGeneration": generation})
    recorded = ModelStatus.model_validate(status)
    result = Plan(guarded=True)
    step = Round(spec, Owner.from_body(body), now, result)
    stamp = step.stamp
    versions = _register(step, list(recorded.versions), _publications(inputs.jobs))

    versions, promoted, promotions, stable = _gate(step, versions, recorded, inputs)
    stable = _stable(spec, versions, promoted, stable)
    if stable is not None and spec.pin == stable and stable != recorded.stable:
        back = recorded.stable is not None and stable < recorded.stable
        was = f" (was v{recorded.stable})" if recorded.stable else ""
        result.events.append(
            Event("Normal", "RolledBack" if back else "Promoted", f"spec.pin: v{stable} is stable{was}")
        )
    versions = states(versions, Aliases(stable, promoted), spec, stamp)
    serving = serve(step, versions, stable, recorded, inputs.llm_inference_service)
    versions, store = publish(
        step, versions, stable, recorded.store, settings=inputs.settings, children=inputs.publishing
    )
    pin = check_pin(spec.pin, versions) if spec.pin is not None else None
    if pin is not None and pin.usable is False and condition_of(status, "Pinned").get("message") != pin.message:
        result.events.append(Event("Warning", pin.reason, pin.message))
    result.status = {
        "versions": [v.to_json_dict() for v in versions],
        "stable": stable,
        "candidate": candidate(versions),
        "promoted": promoted,
        "latest": len(versions) or None,
        "promotions": promotions,
        "serving": serving,
        "store": store.to_json_dict() if store else None,
        "conditions": stamp_conditions(
            _conditions(spec, pin, stable, serving, store), previous_conditions, generation, now
        ),
        "observedGeneration": generation,
    }
    return result


def _gate(
    now: Round, versions: list[ModelVersion], recorded: ModelStatus, inputs: Inputs
) -> tuple[list[ModelVersion], int | None, int, int | None]:
    """Take the gate's verdict on every waiting version, in version order, each against the stable
    version of that moment: (versions, promoted, promotions, stable)."""
    spec, events = now.spec, now.result.events
    promoted, promotions = recorded.promoted, recorded.promotions or 0
    stable = _stable(spec, versions, promoted, recorded.stable)
    for waiting in [v for v in versions if v.verdict is None]:
        version = _decide(now, waiting, versions, stable, inputs)
        versions = replaced(versions, version)
        if version.verdict == "Rejected":
            events.append(Event("Warning", "VersionRejected", f"v{version.version}: {version.verdict_reason}"))
        elif version.verdict == "Passed" and spec.promotion.mode == "Automatic":
            promoted, promotions = version.version, promotions + 1
            before, stable = stable, _stable(spec, versions, promoted, stable)
            if stable != before:
                events.append(Event("Normal", "Promoted", f"v{stable} is stable: {version.verdict_reason}"))
    return versions, promoted, promotions, stable


def _register(now: Round, versions: list[ModelVersion], publications: Sequence[Publication]) -> list[ModelVersion]:
    """Append a version for each publication not registered yet, numbered in order."""
    spec, result = now.spec, now.result
    for published in unregistered(versions, publications):
        number = len(versions) + 1
        gate = _gate_evalrun(spec, published, now.owner, number)
        version = register(published, number, spec, gate, now.stamp)
        versions.append(version)
        job = published.job
        message = f"v{number}: {published.adapter_uri} from FineTuneJob {job.name} (attempt {job.attempt})"
        result.events.append(Event("Normal", "VersionRegistered", message))
        if version.verdict == "Rejected":
            result.events.append(Event("Warning", "VersionRejected", f"v{number}: {version.verdict_reason}"))
    return versions


def _gate_evalrun(spec: ModelSpec, published: Publication, owner: Owner, number: int) -> str | None:
    """Which EvalRun judges a new version: its job's own (spec.evaluation), else the Model's, else none."""
    if published.spec.evaluation is not None:
        return owned_evalrun_name(published.job.name)
    if spec.promotion.evaluation is not None:
        return gate_evalrun_name(owner.name, number)
    return None


def _stable(spec: ModelSpec, versions: Sequence[ModelVersion], promoted: int | None, current: int | None) -> int | None:
    """spec.pin when it can hold; the current stable while a pin is refused or waits, or with Manual
    promotion and no pin; else the gate's latest promotion."""
    if spec.pin is not None:
        return spec.pin if check_pin(spec.pin, versions).usable else current
    return promoted if spec.promotion.mode == "Automatic" else current


def _decide(
    now: Round, version: ModelVersion, versions: Sequence[ModelVersion], stable: int | None, inputs: Inputs
) -> ModelVersion:
    """The version with its gate's verdict, or with why it still waits (creating its gate EvalRun if due)."""
    spec, owner = now.spec, now.owner
    run_name = version.evaluation.eval_run if version.evaluation else None
    evalrun = inputs.evalruns.get(run_name) if run_name else None
    found = scored(evalrun, version.adapter.uri)
    if run_name is not None and found is None:
        own = run_name == gate_evalrun_name(owner.name, version.version) and spec.promotion.evaluation is not None
        if own and evalrun is None:
            now.result.actions.append(Create(build_gate_evalrun(owner, spec, version)))
        if not own and version.fine_tune_job.uid not in inputs.present:
            job = version.fine_tune_job.name
            return decided(version, False, f"FineTuneJob {job} was deleted before its evaluation finished")
        phase = ((evalrun or {}).get("status") or {}).get("phase") or "starting"
        return version.model_copy(update={"reason": f"waiting for EvalRun {run_name} ({phase})"})
    judged = version if found is None else with_scores(version, found)
    verdict = judge(judged, found, spec, numbered(versions, stable))
    return judged if verdict is None else decided(judged, *verdict)


def _conditions(
    spec: ModelSpec,
    pin: Any,
    stable: int | None,
    serving: Mapping[str, Any] | None,
    store: StoreStatus | None,
) -> list[dict[str, Any]]:
    conditions = [make_condition("Validated", True, "SpecValid", "spec is valid"), ready(spec, stable, serving)]
    if pin is not None:
        conditions.append(make_condition("Pinned", pin.usable, pin.reason, pin.message))
    if spec.store.enabled and store is not None:
        published = {"Publishing": None, "Published": True, "Failed": False}[store.state]
        reason = {"Publishing": "Publishing", "Published": "StorePublished", "Failed": "PublishFailed"}[store.state]
        conditions.append(make_condition("Published", published, reason, store.message or store.uri))
    return conditions


CONTROLLER: Controller[Inputs] = Controller(kind=MODEL, gather=gather, plan=plan, observe=observe)
