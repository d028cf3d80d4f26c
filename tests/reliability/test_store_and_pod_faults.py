"""Faults on the whole flow with the real trainer: pods deleted and killed mid-run, MinIO stopped in the
middle of a checkpoint sync and of the final publish, and deletion with output.deletePolicy Delete.

Real parts throughout: the control plane, the real node (kubelet + containerd) running the trainer
image built from Dockerfile.trainer, the operator process, MinIO. A deleted pod gets SIGTERM and its
grace period from the kubelet; a killed one is SIGKILLed through containerd from outside the kubelet
(a crash, or a host that loses the process). MinIO is stopped at an exact request by the StoreLink
the pods reach it through (hack/devcluster/faults.py): the server process really stops and restarts
on the same data.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from devcluster import wait_for
from devcluster.quickstart import BUCKET, Quickstart
from finetune_operator.api import FINETUNEJOB, TERMINAL_PHASES
from tests.reliability import stack
from tests.reliability.conftest import CLEANUP_DEADLINE
from tests.reliability.stack import FinalStates, apply, condition, example_finetunejob, get, objects, resumed_from

pytestmark = pytest.mark.cluster


def _submit(demo: Quickstart, name: str, *, backoff_limit: int = 2, delete: bool = False, **training: Any) -> None:
    body = example_finetunejob(name, **training)
    body["spec"]["backoffLimit"] = backoff_limit
    if delete:
        body["spec"]["output"]["deletePolicy"] = "Delete"
    apply(demo, body)


def _has_manifest(demo: Quickstart, uri: str) -> bool:
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    return f"{prefix}manifest.json" in objects(demo, prefix)


def _follow(demo: Quickstart, name: str, timeout: float = 420) -> tuple[dict[str, Any], set[str]]:
    """Poll until the job finishes; every adapter URI its status ever showed."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = stack.status(demo, name)
        if uri := (current.get("adapter") or {}).get("uri"):
            seen.add(uri)
        if current.get("phase") in TERMINAL_PHASES:
            return current, seen
        time.sleep(0.3)
    raise AssertionError(f"{name} did not finish in {timeout}s: {stack.status(demo, name)}")


def _running_pod(demo: Quickstart, name: str, not_in: set[str]) -> str:
    def fresh() -> str | None:
        return next(
            (
                p.metadata.name
                for p in stack.pods(demo, name)
                if p.status.phase == "Running" and p.metadata.name not in not_in
            ),
            None,
        )

    # The Job controller delays each replacement pod exponentially (10 s, 20 s, 40 s, ... up to 6 min).
    wait_for(lambda: fresh() is not None, 420, f"a new running pod of {name}")
    pod = fresh()
    assert pod
    return pod


# --- pod loss ------------------------------------------------------------------------------------


SAVE_STEPS = 25


def _checkpoint_step(demo: Quickstart, name: str) -> int:
    return int((stack.status(demo, name).get("checkpoint") or {}).get("step") or 0)


def _interrupt(demo: Quickstart, name: str, pod: str, gone: set[str], how: str, final: FinalStates) -> tuple[str, int]:
    """Delete `pod` (the kubelet: SIGTERM, grace period) or SIGKILL its container once it synced a
    checkpoint of its own; the next pod and the steps lost (step reached - step the next pod resumed from)."""
    assert demo.cluster
    since = resumed_from(demo, pod) or 0
    wait_for(lambda: _checkpoint_step(demo, name) > since, 180, f"a checkpoint from {pod}")
    synced = _checkpoint_step(demo, name)
    core = client.CoreV1Api(demo.cluster.api())
    if how == "delete":
        core.delete_namespaced_pod(pod, "default")
    else:
        reached = int((stack.status(demo, name).get("progress") or {}).get("step") or 0)
        demo.cluster.node.kill_container(
            core.read_namespaced_pod(pod, "default").status.container_statuses[0].container_id
        )
    gone.add(pod)
    wait_for(lambda: pod in final.states, 90, f"{pod} to stop")
    following = _running_pod(demo, name, gone)
    resumed = wait_for(lambda: resumed_from(demo, following), 120, f"{following} to resume")
    assert resumed >= synced
    if how == "delete":
        reached = stack.interrupted_at(final.states[pod])
    else:  # the kernel's kill as the kubelet reports it: exit 137, nothing written
        assert final.states[pod].exit_code == 137, final.states[pod]
    return following, max(0, reached - resumed)


def _pod_loss(demo: Quickstart, name: str, faults: list[str], steps: int) -> list[int]:
    """Run one FineTuneJob through `faults` ("delete" or "kill", in order); steps lost at each."""
    _submit(demo, name, backoff_limit=len(faults), maxSteps=steps, saveSteps=SAVE_STEPS, loggingSteps=5)
    final = FinalStates(demo, name).start()
    gone: set[str] = set()
    pod = _running_pod(demo, name, gone)
    lost = []
    for how in faults:
        pod, steps_lost = _interrupt(demo, name, pod, gone, how, final)
        lost.append(steps_lost)
    status, _ = _follow(demo, name)
    final.stop()
    assert status["phase"] == "Succeeded", status
    assert status["metrics"]["steps"] == steps and status["podFailures"] == len(faults)
    assert _has_manifest(demo, status["adapter"]["uri"])
    for how, steps_lost in zip(faults, lost, strict=True):
        # SIGTERM checkpoints the step it is on; SIGKILL falls back to the last synced checkpoint.
        assert steps_lost == 0 if how == "delete" else steps_lost <= SAVE_STEPS, (faults, lost)
    print(
        f"{name}: {len(faults)} faults {faults}, steps lost {lost} (saveSteps {SAVE_STEPS}); "
        f"{steps} steps, valid manifest"
    )
    return lost


@pytest.mark.soak  # the short form of the soak variant below; make test keeps the node suite's deleted pod
def test_deleted_and_killed_pods_resume_from_the_last_checkpoint(demo: Quickstart) -> None:
    _pod_loss(demo, "preempted", ["delete", "kill"], steps=400)


@pytest.mark.soak
def test_soak_repeated_pod_loss(demo: Quickstart) -> None:
    _pod_loss(demo, "soak-preempted", ["delete", "kill", "delete", "kill", "delete"], steps=1000)


# --- store outages -------------------------------------------------------------------------------


def _outage_run(demo: Quickstart, name: str, target: str, seconds: float, backoff_limit: int) -> tuple[str, str | None]:
    """Stop MinIO the moment `name`'s trainer PUTs to `target` (a path part); the job's (phase, reason)."""
    assert demo.link and demo.minio
    outage = demo.link.outage_on(rf"PUT /{BUCKET}/adapters/default/{name}/[^ ]*/{target}", seconds)
    _submit(demo, name, backoff_limit=backoff_limit, maxSteps=60, saveSteps=20)
    status, seen = _follow(demo, name)
    assert outage.started.is_set(), f"the outage never triggered; {status}"
    outage.ended.wait(seconds + 30)
    assert outage.ended.is_set()
    # In no case does the status carry the URI of an adapter without its manifest.
    unpublished = [uri for uri in seen if not _has_manifest(demo, uri)]
    assert not unpublished, unpublished
    phase, reason = status["phase"], condition(status).get("reason")
    assert (phase, reason) in {("Succeeded", "TrainingComplete"), ("Failed", "StorageUnavailable")}, status
    if phase == "Failed":
        assert "adapter" not in status or not status["adapter"], status
    print(
        f"MinIO stopped {seconds:.0f} s at `{outage.request}`: {phase} ({reason}), "
        f"pod failures {status.get('podFailures', 0)}"
    )
    return phase, reason


@pytest.mark.soak  # a short form of test_soak_store_outages (a checkpoint PUT outage)
def test_store_outage_during_a_checkpoint_sync(demo: Quickstart) -> None:
    phase, _ = _outage_run(demo, "outage-checkpoint", "checkpoints/checkpoint-", 30, backoff_limit=2)
    assert phase == "Succeeded"  # the retries, or the Job's next pod, outlast a 30 s outage


@pytest.mark.soak  # a short form of test_soak_store_outages (an adapter PUT outage)
def test_store_outage_during_the_final_publish(demo: Quickstart) -> None:
    _outage_run(demo, "outage-publish", "adapter/", 30, backoff_limit=0)


def test_store_outage_beyond_every_retry_fails_with_storage_unavailable(demo: Quickstart) -> None:
    phase, reason = _outage_run(demo, "outage-long", "adapter/", 45, backoff_limit=0)
    assert (phase, reason) == ("Failed", "StorageUnavailable")


@pytest.mark.soak
def test_soak_store_outages(demo: Quickstart) -> None:
    outcomes = [
        _outage_run(demo, f"soak-outage-{i}", target, seconds, backoff_limit=2)
        for i, (target, seconds) in enumerate(
            [
                ("checkpoints/checkpoint-", 10),
                ("adapter/", 20),
                ("checkpoints/checkpoint-", 40),
                ("adapter/", 40),
                ("checkpoints/checkpoint-", 30),
                ("adapter/", 30),
            ]
        )
    ]
    print(f"{len(outcomes)} store outages: {outcomes}")


# --- deletion ------------------------------------------------------------------------------------


def _events(demo: Quickstart, name: str) -> dict[str, str]:
    assert demo.cluster
    events = client.CoreV1Api(demo.cluster.api()).list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}"
    )
    return {e.reason: e.message for e in events.items}


def test_deleting_a_running_job_stops_its_pod_and_deletes_its_objects(demo: Quickstart) -> None:
    assert demo.cluster
    _submit(demo, "tidy", delete=True, maxSteps=400, saveSteps=20)
    wait_for(lambda: (stack.status(demo, "tidy").get("checkpoint") or {}).get("step"), 180, "a synced checkpoint")
    body = get(demo, "tidy")
    assert body and "finetune.dev/delete-artifacts" in body["metadata"]["finalizers"]
    prefix = f"adapters/default/tidy/{body['metadata']['uid']}/"
    assert objects(demo, prefix)
    started = time.monotonic()
    client.CustomObjectsApi(demo.cluster.api()).delete_namespaced_custom_object(
        "finetune.dev", "v1alpha1", "default", FINETUNEJOB.plural, "tidy"
    )
    wait_for(lambda: get(demo, "tidy") is None, CLEANUP_DEADLINE + 90, "the FineTuneJob to go")
    took = time.monotonic() - started
    assert objects(demo, prefix) == []
    events = _events(demo, "tidy")
    assert "ArtifactsDeleted" in events and prefix in events["ArtifactsDeleted"], events
    batch = client.BatchV1Api(demo.cluster.api())
    wait_for(
        lambda: (
            not stack.pods(demo, "tidy")
            and not batch.list_namespaced_job("default", label_selector="finetune.dev/finetunejob=tidy").items
        ),
        60,
        "no pods or Jobs left",
    )
    print(f"running FineTuneJob deleted: pod stopped, store prefix emptied, gone in {took:.1f} s")


def test_a_store_outage_does_not_block_deletion(demo: Quickstart) -> None:
    assert demo.cluster and demo.minio
    _submit(demo, "stranded", delete=True, maxSteps=20, saveSteps=10)
    status, _ = _follow(demo, "stranded")
    assert status["phase"] == "Succeeded", status
    body = get(demo, "stranded")
    assert body
    prefix = f"adapters/default/stranded/{body['metadata']['uid']}/"
    demo.minio.stop()
    try:
        started = time.monotonic()
        client.CustomObjectsApi(demo.cluster.api()).delete_namespaced_custom_object(
            "finetune.dev", "v1alpha1", "default", FINETUNEJOB.plural, "stranded"
        )
        wait_for(lambda: get(demo, "stranded") is None, CLEANUP_DEADLINE + 90, "the finalizer to be released")
        took = time.monotonic() - started
    finally:
        demo.minio.start()
    events = _events(demo, "stranded")
    assert "ArtifactCleanupFailed" in events, events
    assert prefix in events["ArtifactCleanupFailed"], events
    assert objects(demo, prefix), "the objects are left, as the Warning says"
    print(f"store down during deletion: released after {took:.1f} s with {events['ArtifactCleanupFailed']!r}")
