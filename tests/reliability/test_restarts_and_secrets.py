"""Faults and least privilege on the real control plane: operator crashes during a burst lose nothing,
a planted credential appears nowhere the operator writes, and secrets cannot cross namespaces."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections import Counter

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import OperatorProcess, wait_for
from finetune_operator.api import FINETUNEJOB, TERMINAL_PHASES
from tests.kube import GROUP, PLURAL, VERSION, Kube, quick_spec

pytestmark = pytest.mark.cluster


def _crash_and_restart(operator: OperatorProcess) -> None:
    assert operator.process is not None
    operator.process.kill()  # SIGKILL: no graceful shutdown, handlers cut mid-call
    operator.process.wait()
    operator.start().wait_ready()


def _burst(kube: Kube, operator: OperatorProcess, jobs: int, crashes: int, seed: int) -> None:
    names = [f"burst-{i:03d}" for i in range(jobs)]
    rng = random.Random(seed)
    for name in names:
        kube.apply_ftj(name, quick_spec("success"))
    for _ in range(crashes):
        time.sleep(rng.uniform(0.2, 4.0))
        _crash_and_restart(operator)

    def settled() -> int:
        items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL)["items"]
        return sum((i.get("status") or {}).get("phase") in TERMINAL_PHASES for i in items)

    wait_for(lambda: settled() == len(names), 600, "every FineTuneJob to finish", describe=lambda: str(settled()))
    jobs_per_owner = Counter((j.metadata.labels or {}).get(FINETUNEJOB.label) for j in kube.jobs())
    for name in names:
        status = kube.status(name)
        assert status["phase"] == "Succeeded", (name, status)
        assert status["attempt"] == 1
        assert f"/{kube.namespace}/{name}/" in status["adapter"]["uri"], status["adapter"]
        assert status["adapter"]["uri"].endswith("/attempt-1/adapter/"), status["adapter"]
        assert jobs_per_owner[name] == 1, (name, jobs_per_owner[name])  # exactly one Job per attempt
        assert {c["type"] for c in status["conditions"]} >= {"Validated", "Running", "Succeeded", "Failed"}
    print(
        f"{len(names)} FineTuneJobs, {crashes} operator crashes (SIGKILL) during the burst: all Succeeded, "
        f"{sum(jobs_per_owner.values())} Jobs"
    )


def test_operator_crashes_during_a_burst_lose_nothing(kube: Kube, operator: OperatorProcess) -> None:
    _burst(kube, operator, jobs=50, crashes=4, seed=2026)


@pytest.mark.soak
def test_soak_operator_crashes(kube: Kube, operator: OperatorProcess) -> None:
    _burst(kube, operator, jobs=200, crashes=12, seed=7)


def _secret(kube: Kube, name: str, values: dict[str, str]) -> None:
    client.CoreV1Api(kube.api).create_namespaced_secret(
        kube.namespace,
        {"metadata": {"name": name}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}},
    )


def test_a_planted_credential_appears_nowhere(kube: Kube, operator: OperatorProcess) -> None:
    planted = f"PLANTED-{uuid.uuid4().hex}"
    _secret(kube, "finetune-storage", {"AWS_ACCESS_KEY_ID": f"id-{planted}", "AWS_SECRET_ACCESS_KEY": planted})
    kube.apply_ftj("secretive", quick_spec("success", output={"uri": "s3://adapters"}))
    kube.wait_phase("secretive", "Succeeded")
    api = kube.api
    job = client.BatchV1Api(api).list_namespaced_job(kube.namespace).items[0]
    pod = client.CoreV1Api(api).list_namespaced_pod(kube.namespace).items[0]
    places = {
        "FineTuneJob": json.dumps(kube.ftj("secretive")),
        "Job": json.dumps(api.sanitize_for_serialization(job)),
        "Pod": json.dumps(api.sanitize_for_serialization(pod)),
        "Events": json.dumps(
            api.sanitize_for_serialization(client.CoreV1Api(api).list_namespaced_event(kube.namespace))
        ),
        # The pod's log as the kubelet keeps it (its termination message is in the Pod's status above).
        "pod log": client.CoreV1Api(api).read_namespaced_pod_log(pod.metadata.name, kube.namespace),
        "operator log": operator.log(),
    }
    leaked = [where for where, text in places.items() if planted in text]
    assert not leaked, f"the planted credential appears in {leaked}"
    # The pod gets it only by reference.
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    ref = env["FINETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("finetune-storage", "AWS_SECRET_ACCESS_KEY")
    assert env["FINETUNE_OUTPUT_AWS_SECRET_ACCESS_KEY"].value is None


def test_a_secret_reference_cannot_leave_the_namespace(kube: Kube) -> None:
    spec = quick_spec(
        "success", output={"uri": "s3://adapters", "secretRef": {"name": "s", "namespace": "kube-system"}}
    )
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "elsewhere"}, "spec": spec}
    with pytest.raises(ApiException) as refused:
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, PLURAL, body, field_validation="Strict"
        )
    assert refused.value.status == 400 and 'unknown field \\"spec.output.secretRef.namespace\\"' in refused.value.body
    # Without strict validation the apiserver prunes the field: the reference stays in the namespace.
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, body)
    assert kube.ftj("elsewhere")["spec"]["output"]["secretRef"] == {"name": "s"}
