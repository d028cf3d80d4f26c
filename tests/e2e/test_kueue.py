"""The real Kueue manager on the local node admits a two-pod FineTuneJob as one workload, or not at all.

Kueue is built from its Go module at the version pinned in hack/build-tools.sh, runs as a pod from
its own release manifests (hack/devcluster/kueue.py), and manages its own webhook certificates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from devcluster import apply_objects, kueue, wait_for
from devcluster.quickstart import Quickstart
from tests.reliability import stack

pytestmark = pytest.mark.cluster

KUEUE = ("kueue.x-k8s.io", "v1beta2")
POD = {"gpus": 0, "cpu": "800m", "memory": "4Gi", "nodes": 2}
HELD_SECONDS = 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    running = Quickstart(tmp_path_factory.mktemp("kueue")).start(say=lambda _: None)
    try:
        assert running.cluster and running.images
        kueue.install(running.cluster, running.images.kueue)
        yield running
    finally:
        running.stop()


def _quota(cpu: str, memory: str) -> list[dict[str, Any]]:
    resources = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory}]
    return [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default-flavor", "resources": resources}]}]


def _queues(cpu: str, memory: str) -> list[dict[str, Any]]:
    api_version = "/".join(KUEUE)
    return [
        {"apiVersion": api_version, "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}},
        {
            "apiVersion": api_version,
            "kind": "ClusterQueue",
            "metadata": {"name": "training"},
            "spec": {"namespaceSelector": {}, "resourceGroups": _quota(cpu, memory)},
        },
        {
            "apiVersion": api_version,
            "kind": "LocalQueue",
            "metadata": {"name": "team-a", "namespace": "default"},
            "spec": {"clusterQueue": "training"},
        },
    ]


def _workload(demo: Quickstart, job: str) -> dict[str, Any] | None:
    assert demo.cluster
    items = client.CustomObjectsApi(demo.cluster.api()).list_namespaced_custom_object(*KUEUE, "default", "workloads")
    owned = [w for w in items["items"] if any(r["name"] == job for r in w["metadata"].get("ownerReferences") or [])]
    return owned[0] if owned else None


def _job(demo: Quickstart, name: str) -> client.V1Job:
    assert demo.cluster
    return client.BatchV1Api(demo.cluster.api()).read_namespaced_job(name, "default")


def test_a_two_node_job_stays_queued_without_quota_then_runs_all_its_pods(demo: Quickstart) -> None:
    assert demo.cluster
    apply_objects(demo.cluster.api(), _queues("0", "0"))
    body = stack.example_finetunejob("queued", maxSteps=20, saveSteps=10)
    body["spec"].update(resources=POD, queueName="team-a")
    stack.apply(demo, body)
    job = wait_for(lambda: stack.status(demo, "queued").get("jobName"), 60, "the Job")
    workload = wait_for(lambda: _workload(demo, job), 60, f"Kueue's Workload for Job {job}")
    assert workload["spec"]["podSets"][0]["count"] == 2  # one workload for both pods

    # No quota: it stays queued, suspended, with no pod at all.
    held_until = time.monotonic() + HELD_SECONDS
    while time.monotonic() < held_until:
        status = stack.status(demo, "queued")
        assert status["phase"] == "Queued", status
        assert _job(demo, job).spec.suspend is True
        assert stack.pods(demo, "queued", job) == []
        time.sleep(2)
    conditions = {c["type"]: c for c in (_workload(demo, job) or {}).get("status", {}).get("conditions", [])}
    assert conditions.get("QuotaReserved", {}).get("status") == "False", conditions
    print(f"without quota: {conditions['QuotaReserved'].get('message')}")

    # Quota for both pods (2 x 800m, 2 x 4Gi) frees up: admitted as one, both pods start together.
    client.CustomObjectsApi(demo.cluster.api()).patch_cluster_custom_object(
        *KUEUE, "clusterqueues", "training", {"spec": {"resourceGroups": _quota("2", "10Gi")}}
    )
    admitted = wait_for(
        lambda: (w := _workload(demo, job)) and (w.get("status") or {}).get("admission") and w,
        120,
        "Kueue to admit the workload",
    )
    assert admitted["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    pods = wait_for(lambda: len(p := stack.pods(demo, "queued", job)) == 2 and p, 60, "both pods")
    created = sorted(p.metadata.creation_timestamp for p in pods)
    assert (created[1] - created[0]).total_seconds() < 5, created  # created together, not one then the other
    status = stack.finish(demo, "queued", 600)
    assert status["phase"] == "Succeeded", status
    assert status["worldSize"] == 2 and status["adapter"]["uri"].endswith("/attempt-1/adapter/")
