"""The quickstart end to end on the local cluster: shared by `make demo` and the e2e test.

Real parts throughout: kube-apiserver + controllers + scheduler, MinIO, the operator process, and the
trainer (`finetune-trainer` from this checkout's virtualenv) run by the local node as the pod.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from finetune_operator.api import FINETUNEJOB

from . import REPO_ROOT, LocalCluster, OperatorProcess, apply_objects
from .faults import StoreLink
from .minio import MinioServer

BUCKET = "finetune-demo"
EXAMPLE = REPO_ROOT / "examples" / "quickstart" / "finetunejob.yaml"


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

    def start(self, say: Callable[[str], None] = print, run_operator: bool = True) -> Quickstart:
        """MinIO with the tiny model and dataset, the cluster, the storage Secret and (unless
        `run_operator` is false, e.g. when a test installs it with Helm) the operator process."""
        sys.path.insert(0, str(REPO_ROOT / "hack"))
        from tinymodel import make_quickstart

        self.workdir.mkdir(parents=True, exist_ok=True)
        say("starting MinIO")
        self.minio = MinioServer(self.workdir / "minio").start()
        if self.link_store:
            self.link = StoreLink(self.minio).start()
        say("making a tiny Llama-architecture model and a support dataset, uploading them to MinIO")
        model, data = make_quickstart(self.workdir / "assets")
        self.minio.upload_folder(BUCKET, "models/tiny-llama", model)
        self.minio.upload_file(BUCKET, "datasets/support.jsonl", data)
        for name in ("capitals-train.jsonl", "capitals-qa.jsonl"):
            self.minio.upload_file(BUCKET, f"datasets/{name}", data.parent / name)
        say("starting the control plane (etcd, kube-apiserver, controller manager, scheduler) and the local node")
        venv_bin = str(Path(sys.executable).parent)  # where `finetune-trainer` is installed
        self.cluster = LocalCluster(self.workdir / "cluster", path_prepend=(venv_bin,), crds=run_operator).start()
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
                    "FINETUNE_TRAINER_IMAGE": "ghcr.io/finetune-operator/trainer:0.1.0",
                    **self.operator_env,
                },
            )
            .start()
            .wait_ready()
        )
        return self

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
