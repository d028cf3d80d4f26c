"""Reading and driving the quickstart stack (`demo` fixture) from reliability tests."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import apply_objects
from devcluster.quickstart import BUCKET, EXAMPLE, Quickstart
from finetune_operator.api import FINETUNEJOB

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


def condition(status: dict[str, Any], ctype: str | None = None) -> dict[str, Any]:
    """The condition of type `ctype` (default: the one named after the phase, which says why)."""
    wanted = ctype or status.get("phase")
    return next((c for c in status.get("conditions") or [] if c.get("type") == wanted), {})


def objects(demo: Quickstart, prefix: str) -> list[str]:
    assert demo.minio
    return [o.object_name for o in demo.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)]
