"""The tests' view of a cluster: a namespace and helpers that read like kubectl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from devcluster import apply_objects, tool_path, wait_for
from finetune_operator.api import FINETUNEJOB

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", FINETUNEJOB.plural
RESTRICTED_NAMESPACE = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
"""Namespace labels under which the apiserver itself admits only Pod Security "restricted" pods."""


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


def quick_spec(scenario: str, **overrides: Any) -> dict[str, Any]:
    """A CPU FineTuneJob whose trainer pod runs the stand-in trainer's `scenario`; small enough that
    four fit the 2-core node at once (requests equal limits)."""
    spec: dict[str, Any] = {
        "baseModel": {"uri": "file:///models/tiny"},
        "dataset": {"uri": f"file:///scenario/{scenario}"},
        "training": {"maxSteps": 10},
        "resources": {"gpus": 0, "cpu": "500m", "memory": "256Mi"},
        "output": {"uri": "file:///tmp/adapters"},
    }
    spec.update(overrides)
    return spec
