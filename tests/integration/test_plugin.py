"""`kubectl finetune` against the real apiserver, found by kubectl on PATH, as a user runs it: get,
describe, logs and dashboard on jobs run by the stand-in trainer, and a read-only single-namespace
user who sees their namespace and is told "forbidden" everywhere else. (promote and rollback are
driven in test_model_registry.py, where a Model has versions to move between.)"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.integration.conftest import Kube, quick_spec
from tests.plugin_runner import dashboard, kubectl_finetune

pytestmark = pytest.mark.cluster


def finetune(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return kubectl_finetune(kube.kubeconfig, *args, "-n", kube.namespace)


def test_get_describe_and_logs_tell_a_jobs_story(kube: Kube) -> None:
    kube.apply_ftj("good", quick_spec("success"))
    kube.apply_ftj("bad", quick_spec("data-error"))
    kube.wait_phase("good", "Succeeded")
    kube.wait_phase("bad", "Failed")

    listed = finetune(kube, "get")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ADAPTER", "AGE"]
    assert rows[0].split()[:2] == ["ftj/bad", "Failed"] and rows[1].split()[:2] == ["ftj/good", "Succeeded"]
    only = finetune(kube, "get", "evr")
    none = f"No resources found in {kube.namespace} namespace.\n"
    assert (only.returncode, only.stdout, only.stderr) == (0, "", none)

    good = finetune(kube, "describe", "ftj/good")
    assert good.returncode == 0, good.stderr
    assert "Phase:      Succeeded" in good.stdout
    for line in ("[x] validated", "[x] queued", "[x] running     100%", "[x] publishing  file:///tmp/adapters/"):
        assert line in good.stdout, good.stdout
    assert "[-] evaluating  no spec.evaluation" in good.stdout and "TrainingComplete" in good.stdout
    bad = finetune(kube, "describe", "ftj/bad")
    assert "[!] running     DataError" in bad.stdout, bad.stdout
    assert "What to do:  Fix the dataset (the message names file, line and column)" in bad.stdout
    assert "train.jsonl line 3: field 'output' is missing" in bad.stdout

    logs = finetune(kube, "logs", "ftj/good")
    assert logs.returncode == 0, logs.stderr
    assert "stand-in trainer: scenario success for good" in logs.stdout
    missing = finetune(kube, "describe", "ftj/nothing")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): finetunejobs.finetune.dev "nothing" not found'
    wrong = finetune(kube, "logs", "model/x")
    assert wrong.returncode == 1 and "a Model runs no pods" in wrong.stderr


def _read_only_kubeconfig(kube: Kube, path: Path) -> Path:
    """A ServiceAccount that may only get, list and watch our kinds and pods (and logs) in one namespace."""
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    ns = kube.namespace
    core.create_namespaced_service_account(ns, {"metadata": {"name": "viewer"}})
    rules = [
        {"apiGroups": ["finetune.dev"], "resources": ["*"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list", "watch"]},
    ]
    rbac.create_namespaced_role(ns, {"metadata": {"name": "viewer"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "viewer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}],
        },
    )
    token = core.create_namespaced_service_account_token("viewer", ns, {"spec": {"expirationSeconds": 3600}})
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:  # inline it: the file path is the admin's
        cluster = {
            "server": cluster["server"],
            "certificate-authority-data": base64.b64encode(
                Path(cluster["certificate-authority"]).read_bytes()
            ).decode(),
        }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "viewer", "user": {"token": token.status.token}}],
        "contexts": [{"name": "viewer", "context": {"cluster": "local", "user": "viewer", "namespace": ns}}],
        "current-context": "viewer",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _fetch(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_read_only_single_namespace_user_sees_that_namespace_and_is_told_forbidden_elsewhere(
    kube: Kube, tmp_path: Path
) -> None:
    kube.apply_ftj("seen", quick_spec("success"))
    kube.wait_phase("seen", "Succeeded")
    viewer = _read_only_kubeconfig(kube, tmp_path / "viewer.kubeconfig")

    mine = kubectl_finetune(viewer, "get")  # the context's namespace
    assert mine.returncode == 0, mine.stderr
    assert "ftj/seen" in mine.stdout and "Succeeded" in mine.stdout
    assert kubectl_finetune(viewer, "describe", "ftj/seen").returncode == 0
    assert "scenario success" in kubectl_finetune(viewer, "logs", "ftj/seen").stdout

    elsewhere = kubectl_finetune(viewer, "get", "-n", "default")
    assert elsewhere.returncode == 1 and elsewhere.stdout == ""
    assert elsewhere.stderr.splitlines()[0] == (
        "Error from server (Forbidden): finetunejobs.finetune.dev is forbidden: User "
        f'"system:serviceaccount:{kube.namespace}:viewer" cannot list resource "finetunejobs" in API group '
        '"finetune.dev" in the namespace "default"'
    )
    everywhere = kubectl_finetune(viewer, "get", "ftj", "-A")
    assert everywhere.returncode == 1
    assert 'cannot list resource "finetunejobs" in API group "finetune.dev" at the cluster scope' in everywhere.stderr
    # No more than kubectl would let them: the one write the plugin makes is refused by RBAC.
    model = {"apiVersion": "finetune.dev/v1alpha1", "kind": "Model", "metadata": {"name": "support"}}
    model["spec"] = {"baseModel": {"uri": "file:///models/tiny"}}
    kube.custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", kube.namespace, "models", model)
    unpin = kubectl_finetune(viewer, "unpin", "model/support")
    assert unpin.returncode == 1
    assert unpin.stderr.strip() == (
        'Error from server (Forbidden): models.finetune.dev "support" is forbidden: User '
        f'"system:serviceaccount:{kube.namespace}:viewer" cannot patch resource "models" in API group '
        f'"finetune.dev" in the namespace "{kube.namespace}"'
    )
    refused = kubectl_finetune(viewer, "promote", "model/support", "v1")  # checked before any write
    assert refused.returncode == 1 and "version 1 does not exist" in refused.stderr, refused.stderr

    with dashboard(viewer) as url:
        status, body = _fetch(f"{url}api/finetunejobs")
        assert status == 200 and [i["metadata"]["name"] for i in json.loads(body)["items"]] == ["seen"]
        assert [s["state"] for s in json.loads(body)["items"][0]["dashboard"]["steps"]][:4] == ["done"] * 4
        status, body = _fetch(f"{url}api/pods")
        assert status == 404  # only our kinds are proxied
        status, _ = _fetch(f"{url}api/finetunejobs", host="evil.example")
        assert status == 403
    with dashboard(viewer, "-n", "default") as url:
        status, body = _fetch(f"{url}api/models")
        assert status == 403 and "forbidden" in json.loads(body)["message"]
        assert "Error from server (Forbidden)" in json.loads(body)["message"]


def test_the_dashboard_streams_a_watch_through_the_users_credentials(kube: Kube) -> None:
    with dashboard(kube.kubeconfig, "-n", kube.namespace) as url:
        _, body = _fetch(f"{url}api/finetunejobs")
        version = json.loads(body)["metadata"]["resourceVersion"]
        seen: list[dict] = []
        started = time.monotonic()
        with urllib.request.urlopen(f"{url}api/finetunejobs?watch=1&timeoutSeconds=30&resourceVersion={version}") as w:
            kube.apply_ftj("watched", quick_spec("success"))
            for line in w:
                event = json.loads(line)
                seen.append(event)
                if event["object"].get("status", {}).get("phase") == "Succeeded":
                    break
        phases = [e["object"].get("status", {}).get("phase") for e in seen]
        assert seen[0]["type"] == "ADDED" and phases[-1] == "Succeeded", phases
        assert seen[-1]["object"]["dashboard"]["steps"][3] == {
            "name": "publishing",
            "state": "done",
            "detail": seen[-1]["object"]["status"]["adapter"]["uri"],
        }
        print(f"watch through the dashboard: {len(seen)} events in {time.monotonic() - started:.1f} s: {phases}")
