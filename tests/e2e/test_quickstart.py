"""The whole flow, as a user runs it: kubectl apply -> operator -> Job -> pod -> real QLoRA -> MinIO -> status."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from devcluster import tool_path
from devcluster.quickstart import BUCKET, Quickstart

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    demo = Quickstart(tmp_path_factory.mktemp("quickstart")).start(say=lambda _: None)
    yield demo
    demo.stop()


def test_quickstart_finetunejob_succeeds_with_its_adapter_in_minio(quickstart: Quickstart) -> None:
    assert quickstart.cluster and quickstart.minio
    kubectl = [str(tool_path("kubectl")), "--kubeconfig", str(quickstart.cluster.kubeconfig)]
    quickstart.apply_example()
    wait = subprocess.run(
        [*kubectl, "wait", "--for=condition=Succeeded", "ftj/quickstart", "--timeout=300s"],
        capture_output=True,
        text=True,
    )
    status = quickstart.finetunejob()["status"]
    assert wait.returncode == 0, (
        f"{wait.stderr}\n{status}\n{quickstart.operator.log()[-3000:] if quickstart.operator else ''}"
    )
    uid = quickstart.finetunejob()["metadata"]["uid"]
    adapter = status["adapter"]["uri"]
    assert adapter == f"s3://{BUCKET}/adapters/default/quickstart/{uid}/attempt-1/adapter/"
    prefix = adapter.removeprefix(f"s3://{BUCKET}/")
    names = {
        o.object_name.removeprefix(prefix)
        for o in quickstart.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)
    }
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= names
    # The trainer reported progress itself (its own ServiceAccount), and the operator kept it.
    assert status["progress"]["step"] == 100 and status["progress"]["percent"] == 100
    assert status["checkpoint"]["uri"].endswith("/checkpoints/checkpoint-00000100/")
    assert status["metrics"]["evalLoss"] < 5.0  # from ~5.8 for the untrained model
    table = subprocess.run([*kubectl, "get", "ftj"], capture_output=True, text=True).stdout
    assert "Succeeded" in table and adapter in table
