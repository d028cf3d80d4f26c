"""Model: register the adapters FineTuneJobs publish into it, gate them, keep stable and serving in step.

    inputs = gather(body, indices, settings)   # the FineTuneJobs that name it, their EvalRuns, its own
    plan(inputs, now) -> Plan                  # pure: new versions, verdicts, stable, the serving ConfigMap

Pure control: it trains and evaluates nothing itself (its gate EvalRuns do). Its one Job is the short
publish pod that copies decided versions into the store with their model cards and points stable.json
at the stable one, because the operator holds no store credentials; one at a time, retried with
backoff. Woken by its own spec changes, a FineTuneJob that names it in spec.output.model finishing or
getting its evaluation verdict (that controller's `dependents`), its own gate EvalRuns finishing (the
EvalRun controller's, by the owner label), and its publish Job's events. A KServe LLMInferenceService
target is read fresh each reconcile (Controller.observe), since its CRD may not be installed.

Its status is the registry, so every write is guarded by the resourceVersion it was planned on
(Plan.guarded): a plan made on a stale read is refused (409) and made again on a fresh one, and a
version number is never handed out twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from ..api import EVALRUN, FINETUNEJOB, MODEL, TERMINAL_PHASES, format_validation_error
from ..api.contract import PUBLISH_BATCH, TrainerResult
from ..api.evaluation import MetricResult, MetricSummary
from ..api.model import ModelSpec, ModelStatus, ModelVersion, StoreStatus
from ..conditions import condition_of, make_condition, stamp_conditions
from ..config import OperatorSettings
from ..manifests.evalrun import owned_evalrun_name
from ..manifests.model import (
    build_gate_evalrun,
    build_publish_job,
    build_serving_configmap,
    gate_evalrun_name,
    publish_job_name,
    served_name,
    serving_data,
    store_prefix,
    version_folder,
)
from ..manifests.names import LABEL_JOB_NAME, Owner
from ..plan import Create, Delete, Event, Patch, Plan
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
from ..status import (
    CONFIG_WAITING,
    IMAGE_PULL_WAITING,
    format_time,
    parse_result,
    parse_time,
    view_job,
    view_pod,
)
from .base import FINETUNEJOBS_BY_MODEL, Controller, Indices, children_of, observed, watched

LLMISVC = "LLMInferenceService"
TARGET_RECHECK_SECONDS = 30.0
"""How often a missing serving target is looked for again (no watch tells when it appears)."""


@dataclass(frozen=True)
class Inputs:
    body: Mapping[str, Any]
    jobs: Sequence[Mapping[str, Any]]
    """The FineTuneJobs whose spec.output.model names this Model, as watched."""
    evalruns: Mapping[str, Mapping[str, Any]]
    """EvalRuns that may judge its versions (its own `<model>-v<N>`, the jobs' `<job>-eval`), by name."""
    settings: OperatorSettings
    publish_jobs: Sequence[Mapping[str, Any]] = ()
    """Its publish Jobs and their pods (the only Jobs it owns)."""
    publish_pods: Sequence[Mapping[str, Any]] = ()
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
    publish_jobs, publish_pods = children_of(indices, body)
    target = next((n for k, n in observe(body) if k == LLMISVC), None)
    service = observed(indices, LLMISVC, target) if target else None
    return Inputs(body, jobs, evalruns, settings, publish_jobs, publish_pods, service)


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
    serving = _serve(step, versions, stable, recorded)
    kserve = _serve_kserve(step, versions, stable, recorded, inputs.llm_inference_service)
    if kserve is not None:
        serving = {**(serving or {}), "llmInferenceService": kserve}
    versions, store = _publish(step, versions, stable, recorded.store, inputs)
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


@dataclass(frozen=True)
class Round:
    """What every step of one reconcile of a Model shares: its spec, itself, the time, the plan it adds to."""

    spec: ModelSpec
    owner: Owner
    time: datetime
    result: Plan

    @property
    def stamp(self) -> str:
        return format_time(self.time)

    def recheck(self, seconds: float) -> None:
        current = self.result.recheck_after
        self.result.recheck_after = seconds if current is None else min(current, seconds)


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


def _serve(
    now: Round, versions: Sequence[ModelVersion], stable: int | None, recorded: ModelStatus
) -> dict[str, Any] | None:
    """Point the serving ConfigMap at the stable version when it moved (or the target changed)."""
    spec, owner, result = now.spec, now.owner, now.result
    target = spec.serving.config_map
    if target is None:
        return None
    current = recorded.serving
    stable_version = numbered(versions, stable)
    if stable_version is None:
        return current.to_json_dict() if current else None
    if current and current.config_map == target.name and current.version == stable:
        return current.to_json_dict()
    data = serving_data(owner, spec, target, stable_version)
    result.actions.append(Create(build_serving_configmap(owner, target, data)))
    result.actions.append(Patch("ConfigMap", target.name, {"data": data}))
    result.events.append(Event("Normal", "ServingUpdated", f"ConfigMap {target.name} now serves v{stable}"))
    return {"configMap": target.name, "version": stable, "updateTime": now.stamp}


PUBLISH_UNSEEN_SECONDS = 300
"""How long a publish Job may stay unseen by the watch before its round counts as failed (deleted by hand)."""
PUBLISH_BACKOFF_SECONDS = (30.0, 3600.0)
"""The wait before retrying a failed publish: the first, doubling per failure in a row, up to the second."""


def publish_backoff(failures: int) -> float:
    first, most = PUBLISH_BACKOFF_SECONDS
    return min(most, first * 2.0 ** max(failures - 1, 0))


def unpublished(versions: Sequence[ModelVersion], prefix: str, stable: int | None) -> list[ModelVersion]:
    """Decided versions whose folder under `prefix` is not written yet: the stable one first (stable.json may
    point only at a published folder), then oldest first."""
    waiting = [v for v in versions if v.verdict is not None and v.store_uri != version_folder(prefix, v.version)]
    return sorted(waiting, key=lambda v: (v.version != stable, v.version))


STUCK = CONFIG_WAITING | IMAGE_PULL_WAITING
"""Waiting reasons of a publish pod worth showing: they last until someone acts (a missing Secret, an
image that cannot be pulled), bounded by the Job's activeDeadlineSeconds, after which the round fails."""


def _pods_of(job: str, pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_JOB_NAME) == job]


def publish_outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> TrainerResult:
    """A finished publish Job's result, in the trainer's words when its last pod left one."""
    name = job["metadata"]["name"]
    results = [r for r in (parse_result(view_pod(p).message) for p in _pods_of(name, pods)) if r is not None]
    view = view_job(job)
    if view.complete:
        done = next((r for r in results if r.result == "succeeded"), None)
        return done or TrainerResult(result="succeeded", message=f"Job {name} completed without a result")
    failed = next((r for r in reversed(results) if r.result == "failed"), None)
    return failed or TrainerResult(result="failed", message=view.failed_message or f"Job {name} failed")


def _publish(
    now: Round,
    versions: list[ModelVersion],
    stable: int | None,
    recorded: StoreStatus | None,
    inputs: Inputs,
) -> tuple[list[ModelVersion], StoreStatus | None]:
    """Keep the store copy in step: settle the publish Job at work, else start one for what is missing."""
    spec, owner = now.spec, now.owner
    if not spec.store.enabled:
        return versions, recorded
    prefix = store_prefix(owner, spec, inputs.settings)
    if recorded is not None and recorded.uri == prefix:
        store = recorded
    else:  # a first or a new store; rounds keep counting, so no Job name is used twice
        rounds = recorded.round if recorded is not None else 0
        store = StoreStatus(uri=prefix, state="Published", message="nothing published here yet", round=rounds)
    if store.state == "Publishing":
        versions, store = _settle(now, versions, store, inputs)
        if store.state == "Publishing":
            return versions, store
    missing = unpublished(versions, prefix, stable)
    if not missing and store.stable == stable:
        return versions, store
    if store.state == "Failed":
        wait = (
            publish_backoff(store.failures) - (now.time - (parse_time(store.update_time) or now.time)).total_seconds()
        )
        if wait > 0:
            now.recheck(wait)
            return versions, store
    batch = missing[:PUBLISH_BATCH]
    round_ = store.round + 1
    stable_version = numbered(versions, stable)
    now.result.actions.append(
        Create(build_publish_job(owner, spec, batch, stable_version, round_=round_, settings=inputs.settings))
    )
    what = ", ".join(f"v{v.version}" for v in batch) or "no new version"
    pointer = f"; stable.json -> v{stable}" if stable is not None else ""
    update = {
        "state": "Publishing",
        "round": round_,
        "message": f"publishing {what}{pointer}",
        "update_time": now.stamp,
    }
    return versions, store.model_copy(update=update)


def _settle(
    now: Round, versions: list[ModelVersion], store: StoreStatus, inputs: Inputs
) -> tuple[list[ModelVersion], StoreStatus]:
    """Record what the publish Job of store.round did, once it finished (or vanished)."""
    name = publish_job_name(now.owner.name, store.round)
    job = next((j for j in inputs.publish_jobs if j["metadata"]["name"] == name), None)
    waited = (now.time - (parse_time(store.update_time) or now.time)).total_seconds()
    if job is None and waited < PUBLISH_UNSEEN_SECONDS:
        now.recheck(PUBLISH_UNSEEN_SECONDS - waited)
        return versions, store
    if job is not None and not view_job(job).finished:
        waiting = next(
            (w for w in map(view_pod, _pods_of(name, inputs.publish_pods)) if w.waiting_reason in STUCK), None
        )
        if waiting is None:
            return versions, store
        detail = f"publish pod {waiting.name} waits: {waiting.waiting_reason}: {waiting.waiting_message or ''}"
        return versions, store.model_copy(update={"message": detail[:2048]})
    outcome = (
        publish_outcome(job, inputs.publish_pods)
        if job is not None
        else TrainerResult(result="failed", message=f"publish Job {name} is gone before it finished")
    )
    if outcome.result == "failed":
        message = f"publish Job {name} failed: {outcome.reason or 'Error'}: {outcome.message or 'no detail'}"[:2048]
        now.result.events.append(Event("Warning", "PublishFailed", message))
        failures = store.failures + 1
        now.recheck(publish_backoff(failures))
        update = {"state": "Failed", "message": message, "failures": failures, "update_time": now.stamp}
        return versions, store.model_copy(update=update)
    published = set(outcome.published_versions or [])
    marked = [
        v.model_copy(update={"store_uri": version_folder(store.uri, v.version)}) if v.version in published else v
        for v in versions
    ]
    listed = ", ".join(f"v{n}" for n in sorted(published)) or "no new version"
    pointer = f"; stable.json -> v{outcome.stable_version}" if outcome.stable_version else ""
    message = f"published {listed} under {store.uri}{pointer}"
    now.result.events.append(Event("Normal", "VersionsPublished", message))
    now.result.actions.append(Delete("Job", name, stage="after"))
    update = {
        "state": "Published",
        "stable": outcome.stable_version or store.stable,
        "message": message,
        "failures": 0,
        "update_time": now.stamp,
    }
    return marked, store.model_copy(update=update)


def lora_adapters(model: str, stable: ModelVersion) -> list[dict[str, str]]:
    """spec.model.lora.adapters of an LLMInferenceService serving the stable version (KServe's LLMModelSpec)."""
    return [{"name": served_name(model, stable.version), "uri": stable.adapter.uri}]


def _serve_kserve(
    now: Round,
    versions: Sequence[ModelVersion],
    stable: int | None,
    recorded: ModelStatus,
    service: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """Point the LLMInferenceService's LoRA adapters at the stable version, if it exists and shows another."""
    target = now.spec.serving.llm_inference_service
    if target is None:
        return None
    before = recorded.serving.llm_inference_service if recorded.serving else None
    shown = before.to_json_dict() if before and before.name == target.name else {"name": target.name}
    stable_version = numbered(versions, stable)
    if service is None:
        now.recheck(TARGET_RECHECK_SECONDS)
        return {"name": target.name}  # no version: it shows nothing
    if stable_version is None:
        return shown
    wanted = lora_adapters(now.owner.name, stable_version)
    current = (((service.get("spec") or {}).get("model") or {}).get("lora") or {}).get("adapters")
    if current == wanted:
        return {**shown, "version": stable}
    now.result.actions.append(Patch(LLMISVC, target.name, {"spec": {"model": {"lora": {"adapters": wanted}}}}))
    message = f"LLMInferenceService {target.name} now serves v{stable}"
    now.result.events.append(Event("Normal", "ServingUpdated", message))
    return {"name": target.name, "version": stable, "updateTime": now.stamp}


def _conditions(
    spec: ModelSpec,
    pin: Any,
    stable: int | None,
    serving: Mapping[str, Any] | None,
    store: StoreStatus | None,
) -> list[dict[str, Any]]:
    conditions = [make_condition("Validated", True, "SpecValid", "spec is valid"), _ready(spec, stable, serving)]
    if pin is not None:
        conditions.append(make_condition("Pinned", pin.usable, pin.reason, pin.message))
    if spec.store.enabled and store is not None:
        published = {"Publishing": None, "Published": True, "Failed": False}[store.state]
        reason = {"Publishing": "Publishing", "Published": "StorePublished", "Failed": "PublishFailed"}[store.state]
        conditions.append(make_condition("Published", published, reason, store.message or store.uri))
    return conditions


def _ready(spec: ModelSpec, stable: int | None, serving: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ready: a stable version exists and every serving target shows it; else which target does not, and why."""
    if stable is None:
        return make_condition("Ready", False, "NoStableVersion", "no version has passed the gate yet")
    shown = serving or {}
    kserve = spec.serving.llm_inference_service
    if kserve is not None and "version" not in (shown.get("llmInferenceService") or {}):
        message = (
            f"spec.serving.llmInferenceService: LLMInferenceService {kserve.name} was not found in this namespace "
            "(is KServe installed, with its serving.kserve.io/v1alpha2 CRD?); it is looked for again every "
            f"{TARGET_RECHECK_SECONDS:.0f} s"
        )
        return make_condition("Ready", False, "ServingTargetMissing", message)
    behind = [f"ConfigMap {spec.serving.config_map.name}"] if spec.serving.config_map else []
    if behind and shown.get("version") == stable:
        behind = []
    if kserve is not None and (shown.get("llmInferenceService") or {}).get("version") != stable:
        behind.append(f"LLMInferenceService {kserve.name}")
    if behind:
        return make_condition(
            "Ready", False, "ServingBehind", f"serving does not show v{stable} yet ({', '.join(behind)})"
        )
    where = [f"ConfigMap {spec.serving.config_map.name}"] if spec.serving.config_map else []
    where += [f"LLMInferenceService {kserve.name}"] if kserve else []
    served = f"; {' and '.join(where)} {'serve' if len(where) > 1 else 'serves'} it" if where else ""
    return make_condition("Ready", True, "StableServed", f"v{stable} is stable{served}")


CONTROLLER: Controller[Inputs] = Controller(kind=MODEL, gather=gather, plan=plan, observe=observe)
