"""What only a real node can show: the kubelet and containerd run the trainer image built from
Dockerfile.trainer, and the kernel and kubelet, not our code, produce each fault.

One stack for the module: the control plane, a real node (hack/devcluster/node.py), MinIO on the
node's address, and the operator as a process; the `default` namespace enforces Pod Security
"restricted". Proves: the contracts between our pods and a real kubelet (termination message,
SIGTERM and the grace period, cgroup OOM kills, image pulls, Secret env, read-only root, projected
tokens). Does not prove: anything about a GPU node, or the quality of the tiny model's training.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from devcluster import NODE_NAME, wait_for
from devcluster.quickstart import Quickstart
from finetune_operator.api import FINETUNEJOB
from finetune_operator.api.contract import TrainerResult
from tests.kube import RESTRICTED_NAMESPACE
from tests.reliability import stack
from tests.reliability.stack import apply, condition, example_finetunejob

pytestmark = pytest.mark.cluster
SAVE_STEPS = 25


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(
        tmp_path_factory.mktemp("node"), operator_env={"FINETUNE_IMAGE_PULL_TIMEOUT_SECONDS": "20"}
    ).start(say=lambda _: None)
    assert started.cluster
    client.CoreV1Api(started.cluster.api()).patch_namespace("default", {"metadata": {"labels": RESTRICTED_NAMESPACE}})
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _clean_slate(node: Quickstart) -> Iterator[None]:
    """Each test starts on an empty node: a 2-core node fits one trainer pod at a time."""
    yield
    assert node.cluster
    custom = client.CustomObjectsApi(node.cluster.api())
    for job in custom.list_namespaced_custom_object(stack.GROUP, stack.VERSION, "default", FINETUNEJOB.plural)["items"]:
        custom.delete_namespaced_custom_object(
            stack.GROUP, stack.VERSION, "default", FINETUNEJOB.plural, job["metadata"]["name"]
        )
    for pod in _core(node).list_namespaced_pod("default").items:
        if not pod.metadata.labels or "finetune.dev/finetunejob" not in pod.metadata.labels:
            _core(node).delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)
    wait_for(lambda: not _core(node).list_namespaced_pod("default").items, 120, "the node to be empty")


def _core(node: Quickstart) -> client.CoreV1Api:
    assert node.cluster
    return client.CoreV1Api(node.cluster.api())


def _submit(node: Quickstart, name: str, *, backoff_limit: int = 0, **spec: Any) -> None:
    body = example_finetunejob(name, **spec.pop("training", {}))
    body["spec"]["backoffLimit"] = backoff_limit
    body["spec"].update(spec)
    apply(node, body)


def _run_pod(
    node: Quickstart, name: str, command: list[str], pod: dict[str, Any] | None = None, **container: Any
) -> client.V1Pod:
    """A restricted pod of the trainer image running `command`; returns it once it has ended."""
    assert node.images
    spec = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "main",
                "image": node.images.trainer,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                **container,
            }
        ],
    }
    spec.update(pod or {})
    _core(node).create_namespaced_pod("default", {"metadata": {"name": name}, "spec": spec})
    return wait_for(
        lambda: (p := _core(node).read_namespaced_pod(name, "default")).status.phase in {"Succeeded", "Failed"} and p,
        120,
        f"pod {name} to end",
        describe=lambda: str(_core(node).read_namespaced_pod(name, "default").status.container_statuses),
    )


def test_the_node_is_a_kubelet_with_containerd_running_our_trainer_image(node: Quickstart) -> None:
    assert node.cluster and node.images
    info = _core(node).read_node(NODE_NAME).status.node_info
    assert info.container_runtime_version.startswith("containerd://"), info
    assert info.kubelet_version.startswith("v1.35"), info
    apply(node, example_finetunejob("on-node"))
    status = stack.finish(node, "on-node")
    assert status["phase"] == "Succeeded", status
    (pod,) = stack.pods(node, "on-node")
    container = pod.status.container_statuses[0]
    # The image this run built from Dockerfile.trainer (or took from the cache by content hash).
    assert container.image == node.images.trainer
    assert container.image_id == node.images.ids[node.images.trainer], container
    # The termination-message contract, as the kubelet read it from /dev/termination-log.
    result = TrainerResult.model_validate_json(container.state.terminated.message)
    assert result.result == "succeeded" and result.adapter and result.adapter.uri == status["adapter"]["uri"]
    assert pod.spec.containers[0].security_context.read_only_root_filesystem is True
    print(f"trainer pod {pod.metadata.name}: image {container.image}, imageID {container.image_id}")


def test_the_trainer_image_runs_read_only_as_uid_1000_with_writes_only_to_its_volumes(node: Quickstart) -> None:
    script = (
        "import os, pathlib\n"
        "print('uid', os.getuid())\n"
        "for path in ('/opt/venv/x', '/workspace-outside', '/etc/x'):\n"
        "    try:\n"
        "        pathlib.Path(path).write_text('x'); print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('refused', path, error.strerror)\n"
        "ok = pathlib.Path('/workspace/.cache/ok'); ok.parent.mkdir(parents=True); ok.write_text('x')\n"
        "print('wrote /workspace/.cache/ok')\n"
    )
    pod = _run_pod(
        node,
        "read-only",
        ["python", "-c", script],
        volumeMounts=[{"name": "workspace", "mountPath": "/workspace"}],
        pod={"volumes": [{"name": "workspace", "emptyDir": {}}]},
    )
    log = _core(node).read_namespaced_pod_log(pod.metadata.name, "default")
    assert pod.status.phase == "Succeeded", log
    assert "uid 1000" in log
    assert log.count("refused") == 3 and "Read-only file system" in log, log
    assert "wrote /workspace/.cache/ok" in log
    help_pod = _run_pod(node, "help", ["finetune-trainer", "--help"])
    assert help_pod.status.phase == "Succeeded"
    assert "train" in _core(node).read_namespaced_pod_log("help", "default")


def test_a_memory_limit_too_small_ends_out_of_memory_by_the_kernel(node: Quickstart) -> None:
    # 4-bit loading of even the tiny model needs torch and transformers in memory: far above 200Mi.
    _submit(node, "small-memory", resources={"gpus": 0, "cpu": "1500m", "memory": "200Mi"})
    status = stack.finish(node, "small-memory")
    assert status["phase"] == "Failed", status
    failed = condition(status)
    assert failed["reason"] == "OutOfMemory", failed
    (pod,) = stack.pods(node, "small-memory")
    terminated = pod.status.container_statuses[0].state.terminated
    # The kernel's OOM killer, through the cgroup limit: the kubelet reports OOMKilled, exit 137.
    assert terminated.reason == "OOMKilled" and terminated.exit_code == 137, terminated
    print(f"small-memory: {failed['reason']}: {failed['message']}")


def test_a_deleted_pod_gets_sigterm_checkpoints_and_the_next_pod_resumes_losing_no_steps(node: Quickstart) -> None:
    name = "preempted"
    _submit(node, name, backoff_limit=1, training={"maxSteps": 300, "saveSteps": SAVE_STEPS, "loggingSteps": 5})
    final = stack.FinalStates(node, name).start()
    wait_for(lambda: int((stack.status(node, name).get("checkpoint") or {}).get("step") or 0) > 0, 300, "a checkpoint")
    (first,) = stack.pods(node, name)
    deleted_at = time.monotonic()
    _core(node).delete_namespaced_pod(first.metadata.name, "default")  # the kubelet: SIGTERM, grace 60 s
    wait_for(lambda: first.metadata.name in final.states, 90, f"{first.metadata.name} to stop")
    stopped_after = time.monotonic() - deleted_at
    reached = stack.interrupted_at(final.states[first.metadata.name])
    following = wait_for(
        lambda: next((p for p in stack.pods(node, name) if p.metadata.name != first.metadata.name), None),
        420,
        "the replacement pod",
    )

    resumed = wait_for(
        lambda: stack.resumed_from(node, following.metadata.name), 300, f"{following.metadata.name} to resume"
    )
    status = stack.finish(node, name)
    final.stop()
    assert status["phase"] == "Succeeded", status
    assert status["podFailures"] == 1 and status["metrics"]["steps"] == 300, status
    lost = reached - resumed
    assert lost == 0, (reached, resumed)
    print(
        f"{name}: SIGTERM at step {reached}, stopped {stopped_after:.1f}s after the delete, "
        f"resumed at {resumed}: {lost} steps lost"
    )


def test_an_image_that_does_not_exist_fails_the_attempt_on_the_kubelets_pull_error(node: Quickstart) -> None:
    _submit(node, "no-image", image="finetune.invalid/trainer:missing")
    status = stack.finish(node, "no-image", timeout=180)
    assert status["phase"] == "Failed", status
    failed = condition(status)
    assert failed["reason"] == "ImagePullError", failed
    assert "finetune.invalid/trainer:missing" in failed["message"], failed
    print(f"no-image: {failed['reason']}: {failed['message']}")


def test_a_missing_secret_is_the_kubelets_create_container_config_error(node: Quickstart) -> None:
    body = example_finetunejob("no-secret")
    body["spec"]["dataset"]["secretRef"] = {"name": "not-there"}
    apply(node, body)

    def config_error() -> dict[str, Any] | None:
        waiting = [
            s.state.waiting
            for p in stack.pods(node, "no-secret")
            for s in p.status.container_statuses or []
            if s.state.waiting and s.state.waiting.reason == "CreateContainerConfigError"
        ]
        return (waiting or None) and stack.status(node, "no-secret")

    status = wait_for(config_error, 120, "CreateContainerConfigError from the kubelet")
    shown = wait_for(
        lambda: next(
            (c for c in stack.status(node, "no-secret").get("conditions", []) if c["reason"] == "ConfigError"), None
        ),
        60,
        "the operator to show it",
        describe=lambda: str(stack.status(node, "no-secret").get("conditions")),
    )
    assert 'secret "not-there" not found' in shown["message"], (shown, status)
    print(f"no-secret: {shown['reason']}: {shown['message']}")


def test_the_trainers_projected_token_may_patch_only_its_own_status(node: Quickstart) -> None:
    _submit(node, "mine", training={"maxSteps": 2000})
    _submit(node, "theirs", suspend=True)
    wait_for(
        lambda: stack.pods(node, "mine") and stack.pods(node, "mine")[0].status.phase == "Running", 180, "mine to run"
    )
    account = stack.pods(node, "mine")[0].spec.service_account_name
    script = (
        "from kubernetes import client, config\n"
        "from kubernetes.client.exceptions import ApiException\n"
        "config.load_incluster_config()\n"
        "api = client.CustomObjectsApi()\n"
        "g, v, ns, plural = 'finetune.dev', 'v1alpha1', 'default', 'finetunejobs'\n"
        "body = {'status': {'progress': {'step': 1, 'totalSteps': 2000, 'percent': 0}}}\n"
        "for name, call in [\n"
        "    ('own-status', lambda: api.patch_namespaced_custom_object_status(g, v, ns, plural, 'mine', body)),\n"
        "    ('other-status', lambda: api.patch_namespaced_custom_object_status(g, v, ns, plural, 'theirs', body)),\n"
        "    ('own-spec', lambda: api.patch_namespaced_custom_object(g, v, ns, plural, 'mine', {'spec': {}})),\n"
        "    ('secrets', lambda: client.CoreV1Api().list_namespaced_secret(ns)),\n"
        "]:\n"
        "    try:\n"
        "        call(); print(name, 200)\n"
        "    except ApiException as error:\n"
        "        print(name, error.status)\n"
    )
    pod = _run_pod(
        node,
        "token-check",
        ["python", "-c", script],
        pod={"serviceAccountName": account, "automountServiceAccountToken": True},
    )
    log = _core(node).read_namespaced_pod_log(pod.metadata.name, "default")
    answers = dict(line.split() for line in log.splitlines() if line.count(" ") == 1)
    assert answers == {"own-status": "200", "other-status": "403", "own-spec": "403", "secrets": "403"}, log
