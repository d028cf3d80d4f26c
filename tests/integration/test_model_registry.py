"""The model registry on the real control plane and node: FineTuneJobs publish into a Model, the gate
promotes or rejects each version on its evaluation, spec.pin rolls back, and the serving ConfigMap follows.

The trainer and evaluation pods run the stand-in trainer (its eval-score-<x> scenario reports
exact_match x), so what is tested is the operator's registry, not the quality of any model: the
scores are chosen, the decisions and the API objects are real.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import KSERVE_CRDS, apply_objects, install_crds, wait_for
from finetune_operator.api import MODEL
from tests.integration.conftest import GROUP, VERSION, Kube, quick_spec
from tests.plugin_runner import kubectl_finetune

pytestmark = pytest.mark.cluster
BASE = "file:///models/tiny"


def apply_model(kube: Kube, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Model",
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": {"baseModel": {"uri": BASE}, "store": {"uri": "file:///tmp/store"}, **spec},
    }
    apply_objects(kube.api, [body])


def model_status(kube: Kube, name: str) -> dict[str, Any]:
    body = kube.custom.get_namespaced_custom_object(GROUP, VERSION, kube.namespace, MODEL.plural, name)
    return dict(body.get("status") or {})


def wait_model(kube: Kube, name: str, what: str, check: Any, timeout: float = 90) -> dict[str, Any]:
    return wait_for(
        lambda: (s := model_status(kube, name)) and check(s) and s,
        timeout,
        f"Model {name}: {what}",
        describe=lambda: json.dumps(model_status(kube, name))[:3000],
    )


def scored_job(score: float, model: str) -> dict[str, Any]:
    benchmark = {
        "name": "qa",
        "task": "qa",
        "metrics": ["exact_match"],
        "dataset": {"uri": f"file:///scenario/eval-score-{score}"},
    }
    return quick_spec(
        "success", output={"uri": "file:///tmp/adapters", "model": model}, evaluation={"benchmarks": [benchmark]}
    )


def states(status: dict[str, Any]) -> list[tuple[int, str]]:
    return [(v["version"], v["state"]) for v in status.get("versions") or []]


def configmap(kube: Kube, name: str) -> dict[str, str] | None:
    try:
        return dict(client.CoreV1Api(kube.api).read_namespaced_config_map(name, kube.namespace).data or {})
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def published(status: dict[str, Any]) -> tuple[int | None, list[int]] | None:
    """(the version stable.json points at, the versions with a store folder) once no publish is at work."""
    store = status.get("store") or {}
    if store.get("state") != "Published":
        return None
    return store.get("stable"), [v["version"] for v in status.get("versions") or [] if v.get("storeUri")]


def llm_inference_service(kube: Kube, name: str) -> None:
    """A KServe LLMInferenceService on the Model's base, as a user writes one (KServe's own CRD, vendored in
    hack/kserve/; its controller is not run, so what is shown is the object the operator writes)."""
    install_crds(kube.api, KSERVE_CRDS)
    body = {
        "apiVersion": "serving.kserve.io/v1alpha2",
        "kind": "LLMInferenceService",
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": {"model": {"uri": BASE, "name": name}, "replicas": 1},
    }
    apply_objects(kube.api, [body])


def lora_adapters(kube: Kube, name: str) -> list[dict[str, Any]] | None:
    body = kube.custom.get_namespaced_custom_object(
        "serving.kserve.io", "v1alpha2", kube.namespace, "llminferenceservices", name
    )
    return (((body.get("spec") or {}).get("model") or {}).get("lora") or {}).get("adapters")


def test_promotion_rejection_rollback_and_serving(kube: Kube) -> None:
    llm_inference_service(kube, "support-llm")
    apply_model(
        kube,
        "support",
        promotion={"mustBeat": {"metric": "exact_match", "margin": 0.01}},
        serving={"configMap": {"name": "support-lora"}, "llmInferenceService": {"name": "support-llm"}},
    )
    kube.apply_ftj("first", scored_job(0.61, "support"))
    wait_model(kube, "support", "v1 stable", lambda s: s.get("stable") == 1)
    kube.apply_ftj("second", scored_job(0.70, "support"))
    status = wait_model(kube, "support", "v2 stable", lambda s: s.get("stable") == 2)
    assert states(status) == [(1, "Superseded"), (2, "Stable")]
    assert status["versions"][1]["verdictReason"] == "exact_match 0.7 > stable v1 0.61 + 0.01"
    kube.apply_ftj("third", scored_job(0.65, "support"))
    status = wait_model(
        kube, "support", "v3 decided", lambda s: len(states(s)) == 3 and s["versions"][2].get("verdict")
    )
    assert states(status) == [(1, "Superseded"), (2, "Stable"), (3, "Rejected")]
    assert status["versions"][2]["reason"] == "exact_match 0.65 <= stable v2 0.7 + 0.01"
    assert status["stable"] == 2
    events = kube.kubectl(
        "get", "events", "--field-selector", "involvedObject.kind=Model,reason=VersionRejected"
    ).stdout
    assert "v3: exact_match 0.65 <= stable v2 0.7 + 0.01" in events
    served = configmap(kube, "support-lora")
    assert served is not None and json.loads(served["stable.json"])["version"] == 2
    second_adapter = status["versions"][1]["adapter"]["uri"]
    assert lora_adapters(kube, "support-llm") == [{"name": "support-v2", "uri": second_adapter}]

    # The store copy: a publish pod per round (the stand-in reports, the real one writes: tests/e2e),
    # every decided version recorded with its folder, stable.json at the stable version.
    status = wait_model(kube, "support", "store copy", lambda s: published(s) == (2, [1, 2, 3]))
    prefix = status["store"]["uri"]
    assert prefix == f"file:///tmp/store/models/{kube.namespace}/support/"
    assert [v["storeUri"] for v in status["versions"]] == [f"{prefix}v{n}/" for n in (1, 2, 3)]
    assert condition(status, "Published")["reason"] == "StorePublished"

    # kubectl get model tells the story; a pin rolls back, and the ConfigMap follows within seconds.
    table = kube.kubectl("get", "ftm", "support").stdout.split("\n")
    assert table[0].split() == ["NAME", "STABLE", "CANDIDATE", "VERSIONS", "AGE"]
    assert table[1].split()[:3] == ["support", "2", "3"]  # no candidate: that column is blank
    # `kubectl finetune` checks a pin before writing it, as the operator would judge it.
    rejected = kubectl_finetune(kube.kubeconfig, "promote", "model/support", "v3", "-n", kube.namespace)
    assert rejected.returncode == 1
    assert rejected.stderr.strip() == (
        "error: spec.pin: v3 was rejected (exact_match 0.65 <= stable v2 0.7 + 0.01); pin a version that passed"
    )
    pinned_at = time.monotonic()
    # rollback with no version: the one stable before v2, written as spec.pin (what GitOps users see).
    rollback = kubectl_finetune(kube.kubeconfig, "rollback", "model/support", "-n", kube.namespace)
    assert (rollback.returncode, rollback.stdout) == (0, "model/support pinned to v1 (spec.pin)\nstable is v1\n"), (
        rollback.stderr
    )
    assert (
        kube.custom.get_namespaced_custom_object(GROUP, VERSION, kube.namespace, "models", "support")["spec"]["pin"]
        == 1
    )
    wait_for(
        lambda: json.loads((configmap(kube, "support-lora") or {})["stable.json"])["version"] == 1, 30, "v1 served"
    )
    followed = time.monotonic() - pinned_at
    wait_for(lambda: (lora_adapters(kube, "support-llm") or [{}])[0].get("name") == "support-v1", 30, "v1 on KServe")
    kserve_followed = time.monotonic() - pinned_at
    first_adapter = status["versions"][0]["adapter"]["uri"]
    served = configmap(kube, "support-lora") or {}
    assert json.loads(served["adapters.json"]) == {"support-v1": first_adapter}
    assert json.loads(served["lora-modules.json"]) == {"name": "support-v1", "path": "/adapters/support-v1"}
    status = model_status(kube, "support")
    assert states(status) == [(1, "Stable"), (2, "Superseded"), (3, "Rejected")]
    print(
        f"the serving ConfigMap followed spec.pin in {followed:.1f} s, "
        f"the LLMInferenceService in {kserve_followed:.1f} s"
    )
    assert condition(status, "Ready")["message"] == (
        "v1 is stable; ConfigMap support-lora and LLMInferenceService support-llm serve it"
    )
    wait_model(kube, "support", "stable.json at v1", lambda s: published(s) == (1, [1, 2, 3]))

    # Deleting the jobs (and with them their EvalRuns) leaves every version as it was.
    before = status["versions"]
    for name in ("first", "second", "third"):
        kube.kubectl("delete", "ftj", name, "--wait=true")
    time.sleep(3)
    assert model_status(kube, "support")["versions"] == before

    # promote names a version; unpin hands stable back to the gate, whose latest promotion was v2.
    promote = kubectl_finetune(kube.kubeconfig, "promote", "model/support", "v2", "-n", kube.namespace)
    assert (promote.returncode, promote.stdout) == (0, "model/support pinned to v2 (spec.pin)\nstable is v2\n")
    kube.kubectl("patch", "ftm", "support", "--type=merge", "-p", '{"spec": {"pin": 1}}')
    wait_model(kube, "support", "v1 pinned again", lambda s: s.get("stable") == 1)
    unpin = kubectl_finetune(kube.kubeconfig, "unpin", "model/support", "-n", kube.namespace)
    assert unpin.returncode == 0, unpin.stderr
    wait_model(kube, "support", "the gate's v2 back", lambda s: s.get("stable") == 2)
    shown = kubectl_finetune(kube.kubeconfig, "get", "model", "-n", kube.namespace).stdout.splitlines()
    assert shown[1].split()[:3] == ["ftm/support", "2", "3"]  # stable v2, no candidate (blank), 3 versions


def test_twenty_jobs_finishing_together_get_twenty_distinct_versions(kube: Kube) -> None:
    apply_model(kube, "many", promotion={"requireEvaluation": False})
    lean = {"gpus": 0, "cpu": "80m", "memory": "192Mi"}  # all twenty fit the 2-core node at once
    bodies = [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FineTuneJob",
            "metadata": {"name": f"burst-{i:02d}", "namespace": kube.namespace},
            "spec": quick_spec("success", resources=lean, output={"uri": "file:///tmp/adapters", "model": "many"}),
        }
        for i in range(20)
    ]
    apply_objects(kube.api, bodies)
    status = wait_model(kube, "many", "20 versions", lambda s: len(s.get("versions") or []) == 20, timeout=240)
    numbers = sorted(v["version"] for v in status["versions"])
    jobs = sorted(v["fineTuneJob"]["name"] for v in status["versions"])
    assert numbers == list(range(1, 21))
    assert jobs == sorted(b["metadata"]["name"] for b in bodies)
    times = sorted(kube.status(f"burst-{i:02d}")["completionTime"] for i in range(20))
    print(f"20 jobs finished between {times[0]} and {times[-1]}; versions 1-20, each job once")
    time.sleep(3)  # nothing registers twice on later events
    assert len(model_status(kube, "many")["versions"]) == 20


def test_bad_registry_input_is_refused_or_named(kube: Kube) -> None:
    # Admission: mustBeat names a metric that no benchmark of the gate's evaluation computes.
    with pytest.raises(ApiException) as refused:
        apply_model(
            kube,
            "bad-metric",
            promotion={
                "mustBeat": {"metric": "f1"},
                "evaluation": {
                    "benchmarks": [
                        {
                            "name": "qa",
                            "task": "qa",
                            "metrics": ["exact_match"],
                            "dataset": {"uri": "file:///scenario/eval-pass"},
                        }
                    ]
                },
            },
        )
    assert "spec.promotion.mustBeat.metric" in refused.value.body
    with pytest.raises(ApiException) as refused:
        apply_model(kube, "bad-pin", pin=0)
    assert "spec.pin" in refused.value.body

    # A pin to a version that does not exist: a condition naming spec.pin, and nothing moves.
    apply_model(kube, "pinned", pin=3, promotion={"requireEvaluation": False})
    status = wait_model(kube, "pinned", "Pinned", lambda s: any(c["type"] == "Pinned" for c in s.get("conditions", [])))
    pinned = next(c for c in status["conditions"] if c["type"] == "Pinned")
    assert (pinned["status"], pinned["reason"]) == ("False", "PinNotFound")
    assert pinned["message"] == "spec.pin: version 3 does not exist (there are none yet); stable stays"

    # A job on another base model is registered Rejected, the reason naming spec.baseModel.uri.
    apply_model(kube, "other-base", promotion={"requireEvaluation": False})
    spec = quick_spec("success", output={"uri": "file:///tmp/adapters", "model": "other-base"})
    spec["baseModel"] = {"uri": "file:///models/another"}
    kube.apply_ftj("elsewhere", spec)
    status = wait_model(kube, "other-base", "v1 rejected", lambda s: states(s) == [(1, "Rejected")])
    assert status["versions"][0]["reason"].startswith(
        "spec.baseModel.uri is file:///models/tiny, but FineTuneJob elsewhere adapted file:///models/another"
    )
    assert "stable" not in status

    # A store the publish pod cannot write: Published=False names the trainer's reason; the registry and
    # its stable version are not held up by it.
    apply_model(kube, "unpublished", promotion={"requireEvaluation": False}, store={"uri": "file:///tmp/publish-fail"})
    kube.apply_ftj("stored", quick_spec("success", output={"uri": "file:///tmp/adapters", "model": "unpublished"}))
    status = wait_model(
        kube, "unpublished", "publish failed", lambda s: (s.get("store") or {}).get("state") == "Failed"
    )
    failed = condition(status, "Published")
    assert (failed["status"], failed["reason"]) == ("False", "PublishFailed")
    assert "StorageUnavailable: file:///tmp/publish-fail/models/" in failed["message"]
    assert status["stable"] == 1 and status["store"]["failures"] >= 1

    # A serving target that does not exist yet: Ready=False names it, the registry goes on, and the
    # target gets the stable adapter once it is created (looked for again every 30 s).
    apply_model(
        kube, "served-later", promotion={"requireEvaluation": False}, serving={"llmInferenceService": {"name": "later"}}
    )
    kube.apply_ftj("for-later", quick_spec("success", output={"uri": "file:///tmp/adapters", "model": "served-later"}))
    status = wait_model(kube, "served-later", "v1 stable, target missing", lambda s: s.get("stable") == 1)
    missing = condition(status, "Ready")
    assert (missing["status"], missing["reason"]) == ("False", "ServingTargetMissing")
    assert "spec.serving.llmInferenceService: LLMInferenceService later was not found" in missing["message"]
    created_at = time.monotonic()
    llm_inference_service(kube, "later")
    wait_for(lambda: lora_adapters(kube, "later"), 60, "the late LLMInferenceService to get v1")
    print(f"a target created late got the stable adapter after {time.monotonic() - created_at:.0f} s")
