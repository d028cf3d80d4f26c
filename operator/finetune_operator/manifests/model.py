"""What a Model creates: the EvalRun that gates a version, the serving ConfigMap that follows stable, and
the short pod that publishes its store copy."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..api import API_VERSION, EVALRUN
from ..api.contract import ModelPublishRunSpec, version_folder, version_role
from ..api.evalrun import EvalModel
from ..api.model import ConfigMapTarget, ModelSpec, ModelVersion, StablePointer
from ..config import OperatorSettings
from .evalrun import evalrun_spec
from .job import build_job, chore_plan, secret_env
from .names import Owner, bounded_name, child_metadata
from .runspec import output_root, resource_ref, storage_settings

LORA_MODULES = "lora-modules.json"
ADAPTERS = "adapters.json"
STABLE = "stable.json"


def gate_evalrun_name(model: str, version: int) -> str:
    return bounded_name(model, f"-v{version}")


def build_gate_evalrun(owner: Owner, spec: ModelSpec, version: ModelVersion) -> dict[str, Any]:
    """The Model's own EvalRun of one version (spec.promotion.evaluation): its adapter on the Model's base,
    loaded quantized as it was trained, its report written where the job wrote the adapter."""
    evaluation = spec.promotion.evaluation
    assert evaluation is not None
    eval_spec = evalrun_spec(
        evaluation,
        EvalModel(base_model=spec.base_model, adapter=version.adapter, quantization=version.quantization),
        output_uri=version.output_uri,
        output_secret_ref=version.adapter.secret_ref,
        **({"resources": evaluation.resources} if evaluation.resources else {}),
    )
    return {
        "apiVersion": API_VERSION,
        "kind": EVALRUN.kind,
        "metadata": child_metadata(owner, gate_evalrun_name(owner.name, version.version), "promotion-gate"),
        "spec": eval_spec.to_json_dict(),
    }


def served_name(model: str, version: int) -> str:
    """The LoRA name a serving engine loads a version under, and its folder under adapterRoot."""
    return f"{model}-v{version}"


def stable_pointer(owner: Owner, spec: ModelSpec, stable: ModelVersion, folder: str | None = None) -> StablePointer:
    return StablePointer(
        model=owner.name,
        namespace=owner.namespace,
        version=stable.version,
        name=served_name(owner.name, stable.version),
        uri=stable.adapter.uri,
        sha256=stable.sha256,
        base_model=spec.base_model.uri,
        folder=folder,
    )


def serving_data(owner: Owner, spec: ModelSpec, target: ConfigMapTarget, stable: ModelVersion) -> dict[str, str]:
    """The ConfigMap's files: vLLM's `--lora-modules` JSON entry, the resolver's folder -> adapter URI map,
    and the stable pointer."""
    name = served_name(owner.name, stable.version)
    module: dict[str, Any] = {"name": name, "path": f"{target.adapter_root.rstrip('/')}/{name}"}
    if target.base_model_name:
        module["base_model_name"] = target.base_model_name
    pointer = stable_pointer(owner, spec, stable)
    return {
        LORA_MODULES: json.dumps(module, sort_keys=True),
        ADAPTERS: json.dumps({name: stable.adapter.uri}, sort_keys=True),
        STABLE: json.dumps(pointer.to_json_dict(), sort_keys=True),
    }


def build_serving_configmap(owner: Owner, target: ConfigMapTarget, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, target.name, "serving"),
        "data": data,
    }


def store_prefix(owner: Owner, spec: ModelSpec, settings: OperatorSettings) -> str:
    """`<store>/models/<namespace>/<name>/` (storage layout, a contract): the registry's copy."""
    return f"{output_root(spec.store.uri, settings)}/models/{owner.namespace}/{owner.name}/"


def publish_job_name(model: str, round_: int) -> str:
    return bounded_name(model, f"-publish-{round_}")


PUBLISH_DEADLINE_SECONDS = 900


def build_publish_job(
    owner: Owner,
    spec: ModelSpec,
    versions: Sequence[ModelVersion],
    stable: ModelVersion | None,
    *,
    round_: int,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """A short pod of the trainer image that copies `versions` into the store folder and writes stable.json.

    It holds the store's secretRef and each version's own adapter secretRef, so the operator never holds
    store credentials, and no API token: it reports only through its exit code and termination message.
    """
    prefix = store_prefix(owner, spec, settings)
    pointer = stable_pointer(owner, spec, stable, version_folder(prefix, stable.version)) if stable else None
    run_spec = ModelPublishRunSpec(
        resource=resource_ref(owner),
        uri=prefix,
        versions=list(versions),
        stable=pointer,
        storage=storage_settings(settings),
    )
    default = settings.storage_credentials
    secrets = secret_env("OUTPUT", prefix, spec.store.secret_ref, default)
    uris = [(prefix, True)]
    for index, version in enumerate(versions):
        secrets += secret_env(version_role(index), version.adapter.uri, version.adapter.secret_ref, default)
        uris.append((version.adapter.uri, False))
    digest = hashlib.sha256(json.dumps(run_spec.to_json_dict(), sort_keys=True).encode()).hexdigest()[:16]
    pod = chore_plan(
        "publish-model",
        run_spec,
        settings.trainer_image,
        secrets,
        uris,
        deadline_seconds=PUBLISH_DEADLINE_SECONDS,
        spec_hash=digest,
    )
    return build_job(owner, None, pod, settings, name=publish_job_name(owner.name, round_))
