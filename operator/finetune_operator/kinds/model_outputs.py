"""What follows a Model's registry once stable is decided: its serving targets (the ConfigMap, a KServe
LLMInferenceService) and its copy in the object store (the publish pod's rounds); and `Round`, what
every step of one reconcile shares. Pure: each step adds its actions and events to the round's Plan
and returns the status it records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.contract import PUBLISH_BATCH, TrainerResult, version_folder
from ..api.model import ModelSpec, ModelStatus, ModelVersion, StoreStatus
from ..conditions import make_condition
from ..config import OperatorSettings
from ..manifests.model import (
    build_publish_job,
    build_serving_configmap,
    publish_job_name,
    served_name,
    serving_data,
    store_prefix,
)
from ..manifests.names import Owner
from ..plan import Create, Delete, Event, Patch, Plan
from ..registry import numbered
from ..status import view_job
from .chores import UNSEEN_SECONDS, ChoreJobs, Timed, backoff, outcome

LLMISVC = "LLMInferenceService"
TARGET_RECHECK_SECONDS = 30.0
"""How often a missing serving target is looked for again (no watch tells when it appears)."""


@dataclass(frozen=True)
class Round(Timed):
    """What every step of one reconcile of a Model shares: its spec, itself, the time, the plan it adds to."""

    spec: ModelSpec
    owner: Owner
    time: datetime
    result: Plan


def serve(
    now: Round,
    versions: Sequence[ModelVersion],
    stable: int | None,
    recorded: ModelStatus,
    service: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """status.serving: each target pointed at the stable version (`service`: the LLMInferenceService as read)."""
    serving = _serve_configmap(now, versions, stable, recorded)
    kserve = _serve_llm_inference_service(now, versions, stable, recorded, service)
    return serving if kserve is None else {**(serving or {}), "llmInferenceService": kserve}


def _serve_configmap(
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


def lora_adapters(model: str, stable: ModelVersion) -> list[dict[str, str]]:
    """spec.model.lora.adapters of an LLMInferenceService serving the stable version (KServe's LLMModelSpec)."""
    return [{"name": served_name(model, stable.version), "uri": stable.adapter.uri}]


def _serve_llm_inference_service(
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


def ready(spec: ModelSpec, stable: int | None, serving: Mapping[str, Any] | None) -> dict[str, Any]:
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
    targets = [(f"ConfigMap {spec.serving.config_map.name}", shown.get("version"))] if spec.serving.config_map else []
    if kserve is not None:
        targets.append((f"LLMInferenceService {kserve.name}", (shown.get("llmInferenceService") or {}).get("version")))
    behind = [target for target, version in targets if version != stable]
    if behind:
        return make_condition(
            "Ready", False, "ServingBehind", f"serving does not show v{stable} yet ({', '.join(behind)})"
        )
    where = [target for target, _ in targets]
    served = f"; {' and '.join(where)} {'serve' if len(where) > 1 else 'serves'} it" if where else ""
    return make_condition("Ready", True, "StableServed", f"v{stable} is stable{served}")


def unpublished(versions: Sequence[ModelVersion], prefix: str, stable: int | None) -> list[ModelVersion]:
    """Decided versions whose folder under `prefix` is not written yet: the stable one first (stable.json may
    point only at a published folder), then oldest first."""
    waiting = [v for v in versions if v.verdict is not None and v.store_uri != version_folder(prefix, v.version)]
    return sorted(waiting, key=lambda v: (v.version != stable, v.version))


def publish(
    now: Round,
    versions: list[ModelVersion],
    stable: int | None,
    recorded: StoreStatus | None,
    *,
    settings: OperatorSettings,
    children: ChoreJobs,
) -> tuple[list[ModelVersion], StoreStatus | None]:
    """Keep the store copy in step: settle the publish Job at work, else start one for what is missing."""
    spec, owner = now.spec, now.owner
    if not spec.store.enabled:
        return versions, recorded
    prefix = store_prefix(owner, spec, settings)
    if recorded is not None and recorded.uri == prefix:
        store = recorded
    else:  # a first or a new store; rounds keep counting, so no Job name is used twice
        rounds = recorded.round if recorded is not None else 0
        store = StoreStatus(uri=prefix, state="Published", message="nothing published here yet", round=rounds)
    if store.state == "Publishing":
        versions, store = _settle(now, versions, store, children)
        if store.state == "Publishing":
            return versions, store
    missing = unpublished(versions, prefix, stable)
    if not missing and store.stable == stable:
        return versions, store
    if store.state == "Failed":
        wait = backoff(store.failures) - now.since(store.update_time)
        if wait > 0:
            now.recheck(wait)
            return versions, store
    batch = missing[:PUBLISH_BATCH]
    round_ = store.round + 1
    stable_version = numbered(versions, stable)
    now.result.actions.append(
        Create(build_publish_job(owner, spec, batch, stable_version, round_=round_, settings=settings))
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
    now: Round, versions: list[ModelVersion], store: StoreStatus, children: ChoreJobs
) -> tuple[list[ModelVersion], StoreStatus]:
    """Record what the publish Job of store.round did, once it finished (or vanished)."""
    name = publish_job_name(now.owner.name, store.round)
    job, pods = children.job(name), children.pods_of(name)
    waited = now.since(store.update_time)
    if job is None and waited < UNSEEN_SECONDS:
        now.recheck(UNSEEN_SECONDS - waited)
        return versions, store
    if job is not None and not view_job(job).finished:
        stuck = children.stuck(name)
        if stuck is None:
            return versions, store
        return versions, store.model_copy(update={"message": f"publish {stuck}"[:2048]})
    result = (
        outcome(job, pods)
        if job is not None
        else TrainerResult(result="failed", message=f"publish Job {name} is gone before it finished")
    )
    if result.result == "failed":
        message = f"publish Job {name} failed: {result.reason or 'Error'}: {result.message or 'no detail'}"[:2048]
        now.result.events.append(Event("Warning", "PublishFailed", message))
        failures = store.failures + 1
        now.recheck(backoff(failures))
        update = {"state": "Failed", "message": message, "failures": failures, "update_time": now.stamp}
        return versions, store.model_copy(update=update)
    published = set(result.published_versions or [])
    marked = [
        v.model_copy(update={"store_uri": version_folder(store.uri, v.version)}) if v.version in published else v
        for v in versions
    ]
    listed = ", ".join(f"v{n}" for n in sorted(published)) or "no new version"
    pointer = f"; stable.json -> v{result.stable_version}" if result.stable_version else ""
    message = f"published {listed} under {store.uri}{pointer}"
    now.result.events.append(Event("Normal", "VersionsPublished", message))
    now.result.actions.append(Delete("Job", name, stage="after"))
    update = {
        "state": "Published",
        "stable": result.stable_version or store.stable,
        "message": message,
        "failures": 0,
        "update_time": now.stamp,
    }
    return marked, store.model_copy(update=update)
