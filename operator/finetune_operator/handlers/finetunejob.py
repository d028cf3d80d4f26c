"""kopf handlers for FineTuneJob. Thin: gather what is observed, call `plan_finetunejob`, execute the plan.

Three watches wake the same reconcile: the FineTuneJob itself (create, spec update, operator
resume), its trainer Jobs and Pods (handlers/children.py), and its own EvalRun (handlers/evalrun.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import kopf

from ..api import GROUP, TERMINAL_PHASES, VERSION
from ..kube import get_custom
from ..manifests.names import Owner
from ..reconcile import Plan, plan_finetunejob
from ..workloads import evalrun_name
from .common import children_of, forget_resource, reconcile_resource, with_retries
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

    reconcile_resource(
        runtime,
        KIND,
        PLURAL,
        namespace=namespace,
        name=name,
        plan_for=plan_for,
        again=lambda: reconcile_finetunejob(runtime, namespace, name, indices),
    )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def finetunejob_changed(
    *,
    namespace: str | None,
    name: str,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    reconcile_finetunejob(memo[MEMO_KEY], namespace or "", name, kwargs)


@kopf.on.event(GROUP, VERSION, PLURAL)
def observe_finetunejob(
    *,
    type: str,
    namespace: str | None,
    name: str,
    status: Mapping[str, Any],
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    runtime: Runtime = memo[MEMO_KEY]
    namespace = namespace or ""
    if type == "DELETED":
        runtime.metrics.forget(namespace, name)
        forget_resource(runtime, PLURAL, namespace, name)
    else:
        runtime.metrics.observe_status(namespace, name, status)
    if type == "DELETED" or status.get("phase") in TERMINAL_PHASES:
        # EvalRuns that reference this job wait for it to finish (or run again on its new adapter).
        from .evalrun import reconcile_evalrun

        for evalrun in kwargs["evalruns_by_job"].get((namespace, name), []):
            with_retries(partial(reconcile_evalrun, runtime, namespace, evalrun, kwargs), logger)
