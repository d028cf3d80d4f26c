"""Reading and driving the quickstart stack (`demo` fixture) from reliability tests."""

from __future__ import annotations

import copy
import json
import re
import threading
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from devcluster import apply_objects, wait_for
from devcluster.quickstart import BUCKET, EXAMPLE, Quickstart
from finetune_operator.api import FINETUNEJOB, TERMINAL_PHASES
from finetune_operator.api.contract import TrainerResult

GROUP, VERSION = "finetune.dev", "v1alpha1"


def example_finetunejob(name: str, **training: Any) -> dict[str, Any]:
    """The quickstart FineTuneJob (tiny model, MinIO) under another name, with training overrides."""
    body: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    body["metadata"] = {"name": name, "namespace": "default"}
    body["spec"]["training"].update(training)
    return body


def apply(demo: Quickstart, *bodies: dict[str, Any]) -> None:
    assert demo.cluster
    apply_objects(demo.cluster.api(), bodies)


def get(demo: Quickstart, name: str, plural: str = FINETUNEJOB.plural) -> dict[str, Any] | None:
    assert demo.cluster
    try:
        found: dict[str, Any] = client.CustomObjectsApi(demo.cluster.api()).get_namespaced_custom_object(
            GROUP, VERSION, "default", plural, name
        )
        return found
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def status(demo: Quickstart, name: str, plural: str = FINETUNEJOB.plural) -> dict[str, Any]:
    return (get(demo, name, plural) or {}).get("status") or {}


def finish(demo: Quickstart, name: str, timeout: float = 420) -> dict[str, Any]:
    """The FineTuneJob's status once its phase is terminal."""
    done: dict[str, Any] = wait_for(
        lambda: (s := status(demo, name)).get("phase") in TERMINAL_PHASES and s,
        timeout,
        f"{name} to finish",
        describe=lambda: json.dumps(status(demo, name))[-1500:],
    )
    return done


def pods(demo: Quickstart, name: str, job: str | None = None) -> list[client.V1Pod]:
    """The FineTuneJob's pods, oldest first; with `job`, only that Job's."""
    assert demo.cluster
    selector = f"finetune.dev/finetunejob={name}" + (f",batch.kubernetes.io/job-name={job}" if job else "")
    found = client.CoreV1Api(demo.cluster.api()).list_namespaced_pod("default", label_selector=selector).items
    return sorted(found, key=lambda p: p.metadata.creation_timestamp)


def condition(status: dict[str, Any], ctype: str | None = None) -> dict[str, Any]:
    """The condition of type `ctype` (default: the one named after the phase, which says why)."""
    wanted = ctype or status.get("phase")
    return next((c for c in status.get("conditions") or [] if c.get("type") == wanted), {})


def objects(demo: Quickstart, prefix: str) -> list[str]:
    assert demo.minio
    return [o.object_name for o in demo.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)]


def pod_log(demo: Quickstart, pod: str) -> str:
    """The pod's log as `kubectl logs` reads it from the kubelet; empty before its container starts."""
    assert demo.cluster
    try:
        return str(client.CoreV1Api(demo.cluster.api()).read_namespaced_pod_log(pod, "default"))
    except ApiException:
        return ""


def resumed_from(demo: Quickstart, pod: str) -> int | None:
    """The checkpoint step the trainer in `pod` says it resumed from; None until it says so."""
    found = re.search(r"resuming from \S+ \(step (\d+)\)", pod_log(demo, pod))
    return int(found.group(1)) if found else None


def interrupted_at(terminated: client.V1ContainerStateTerminated) -> int:
    """The step a trainer stopped by SIGTERM reached: its termination message says `Interrupted ... at step N`."""
    result = TrainerResult.model_validate_json(terminated.message)
    found = re.search(r"at step (\d+)", result.message or "")
    assert result.reason == "Interrupted" and found, result
    return int(found.group(1))


class FinalStates:
    """The last terminated container state of each pod of a FineTuneJob, recorded by a watch from
    `start()` on: a deleted pod's state, termination message included, goes with the pod."""

    def __init__(self, demo: Quickstart, job: str) -> None:
        self.demo, self.job = demo, job
        self.states: dict[str, client.V1ContainerStateTerminated] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> FinalStates:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        """Watch in rounds of a minute until stopped: one watch would end at its timeout, mid-soak."""
        assert self.demo.cluster
        core = client.CoreV1Api(self.demo.cluster.api())
        while not self._stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                core.list_namespaced_pod,
                "default",
                label_selector=f"finetune.dev/finetunejob={self.job}",
                timeout_seconds=60,
            ):
                pod = event["object"]
                for container in pod.status.container_statuses or []:
                    if container.state.terminated:
                        self.states[pod.metadata.name] = container.state.terminated
                if self._stop.is_set():
                    stream.stop()
