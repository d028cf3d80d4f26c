"""kopf handlers for FineTuneJob. Thin: gather what is observed, call `plan_finetunejob`, execute the plan.

Three watches wake the same reconcile: the FineTuneJob itself (listed at start, a spec generation
not yet observed, deletion while it holds the artifacts finalizer: `needs_reconcile`), its trainer
Jobs and Pods (handlers/children.py), and its own EvalRun (handlers/evalrun.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..api import GROUP, TERMINAL_PHASES, VERSION
from ..deletion import plan_deletion
from ..kube import get_custom
from ..manifests.names import ARTIFACTS_FINALIZER, Owner
from ..reconcile import Plan, plan_finetunejob
from ..workloads import evalrun_name
from .common import children_of, forget_resource, indices_in, needs_reconcile, queue_reconcile, reconcile_resource
from .runtime import MEMO_KEY, Runtime

PLURAL = "finetunejobs"
KIND = "FineTuneJob"


def reconcile_finetunejob(runtime: Runtime, namespace: str, name: str, indices: Mapping[str, Any]) -> None:
    def plan_for(ftj: dict[str, Any]) -> Plan:
        evalrun = None
        if (ftj.get("spec") or {}).get("evaluation") or (ftj.get("status") or {}).get("evaluation"):
            evalrun = get_custom(runtime.api, "evalruns", namespace, evalrun_name(Owner.from_body(ftj)))
        jobs, pods = children_of(indices, ftj)
        return plan_finetunejob(ftj, jobs, pods, runtime.settings, runtime.now(), evalrun=evalrun)

    def plan_deleting(ftj: dict[str, Any]) -> Plan:
        jobs, pods = children_of(indices, ftj)
        return plan_deletion(ftj, jobs, pods, runtime.settings, runtime.now())

    reconcile_resource(
        runtime,
        KIND,
        PLURAL,
        namespace=namespace,
        name=name,
        plan_for=plan_for,
        again=lambda: reconcile_finetunejob(runtime, namespace, name, indices),
        plan_deleting=plan_deleting,
        watched=next(iter(indices["watched_finetunejobs"].get((namespace, name), [])), None),
    )


def queue_finetunejob(runtime: Runtime, namespace: str, name: str, indices: Mapping[str, Any]) -> None:
    queue_reconcile(runtime, PLURAL, namespace, name, lambda: reconcile_finetunejob(runtime, namespace, name, indices))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def finetunejob_event(
    *,
    type: str | None,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    status: Mapping[str, Any],
    memo: Any,
    **kwargs: Any,
) -> None:
    runtime: Runtime = memo[MEMO_KEY]
    namespace = namespace or ""
    if type == "DELETED":
        runtime.metrics.forget(namespace, name)
        forget_resource(runtime, PLURAL, namespace, name)
    else:
        runtime.metrics.observe_status(namespace, name, status)
    indices = indices_in(kwargs)
    if needs_reconcile(type, body, ARTIFACTS_FINALIZER):
        queue_finetunejob(runtime, namespace, name, indices)
    if type == "DELETED" or status.get("phase") in TERMINAL_PHASES:
        # EvalRuns that reference this job wait for it to finish (or run again on its new adapter).
        from .evalrun import queue_evalrun

        for evalrun in indices["evalruns_by_job"].get((namespace, name), []):
            queue_evalrun(runtime, namespace, evalrun, indices)
