"""EvalRun planning: waiting for the FineTuneJob, the eval Job, verdicts, re-runs; a job's own EvalRun."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from finetune_operator.api import EVALRUN
from finetune_operator.config import OperatorSettings
from finetune_operator.kinds.evalrun import Inputs as EvalRunInputs
from finetune_operator.kinds.evalrun import plan as plan_evalrun
from finetune_operator.kinds.finetunejob import Inputs as FineTuneJobInputs
from finetune_operator.kinds.finetunejob import plan as plan_finetunejob
from finetune_operator.plan import Plan
from tests.factories import MINIMAL_SPEC, UID, finetunejob, job, pod, result_message, succeeded_result
from tests.unit.test_reconcile import _apply

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()
EVAL_UID = "9a8b7c6d-0000-4000-8000-000000000001"
ADAPTER = "s3://finetune/team-a/support-bot/x/attempt-1/adapter/"
BENCHMARKS = [
    {
        "name": "capitals",
        "task": "qa",
        "dataset": {"uri": "s3://datasets/capitals.jsonl"},
        "metrics": ["exact_match", "f1"],
    }
]


def evalrun(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    default = {"model": {"fineTuneJobRef": {"name": "support-bot"}}, "benchmarks": BENCHMARKS}
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "support-eval", "namespace": "team-a", "uid": EVAL_UID, "generation": 1},
        "spec": copy.deepcopy(spec or default),
        "status": status or {},
    }


def trained(adapter: str = ADAPTER, attempt: int = 1, **spec: Any) -> dict[str, Any]:
    return finetunejob(
        {**MINIMAL_SPEC, **spec},
        status={"phase": "Succeeded", "attempt": attempt, "adapter": {"uri": adapter}},
    )


def eval_result(exact_match: float, f1: float) -> str:
    summary = [
        {"metric": "exact_match", "value": exact_match, "baseline": 0.0, "delta": exact_match},
        {"metric": "f1", "value": f1, "baseline": 0.1, "delta": f1 - 0.1},
    ]
    return result_message(
        result="succeeded",
        evaluation={
            "summary": summary,
            "results": [{"benchmark": "capitals", **row} for row in summary],
            "report": {"uri": "s3://finetune/team-a/support-eval/y/attempt-1/report/"},
            "samples": 12,
        },
    )


def _plan(body: dict[str, Any], ftj: dict[str, Any] | None, jobs: Any = (), pods: Any = ()) -> Plan:
    return plan_evalrun(EvalRunInputs(body, list(jobs), list(pods), SETTINGS, ftj=ftj), NOW)


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def _finished(body: dict[str, Any], message: str) -> Plan:
    """Reconcile after the eval Job of attempt 1 completed with `message` as its result."""
    done = job(succeeded=1, conditions=[{"type": "Complete"}], spec_hash=body["status"]["specHash"])
    finished = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": message})
    return _plan(body, trained(), [done], [finished])


def test_waits_for_a_missing_or_running_finetunejob_without_creating_anything() -> None:
    for ftj in (None, finetunejob(status={"phase": "Running", "attempt": 1})):
        plan = _plan(evalrun(), ftj)
        assert plan.created() == []
        assert plan.status["phase"] == "Pending"
        assert _condition(plan.status, "Running")["reason"] == "WaitingForFineTuneJob"
        assert _condition(plan.status, "Passed")["status"] == "Unknown"


def test_a_failed_finetunejob_fails_the_evalrun_with_its_reason() -> None:
    failed = finetunejob(
        status={"phase": "Failed", "conditions": [{"type": "Failed", "status": "True", "message": "train.jsonl: bad"}]}
    )
    plan = _plan(evalrun(), failed)
    assert plan.status["phase"] == "Failed"
    assert _condition(plan.status, "Failed")["reason"] == "FineTuneJobFailed"
    assert "train.jsonl: bad" in _condition(plan.status, "Failed")["message"]
    assert _condition(plan.status, "Passed")["status"] == "False"


def test_a_succeeded_finetunejob_starts_an_eval_job_on_its_adapter() -> None:
    plan = _plan(evalrun(), trained(quantization={"bits": 8}))
    assert [o["kind"] for o in plan.created()] == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    container = plan.created()[-1]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["finetune-trainer", "eval"]
    env = {e["name"]: e for e in container["env"]}
    run = json.loads(env["FINETUNE_RUN_SPEC"]["value"])
    assert run["kind"] == "EvaluationRun"
    assert run["model"]["adapter"]["uri"] == ADAPTER
    assert run["model"]["quantization"]["bits"] == 8  # as the job trained
    assert run["reportUri"].endswith(f"/team-a/support-eval/{EVAL_UID}/attempt-1/report/")
    # every s3:// source gets the storage secret under its own role; the hf:// base model needs none
    assert "FINETUNE_BASE_MODEL_HF_TOKEN" not in env
    for role in ("ADAPTER", "BENCHMARK_0", "OUTPUT"):
        assert env[f"FINETUNE_{role}_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "finetune-storage"
    assert plan.status["model"]["fineTuneJob"] == "support-bot"
    assert plan.created()[1]["rules"][0]["resources"] == [f"{EVALRUN.plural}/status"]


def test_harness_and_judge_sources_get_their_own_credentials() -> None:
    """An lmEval task folder reads under its benchmark's role, a judge model under the judge's, and an
    endpoint judge gets only its bearer token, from its own Secret; no local path is given a Secret."""
    benchmarks = [
        {"name": "mc", "task": "lmEval", "lmEval": {"tasks": ["t"], "include": "s3://eval/tasks/"}, "metrics": ["acc"]},
        {
            "name": "judged",
            "task": "judge",
            "dataset": {"uri": "s3://eval/questions.jsonl"},
            "judge": {"model": {"uri": "s3://models/judge/", "secretRef": {"name": "judge-store"}}},
            "metrics": ["win_rate"],
        },
        {
            "name": "served",
            "task": "judge",
            "dataset": {"uri": "file:///data/q.jsonl"},
            "judge": {
                "endpoint": {"url": "https://judge.example/v1", "model": "j", "secretRef": {"name": "judge-key"}}
            },
            "metrics": ["win_rate"],
        },
        {"name": "local", "task": "lmEval", "lmEval": {"tasks": ["u"]}, "metrics": ["acc"]},
    ]
    plan = _plan(evalrun({"model": {"fineTuneJobRef": {"name": "support-bot"}}, "benchmarks": benchmarks}), trained())
    env = {e["name"]: e for e in plan.created()[-1]["spec"]["template"]["spec"]["containers"][0]["env"]}

    def secret(name: str) -> tuple[str, str]:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        return ref["name"], ref["key"]

    assert secret("FINETUNE_BENCHMARK_0_AWS_ACCESS_KEY_ID") == ("finetune-storage", "AWS_ACCESS_KEY_ID")
    assert secret("FINETUNE_BENCHMARK_1_AWS_ACCESS_KEY_ID") == ("finetune-storage", "AWS_ACCESS_KEY_ID")
    assert secret("FINETUNE_BENCHMARK_1_JUDGE_AWS_SECRET_ACCESS_KEY") == ("judge-store", "AWS_SECRET_ACCESS_KEY")
    assert secret("FINETUNE_BENCHMARK_2_JUDGE_OPENAI_API_KEY") == ("judge-key", "OPENAI_API_KEY")
    assert not [name for name in env if name.startswith(("FINETUNE_BENCHMARK_2_AWS", "FINETUNE_BENCHMARK_3"))]


def test_verdict_from_the_result_and_thresholds() -> None:
    spec = {"model": {"fineTuneJobRef": {"name": "support-bot"}}, "benchmarks": BENCHMARKS}
    for thresholds, passed, reason in (
        ({"exact_match": 0.6}, True, "ThresholdsMet"),
        ({"exact_match": 0.6, "f1": 0.99}, False, "ThresholdsMissed"),
        ({}, True, "NoThresholds"),
    ):
        body = evalrun({**spec, "thresholds": thresholds})
        body = _apply(body, _plan(body, trained()))
        plan = _finished(body, eval_result(0.75, 0.8))
        assert plan.status["phase"] == "Succeeded"
        assert plan.status["passed"] is passed
        assert plan.status["score"] == 0.75
        assert plan.status["report"]["uri"].endswith("/report/")
        assert [r["metric"] for r in plan.status["results"]] == ["exact_match", "f1"]
        verdict = _condition(plan.status, "Passed")
        assert (verdict["status"], verdict["reason"]) == ("True" if passed else "False", reason)
        if not passed:
            assert verdict["message"] == "missed: f1 0.8 < 0.99"


def test_exit_zero_without_results_is_a_failure() -> None:
    body = evalrun()
    body = _apply(body, _plan(body, trained()))
    plan = _finished(body, succeeded_result())  # a training result, no evaluation
    assert plan.status["phase"] == "Failed"
    assert "evaluation results" in _condition(plan.status, "Failed")["message"]


def test_a_new_adapter_starts_a_new_attempt_and_retraining_keeps_the_verdict() -> None:
    body = evalrun()
    body = _apply(body, _plan(body, trained()))
    body = _apply(body, _finished(body, eval_result(0.9, 0.9)))
    assert body["status"]["phase"] == "Succeeded"
    retraining = finetunejob(status={"phase": "Running", "attempt": 2})
    assert _plan(body, retraining).created() == []
    again = _plan(body, trained(adapter=ADAPTER.replace("attempt-1", "attempt-2"), attempt=2))
    assert again.status["attempt"] == 2
    assert again.status["results"] is None  # the old verdict is about the old adapter
    assert again.status["model"]["adapter"]["uri"].endswith("attempt-2/adapter/")


def test_an_explicit_base_model_and_adapter_need_no_finetunejob() -> None:
    spec = {
        "model": {"baseModel": {"uri": "s3://models/tiny/"}, "adapter": {"uri": "s3://adapters/a/"}},
        "benchmarks": BENCHMARKS,
    }
    plan = _plan(evalrun(spec), None)
    assert plan.created()[-1]["kind"] == "Job"
    assert plan.status["model"] == {
        "baseModel": {"uri": "s3://models/tiny/", "trustRemoteCode": False},
        "adapter": {"uri": "s3://adapters/a/"},
    }


def test_an_invalid_spec_is_reported_naming_the_field() -> None:
    spec = {"model": {"fineTuneJobRef": {"name": "x"}}, "benchmarks": BENCHMARKS, "thresholds": {"bleu": 0.5}}
    plan = _plan(evalrun(spec), None)
    assert plan.status["phase"] == "Failed"
    assert _condition(plan.status, "Validated")["message"] == (
        "spec.thresholds: every threshold must name a metric that some benchmark computes"
    )


# --- a FineTuneJob's spec.evaluation --------------------------------------------------------------

EVALUATION = {"benchmarks": BENCHMARKS, "thresholds": {"exact_match": 0.6}}


def _succeeded_ftj(**spec: Any) -> dict[str, Any]:
    body = finetunejob({**MINIMAL_SPEC, **spec})
    return _apply(body, plan_finetunejob(FineTuneJobInputs(body, [], [], SETTINGS), NOW))


def _training_done(body: dict[str, Any], evalrun_body: dict[str, Any] | None) -> Plan:
    done = job(succeeded=1, conditions=[{"type": "Complete"}], spec_hash=body["status"]["specHash"])
    finished = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": succeeded_result()})
    return plan_finetunejob(FineTuneJobInputs(body, [done], [finished], SETTINGS, evalrun=evalrun_body), NOW)


def owned_evalrun(status: dict[str, Any] | None = None, **spec_changes: Any) -> dict[str, Any]:
    body = _succeeded_ftj(evaluation=EVALUATION)
    plan = _training_done(body, None)
    [created] = plan.created("EvalRun")
    manifest = copy.deepcopy(dict(created))
    manifest["spec"].update(spec_changes)
    manifest["metadata"]["uid"] = EVAL_UID
    manifest["status"] = status or {}
    return manifest


def test_training_success_creates_the_owned_evalrun() -> None:
    body = _succeeded_ftj(evaluation=EVALUATION)
    plan = _training_done(body, None)
    [evalrun_manifest] = plan.created("EvalRun")
    # After the status write: a failure to create it must not lose the training's outcome.
    assert [a.stage for a in plan.actions if a.kind == "EvalRun"] == ["after"]
    assert evalrun_manifest["kind"] == "EvalRun"
    assert evalrun_manifest["metadata"]["name"] == "support-bot-eval"
    assert evalrun_manifest["metadata"]["ownerReferences"][0]["uid"] == UID
    assert evalrun_manifest["spec"]["model"] == {"fineTuneJobRef": {"name": "support-bot"}}
    assert evalrun_manifest["spec"]["thresholds"] == {"exact_match": 0.6}
    assert plan.status["phase"] == "Succeeded"
    assert _condition(plan.status, "Evaluated")["status"] == "Unknown"
    assert plan.status["evaluation"] == {"evalRun": "support-bot-eval"}


def test_no_evalrun_before_training_succeeds() -> None:
    body = _succeeded_ftj(evaluation=EVALUATION)
    running = [pod(phase="Running")]
    plan = plan_finetunejob(
        FineTuneJobInputs(body, [job(active=1, spec_hash=body["status"]["specHash"])], running, SETTINGS), NOW
    )
    assert plan.created("EvalRun") == []
    assert all(c["type"] != "Evaluated" for c in plan.status["conditions"])


def test_the_verdict_is_mirrored_only_for_the_current_adapter() -> None:
    body = _succeeded_ftj(evaluation=EVALUATION)
    body = _apply(body, _training_done(body, None))
    verdict = {
        "phase": "Succeeded",
        "passed": False,
        "score": 0.4,
        "model": {"baseModel": {"uri": "x"}, "adapter": {"uri": ADAPTER}},
        "report": {"uri": "s3://r/"},
        "conditions": [{"type": "Passed", "status": "False", "reason": "ThresholdsMissed", "message": "missed: x"}],
    }
    plan = plan_finetunejob(FineTuneJobInputs(body, [], [], SETTINGS, evalrun=owned_evalrun(verdict)), NOW)
    evaluated = _condition(plan.status, "Evaluated")
    assert (evaluated["status"], evaluated["reason"]) == ("False", "ThresholdsMissed")
    assert plan.status["evaluation"]["passed"] is False
    assert plan.status["evaluation"]["reportUri"] == "s3://r/"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ThresholdsMissed")]
    stale = {**verdict, "model": {"baseModel": {"uri": "x"}, "adapter": {"uri": "s3://older/"}}}
    plan = plan_finetunejob(FineTuneJobInputs(body, [], [], SETTINGS, evalrun=owned_evalrun(stale)), NOW)
    assert _condition(plan.status, "Evaluated")["status"] == "Unknown"
    passing = {
        **verdict,
        "passed": True,
        "conditions": [{"type": "Passed", "status": "True", "reason": "ThresholdsMet"}],
    }
    plan = plan_finetunejob(FineTuneJobInputs(body, [], [], SETTINGS, evalrun=owned_evalrun(passing)), NOW)
    assert _condition(plan.status, "Evaluated")["status"] == "True"


def test_changing_the_evaluation_reruns_only_the_evaluation() -> None:
    body = _succeeded_ftj(evaluation=EVALUATION)
    body = _apply(body, _training_done(body, None))
    changed = copy.deepcopy(body)
    changed["spec"]["evaluation"]["thresholds"] = {"exact_match": 0.9}
    changed["metadata"]["generation"] = 2
    finished = owned_evalrun({"phase": "Succeeded"})
    plan = plan_finetunejob(FineTuneJobInputs(changed, [], [], SETTINGS, evalrun=finished), NOW)
    assert plan.created() == []  # no new training attempt
    assert plan.patches("EvalRun") == [("support-bot-eval", {"spec": {"thresholds": {"exact_match": 0.9}}})]
    changed["spec"]["evaluation"]["thresholds"] = {}
    dropped = plan_finetunejob(FineTuneJobInputs(changed, [], [], SETTINGS, evalrun=finished), NOW).patches("EvalRun")
    assert dropped == [("support-bot-eval", {"spec": {"thresholds": {"exact_match": None}}})]
    running = owned_evalrun({"phase": "Running"})
    assert plan_finetunejob(FineTuneJobInputs(changed, [], [], SETTINGS, evalrun=running), NOW).patches("EvalRun") == []


def test_dropping_the_evaluation_deletes_the_owned_evalrun() -> None:
    body = _succeeded_ftj(evaluation=EVALUATION)
    body = _apply(body, _training_done(body, None))
    del body["spec"]["evaluation"]
    plan = plan_finetunejob(
        FineTuneJobInputs(body, [], [], SETTINGS, evalrun=owned_evalrun({"phase": "Succeeded"})), NOW
    )
    assert plan.deleted("EvalRun") == ["support-bot-eval"]
    assert plan.status["evaluation"] is None
