"""The few Kubernetes API calls the operator makes, each idempotent, keyed by kind name.

Our own kinds' paths come from the registry (api.KINDS); the built-in kinds the operator creates are
listed here. `KubeApi` is the executor's API protocol (executor.Api) over a real client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from . import __version__
from .api import GROUP, KINDS, VERSION, is_custom_kind
from .manifests.names import LABEL_OWNER_UID


def make_api_client(connections: int) -> client.ApiClient:
    """In-cluster credentials when running as a pod, else the kubeconfig (KUBECONFIG honoured).

    `connections` should be the number of threads that call the API: the client keeps at most that
    many connections for reuse (its default is 5 per CPU) and a call finding none idle opens one
    more (a TLS handshake, on the apiserver too) that is then thrown away.

    No generated API class is used (every call goes through `_request`): the client imports each on
    first use, with the ~290 models its methods name (0.5 s of CPU under the import lock), which
    stalled the first reconciles of a run when they did."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = connections
    api = client.ApiClient(configuration)
    # Our own name in audit logs and apiserver metrics, instead of the generic client's.
    api.user_agent = f"finetune-operator/{__version__}"
    return api


class AdoptionConflictError(RuntimeError):
    """An object with the deterministic name exists but belongs to someone else."""


def open_request(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    *,
    timeout: float | None = None,
) -> Any:
    """A call through the client's connection pool and credentials, without its generated methods; the
    urllib3 response, its body not read yet (a watch or a log is read as it streams).

    Those methods validate every argument with pydantic and build the body into client models (a Job is
    some 40 of them) only to serialise them back, and build models from the response too: a sixth of the
    operator's interpreter time in a burst of 1000 jobs (py-spy profiles and bench/kube_writes.py's
    figures in docs/benchmarks.md, "Operator scale"). The body goes out as the JSON it is. A non-2xx
    answer raises ApiException, as the generated methods do."""
    headers = {"Accept": "application/json", "Content-Type": content_type, **api.default_headers}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)  # refreshes expiring tokens
    response = api.call_api(method, api.configuration.host + path, headers, body, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        try:
            response.read()  # type: ignore[no-untyped-call]
        finally:
            response.response.release_conn()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


def _request(
    api: client.ApiClient, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> bytes:
    """open_request, read whole: the raw response body."""
    response = open_request(api, method, path, body, content_type)
    try:
        return cast(bytes, response.read())
    finally:
        response.release_conn()


_COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    # KServe's, when installed: v1alpha2 is its storage version, so no conversion webhook is called.
    "LLMInferenceService": "/apis/serving.kserve.io/v1alpha2/namespaces/{namespace}/llminferenceservices",
    **{k.kind: f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{k.plural}" for k in KINDS},
}
"""Where each kind the operator reads or writes lives, by kind name."""
MERGE_PATCH = "application/merge-patch+json"
_CONTENT_TYPES = {"merge": MERGE_PATCH, "strategic": "application/strategic-merge-patch+json"}


def _path(kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    path = _COLLECTIONS[kind].format(namespace=quote(namespace, safe=""))
    return "/".join(filter(None, (path, quote(name, safe=""), subresource)))


def get(api: client.ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object as the apiserver holds it, or None if there is none."""
    try:
        return cast(dict[str, Any], json.loads(_request(api, "GET", _path(kind, namespace, name))))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _owner_uids(api: client.ApiClient, obj: Mapping[str, Any]) -> set[str]:
    """Owners of the existing object: its owner references, and the owner-uid label (for the one child
    that has no owner reference, the cleanup Job of a FineTuneJob being deleted)."""
    meta = obj["metadata"]
    found = (get(api, obj["kind"], meta["namespace"], meta["name"]) or {}).get("metadata") or {}
    owners = {ref.get("uid") for ref in found.get("ownerReferences") or []}
    labelled = (found.get("labels") or {}).get(LABEL_OWNER_UID)
    return owners | ({labelled} if labelled and not is_custom_kind(obj["kind"]) else set())


def create_or_adopt(api: client.ApiClient, obj: Mapping[str, Any]) -> bool:
    """Create `obj`; if it already exists and is ours (same controller uid), adopt it. True if created."""
    meta = obj["metadata"]
    try:
        _request(api, "POST", _path(obj["kind"], meta["namespace"]), dict(obj))
        return True
    except ApiException as error:
        if error.status != 409:
            raise
    owners = _owner_uids(api, obj)
    wanted = {ref["uid"] for ref in meta.get("ownerReferences", [])} | {(meta.get("labels") or {}).get(LABEL_OWNER_UID)}
    if not owners & wanted:
        raise AdoptionConflictError(
            f"{obj['kind']} {meta['namespace']}/{meta['name']} exists and is not owned by this resource; "
            "delete or rename it"
        )
    return False


def patch(
    api: client.ApiClient,
    kind: str,
    namespace: str,
    name: str,
    body: Mapping[str, Any],
    *,
    patch_type: str = "merge",
) -> None:
    """A JSON merge patch (nulls delete keys), or a strategic merge patch of a built-in kind."""
    _request(api, "PATCH", _path(kind, namespace, name), dict(body), _CONTENT_TYPES[patch_type])


def patch_status(
    api: client.ApiClient,
    kind: str,
    namespace: str,
    name: str,
    status_patch: Mapping[str, Any],
    *,
    resource_version: str | None = None,
) -> str:
    """JSON merge patch of the status subresource: touches only the keys given (not the trainer's
    progress). With `resource_version`, only onto that version (409 Conflict if the resource moved on).
    Returns the resource's new resourceVersion."""
    path = _path(kind, namespace, name, "status")
    body: dict[str, Any] = {"status": dict(status_patch)}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    patched = _request(api, "PATCH", path, body, MERGE_PATCH)
    return str(json.loads(patched)["metadata"]["resourceVersion"])


def delete(api: client.ApiClient, kind: str, namespace: str, name: str) -> None:
    """Delete, its dependents in the background (a Job's default would orphan its pods); an object
    already gone is what deleting it wanted."""
    try:
        _request(api, "DELETE", _path(kind, namespace, name) + "?propagationPolicy=Background")
    except ApiException as error:
        if error.status != 404:
            raise


class KubeApi:
    """The executor's API protocol over a kubernetes client (executor.Api)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.client = api

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return get(self.client, kind, namespace, name)

    def create_or_adopt(self, obj: Mapping[str, Any]) -> bool:
        return create_or_adopt(self.client, obj)

    def patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any], patch_type: str = "merge") -> None:
        patch(self.client, kind, namespace, name, body, patch_type=patch_type)

    def patch_status(
        self, kind: str, namespace: str, name: str, status_patch: Mapping[str, Any], resource_version: str | None = None
    ) -> str:
        return patch_status(self.client, kind, namespace, name, status_patch, resource_version=resource_version)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        delete(self.client, kind, namespace, name)
