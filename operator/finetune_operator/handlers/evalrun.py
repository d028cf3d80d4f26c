"""kopf handlers for EvalRun: the FineTuneJob machinery (handlers/common.py) with `plan_evalrun`.

An EvalRun is woken by its own changes, its Jobs and Pods (handlers/children.py), and the
FineTuneJob its fineTuneJobRef names finishing (handlers/finetunejob.py, through the
`evalruns_by_job` index). An EvalRun owned by a FineTuneJob wakes that job when it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from ..api import GROUP, VERSION
from ..kube import get_custom
from ..manifests.names import LABEL_FINETUNEJOB
from ..reconcile import Plan, plan_evalrun
from .common import children_of, forget_resource, reconcile_resource, with_retries
from .runtime import MEMO_KEY, Runtime

PLURAL = "evalruns"
KIND = "EvalRun"


@kopf.index(GROUP, VERSION, PLURAL)
def evalruns_by_job(
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


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def evalrun_changed(*, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    reconcile_evalrun(memo[MEMO_KEY], namespace or "", name, kwargs)


@kopf.on.event(GROUP, VERSION, PLURAL)
def observe_evalrun(
    *,
    type: str,
    namespace: str | None,
    name: str,
    labels: Mapping[str, str],
    status: Mapping[str, Any],
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    runtime: Runtime = memo[MEMO_KEY]
    namespace = namespace or ""
    if type == "DELETED":
        runtime.metrics.forget_evalrun(namespace, name)
        forget_resource(runtime, PLURAL, namespace, name)
    else:
        runtime.metrics.observe_evalrun(namespace, name, status)
    owner = labels.get(LABEL_FINETUNEJOB)
    if owner:
        # A FineTuneJob's own EvalRun: its verdict goes into the job's status.
        from .finetunejob import reconcile_finetunejob

        with_retries(lambda: reconcile_finetunejob(runtime, namespace, owner, kwargs), logger)
