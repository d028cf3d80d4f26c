"""What a Model creates: the EvalRun that gates a version, and the serving ConfigMap that follows stable."""

from __future__ import annotations

import json
from typing import Any

from ..api import API_VERSION, EVALRUN
from ..api.evalrun import EvalModel
from ..api.model import ConfigMapTarget, ModelSpec, ModelVersion
from .evalrun import evalrun_spec
from .names import Owner, bounded_name, child_metadata

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


def serving_data(
    model: str, namespace: str, spec: ModelSpec, target: ConfigMapTarget, stable: ModelVersion
) -> dict[str, str]:
    """The ConfigMap's files: vLLM's `--lora-modules` JSON entry, the resolver's folder -> adapter URI map,
    and the stable pointer."""
    name = served_name(model, stable.version)
    module: dict[str, Any] = {"name": name, "path": f"{target.adapter_root.rstrip('/')}/{name}"}
    if target.base_model_name:
        module["base_model_name"] = target.base_model_name
    pointer = {
        "model": model,
        "namespace": namespace,
        "version": stable.version,
        "name": name,
        "uri": stable.adapter.uri,
        "sha256": stable.sha256,
        "baseModel": spec.base_model.uri,
    }
    return {
        LORA_MODULES: json.dumps(module, sort_keys=True),
        ADAPTERS: json.dumps({name: stable.adapter.uri}, sort_keys=True),
        STABLE: json.dumps(pointer, sort_keys=True),
    }


def build_serving_configmap(owner: Owner, target: ConfigMapTarget, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, target.name, "serving"),
        "data": data,
    }
