"""The trainer Jobs and Pods the operator created: indexed by their owner's uid, and each change
wakes the owner (the kind whose label the child carries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..api import KINDS
from ..kinds.base import Packed, indices_in
from ..manifests.names import LABEL_MANAGED_BY, LABEL_OWNER_UID, MANAGED_BY
from ..reconciler import wake
from ..runtime import MEMO_KEY

CHILDREN: dict[str, Any] = {LABEL_OWNER_UID: kopf.PRESENT, LABEL_MANAGED_BY: MANAGED_BY}


def _trim(body: Mapping[str, Any], keep_spec: bool) -> dict[str, Any]:
    """Keep only what status derivation reads: indices hold every trainer Job and Pod in memory."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    trimmed: dict[str, Any] = {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "status": dict(body.get("status") or {}),
    }
    if keep_spec:
        # completionMode and completions: whether it is a pod group that restarts as one (status.view_job).
        trimmed["spec"] = {key: spec.get(key) for key in ("suspend", "completionMode", "completions")}
    else:
        trimmed["spec"] = {"containers": [{"image": c.get("image")} for c in spec.get("containers") or []]}
    return trimmed


# Indices are async: pure and cheap, they need no thread (a sync one waits for a free one).
@kopf.index("batch", "v1", "jobs", labels=CHILDREN)
async def trainer_jobs(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, Packed]:
    return {labels[LABEL_OWNER_UID]: Packed.of(_trim(body, keep_spec=True))}


@kopf.index("", "v1", "pods", labels=CHILDREN)
async def trainer_pods(labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[str, Packed]:
    return {labels[LABEL_OWNER_UID]: Packed.of(_trim(body, keep_spec=False))}


@kopf.on.event("batch", "v1", "jobs", labels=CHILDREN)
@kopf.on.event("", "v1", "pods", labels=CHILDREN)
async def child_changed(*, namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any) -> None:
    owner = next((kind for kind in KINDS if kind.label in labels), None)
    if owner is not None:
        wake(memo[MEMO_KEY], owner, namespace or "", labels[owner.label], indices_in(kwargs))
