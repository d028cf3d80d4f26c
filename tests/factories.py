"""Plain-dict Kubernetes objects for unit tests, shaped like what the apiserver returns."""

from __future__ import annotations

import copy
import json
from typing import Any

from finetune_operator.plan import Plan, merge_patch

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
NOW = "2026-11-23T10:00:00Z"

MINIMAL_SPEC: dict[str, Any] = {
    "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
    "dataset": {"uri": "s3://datasets/support/train.jsonl"},
}


def finetunejob(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    generation: int = 1,
    name: str = "support-bot",
    namespace: str = "team-a",
) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": generation},
        "spec": copy.deepcopy(spec if spec is not None else MINIMAL_SPEC),
        "status": status or {},
    }


def job(
    attempt: int = 1,
    *,
    active: int = 0,
    failed: int = 0,
    succeeded: int = 0,
    suspend: bool = False,
    conditions: list[dict[str, str]] | None = None,
    spec_hash: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"active": active, "failed": failed, "succeeded": succeeded, "startTime": NOW}
    if conditions:
        status["conditions"] = [{"status": "True", **c} for c in conditions]
        if any(c["type"] == "Complete" for c in conditions):
            status["completionTime"] = "2026-11-23T10:30:00Z"
    return {
        "metadata": {
            "name": f"support-bot-0f1e2-{attempt}",
            "labels": {"finetune.dev/attempt": str(attempt)},
            "annotations": {"finetune.dev/spec-hash": spec_hash} if spec_hash else {},
        },
        "spec": {"suspend": suspend},
        "status": status,
    }


def pod(
    *,
    attempt: int = 1,
    phase: str = "Pending",
    name: str = "support-bot-0f1e2-1-abcde",
    terminated: dict[str, Any] | None = None,
    waiting: dict[str, str] | None = None,
    unschedulable: str | None = None,
    created: str = NOW,
    image: str = "trainer:1",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if terminated is not None or waiting is not None:
        state = {"terminated": terminated} if terminated is not None else {"waiting": waiting}
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    if unschedulable is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        ]
    return {
        "metadata": {"name": name, "labels": {"finetune.dev/attempt": str(attempt)}, "creationTimestamp": created},
        "spec": {"containers": [{"image": image}]},
        "status": status,
    }


def result_message(**fields: Any) -> str:
    return json.dumps(fields)


def succeeded_result(uri: str = "s3://finetune/team-a/support-bot/x/attempt-1/adapter/") -> str:
    return result_message(
        result="succeeded",
        adapter={"uri": uri, "sha256": "a" * 64, "sizeBytes": 1234},
        metrics={"trainLoss": 1.25, "evalLoss": 1.5, "steps": 30},
    )


def with_field(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `spec` with the dotted `path` (e.g. "training.learningRate") set to `value`."""
    changed = copy.deepcopy(spec)
    node = changed
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return changed


def finalizers_of(plan: Any) -> list[str] | None:
    """The resource's new metadata.finalizers a plan sets, or None when it leaves them alone."""
    changes = [body["metadata"]["finalizers"] for _, body in plan.patches("FineTuneJob") if "metadata" in body]
    assert len(changes) <= 1, changes
    return changes[0] if changes else None


def _merged(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(current)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def applied(body: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """What the apiserver holds after the operator sent the plan's status as a JSON merge patch."""
    status = dict(body.get("status") or {})
    return {**copy.deepcopy(body), "status": _merged(status, merge_patch(status, plan.status))}
