"""A reconcile that has nothing to do reads nothing: counted in the real apiserver's audit log.

A FineTuneJob with spec.evaluation reads its Jobs, Pods and its own EvalRun; all of them come from
kopf's indices, and the job itself from its watched copy when that is the version the operator last
wrote. Proves the request count of the idle path; says nothing about the busy one (which reads the
job fresh, by design).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from devcluster import LocalCluster, OperatorProcess, wait_for
from finetune_operator.api import FINETUNEJOB
from tests.kube import Kube, quick_spec

EVALUATION = {
    "benchmarks": [
        {"name": "qa", "task": "qa", "metrics": ["exact_match"], "dataset": {"uri": "file:///scenario/eval-pass"}}
    ],
    "thresholds": {"exact_match": 0.5},
}


def _operator_requests(audit_log: Path, namespace: str) -> list[dict[str, Any]]:
    """The operator's requests in `namespace` (its own user agent), one audit event each."""
    events = (json.loads(line) for line in audit_log.read_text().splitlines() if line.strip())
    return [
        e
        for e in events
        if e.get("stage") == "ResponseComplete"
        and str(e.get("userAgent", "")).startswith("finetune-operator/")
        and (e.get("objectRef") or {}).get("namespace") == namespace
    ]


def _reconciles(operator: OperatorProcess) -> float:
    return operator.metric(f'finetune_reconciles_total{{kind="{FINETUNEJOB.kind}"}}') or 0.0


def _settle(operator: OperatorProcess, quiet: float = 1.5, timeout: float = 30) -> None:
    """Until no FineTuneJob reconcile has run for `quiet` seconds (the verdict's own events are handled)."""
    seen = [_reconciles(operator)]

    def quiet_for_a_while() -> bool:
        time.sleep(quiet)
        seen.append(_reconciles(operator))
        return seen[-1] == seen[-2]

    wait_for(quiet_for_a_while, timeout, f"{quiet}s without a reconcile", describe=lambda: str(seen), interval=0)


def test_an_idle_reconcile_of_an_evaluated_job_makes_no_get(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess
) -> None:
    kube.apply_ftj("judged", quick_spec("success", evaluation=EVALUATION))
    wait_for(
        lambda: (kube.status("judged").get("evaluation") or {}).get("passed") is True,
        90,
        "FineTuneJob judged evaluated and passing",
        describe=lambda: str(kube.status("judged")),
    )
    audit = cluster.control_plane.audit_log
    _settle(operator)
    before = _operator_requests(audit, kube.namespace)
    reconciles = _reconciles(operator)

    # A child event that changes nothing the plan reads: a label on the training Job.
    batch = client.BatchV1Api(kube.api)
    [training] = batch.list_namespaced_job(kube.namespace, label_selector=f"{FINETUNEJOB.label}=judged").items
    batch.patch_namespaced_job(training.metadata.name, kube.namespace, {"metadata": {"labels": {"poked": "yes"}}})
    wait_for(lambda: _reconciles(operator) > reconciles, 30, "a reconcile of the FineTuneJob after the poke")

    new = _operator_requests(audit, kube.namespace)[len(before) :]
    gets = [(e["verb"], e["objectRef"].get("resource"), e["objectRef"].get("name")) for e in new if e["verb"] == "get"]
    writes = [(e["verb"], e["objectRef"].get("resource")) for e in new if e["verb"] not in ("get", "list", "watch")]
    assert gets == [] and writes == [], (gets, writes)
    assert kube.status("judged")["evaluation"]["passed"] is True
