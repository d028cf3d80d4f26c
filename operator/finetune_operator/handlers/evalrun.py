"""kopf handlers for EvalRun: the FineTuneJob machinery (handlers/common.py) with `plan_evalrun`.

An EvalRun is woken by its own events (`needs_reconcile`), its Jobs and Pods (handlers/children.py),
and the FineTuneJob its fineTuneJobRef names finishing (handlers/finetunejob.py, through the
`evalruns_by_job` index). An EvalRun owned by a FineTuneJob wakes that job when its phase or
verdict changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..api import GROUP, VERSION
from ..kube import get_custom
from ..manifests.names import LABEL_FINETUNEJOB
from ..reconcile import Plan, plan_evalrun
from .common import children_of, forget_resource, indices_in, needs_reconcile, queue_reconcile, reconcile_resource
from .runtime import MEMO_KEY, Runtime

PLURAL = "evalruns"
KIND = "EvalRun"


@kopf.index(GROUP, VERSION, PLURAL)
async def evalruns_by_job(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str] | None:
    ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    return {(namespace or "", ref): name} if ref else None


def reconcile_evalrun(runtime: Runtime, namespace: str, name: str, indices: Mapping[str, Any]) -> None:
    def plan_for(evr: dict[str, Any]) -> Plan:
        ref = (((evr.get("spec") or {}).get("model") or {}).get("fineTuneJobRef") or {}).get("name")
        ftj = get_custom(runtime.api, "finetunejobs", namespace, ref) if ref else None
        jobs, pods = children_of(indices, evr)
        return plan_evalrun(evr, jobs, pods, runtime.settings, runtime.now(), ftj=ftj)

    reconcile_resource(
        runtime,
        KIND,
        PLURAL,
        namespace=namespace,
        name=name,
        plan_for=plan_for,
        again=lambda: reconcile_evalrun(runtime, namespace, name, indices),
    )


def queue_evalrun(runtime: Runtime, namespace: str, name: str, indices: Mapping[str, Any]) -> None:
    queue_reconcile(runtime, PLURAL, namespace, name, lambda: reconcile_evalrun(runtime, namespace, name, indices))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def evalrun_event(
    *,
    type: str | None,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    labels: Mapping[str, str],
    status: Mapping[str, Any],
    memo: Any,
    **kwargs: Any,
) -> None:
    runtime: Runtime = memo[MEMO_KEY]
    namespace = namespace or ""
    if type == "DELETED":
        runtime.metrics.forget_evalrun(namespace, name)
        forget_resource(runtime, PLURAL, namespace, name)
        runtime.verdicts.pop((namespace, name), None)
    else:
        runtime.metrics.observe_evalrun(namespace, name, status)
    indices = indices_in(kwargs)
    if needs_reconcile(type, body):
        queue_evalrun(runtime, namespace, name, indices)
    owner = labels.get(LABEL_FINETUNEJOB)
    if owner and (type is None or type == "DELETED" or _verdict_changed(runtime, namespace, name, body)):
        # A FineTuneJob's own EvalRun: its phase and verdict go into the job's status.
        from .finetunejob import queue_finetunejob

        queue_finetunejob(runtime, namespace, owner, indices)


def _verdict_changed(runtime: Runtime, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
    """Whether what the owning FineTuneJob mirrors changed; its progress patches (every few seconds) do not count."""
    status = body.get("status") or {}
    verdict = (
        (body.get("metadata") or {}).get("generation"),
        status.get("phase"),
        status.get("passed"),
        ((status.get("model") or {}).get("adapter") or {}).get("uri"),
        (status.get("report") or {}).get("uri"),
    )
    previous = runtime.verdicts.get((namespace, name))
    runtime.verdicts[(namespace, name)] = verdict
    return verdict != previous
