"""The loop closed on the real control plane and node: a FineTuneSchedule's runs register into a Model, and
only a run that beats stable ships; the serving ConfigMap follows.

The pods run the stand-in trainer: its check finds a run due exactly when the operator says so (the
manual trigger), and its evaluation reports the exact_match the template's benchmark names, so the
scores are chosen between runs by changing the template, as a user would between retrainings. What is
real: the schedule's runs, the Model's gate decisions and the API objects. The real check command is
tested in tests/trainer/test_check_schedule.py and, on MinIO, in tests/e2e/test_schedule.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devcluster import apply_objects, wait_for
from finetune_operator.api import FINETUNESCHEDULE
from tests.integration.conftest import GROUP, VERSION, Kube
from tests.integration.test_model_registry import apply_model, configmap, scored_job, states, wait_model

pytestmark = pytest.mark.cluster


def apply_schedule(kube: Kube, name: str, score: float, trigger: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneSchedule",
        "metadata": {"name": name, "namespace": kube.namespace, "annotations": {"finetune.dev/run-now": trigger}},
        "spec": {"model": "loop", "jobTemplate": {"spec": scored_job(score, "loop")}},
    }
    apply_objects(kube.api, [body])


def schedule_status(kube: Kube, name: str) -> dict[str, Any]:
    body = kube.custom.get_namespaced_custom_object(GROUP, VERSION, kube.namespace, FINETUNESCHEDULE.plural, name)
    return dict(body.get("status") or {})


def served_version(kube: Kube) -> int | None:
    data = configmap(kube, "loop-lora")
    return json.loads(data["stable.json"])["version"] if data else None


def test_a_scheduled_run_ships_only_when_it_beats_stable(kube: Kube) -> None:
    # No store copy: what is shown is the gate and the ConfigMap, without a publish pod per decision.
    serving = {"configMap": {"name": "loop-lora"}}
    promotion = {"mustBeat": {"metric": "exact_match"}}
    apply_model(kube, "loop", promotion=promotion, serving=serving, store={"enabled": False})
    decided = []
    for number, (score, state) in enumerate([(0.8, "Stable"), (0.6, "Rejected"), (0.9, "Stable")], start=1):
        apply_schedule(kube, "retrain", score, trigger=str(number))
        wait_for(
            lambda n=number: schedule_status(kube, "retrain").get("lastRun", {}).get("name") == f"retrain-{n}",
            90,
            f"run retrain-{number}",
            describe=lambda: json.dumps(schedule_status(kube, "retrain")),
        )
        assert schedule_status(kube, "retrain")["lastRun"]["reasons"] == ["manual"]
        status = wait_model(
            kube,
            "loop",
            f"v{number} decided",
            lambda s, n=number: len(states(s)) == n and s["versions"][-1].get("verdict"),
        )
        assert states(status)[-1] == (number, state), status["versions"][-1]
        decided.append(status["versions"][-1]["verdictReason"])
        # The next trigger waits for this run to end (Forbid), so wait until the schedule shows it finished.
        wait_for(lambda: not schedule_status(kube, "retrain").get("active"), 60, "the run to end")
    status = wait_model(kube, "loop", "v3 stable", lambda s: s.get("stable") == 3)
    assert states(status) == [(1, "Superseded"), (2, "Rejected"), (3, "Stable")]
    assert decided[1] == "exact_match 0.6 <= stable v1 0.8 + 0"
    wait_for(lambda: served_version(kube) == 3, 30, "the ConfigMap to serve v3")
    shown = kube.kubectl("get", "fts", "retrain").stdout
    assert "retrain-3" in shown and "manual" in shown, shown
    print(shown)
