"""Our own resources, one handler and one index per kind in api.KINDS: an event queues a reconcile
when it carries news (kinds.base.needs_reconcile) and wakes the resources that read this one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..api import EVALRUN, FINETUNEJOB, FINETUNESCHEDULE, GROUP, KINDS, VERSION, Kind
from ..kinds import CONTROLLERS
from ..kinds.base import (
    EVALRUNS_BY_DATASET,
    EVALRUNS_BY_JOB,
    FINETUNEJOBS_BY_ADAPTER_JOB,
    FINETUNEJOBS_BY_DATASET,
    FINETUNEJOBS_BY_MODEL,
    FINETUNEJOBS_BY_SCHEDULE,
    Packed,
    indices_in,
    needs_reconcile,
    watched_index,
)
from ..kinds.evalrun import dataset_names
from ..reconciler import forget, wake, wake_dependents
from ..runtime import MEMO_KEY, Runtime

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _watched(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as planning reads it, without the bulk nobody reads (managedFields, kubectl's
    last-applied copy of the spec)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations") or {}
    if LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


async def watched(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Packed]:
    return {(namespace or "", name): Packed.of(_watched(body))}


@kopf.index(GROUP, VERSION, EVALRUN.plural, id=EVALRUNS_BY_JOB)
async def evalruns_by_job(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str] | None:
    ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    return {(namespace or "", ref): name} if ref else None


@kopf.index(GROUP, VERSION, FINETUNEJOB.plural, id=FINETUNEJOBS_BY_ADAPTER_JOB)
async def finetunejobs_by_adapter_job(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str] | None:
    ref = ((spec.get("adapter") or {}).get("fineTuneJobRef") or {}).get("name")
    return {(namespace or "", ref): name} if ref else None


@kopf.index(GROUP, VERSION, FINETUNEJOB.plural, id=FINETUNEJOBS_BY_MODEL)
async def finetunejobs_by_model(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str] | None:
    model = (spec.get("output") or {}).get("model")
    return {(namespace or "", model): name} if model else None


@kopf.index(GROUP, VERSION, FINETUNEJOB.plural, id=FINETUNEJOBS_BY_SCHEDULE)
async def finetunejobs_by_schedule(
    namespace: str | None, name: str, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], str] | None:
    schedule = labels.get(FINETUNESCHEDULE.label)
    return {(namespace or "", schedule): name} if schedule else None


@kopf.index(GROUP, VERSION, FINETUNEJOB.plural, id=FINETUNEJOBS_BY_DATASET)
async def finetunejobs_by_dataset(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str] | None:
    ref = ((spec.get("dataset") or {}).get("datasetRef") or {}).get("name")
    return {(namespace or "", ref): name} if ref else None


@kopf.index(GROUP, VERSION, EVALRUN.plural, id=EVALRUNS_BY_DATASET)
async def evalruns_by_dataset(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str] | None:
    return {(namespace or "", dataset): name for dataset in dataset_names(spec)} or None


async def resource_event(
    *,
    type: str | None,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    status: Mapping[str, Any],
    memo: Any,
    param: Any = None,
    **kwargs: Any,
) -> None:
    """`param`: the Kind this handler was registered for."""
    kind: Kind = param
    runtime: Runtime = memo[MEMO_KEY]
    namespace = namespace or ""
    if type == "DELETED":
        runtime.metrics.forget_resource(kind.kind, namespace, name)
        forget(runtime, kind, namespace, name)
    else:
        runtime.metrics.observe_resource(kind.kind, namespace, name, status)
    indices = indices_in(kwargs)
    controller = CONTROLLERS[kind.kind]
    if needs_reconcile(type, body, controller.finalizer) or (type != "DELETED" and controller.pending(body)):
        wake(runtime, kind, namespace, name, indices)
    wake_dependents(runtime, kind, type, body, indices)


for _kind in KINDS:
    kopf.index(GROUP, VERSION, _kind.plural, id=watched_index(_kind))(watched)
    kopf.on.event(GROUP, VERSION, _kind.plural, id=f"{_kind.singular}_event", param=_kind)(resource_event)
