"""Multi-rank FineTuneJobs on the real node: the trainer image under torchrun, gloo on CPU.

Two pods resolve each other through the headless Service and CoreDNS and train one adapter; one pod
runs two ranks; a killed pod restarts the whole group from the newest checkpoint.

What this proves: the launch, the rendezvous, DDP keeping the ranks' LoRA weights identical, one
publisher, and the restart semantics. What it does not: speed-up (two pods share this machine's two
cores; bench/gpu_qlora.py --nproc measures scaling on GPUs), or NCCL and FSDP, which need GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devcluster import wait_for
from devcluster.quickstart import BUCKET, Quickstart
from finetune_operator.api.contract import StorageSettings, TrainerResult
from finetune_trainer.storage import fetch_verified, store_for
from tests.reliability import stack
from tests.reliability.stack import FinalStates, resumed_from

pytestmark = pytest.mark.cluster

# Two pods on a 2-core node: 800m each leaves room for CoreDNS.
POD = {"gpus": 0, "cpu": "800m", "memory": "4Gi"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    running = Quickstart(tmp_path_factory.mktemp("distributed")).start(say=lambda _: None)
    yield running
    running.stop()


def _submit(demo: Quickstart, name: str, resources: dict[str, Any], **spec: Any) -> None:
    body = stack.example_finetunejob(name, **spec.pop("training", {}))
    body["spec"]["resources"] = resources
    body["spec"].update(spec)
    stack.apply(demo, body)


def _result(pod: client.V1Pod) -> TrainerResult:
    terminated = pod.status.container_statuses[0].state.terminated
    return TrainerResult.model_validate_json(terminated.message)


def _owned(demo: Quickstart, name: str) -> tuple[list[Any], list[Any]]:
    assert demo.cluster
    api = demo.cluster.api()
    selector = f"finetune.dev/finetunejob={name}"
    jobs = client.BatchV1Api(api).list_namespaced_job("default", label_selector=selector).items
    services = client.CoreV1Api(api).list_namespaced_service("default", label_selector=selector).items
    return list(jobs), list(services)


def test_two_pods_train_one_adapter_with_identical_weights(demo: Quickstart) -> None:
    _submit(demo, "two-nodes", {**POD, "nodes": 2})
    status = stack.finish(demo, "two-nodes", 600)
    assert status["phase"] == "Succeeded", status
    assert (status["nodes"], status["gpusPerNode"], status["worldSize"]) == (2, 0, 2)
    # The loss falls as in the one-pod quickstart (from ~5.8 for the untrained model).
    assert status["metrics"]["evalLoss"] < 5.0, status["metrics"]
    pods = {
        p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p for p in stack.pods(demo, "two-nodes")
    }
    assert sorted(pods) == ["0", "1"]
    rank0, rank1 = _result(pods["0"]), _result(pods["1"])
    assert rank0.adapter is not None and rank1.adapter is None and rank1.rank == 1
    assert rank0.weights_sha256 and rank0.weights_sha256 == rank1.weights_sha256, "the ranks' LoRA weights differ"
    # Exactly one adapter: rank 0's, where status points.
    assert demo.minio
    uid = stack.get(demo, "two-nodes")["metadata"]["uid"]  # type: ignore[index]
    prefix = f"adapters/default/two-nodes/{uid}/attempt-1/"
    names = {o.object_name for o in demo.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)}
    manifests = sorted(n.removeprefix(prefix) for n in names if n.endswith("/manifest.json"))
    assert manifests[0] == "adapter/manifest.json" and all(m.startswith("checkpoints/") for m in manifests[1:])
    assert status["adapter"]["uri"] == f"s3://{BUCKET}/{prefix}adapter/"
    jobs, services = _owned(demo, "two-nodes")
    assert len(jobs) == 1 and len(services) == 1
    for obj in (*jobs, *services):
        assert obj.metadata.owner_references[0].uid == uid
    assert services[0].spec.cluster_ip == "None"


def test_one_pod_with_two_ranks(demo: Quickstart) -> None:
    _submit(demo, "two-ranks", {**POD, "cpu": "1500m"}, distributed={"processesPerNode": 2})
    status = stack.finish(demo, "two-ranks", 600)
    assert status["phase"] == "Succeeded", status
    assert (status["nodes"], status["worldSize"]) == (1, 2)
    (pod,) = stack.pods(demo, "two-ranks")
    result = _result(pod)
    assert result.rank == 0 and result.adapter is not None and result.weights_sha256
    assert "starting 2 ranks in this pod" in stack.pod_log(demo, pod.metadata.name)


def test_a_killed_pod_restarts_the_group_from_the_newest_checkpoint(demo: Quickstart, tmp_path: Path) -> None:
    assert demo.cluster
    name, save_steps, timeout = "group-fault", 10, 60
    _submit(
        demo,
        name,
        {**POD, "nodes": 2},
        training={"maxSteps": 120, "saveSteps": save_steps, "loggingSteps": 5},
        distributed={"timeoutSeconds": timeout},
    )
    final = FinalStates(demo, name).start()
    try:
        wait_for(
            lambda: int((stack.status(demo, name).get("checkpoint") or {}).get("step") or 0) > 0, 300, "a checkpoint"
        )
        first_job = stack.status(demo, name)["jobName"]
        victim = next(
            p
            for p in stack.pods(demo, name)
            if p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "1" and p.status.phase == "Running"
        )
        reached = int(stack.status(demo, name)["progress"]["step"])
        demo.cluster.node.kill_container(victim.status.container_statuses[0].container_id)
        killed = time.monotonic()
        # Its peer does not wait on it: the Job controller stops the group, well inside the collective timeout.
        wait_for(
            lambda: not any(p.status.phase == "Running" for p in stack.pods(demo, name, first_job)),
            timeout,
            "the killed pod's peer to stop",
        )
        peer_stopped = time.monotonic() - killed
        status = stack.finish(demo, name, 600)
    finally:
        final.stop()
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 1 and status["jobName"].endswith("-r1"), status
    assert final.states[victim.metadata.name].exit_code == 137
    rank0 = next(
        p.metadata.name
        for p in stack.pods(demo, name, status["jobName"])
        if p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "0"
    )
    resumed = resumed_from(demo, rank0)
    assert resumed is not None and 0 <= reached - resumed <= save_steps, (reached, resumed)
    assert status["adapter"]["uri"].endswith("/attempt-1/adapter/") and status["metrics"]["steps"] == 120
    # The adapter's manifest is valid: every file it lists is there with its sha256.
    assert demo.minio
    storage = StorageSettings(s3_endpoint=demo.minio.url, s3_secure=False)
    store = store_for(status["adapter"]["uri"], "OUTPUT", storage, demo.minio.credentials_env("OUTPUT"))
    manifest = fetch_verified(store, status["adapter"]["uri"], tmp_path / "adapter")
    assert "adapter_model.safetensors" in manifest["files"]
    print(f"killed at step {reached}, resumed from {resumed}; the peer stopped {peer_stopped:.1f} s after the kill")
