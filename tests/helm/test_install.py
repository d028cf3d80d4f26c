"""The chart installed with real helm on the local cluster's real node: the operator runs as the chart's
pod, a container of the image built from Dockerfile.operator, with the chart's ServiceAccount and RBAC
(its projected token, not an admin's), the kubelet probing its /healthz; and the quickstart succeeds.

Then the least-privilege proof: each rule of the chart's ClusterRole is removed in turn, the operator
restarted, and the behaviour that rule exists for is shown to break (docs/architecture.md lists the
mapping); with the rules restored, every job left waiting completes.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import KSERVE_CRDS, apply_objects, install_crds, wait_for
from devcluster.quickstart import EXAMPLE, OPERATOR_NAMESPACE, RELEASE, Quickstart
from finetune_operator.api import EVALRUN, FINETUNEJOB, MODEL
from tests.helm.test_chart import ALL_OPTIONS, CHART

EVALUATION_EXAMPLE = EXAMPLE.parents[1] / "evaluation" / "finetunejob-with-evaluation.yaml"

pytestmark = pytest.mark.cluster
NAMESPACE = OPERATOR_NAMESPACE
ROLE = f"{RELEASE}-finetune-operator"


@dataclass
class Installed:
    demo: Quickstart

    @property
    def api(self) -> client.ApiClient:
        assert self.demo.cluster
        return self.demo.cluster.api()

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.demo.helm(*args)
        assert not check or result.returncode == 0, f"helm {' '.join(args[:2])}: {result.stderr}"
        return result

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.demo.kubectl(*args, stdin=stdin)

    def operator_pods(self) -> list[client.V1Pod]:
        core = client.CoreV1Api(self.api)
        return list(
            core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=finetune-operator").items
        )

    def healthy(self) -> bool:
        """An operator pod that the kubelet's readiness probe (GET /healthz) finds ready."""
        return any(
            pod.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            for pod in self.operator_pods()
        )

    def restart_operator(self) -> None:
        core = client.CoreV1Api(self.api)
        for pod in self.operator_pods():
            core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)
        wait_for(lambda: not self.healthy(), 30, "the old operator pod to stop")
        wait_for(self.healthy, 90, "the restarted operator pod to be ready")

    def apply_model(self, name: str, *, kserve: bool = False) -> None:
        """A Model that promotes without evaluation and writes a serving ConfigMap `<name>-lora` (with
        `kserve`, also the LoRA adapters of an LLMInferenceService `<name>-llm`, created here)."""
        base = yaml.safe_load(EXAMPLE.read_text())["spec"]["baseModel"]
        serving: dict[str, Any] = {"configMap": {"name": f"{name}-lora"}}
        objects: list[dict[str, Any]] = []
        if kserve:
            serving["llmInferenceService"] = {"name": f"{name}-llm"}
            objects.append(llm_inference_service(f"{name}-llm", base["uri"]))
        body = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "Model",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"baseModel": base, "promotion": {"requireEvaluation": False}, "serving": serving},
        }
        apply_objects(self.api, [*objects, body])

    def lora_adapters(self, name: str) -> list[dict[str, Any]] | None:
        body = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "serving.kserve.io", "v1alpha2", "default", "llminferenceservices", name
        )
        return (((body.get("spec") or {}).get("model") or {}).get("lora") or {}).get("adapters")

    def model_status(self, name: str) -> dict[str, Any]:
        body = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", "default", MODEL.plural, name
        )
        return dict(body.get("status") or {})

    def apply_job(
        self, name: str, *, evaluation: bool = False, nodes: int = 1, model: str | None = None, **training: Any
    ) -> None:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": name, "namespace": "default"}
        if model:
            body["spec"].setdefault("output", {})["model"] = model
        body["spec"]["training"].update(training)
        body["spec"]["resources"]["cpu"] = "500m"  # three probes at a time on a 2-core node
        body["spec"]["resources"]["nodes"] = nodes
        if evaluation:
            with_evaluation = yaml.safe_load((EVALUATION_EXAMPLE).read_text())
            body["spec"]["evaluation"] = with_evaluation["spec"]["evaluation"]
        apply_objects(self.api, [body])

    def apply_schedule(self, name: str) -> None:
        """A FineTuneSchedule whose run-now annotation asks for one run, `<name>-1`, of the quickstart job."""
        template = yaml.safe_load(EXAMPLE.read_text())["spec"]
        template["training"].update(maxSteps=10, saveSteps=10)
        template["resources"]["cpu"] = "500m"
        body = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneSchedule",
            "metadata": {"name": name, "namespace": "default", "annotations": {"finetune.dev/run-now": "probe"}},
            "spec": {"jobTemplate": {"spec": template}},
        }
        apply_objects(self.api, [body])

    def exists(self, name: str) -> bool:
        try:
            self.status(name)
        except ApiException:
            return False
        return True

    def status(self, name: str) -> dict[str, Any]:
        body = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", "default", FINETUNEJOB.plural, name
        )
        return dict(body.get("status") or {})


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    demo = Quickstart(tmp_path_factory.mktemp("helm")).start(say=lambda _: None, run_operator=False)
    setup = Installed(demo)
    result = demo.install_chart()
    assert result.returncode == 0, f"{result.stderr}\n{setup.kubectl('-n', NAMESPACE, 'describe', 'pods').stdout}"
    wait_for(setup.healthy, 60, "the chart-installed operator to be ready")
    yield setup
    demo.stop()


def test_quickstart_succeeds_through_the_chart_installed_operator(installed: Installed) -> None:
    installed.demo.apply_example()
    status = wait_for(
        lambda: (s := installed.status("quickstart")).get("phase") in {"Succeeded", "Failed"} and s,
        240,
        "the quickstart to finish",
        describe=lambda: str(installed.status("quickstart")),
    )
    assert status["phase"] == "Succeeded", status
    assert status["adapter"]["uri"].startswith("s3://finetune-demo/adapters/default/quickstart/")
    # It ran as the chart's ServiceAccount, not as an admin.
    who = installed.kubectl(
        "auth", "can-i", "create", "secrets", "--as", f"system:serviceaccount:{NAMESPACE}:{ROLE}", "-n", "default"
    )
    assert who.stdout.strip() == "no"


def test_every_rendered_manifest_passes_server_side_validation(installed: Installed) -> None:
    rendered = installed.helm("template", "dry", str(CHART), "--namespace", "ops", "-f", str(ALL_OPTIONS)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    # ServiceMonitor and ClusterKopfPeering need CRDs that a dry run does not create.
    kept = [d for d in docs if d["kind"] not in {"ServiceMonitor", "ClusterKopfPeering"}]
    installed.kubectl("create", "namespace", "ops")
    result = installed.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(kept))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(kept)


def _has_job(installed: Installed, name: str) -> bool:
    jobs = client.BatchV1Api(installed.api).list_namespaced_job("default").items
    return any(j.metadata.name.startswith(f"{name}-") for j in jobs)


def _check_done(installed: Installed, schedule: str) -> bool:
    jobs = client.BatchV1Api(installed.api).list_namespaced_job("default").items
    return any(
        j.metadata.name.startswith(f"{schedule}-") and "-check-" in j.metadata.name and (j.status.succeeded or 0) >= 1
        for j in jobs
    )


def _has_evalrun(installed: Installed, name: str) -> bool:
    try:
        client.CustomObjectsApi(installed.api).get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", "default", EVALRUN.plural, name
        )
    except ApiException:
        return False
    return True


def _events(installed: Installed, name: str) -> list[Any]:
    events = (
        client.CoreV1Api(installed.api)
        .list_namespaced_event("default", field_selector=f"involvedObject.kind=FineTuneJob,involvedObject.name={name}")
        .items
    )
    return list(events)


def llm_inference_service(name: str, base_uri: str) -> dict[str, Any]:
    """A KServe LLMInferenceService as a user writes one (KServe's own CRD; its controller is not run)."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha2",
        "kind": "LLMInferenceService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"model": {"uri": base_uri, "name": name}},
    }


def _has_configmap(installed: Installed, name: str) -> bool:
    try:
        client.CoreV1Api(installed.api).read_namespaced_config_map(name, "default")
    except ApiException:
        return False
    return True


def _never(probe: Any, seconds: float) -> bool:
    try:
        wait_for(probe, seconds, "something that must not happen")
    except TimeoutError:
        return True
    return False


# What breaks without each rule: (a word of the rule's resources, optionally `:<verb>` the rule must grant,
# what to check, what it means).
BREAKS = [
    (f"{FINETUNEJOB.plural}:watch", "no-status", "the operator never sees FineTuneJobs"),
    (f"{FINETUNEJOB.plural}/status", "no-status", "status (phase, conditions, adapter) is never written"),
    (f"{FINETUNEJOB.plural}/finalizers", "no-job", "children with blockOwnerDeletion are refused, so no Job"),
    (EVALRUN.plural, "no-evalrun", "spec.evaluation never gets its EvalRun"),
    ("jobs", "no-job", "no trainer Job"),
    ("pods", "no-success", "pod outcomes are invisible: the job never reaches Succeeded"),
    ("serviceaccounts", "no-job", "no trainer identity, so no Job"),
    ("roles", "no-job", "no trainer Role/RoleBinding, so no Job"),
    ("services", "no-group-job", "a two-node job gets no headless Service for its pods' names, so no Job"),
    ("events", "no-events", "the job succeeds but no Kubernetes Events are recorded"),
    (MODEL.plural, "no-status", "kopf cannot list Models, and it runs no handler before every index is filled"),
    (f"{FINETUNEJOB.plural}:create", "no-run", "a FineTuneSchedule's check finds a run due, but no run starts"),
    ("configmaps", "no-configmap", "a Model's serving ConfigMap is never written"),
    ("llminferenceservices", "no-llmisvc", "a Model's LLMInferenceService never gets the stable adapter"),
]


MODEL_RULES = {MODEL.plural, "configmaps", "llminferenceservices"}
"""The probes of these rules also apply a Model with a serving ConfigMap, which the job publishes into."""
KSERVE_RULES = {"llminferenceservices"}
"""Their Model also has an LLMInferenceService target (KServe's CRD is installed for it)."""


def test_removing_any_rule_breaks_a_named_behaviour(installed: Installed) -> None:
    rbac = client.RbacAuthorizationV1Api(installed.api)
    full = rbac.read_cluster_role(ROLE)
    full_rules = [installed.api.sanitize_for_serialization(r) for r in full.rules]
    assert len(full_rules) == len(BREAKS), json.dumps(full_rules)
    install_crds(installed.api, KSERVE_CRDS)
    seen = []
    try:
        for index, (word, symptom, meaning) in enumerate(BREAKS):
            # The rule for exactly this resource if there is one (evalruns: create/delete), else the first naming
            # it; either granting the verb, if one is given.
            resource, _, verb = word.partition(":")
            grants = [r for r in full_rules if not verb or verb in r["verbs"]]
            rule = next((r for r in grants if r["resources"] == [resource]), None) or next(
                r for r in grants if resource in r["resources"]
            )
            reduced = [r for r in full_rules if r is not rule]
            rbac.patch_cluster_role(ROLE, {"rules": reduced})
            installed.restart_operator()
            name = f"probe-{index}"
            nodes = 2 if symptom == "no-group-job" else 1
            model = name if word in MODEL_RULES else None
            if model:
                installed.apply_model(model, kserve=word in KSERVE_RULES)
            if symptom == "no-run":
                installed.apply_schedule(name)
            else:
                installed.apply_job(
                    name, evaluation=symptom == "no-evalrun", nodes=nodes, model=model, maxSteps=10, saveSteps=10
                )
            if symptom == "no-run":
                # Once the check pod has found the run due (its Job succeeded), the run would follow at once.
                wait_for(lambda n=name: _check_done(installed, n), 120, f"{name}'s check to finish")
                assert _never(lambda n=name: installed.exists(f"{n}-1"), 15), meaning
            elif symptom == "no-status":
                assert _never(lambda n=name: installed.status(n), 15), meaning
            elif symptom in {"no-job", "no-group-job"}:
                assert _never(lambda n=name: _has_job(installed, n), 15), meaning
            elif symptom == "no-evalrun":
                wait_for(lambda n=name: installed.status(n).get("phase") == "Succeeded", 120, f"{name} to succeed")
                assert _never(lambda n=name: _has_evalrun(installed, f"{n}-eval"), 15), meaning
            elif symptom == "no-configmap":
                wait_for(lambda n=name: installed.status(n).get("phase") == "Succeeded", 120, f"{name} to succeed")
                assert _never(lambda n=name: _has_configmap(installed, f"{n}-lora"), 15), meaning
            elif symptom == "no-llmisvc":
                wait_for(lambda n=name: installed.status(n).get("phase") == "Succeeded", 120, f"{name} to succeed")
                assert _never(lambda n=name: installed.lora_adapters(f"{n}-llm"), 15), meaning
            elif symptom == "no-success":
                assert _never(lambda n=name: installed.status(n).get("phase") == "Succeeded", 40), meaning
            else:
                wait_for(lambda n=name: installed.status(n).get("phase") == "Succeeded", 120, f"{name} to succeed")
                assert _events(installed, name) == [], meaning
            seen.append((", ".join(rule["resources"]), meaning))
    finally:
        rbac.patch_cluster_role(ROLE, {"rules": copy.deepcopy(full_rules)})
        installed.restart_operator()
    # With every rule back, the jobs that were stuck complete: the failures were the missing rules.
    for index, (word, symptom, _) in enumerate(BREAKS):
        job = f"probe-{index}-1" if symptom == "no-run" else f"probe-{index}"
        if word in MODEL_RULES:
            wait_for(
                lambda n=f"probe-{index}": _has_configmap(installed, f"{n}-lora"),
                120,
                f"probe-{index}'s Model to write its ConfigMap once the rules are restored",
                describe=lambda n=f"probe-{index}": str(installed.model_status(n)),
            )
        if word in KSERVE_RULES:
            wait_for(
                lambda n=f"probe-{index}": installed.lora_adapters(f"{n}-llm"),
                120,
                f"probe-{index}'s LLMInferenceService to get the stable adapter once the rules are restored",
                describe=lambda n=f"probe-{index}": str(installed.model_status(n)),
            )
        wait_for(
            lambda n=job: installed.exists(n) and installed.status(n).get("phase") == "Succeeded",
            240,
            f"{job} to succeed once the rules are restored",
            describe=lambda n=job: str(installed.status(n)) if installed.exists(n) else "not created",
        )
    print("\n".join(f"without [{resources}]: {meaning}" for resources, meaning in seen))


def test_uninstall_keeps_the_crds_and_the_jobs(installed: Installed) -> None:
    installed.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
    extensions = client.ApiextensionsV1Api(installed.api)
    assert extensions.read_custom_resource_definition(FINETUNEJOB.crd_name)
    assert installed.status("quickstart")["phase"] == "Succeeded"
    with pytest.raises(ApiException):
        client.AppsV1Api(installed.api).read_namespaced_deployment(ROLE, NAMESPACE)
