"""The Argo CD pieces of examples/gitops: the Lua health checks run in Lua 5.1 (Argo CD's gopher-lua
dialect) against every phase they handle, and the Applications point at paths that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "examples" / "gitops" / "argocd"
HEALTH = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())["data"]


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    from lupa.lua51 import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH[f"resource.customizations.health.finetune.dev_{kind}"])
    return str(result["status"]), str(result["message"])


def _c(ctype: str, status: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


EVALUATION = {"evaluation": {"benchmarks": []}}

FINETUNEJOB_CASES = [
    ("new", {}, {}, "Progressing", "waiting for the operator"),
    (
        "invalid",
        {},
        {"phase": "Failed", "conditions": [_c("Validated", "False", message="spec.x: bad")]},
        "Degraded",
        "InvalidSpec: spec.x: bad",
    ),
    (
        "running",
        {},
        {
            "phase": "Running",
            "progress": {"percent": 40},
            "conditions": [_c("Running", "True", message="trainer pod p is running")],
        },
        "Progressing",
        "Running 40%: trainer pod p is running",
    ),
    (
        "failed",
        {},
        {"phase": "Failed", "conditions": [_c("Failed", "True", "OutOfMemory", "raise memory")]},
        "Degraded",
        "OutOfMemory: raise memory",
    ),
    ("suspended", {}, {"phase": "Suspended"}, "Suspended", "spec.suspend is true"),
    ("succeeded", {}, {"phase": "Succeeded", "adapter": {"uri": "s3://a/"}}, "Healthy", "adapter s3://a/"),
    (
        "evaluating",
        EVALUATION,
        {"phase": "Succeeded", "conditions": [_c("Evaluated", "Unknown")]},
        "Progressing",
        "trained; evaluating the adapter",
    ),
    (
        "gate missed",
        EVALUATION,
        {"phase": "Succeeded", "conditions": [_c("Evaluated", "False", "ThresholdsMissed", "missed: f1 0.4 < 0.5")]},
        "Degraded",
        "ThresholdsMissed: missed: f1 0.4 < 0.5",
    ),
    (
        "failed without a reason",
        {},
        {"phase": "Failed", "conditions": [{"type": "Failed", "status": "True"}]},
        "Degraded",
        "Failed",
    ),
    (
        "failed with a reason only",
        {},
        {"phase": "Failed", "conditions": [{"type": "Failed", "status": "True", "reason": "DataError"}]},
        "Degraded",
        "DataError",
    ),
    ("running without progress or conditions", {}, {"phase": "Running"}, "Progressing", "Running 0%"),
    (
        "gate missed without a message",
        EVALUATION,
        {"phase": "Succeeded", "conditions": [{"type": "Evaluated", "status": "False"}]},
        "Degraded",
        "EvaluationFailed",
    ),
    (
        "gate met",
        EVALUATION,
        {"phase": "Succeeded", "adapter": {"uri": "s3://a/"}, "conditions": [_c("Evaluated", "True", "ThresholdsMet")]},
        "Healthy",
        "adapter s3://a/",
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "status", "expected", "message"), FINETUNEJOB_CASES, ids=[c[0] for c in FINETUNEJOB_CASES]
)
def test_finetunejob_health(
    case: str, spec: dict[str, Any], status: dict[str, Any], expected: str, message: str
) -> None:
    obj: dict[str, Any] = {"spec": spec}
    if status:
        obj["status"] = status
    assert health("FineTuneJob", obj) == (expected, message)


@pytest.mark.parametrize("kind", ["FineTuneJob", "EvalRun"])
@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Running"])
def test_a_spec_the_operator_has_not_acted_on_yet_is_progressing(kind: str, phase: str) -> None:
    """Right after a GitOps re-apply: the old attempt's phase, a newer generation. Not Healthy (nor Degraded)."""
    status = {"phase": phase, "observedGeneration": 1, "conditions": [_c("Validated", "True")]}
    obj = {"metadata": {"generation": 2}, "spec": {}, "status": status}
    assert health(kind, obj) == ("Progressing", "spec generation 2 not acted on yet (observed 1)")
    obj["metadata"]["generation"] = 1  # acted on: the phase speaks again
    assert health(kind, obj)[0] == {"Succeeded": "Healthy", "Failed": "Degraded", "Running": "Progressing"}[phase]


@pytest.mark.parametrize("kind", ["FineTuneJob", "EvalRun"])
def test_objects_with_fields_missing_never_break_the_script(kind: str) -> None:
    bare_conditions = [{"type": t} for t in ("Validated", "Running", "Failed", "Evaluated", "Passed")]
    for status in (
        {},
        {"phase": "Failed"},
        {"phase": "Succeeded"},
        {"phase": "Pending", "conditions": bare_conditions},
    ):
        for obj in ({"status": status}, {"metadata": {}, "status": status}, {"metadata": {"generation": 3}}):
            state, message = health(kind, obj)
            assert state in {"Healthy", "Progressing", "Degraded", "Suspended"} and "nil" not in message


EVALRUN_CASES = [
    ("new", {}, "Progressing", "waiting for the operator"),
    (
        "waiting",
        {"phase": "Pending", "conditions": [_c("Running", "False", "WaitingForFineTuneJob", "waiting for x")]},
        "Progressing",
        "Pending: waiting for x",
    ),
    (
        "failed",
        {"phase": "Failed", "conditions": [_c("Failed", "True", "FineTuneJobFailed", "x failed")]},
        "Degraded",
        "FineTuneJobFailed: x failed",
    ),
    (
        "missed",
        {
            "phase": "Succeeded",
            "score": 0.2,
            "conditions": [_c("Passed", "False", "ThresholdsMissed", "missed: exact_match 0.2 < 0.6")],
        },
        "Degraded",
        "ThresholdsMissed: missed: exact_match 0.2 < 0.6",
    ),
    (
        "passed",
        {"phase": "Succeeded", "score": 0.9, "conditions": [_c("Passed", "True", "ThresholdsMet")]},
        "Healthy",
        "score 0.9",
    ),
    (
        "passed without a score",
        {"phase": "Succeeded", "conditions": [_c("Passed", "True", "NoThresholds", "no thresholds are set")]},
        "Healthy",
        "NoThresholds: no thresholds are set",
    ),
    ("succeeded with nothing else", {"phase": "Succeeded"}, "Healthy", "evaluated"),
    (
        "missed without a reason",
        {"phase": "Succeeded", "conditions": [{"type": "Passed", "status": "False", "message": "missed: f1"}]},
        "Degraded",
        "ThresholdsMissed: missed: f1",
    ),
]


@pytest.mark.parametrize(("case", "status", "expected", "message"), EVALRUN_CASES, ids=[c[0] for c in EVALRUN_CASES])
def test_evalrun_health(case: str, status: dict[str, Any], expected: str, message: str) -> None:
    assert health("EvalRun", {"status": status} if status else {}) == (expected, message)


@pytest.mark.parametrize("name", ["operator-application.yaml", "finetune-application.yaml"])
def test_applications_point_at_paths_in_this_repository(name: str) -> None:
    app = yaml.safe_load((ARGOCD / name).read_text())
    assert app["kind"] == "Application"
    path = REPO / app["spec"]["source"]["path"]
    assert (path / "Chart.yaml").exists() or (path / "kustomization.yaml").exists(), path
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]


def _runs(workflow: Path) -> list[str]:
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    return [step.get("run", "") for job in jobs.values() for step in job["steps"]]


def test_ci_workflows_run_the_commands_that_exist() -> None:
    workflows = REPO / ".github" / "workflows"
    assert "CI=true bash .ci/run" in _runs(workflows / "ci.yaml")
    assert "make e2e-kind" in _runs(workflows / "e2e-kind.yaml")
    assert "\ne2e-kind:" in (REPO / "Makefile").read_text()
    assert (REPO / ".ci" / "run").exists()
