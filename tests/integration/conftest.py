"""Fixtures for tests against the real control plane (etcd + kube-apiserver + controllers + scheduler).

One cluster and one operator process per session; each test gets its own namespace, which enforces
Pod Security "restricted" so the apiserver itself checks every pod the operator makes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import LocalCluster, OperatorProcess
from tests.kube import GROUP, PLURAL, RESTRICTED_NAMESPACE, VERSION, Kube, quick_spec

__all__ = ["GROUP", "PLURAL", "VERSION", "Kube", "quick_spec"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, trainer_bin: Path) -> Iterator[LocalCluster]:
    # The audit log lets a test count the operator's own requests (test_idle_reconcile.py).
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), path_prepend=(str(trainer_bin),), audit=True)
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        env={"FINETUNE_IMAGE_PULL_TIMEOUT_SECONDS": "3", "FINETUNE_TRAINER_IMAGE": "local/finetune-trainer:dev"},
    ).start()

    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def kube(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[Kube]:
    api = cluster.api()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace, "labels": RESTRICTED_NAMESPACE}})
    yield Kube(api=api, namespace=namespace, kubeconfig=cluster.kubeconfig)
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(namespace)
