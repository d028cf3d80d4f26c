"""Fixtures for tests against the real control plane and the real node: etcd, kube-apiserver,
controllers, scheduler, and a kubelet with containerd whose trainer pods run the stand-in trainer
image (tests/integration/stand-in.Dockerfile). The operator runs as a process beside them.

One cluster and one operator for this package (the machine holds one real node at a time, so a
package or module, not the session, owns it; tests/reliability opens its own); each test gets its
own namespace, which enforces Pod Security "restricted" so the apiserver itself checks every pod
the operator makes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import LocalCluster, OperatorProcess, built_images
from tests.kube import GROUP, PLURAL, RESTRICTED_NAMESPACE, VERSION, Kube, quick_spec

__all__ = ["GROUP", "PLURAL", "VERSION", "Kube", "open_cluster", "open_operator", "quick_spec"]


def open_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    # The audit log lets a test count the operator's own requests (test_idle_reconcile.py).
    local = LocalCluster(workdir, images=built_images(workdir / "build-images.log"), audit=True)
    local.start()
    yield local
    local.stop()


def open_operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    assert cluster.images
    process = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        env={
            "FINETUNE_IMAGE_PULL_TIMEOUT_SECONDS": "3",
            "FINETUNE_TRAINER_IMAGE": cluster.images.stand_in_trainer,
        },
    ).start()
    process.wait_ready()
    yield process
    process.stop()


cluster = pytest.fixture(scope="package", name="cluster")(open_cluster)
operator = pytest.fixture(scope="package", name="operator")(open_operator)


@pytest.fixture
def kube(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[Kube]:
    api = cluster.api()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace, "labels": RESTRICTED_NAMESPACE}})
    yield Kube(api=api, namespace=namespace, kubeconfig=cluster.kubeconfig)
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(namespace)
