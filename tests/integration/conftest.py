"""Fixtures for tests against the real control plane (etcd + kube-apiserver + controllers + scheduler).

One cluster and one operator process per session; each test gets its own namespace, which enforces
Pod Security "restricted" so the apiserver itself checks every pod the operator makes.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import LocalCluster, OperatorProcess, apply_objects, tool_path, wait_for

HERE = Path(__file__).resolve().parent
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


@pytest.fixture(scope="session")
def trainer_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the stand-in `finetune-trainer` the local node runs for trainer pods."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "finetune-trainer"
    script.write_text(f"#!{sys.executable}\n" + (HERE / "stand_in_trainer.py").read_text())
    script.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, trainer_bin: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), path_prepend=(str(trainer_bin),))
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


@dataclass
class Kube:
    """The test's view of the cluster: its namespace and a few helpers that read like kubectl."""

    api: client.ApiClient
    namespace: str
    kubeconfig: Path

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def apply_ftj(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        apply_objects(self.api, [body])

    def ftj(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return result

    def status(self, name: str) -> dict[str, Any]:
        return self.ftj(name).get("status") or {}

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") in phases and s,
            timeout,
            f"FineTuneJob {name} in phase {'/'.join(phases)}",
            describe=lambda: str(self.status(name)),
        )

    def jobs(self) -> list[client.V1Job]:
        return list(client.BatchV1Api(self.api).list_namespaced_job(self.namespace).items)

    def pods(self) -> list[client.V1Pod]:
        return list(client.CoreV1Api(self.api).list_namespaced_pod(self.namespace).items)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == ctype)


@pytest.fixture
def kube(cluster: LocalCluster, operator: OperatorProcess) -> Iterator[Kube]:
    api = cluster.api()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    enforce = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace, "labels": enforce}})
    yield Kube(api=api, namespace=namespace, kubeconfig=cluster.kubeconfig)
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(namespace)


def quick_spec(scenario: str, **overrides: Any) -> dict[str, Any]:
    """A CPU FineTuneJob whose trainer pod runs the stand-in trainer's `scenario`."""
    spec: dict[str, Any] = {
        "baseModel": {"uri": "file:///models/tiny"},
        "dataset": {"uri": f"file:///scenario/{scenario}"},
        "training": {"maxSteps": 10},
        "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
        "output": {"uri": "file:///tmp/adapters"},
    }
    spec.update(overrides)
    return spec
