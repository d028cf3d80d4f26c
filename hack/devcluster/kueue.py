"""Kueue on the local cluster: its manager as a pod on the real node, from its own release manifests.

hack/build-tools.sh builds the manager from the `sigs.k8s.io/kueue` Go module (KUEUE_VERSION) and
renders the module's `config/default` with kustomize, as Kueue's release does; hack/build-images.sh
puts the binary in an image. The manager manages its own webhook certificates (internal cert
management: a Secret, and the CA injected into its webhook configurations). Changed here:

- the image (ours, already on the node), and requests that fit a 2-core node;
- only the batch/Job integration (the others' CRDs are not installed), no leader election, and
  `waitForPodsReady` on, the pairing docs/distributed.md recommends for multi-node jobs;
- no visibility APIService: this apiserver has no aggregation layer configured, and an unavailable
  APIService breaks discovery for every client.
"""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import LocalCluster, apply_crds, apply_objects, tool_path, wait_for

NAMESPACE = "kueue-system"
MANAGER = "kueue-controller-manager"
CONFIG = {
    "apiVersion": "config.kueue.x-k8s.io/v1beta2",
    "kind": "Configuration",
    "health": {"healthProbeBindAddress": ":8081"},
    "metrics": {"bindAddress": ":8443"},
    "webhook": {"port": 9443},
    "leaderElection": {"leaderElect": False},
    "integrations": {"frameworks": ["batch/job"]},
    "waitForPodsReady": {"timeout": "10m", "blockAdmission": True},
}


def manifests() -> list[dict[str, Any]]:
    """Kueue's rendered release manifests (hack/build-tools.sh wrote them next to the binary)."""
    path = tool_path("kueue").parent / "kueue-manifests.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run hack/build-tools.sh")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def adapted(docs: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """The release manifests as this cluster runs them (see the module docstring)."""
    kept = []
    for doc in docs:
        if doc["kind"] == "APIService":
            continue
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "kueue-manager-config":
            doc["data"] = {"controller_manager_config.yaml": yaml.safe_dump(CONFIG)}
        if doc["kind"] == "Deployment":
            manager = doc["spec"]["template"]["spec"]["containers"][0]
            manager["image"] = image
            manager["imagePullPolicy"] = "IfNotPresent"
            manager["resources"] = {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"},
            }
        kept.append(doc)
    return kept


def install(cluster: LocalCluster, image: str, timeout: float = 300) -> None:
    """Apply Kueue and wait until its webhooks answer (a ResourceFlavor is admitted)."""
    api = cluster.api()
    docs = adapted(manifests(), image)
    apply_crds(api, [d for d in docs if d["kind"] == "CustomResourceDefinition"], timeout=60)
    apply_objects(api, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
    probe = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "kueue-ready-probe"},
    }
    custom = client.CustomObjectsApi(api)

    def answering() -> bool:
        try:
            custom.create_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "resourceflavors", probe)
        except ApiException as error:
            return error.status == 409  # else the webhook is not serving yet (its certificate, its pod)
        return True

    wait_for(answering, timeout, "Kueue's manager and webhooks to answer", interval=2)
    custom.delete_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "resourceflavors", "kueue-ready-probe")
