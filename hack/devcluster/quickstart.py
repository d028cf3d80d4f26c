"""The quickstart end to end on the local cluster: shared by `make demo` and the e2e tests.

Real parts throughout: kube-apiserver + controllers + scheduler, MinIO, the operator, and the real
node (kubelet + containerd), where the trainer runs as a container of the image built from
Dockerfile.trainer.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from finetune_operator.api import FINETUNEJOB

from . import REPO_ROOT, LocalCluster, OperatorProcess, apply_objects, tool_path
from .faults import StoreLink
from .images import BuiltImages, built_images
from .minio import MinioServer
from .node import NODE_IP

BUCKET = "finetune-demo"
EXAMPLE = REPO_ROOT / "examples" / "quickstart" / "finetunejob.yaml"
CHART = REPO_ROOT / "helm" / "finetune-operator"
RELEASE, OPERATOR_NAMESPACE = "ft", "finetune-system"


@dataclass
class Quickstart:
    workdir: Path
    cluster: LocalCluster | None = None
    minio: MinioServer | None = None
    operator: OperatorProcess | None = None
    link_store: bool = False
    """Pods reach MinIO through a StoreLink, so tests can stop MinIO at an exact request."""
    link: StoreLink | None = None
    operator_env: dict[str, str] = field(default_factory=dict)
    images: BuiltImages | None = None

    def start(self, say: Callable[[str], None] = print, run_operator: bool = True) -> Quickstart:
        """The cluster, MinIO with the tiny model and dataset, the storage Secret and (unless
        `run_operator` is false, e.g. when a test installs it with Helm) the operator process."""
        sys.path.insert(0, str(REPO_ROOT / "hack"))
        from tinymodel import make_quickstart

        self.workdir.mkdir(parents=True, exist_ok=True)
        say("building the operator and trainer images from our Dockerfiles (cached by content)")
        self.images = built_images(self.workdir / "build-images.log")
        say(
            "starting the control plane (etcd, kube-apiserver, controller manager, scheduler) and a real node "
            "(kubelet, containerd, CNI bridge, kube-proxy, CoreDNS)"
        )
        self.cluster = LocalCluster(self.workdir / "cluster", crds=run_operator, images=self.images).start()
        say("starting MinIO")
        self.minio = MinioServer(self.workdir / "minio", address=NODE_IP).start()
        if self.link_store:
            self.link = StoreLink(self.minio).start()
        say("making a tiny Llama-architecture model and a support dataset, uploading them to MinIO")
        model, data = make_quickstart(self.workdir / "assets")
        self.minio.upload_folder(BUCKET, "models/tiny-llama", model)
        self.minio.upload_file(BUCKET, "datasets/support.jsonl", data)
        for name in (
            "capitals-train.jsonl",
            "capitals-qa.jsonl",
            "preference-pairs.jsonl",
            "preference-held-out.jsonl",
        ):
            self.minio.upload_file(BUCKET, f"datasets/{name}", data.parent / name)
        self.minio.upload_folder(BUCKET, "lm-eval-tasks", data.parent / "lm-eval-tasks")
        self._storage_secret()
        if not run_operator:
            return self
        say("starting the operator")
        self.operator = (
            OperatorProcess(
                self.cluster.kubeconfig,
                self.workdir / "operator.log",
                env={
                    "FINETUNE_S3_ENDPOINT": (self.link or self.minio).url,
                    "FINETUNE_S3_SECURE": "false",
                    "FINETUNE_TRAINER_IMAGE": self.trainer_image,
                    **self.operator_env,
                },
            )
            .start()
            .wait_ready()
        )
        return self

    def kubectl(self, *args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.cluster
        return subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
        )

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        assert self.cluster
        return subprocess.run(
            [str(tool_path("helm")), "--kubeconfig", str(self.cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def install_chart(self, *settings: str) -> subprocess.CompletedProcess[str]:
        """`helm install` of our chart: the operator as a Deployment of the image built from
        Dockerfile.operator, pointed at this MinIO and trainer image; `settings` are more `--set`s."""
        assert self.images and self.minio
        repository, tag = self.images.operator.rsplit(":", 1)
        values = {
            "image.repository": repository,
            "image.tag": tag,
            "settings.trainerImage": self.images.trainer,
            "settings.s3Endpoint": self.minio.url,
            "settings.s3Secure": "false",
        }
        sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
        sets += [arg for setting in settings for arg in ("--set", setting)]
        return self.helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
            *sets,
        )

    @property
    def trainer_image(self) -> str:
        assert self.images
        return self.images.trainer

    def _storage_secret(self) -> None:
        assert self.cluster and self.minio
        data = {"AWS_ACCESS_KEY_ID": self.minio.access_key, "AWS_SECRET_ACCESS_KEY": self.minio.secret_key}
        client.CoreV1Api(self.cluster.api()).create_namespaced_secret(
            "default",
            {
                "metadata": {"name": "finetune-storage"},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            },
        )

    def apply_example(self) -> dict[str, Any]:
        assert self.cluster
        body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"]["namespace"] = "default"
        apply_objects(self.cluster.api(), [body])
        return body

    def finetunejob(self, name: str = "quickstart") -> dict[str, Any]:
        assert self.cluster
        result: dict[str, Any] = client.CustomObjectsApi(self.cluster.api()).get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", "default", FINETUNEJOB.plural, name
        )
        return result

    def stop(self) -> None:
        for part in (self.operator, self.cluster, self.link, self.minio):
            if part is not None:
                part.stop()
