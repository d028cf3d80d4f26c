"""Launchers: how the pods of one training run are laid out, on top of the one-pod Job of job.py.

    launch(owner, spec, run, settings) -> [objects]   # run: attempt, group restart, counted restarts

- One rank: the Job of job.py, unchanged.
- One pod with several ranks (GPUs, or distributed.processesPerNode on CPU): the same Job; the
  trainer starts torchrun in the pod, one process per rank, as the PET_* variables say.
- Several pods (resources.nodes > 1): a headless Service, then an Indexed Job of `nodes` pods named
  `<job>-<index>` under the Service's subdomain. Pod 0 hosts the rendezvous, and its global rank 0
  reports, checkpoints and publishes.

The PET_* names are the ones torchrun reads its options from, and the ones Kubeflow Trainer sets.
A group Job never retries a pod by itself (backoffLimit 0): one failed pod fails the Job, the Job
controller stops the others, and the attempt planner starts the next group (`Run.restart`), which
resumes from the newest checkpoint and counts once against spec.backoffLimit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..api.finetunejob import FineTuneJobSpec
from ..config import OperatorSettings
from .job import build_training_job
from .names import (
    ANNOTATION_COMPLETION_INDEX,
    ANNOTATION_COUNTED_RESTARTS,
    LABEL_COMPONENT,
    LABEL_OWNER_UID,
    LABEL_RESTART,
    Owner,
    child_metadata,
    job_name,
    ranks_service_name,
)

MASTER_PORT = 29500
LOOPBACK = "127.0.0.1"
_INDEX_ROOM = 6
"""Characters a group Job's name leaves for `-<index>` in its pods' hostnames (63 at most)."""


@dataclass(frozen=True)
class Run:
    """One run of an attempt's pods: the first, or a group restart after a pod failed."""

    attempt: int
    restart: int = 0
    counted_restarts: int = 0
    """Restarts before this one that counted against spec.backoffLimit."""


def torchrun_env(spec: FineTuneJobSpec, master_addr: str, node_rank: dict[str, Any]) -> list[dict[str, Any]]:
    """torchrun's own option variables; an empty list for a one-rank job, which runs without torchrun."""
    if spec.world_size == 1:
        return []
    return [
        {"name": "PET_NNODES", "value": str(spec.resources.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.ranks_per_node)},
        {"name": "PET_NODE_RANK", **node_rank},
        {"name": "PET_MASTER_ADDR", "value": master_addr},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def _with_env(job: dict[str, Any], env: list[dict[str, Any]]) -> dict[str, Any]:
    if not env:
        return job
    job = copy.deepcopy(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [*container["env"], *env]
    return job


def ranks_service(owner: Owner) -> dict[str, Any]:
    """Headless, and publishing pods before they are ready: rank 1 must resolve pod 0 while both start."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, ranks_service_name(owner), "trainer"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_OWNER_UID: owner.uid, LABEL_COMPONENT: "trainer"},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "protocol": "TCP"}],
        },
    }


def as_group(job: dict[str, Any], spec: FineTuneJobSpec, service: str, run: Run) -> dict[str, Any]:
    """The one-pod Job as an Indexed Job of `resources.nodes` pods that stand or fall together."""
    name = job["metadata"]["name"]
    index = {"valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_COMPLETION_INDEX}']"}}}
    group = _with_env(job, torchrun_env(spec, f"{name}-0.{service}", index))
    nodes = spec.resources.nodes
    group["spec"].update(completionMode="Indexed", completions=nodes, parallelism=nodes, backoffLimit=0)
    template = group["spec"]["template"]
    template["spec"]["subdomain"] = service
    for labels in (group["metadata"]["labels"], template["metadata"]["labels"]):
        labels[LABEL_RESTART] = str(run.restart)
    group["metadata"]["annotations"][ANNOTATION_COUNTED_RESTARTS] = str(run.counted_restarts)
    return group


def launch(owner: Owner, spec: FineTuneJobSpec, run: Run, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The objects of one run, in creation order: the Service before the pods that resolve it."""
    if spec.resources.nodes == 1:
        job = build_training_job(owner, spec, run.attempt, settings)
        return [_with_env(job, torchrun_env(spec, LOOPBACK, {"value": "0"}))]
    name = job_name(owner, run.attempt, run.restart, limit=63 - _INDEX_ROOM)
    job = build_training_job(owner, spec, run.attempt, settings, name=name)
    service = ranks_service(owner)
    return [service, as_group(job, spec, service["metadata"]["name"], run)]
