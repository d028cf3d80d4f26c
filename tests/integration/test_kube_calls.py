"""The operator's own API calls (`finetune_operator.kube`) against the real apiserver: they send raw
JSON rather than going through the generated client's methods, so their HTTP semantics (content
types, query parameters, errors) are checked here, call by call."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_operator import kube as calls
from finetune_operator.manifests.names import LABEL_OWNER_UID
from tests.kube import Kube


def _account(kube: Kube, owner_uid: str) -> dict[str, Any]:
    # Owned by label only: an owner reference to a made-up uid would be collected by the garbage collector.
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "trainer", "namespace": kube.namespace, "labels": {LABEL_OWNER_UID: owner_uid}},
    }


def _job(kube: Kube, name: str) -> dict[str, Any]:
    container = {"name": "main", "image": "local/none:dev", "command": ["true"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def test_create_or_adopt_creates_then_adopts_its_own_and_refuses_another_owners(kube: Kube) -> None:
    assert calls.create_or_adopt(kube.api, _account(kube, "uid-1")) is True
    assert calls.create_or_adopt(kube.api, _account(kube, "uid-1")) is False  # 409, ours: adopted
    with pytest.raises(calls.AdoptionConflictError, match="not owned by this resource"):
        calls.create_or_adopt(kube.api, _account(kube, "uid-2"))
    found = client.CoreV1Api(kube.api).read_namespaced_service_account("trainer", kube.namespace)
    assert found.metadata.labels[LABEL_OWNER_UID] == "uid-1"


def test_a_rejected_write_raises_the_apiservers_status_and_message(kube: Kube) -> None:
    with pytest.raises(ApiException) as raised:
        calls.create_or_adopt(kube.api, _job(kube, "Not_A_Valid_Name"))
    assert raised.value.status == 422
    assert "Not_A_Valid_Name" in raised.value.body  # the apiserver's message, for the status and the log


def test_job_patch_is_a_strategic_merge_and_delete_tolerates_a_missing_job(kube: Kube) -> None:
    calls.create_or_adopt(kube.api, _job(kube, "patched"))
    change = {"metadata": {"labels": {"checked": "yes"}}}
    calls.patch(kube.api, "Job", kube.namespace, "patched", change, patch_type="strategic")
    batch = client.BatchV1Api(kube.api)
    job = batch.read_namespaced_job("patched", kube.namespace)
    assert job.metadata.labels["checked"] == "yes" and job.spec.suspend is True  # the rest untouched
    read = calls.get(kube.api, "Job", kube.namespace, "patched")  # raw GET: the apiserver's JSON as a dict
    assert read is not None and read["metadata"]["labels"]["checked"] == "yes" and read["spec"]["suspend"] is True
    calls.delete(kube.api, "Job", kube.namespace, "patched")
    with pytest.raises(ApiException) as raised:
        batch.read_namespaced_job("patched", kube.namespace)
    assert raised.value.status == 404
    assert calls.get(kube.api, "Job", kube.namespace, "patched") is None
    calls.delete(kube.api, "Job", kube.namespace, "patched")  # already gone: no error


def test_a_guarded_status_patch_conflicts_on_a_moved_resource(kube: Kube) -> None:
    """What Plan.guarded relies on: the status subresource honours a resourceVersion precondition.
    (The operator reconciles this Model too: a first write that meets its write is retried on a fresh read.)"""
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "guarded", "namespace": kube.namespace},
        "spec": {"baseModel": {"uri": "file:///models/tiny"}},
    }
    kube.custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", kube.namespace, "models", body)

    def version() -> str:
        got = kube.custom.get_namespaced_custom_object("finetune.dev", "v1alpha1", kube.namespace, "models", "guarded")
        return str(got["metadata"]["resourceVersion"])

    for _ in range(10):
        read = version()
        try:
            calls.patch_status(kube.api, "Model", kube.namespace, "guarded", {"promotions": 3}, resource_version=read)
            break
        except ApiException as error:
            assert error.status == 409
    else:
        raise AssertionError("no guarded write went through in 10 tries")
    with pytest.raises(ApiException) as stale:  # a second writer that planned on the same read
        calls.patch_status(kube.api, "Model", kube.namespace, "guarded", {"promotions": 5}, resource_version=read)
    assert stale.value.status == 409
    current = kube.custom.get_namespaced_custom_object("finetune.dev", "v1alpha1", kube.namespace, "models", "guarded")
    assert current["status"].get("promotions") != 5
