"""The Model controller, planned on plain dicts: registration, the gate, stable, pin, serving.

Each test applies a plan's status to the body and plans again, the way the operator would after its
status write; what the apiserver adds (admission, resourceVersions) is tested on the real one
(tests/integration/test_model_registry.py).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_operator.api.model import ModelSpec, ModelVersion
from finetune_operator.config import OperatorSettings
from finetune_operator.kinds.chores import ChoreJobs, backoff
from finetune_operator.kinds.model import Inputs, observe, plan
from finetune_operator.kinds.model_outputs import unpublished
from finetune_operator.manifests.model import ADAPTERS, LORA_MODULES, STABLE
from finetune_operator.plan import Patch, Plan, is_idle
from tests import factories
from tests.factories import applied

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BASE = "s3://models/tiny-llama/"
BENCH = {"name": "qa", "task": "qa", "dataset": {"uri": "s3://eval/qa.jsonl"}, "metrics": ["exact_match"]}


def model(**spec: Any) -> dict[str, Any]:
    body_spec = {"baseModel": {"uri": BASE}, "promotion": {"mustBeat": {"metric": "exact_match", "margin": 0.01}}}
    body_spec.update(spec)
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "support", "namespace": "team-a", "uid": "m-uid", "generation": 1, "resourceVersion": "7"},
        "spec": body_spec,
        "status": {},
    }


def job(
    name: str, *, evaluated: bool = True, base: str = BASE, attempt: int = 1, done: str = "10:00"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": base},
        "dataset": {"uri": f"s3://data/{name}.jsonl"},
        "output": {"model": "support"},
    }
    if evaluated:
        spec["evaluation"] = {"benchmarks": [BENCH]}
    return {
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"},
        "spec": spec,
        "status": {
            "phase": "Succeeded",
            "attempt": attempt,
            "completionTime": f"2026-12-01T{done}:00Z",
            "adapter": {"uri": f"s3://out/{name}/attempt-{attempt}/adapter/", "sha256": "ab" * 32},
            "provenance": {"datasetSha256": "cd" * 32, "trainerImage": "trainer:1"},
        },
    }


def evalrun(name: str, adapter: str, exact_match: float | None, *, failed: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Failed" if failed else "Succeeded", "model": {"adapter": {"uri": adapter}}}
    if failed:
        status["conditions"] = [{"type": "Failed", "status": "True", "message": failed}]
    else:
        status.update(
            passed=True,
            results=[{"benchmark": "qa", "metric": "exact_match", "value": exact_match}],
            summary=[{"metric": "exact_match", "value": exact_match}],
            report={"uri": f"s3://out/{name}/report/"},
        )
    return {"kind": "EvalRun", "metadata": {"name": name, "namespace": "team-a"}, "status": status}


def scored_job(name: str, exact_match: float, done: str = "10:00") -> tuple[dict[str, Any], dict[str, Any]]:
    body = job(name, done=done)
    return body, evalrun(f"{name}-eval", body["status"]["adapter"]["uri"], exact_match)


def run(body: dict[str, Any], jobs: list[dict[str, Any]], evalruns: list[dict[str, Any]] = ()) -> Plan:  # type: ignore[assignment]
    runs = {e["metadata"]["name"]: e for e in evalruns}
    return plan(Inputs(body, jobs, runs, OperatorSettings()), NOW)


def settle(
    body: dict[str, Any], jobs: list[dict[str, Any]], evalruns: list[dict[str, Any]] = ()
) -> tuple[dict[str, Any], list[Plan]]:  # type: ignore[assignment]
    """Plan and apply until a plan changes nothing (at most 5 rounds), as reconciles would."""
    plans = []
    for _ in range(5):
        result = run(body, jobs, evalruns)
        plans.append(result)
        if is_idle(result, body.get("status") or {}):
            return body, plans
        body = applied(body, result)
    raise AssertionError(f"no steady state: {json.dumps(body['status'])[:2000]}")


def versions(body: dict[str, Any]) -> list[tuple[int, str]]:
    return [(v["version"], v["state"]) for v in body["status"]["versions"]]


def condition(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in body["status"].get("conditions") or [] if c["type"] == ctype), {})


def reasons(plans: list[Plan]) -> list[str]:
    return [e.reason for p in plans for e in p.events]


def test_a_better_second_version_becomes_stable_and_a_worse_third_is_rejected_with_its_reason() -> None:
    first, first_eval = scored_job("first", 0.61, "10:00")
    body, plans = settle(model(), [first], [first_eval])
    assert versions(body) == [(1, "Stable")]
    assert body["status"]["stable"] == 1 and body["status"]["promotions"] == 1
    assert "VersionRegistered" in reasons(plans) and "Promoted" in reasons(plans)

    second, second_eval = scored_job("second", 0.70, "11:00")
    body, plans = settle(body, [first, second], [first_eval, second_eval])
    assert versions(body) == [(1, "Superseded"), (2, "Stable")]
    assert body["status"]["versions"][1]["verdictReason"] == "exact_match 0.7 > stable v1 0.61 + 0.01"

    third, third_eval = scored_job("third", 0.65, "12:00")
    body, plans = settle(body, [first, second, third], [first_eval, second_eval, third_eval])
    assert versions(body) == [(1, "Superseded"), (2, "Stable"), (3, "Rejected")]
    assert body["status"]["versions"][2]["reason"] == "exact_match 0.65 <= stable v2 0.7 + 0.01"
    assert body["status"]["stable"] == 2
    assert [(e.type, e.reason) for p in plans for e in p.events if e.reason == "VersionRejected"] == [
        ("Warning", "VersionRejected")
    ]
    # What the version records: the job's attempt, its provenance and hyperparameters, the scores judged.
    v3 = body["status"]["versions"][2]
    assert v3["fineTuneJob"] == {"name": "third", "uid": "uid-third", "attempt": 1}
    assert v3["provenance"]["datasetSha256"] == "cd" * 32 and v3["hyperparameters"]["objective"] == "sft"
    assert v3["evaluation"]["results"] == [{"benchmark": "qa", "metric": "exact_match", "value": 0.65}]


def test_a_tie_does_not_beat_and_perplexity_must_go_down() -> None:
    first, first_eval = scored_job("first", 0.5, "10:00")
    twin, twin_eval = scored_job("twin", 0.5, "11:00")
    spec = {"promotion": {"mustBeat": {"metric": "exact_match"}}}
    body, _ = settle(model(**spec), [first, twin], [first_eval, twin_eval])
    assert versions(body) == [(1, "Stable"), (2, "Rejected")]
    assert body["status"]["versions"][1]["reason"] == "exact_match 0.5 <= stable v1 0.5 + 0"


def test_versions_outlive_their_jobs_and_re_listing_registers_nothing_twice() -> None:
    first, first_eval = scored_job("first", 0.61)
    second, second_eval = scored_job("second", 0.70, "11:00")
    body, _ = settle(model(), [first, second], [first_eval, second_eval])
    registered = copy.deepcopy(body["status"]["versions"])
    # The same jobs seen again (an operator restart lists them): nothing to do.
    assert is_idle(run(body, [first, second], [first_eval, second_eval]), body["status"])
    # Both jobs deleted (their EvalRuns with them): the versions stay as they were.
    body, _ = settle(body, [])
    assert body["status"]["versions"] == registered
    # A re-created job of the same name is another uid: a new version.
    again = job("first", done="13:00")
    again["metadata"]["uid"] = "uid-first-2"
    body, _ = settle(body, [again], [evalrun("first-eval", again["status"]["adapter"]["uri"], 0.9)])
    assert versions(body)[-1] == (3, "Stable")


def test_a_new_attempt_of_a_job_is_a_new_version() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, _ = settle(model(), [first], [first_eval])
    retrained = job("first", attempt=2, done="12:00")
    body, _ = settle(body, [retrained], [evalrun("first-eval", retrained["status"]["adapter"]["uri"], 0.8)])
    assert [(v["version"], v["fineTuneJob"]["attempt"], v["state"]) for v in body["status"]["versions"]] == [
        (1, 1, "Superseded"),
        (2, 2, "Stable"),
    ]


def test_a_version_waits_for_its_evaluation_and_a_failed_one_is_rejected() -> None:
    first = job("first")
    body, _ = settle(model(), [first])
    assert versions(body) == [(1, "Candidate")]
    assert body["status"]["versions"][0]["reason"] == "waiting for EvalRun first-eval (starting)"
    assert body["status"]["candidate"] == 1 and "stable" not in body["status"]
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoStableVersion")
    failed = evalrun("first-eval", first["status"]["adapter"]["uri"], None, failed="OutOfMemory: lower batchSize")
    body, _ = settle(body, [first], [failed])
    assert versions(body) == [(1, "Rejected")]
    assert body["status"]["versions"][0]["reason"] == "EvalRun first-eval failed: OutOfMemory: lower batchSize"


def test_an_evaluation_of_an_older_adapter_is_not_taken_for_the_new_one() -> None:
    first = job("first", attempt=2)
    stale = evalrun("first-eval", "s3://out/first/attempt-1/adapter/", 0.9)
    body, _ = settle(model(), [first], [stale])
    assert versions(body) == [(1, "Candidate")]


def test_the_model_runs_its_own_gate_evalrun_for_a_job_without_evaluation() -> None:
    gate = {"benchmarks": [BENCH], "thresholds": {"exact_match": 0.3}}
    body = model(promotion={"evaluation": gate, "mustBeat": {"metric": "exact_match"}})
    plain = job("plain", evaluated=False)
    plain["spec"]["output"].update(uri="s3://out", secretRef={"name": "store"})
    result = run(body, [plain])
    created = result.created("EvalRun")
    assert [c["metadata"]["name"] for c in created] == ["support-v1"]
    spec = created[0]["spec"]
    assert spec["model"]["baseModel"]["uri"] == BASE
    assert spec["model"]["adapter"]["uri"] == plain["status"]["adapter"]["uri"]
    assert spec["model"]["quantization"]["bits"] == 4  # loaded as it was trained (qlora)
    assert (spec["outputUri"], spec["outputSecretRef"]) == ("s3://out", {"name": "store"})  # where the job wrote
    assert created[0]["metadata"]["labels"]["finetune.dev/model"] == "support"
    assert created[0]["metadata"]["ownerReferences"][0]["kind"] == "Model"
    body = applied(body, result)
    body, _ = settle(body, [plain], [evalrun("support-v1", plain["status"]["adapter"]["uri"], 0.5)])
    assert versions(body) == [(1, "Stable")]


def test_no_evaluation_is_rejected_unless_the_model_does_not_require_one() -> None:
    plain = job("plain", evaluated=False)
    body, _ = settle(model(promotion={}), [plain])
    assert versions(body) == [(1, "Rejected")]
    assert "spec.promotion.requireEvaluation is true" in body["status"]["versions"][0]["reason"]
    body, _ = settle(model(promotion={"requireEvaluation": False}), [plain])
    assert versions(body) == [(1, "Stable")]


def test_a_job_on_another_base_model_is_rejected_naming_the_field() -> None:
    other = job("other", base="s3://models/other/")
    body, plans = settle(model(), [other])
    assert versions(body) == [(1, "Rejected")]
    assert body["status"]["versions"][0]["reason"].startswith("spec.baseModel.uri is s3://models/tiny-llama/")
    assert "VersionRejected" in reasons(plans)


def test_pin_rolls_back_and_the_serving_configmap_follows() -> None:
    first, first_eval = scored_job("first", 0.61)
    second, second_eval = scored_job("second", 0.70, "11:00")
    jobs, evals = [first, second], [first_eval, second_eval]
    body, plans = settle(model(serving={"configMap": {"name": "support-lora"}}), jobs, evals)
    assert body["status"]["serving"]["version"] == 2
    writes = [a for p in plans for a in p.actions if isinstance(a, Patch) and a.kind == "ConfigMap"]
    assert json.loads(writes[-1].body["data"][STABLE])["version"] == 2
    assert [c["metadata"]["name"] for p in plans for c in p.created("ConfigMap")] == ["support-lora"] * len(writes)

    body["spec"]["pin"] = 1
    body["metadata"]["generation"] = 2
    result = run(body, jobs, evals)
    data = next(a.body["data"] for a in result.actions if isinstance(a, Patch) and a.kind == "ConfigMap")
    assert json.loads(data[LORA_MODULES]) == {"name": "support-v1", "path": "/adapters/support-v1"}
    assert json.loads(data[ADAPTERS]) == {"support-v1": first["status"]["adapter"]["uri"]}
    assert json.loads(data[STABLE])["sha256"] == "ab" * 32
    assert "RolledBack" in [e.reason for e in result.events]
    body, _ = settle(applied(body, result), jobs, evals)
    assert versions(body) == [(1, "Stable"), (2, "Superseded")]
    assert body["status"]["versions"][1]["reason"] == "spec.pin holds stable at v1"
    assert body["status"]["promoted"] == 2  # what removing the pin hands back to

    del body["spec"]["pin"]
    body, _ = settle(body, jobs, evals)
    assert body["status"]["stable"] == 2 and body["status"]["serving"]["version"] == 2


def test_a_pin_to_a_missing_or_rejected_version_is_refused_and_stable_stays() -> None:
    first, first_eval = scored_job("first", 0.61)
    worse, worse_eval = scored_job("worse", 0.2, "11:00")
    body, _ = settle(model(), [first, worse], [first_eval, worse_eval])
    for pin, reason in ((7, "PinNotFound"), (2, "PinRejected")):
        body["spec"]["pin"] = pin
        body, plans = settle(body, [first, worse], [first_eval, worse_eval])
        pinned = next(c for c in body["status"]["conditions"] if c["type"] == "Pinned")
        assert (pinned["status"], pinned["reason"]) == ("False", reason)
        assert pinned["message"].startswith("spec.pin: ")
        assert body["status"]["stable"] == 1
        assert reason in reasons(plans)


def test_manual_promotion_waits_for_a_pin() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, _ = settle(model(promotion={"mode": "Manual"}), [first], [first_eval])
    assert versions(body) == [(1, "Candidate")] and "stable" not in body["status"]
    assert "set spec.pin: 1" in body["status"]["versions"][0]["reason"]
    body["spec"]["pin"] = 1
    body, _ = settle(body, [first], [first_eval])
    assert versions(body) == [(1, "Stable")]


def test_many_jobs_finishing_together_get_distinct_numbers_in_completion_order() -> None:
    jobs = [job(f"j{i:02d}", evaluated=False, done=f"10:{59 - i:02d}") for i in range(20)]
    body, _ = settle(model(promotion={"requireEvaluation": False}), jobs)
    numbers = {v["fineTuneJob"]["name"]: v["version"] for v in body["status"]["versions"]}
    assert sorted(numbers.values()) == list(range(1, 21))
    assert numbers["j19"] == 1 and numbers["j00"] == 20  # the first to finish is v1
    assert body["status"]["latest"] == 20


def test_the_status_write_is_guarded_by_the_resource_version() -> None:
    first, first_eval = scored_job("first", 0.61)
    assert run(model(), [first], [first_eval]).guarded


def test_must_beat_must_name_a_metric_the_gate_computes() -> None:
    with pytest.raises(ValidationError, match=r"mustBeat\.metric must be a metric that some benchmark"):
        ModelSpec.model_validate(
            {
                "baseModel": {"uri": BASE},
                "promotion": {"mustBeat": {"metric": "f1"}, "evaluation": {"benchmarks": [BENCH]}},
            }
        )
    first, first_eval = scored_job("first", 0.6)
    body, _ = settle(model(promotion={"mustBeat": {"metric": "bleu"}}), [first], [first_eval])
    assert versions(body) == [(1, "Rejected")]  # also with no stable version to compare with
    assert body["status"]["versions"][0]["reason"] == (
        "spec.promotion.mustBeat.metric bleu was not computed by EvalRun first-eval"
    )


def publish_job(round_: int, *, complete: bool = True) -> dict[str, Any]:
    condition = {"type": "Complete" if complete else "Failed", "message": "BackoffLimitExceeded"}
    finished = factories.job(conditions=[condition])
    finished["metadata"]["name"] = f"support-publish-{round_}"
    return finished


def publish_pod(round_: int, message: str) -> dict[str, Any]:
    done = factories.pod(phase="Succeeded", terminated={"exitCode": 0, "message": message})
    done["metadata"]["labels"]["batch.kubernetes.io/job-name"] = f"support-publish-{round_}"
    return done


def run_publishing(
    body: dict[str, Any],
    jobs: list[dict[str, Any]],
    evalruns: list[dict[str, Any]],
    children: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    now: datetime = NOW,
) -> Plan:
    runs = {e["metadata"]["name"]: e for e in evalruns}
    return plan(Inputs(body, jobs, runs, OperatorSettings(), ChoreJobs(*children)), now)


def test_a_decided_version_is_published_to_the_store_by_a_pod_without_api_access_then_recorded() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, plans = settle(model(), [first], [first_eval])
    created = [j for p in plans for j in p.created("Job")]
    assert [j["metadata"]["name"] for j in created] == ["support-publish-1"]
    pod_spec = created[0]["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False and "serviceAccountName" not in pod_spec
    container = pod_spec["containers"][0]
    assert container["command"] == ["finetune-trainer", "publish-model"]
    run_spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "FINETUNE_RUN_SPEC"))
    prefix = "s3://finetune/models/team-a/support/"
    assert run_spec["uri"] == prefix and [v["version"] for v in run_spec["versions"]] == [1]
    assert run_spec["stable"]["version"] == 1 and run_spec["stable"]["folder"] == prefix + "v1/"
    env = {e["name"] for e in container["env"]}
    assert {"FINETUNE_OUTPUT_AWS_ACCESS_KEY_ID", "FINETUNE_ADAPTER_0_AWS_ACCESS_KEY_ID"} <= env
    assert body["status"]["store"]["state"] == "Publishing"
    assert condition(body, "Published")["status"] == "Unknown"

    message = factories.result_message(result="succeeded", publishedVersions=[1], stableVersion=1)
    children = ([publish_job(1)], [publish_pod(1, message)])
    done = run_publishing(body, [first], [first_eval], children)
    body = applied(body, done)
    assert body["status"]["versions"][0]["storeUri"] == prefix + "v1/"
    assert body["status"]["store"] | {"updateTime": None} == {
        "uri": prefix,
        "stable": 1,
        "state": "Published",
        "message": f"published v1 under {prefix}; stable.json -> v1",
        "round": 1,
        "failures": 0,
        "updateTime": None,
    }
    assert [e.reason for e in done.events] == ["VersionsPublished"] and done.deleted("Job") == ["support-publish-1"]
    assert condition(body, "Published")["status"] == "True"
    assert not run_publishing(body, [first], [first_eval], ([], [])).created("Job"), "nothing left to publish"


def test_a_failed_publish_is_named_and_retried_after_a_growing_backoff() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, _ = settle(model(), [first], [first_eval])
    message = factories.result_message(result="failed", reason="StorageUnavailable", message="connection refused")
    failed = run_publishing(body, [first], [first_eval], ([publish_job(1, complete=False)], [publish_pod(1, message)]))
    body = applied(body, failed)
    store = body["status"]["store"]
    assert store["state"] == "Failed" and store["failures"] == 1
    assert "StorageUnavailable: connection refused" in store["message"]
    assert condition(body, "Published") | {"lastTransitionTime": None, "observedGeneration": None} == {
        "type": "Published",
        "status": "False",
        "reason": "PublishFailed",
        "message": store["message"],
        "lastTransitionTime": None,
        "observedGeneration": None,
    }
    assert [e.reason for e in failed.events] == ["PublishFailed"] and failed.recheck_after == 30
    soon = run_publishing(body, [first], [first_eval], ([], []), NOW + timedelta(seconds=10))
    assert not soon.created("Job") and soon.recheck_after == pytest.approx(20)
    later = run_publishing(body, [first], [first_eval], ([], []), NOW + timedelta(seconds=31))
    assert [j["metadata"]["name"] for j in later.created("Job")] == ["support-publish-2"]
    assert backoff(2) == 60 and backoff(20) == 3600


def test_the_stable_version_is_published_first_and_undecided_versions_wait() -> None:
    def version(number: int, verdict: str | None) -> ModelVersion:
        return ModelVersion.model_validate(
            {
                "version": number,
                "adapter": {"uri": f"s3://out/{number}/"},
                "fineTuneJob": {"name": "j", "uid": "u", "attempt": 1},
                "baseModel": BASE,
                "datasetUri": "s3://d",
                "hyperparameters": {
                    "objective": "sft",
                    "method": "qlora",
                    "learningRate": 0.0002,
                    "batchSize": 1,
                    "gradientAccumulationSteps": 1,
                    "maxSeqLength": 64,
                    "seed": 1,
                },
                "verdict": verdict,
                "state": "Candidate",
                "reason": "r",
                "registeredTime": "2026-12-01T10:00:00Z",
                "storeUri": "s3://s/v1/" if number == 1 else None,
            }
        )

    every = [version(1, "Passed"), version(2, "Rejected"), version(3, None), version(4, "Passed")]
    assert [v.version for v in unpublished(every, "s3://s/", 4)] == [4, 2]
    assert [v.version for v in unpublished(every, "s3://other/", 4)] == [4, 1, 2], "a new store gets every one"


def test_a_model_with_its_store_copy_turned_off_runs_no_pod() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, plans = settle(model(store={"enabled": False}), [first], [first_eval])
    assert not [j for p in plans for j in p.created("Job")] and "store" not in body["status"]
    assert condition(body, "Published") == {}


def llmisvc(adapters: list[dict[str, str]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": BASE, "name": "support"}}
    if adapters is not None:
        spec["model"]["lora"] = {"adapters": adapters}
    return {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService", "spec": spec}


def run_kserve(body: dict[str, Any], jobs: list[dict[str, Any]], evalruns: list[dict[str, Any]], service: Any) -> Plan:
    runs = {e["metadata"]["name"]: e for e in evalruns}
    return plan(Inputs(body, jobs, runs, OperatorSettings(), llm_inference_service=service), NOW)


def test_an_llminferenceservice_target_gets_the_stable_adapter_and_follows_a_pin() -> None:
    target = {"llmInferenceService": {"name": "support-llm"}}
    assert observe(model(serving=target)) == [("LLMInferenceService", "support-llm")]
    assert observe(model()) == [] and observe(model(serving={"llmInferenceService": {"name": 7}})) == []
    first, first_eval = scored_job("first", 0.61)
    second, second_eval = scored_job("second", 0.70, "11:00")
    jobs, evals = [first, second], [first_eval, second_eval]
    body, _ = settle(model(serving=target, store={"enabled": False}), jobs, evals)
    wrote = run_kserve(body, jobs, evals, llmisvc())
    assert wrote.patches("LLMInferenceService") == [
        (
            "support-llm",
            {
                "spec": {
                    "model": {"lora": {"adapters": [{"name": "support-v2", "uri": second["status"]["adapter"]["uri"]}]}}
                }
            },
        )
    ]
    assert "LLMInferenceService support-llm now serves v2" in [e.message for e in wrote.events]
    body = applied(body, wrote)
    assert body["status"]["serving"]["llmInferenceService"]["version"] == 2
    assert condition(body, "Ready")["message"] == "v2 is stable; LLMInferenceService support-llm serves it"
    shown = llmisvc([{"name": "support-v2", "uri": second["status"]["adapter"]["uri"]}])
    again = run_kserve(body, jobs, evals, shown)
    assert is_idle(again, body["status"]), "it shows stable: nothing to write"

    body["spec"]["pin"], body["metadata"]["generation"] = 1, 2
    pinned = run_kserve(body, jobs, evals, shown)
    [(_, patch)] = pinned.patches("LLMInferenceService")
    assert patch["spec"]["model"]["lora"]["adapters"] == [
        {"name": "support-v1", "uri": first["status"]["adapter"]["uri"]}
    ]


def test_a_missing_llminferenceservice_is_named_and_looked_for_again_while_the_registry_goes_on() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, plans = settle(
        model(serving={"llmInferenceService": {"name": "absent"}}, store={"enabled": False}), [first], [first_eval]
    )
    assert body["status"]["stable"] == 1, "the registry does not wait for a serving target"
    assert not [p for p in plans if p.patches("LLMInferenceService")] and plans[-1].recheck_after == 30
    ready = condition(body, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ServingTargetMissing")
    assert ready["message"].startswith("spec.serving.llmInferenceService: LLMInferenceService absent was not found")
    assert body["status"]["serving"]["llmInferenceService"] == {"name": "absent"}


def test_a_publish_pod_that_cannot_start_says_why_while_its_round_lasts() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, _ = settle(model(), [first], [first_eval])
    running = factories.job(active=1)
    running["metadata"]["name"] = "support-publish-1"
    waiting = factories.pod(waiting={"reason": "CreateContainerConfigError", "message": 'secret "minio" not found'})
    waiting["metadata"]["labels"]["batch.kubernetes.io/job-name"] = "support-publish-1"
    result = run_publishing(body, [first], [first_eval], ([running], [waiting]))
    store = applied(body, result)["status"]["store"]
    assert store["state"] == "Publishing"
    assert store["message"] == (
        'publish pod support-bot-0f1e2-1-abcde waits: CreateContainerConfigError: secret "minio" not found'
    )


def test_a_new_store_uri_publishes_everything_again_under_new_job_names() -> None:
    first, first_eval = scored_job("first", 0.61)
    body, _ = settle(model(), [first], [first_eval])
    message = factories.result_message(result="succeeded", publishedVersions=[1], stableVersion=1)
    body = applied(body, run_publishing(body, [first], [first_eval], ([publish_job(1)], [publish_pod(1, message)])))
    body["spec"]["store"] = {"uri": "s3://elsewhere"}
    body["metadata"]["generation"] = 2
    moved = run_publishing(body, [first], [first_eval], ([], []))
    [created] = moved.created("Job")
    assert created["metadata"]["name"] == "support-publish-2"
    assert moved.status["store"]["uri"] == "s3://elsewhere/models/team-a/support/"
