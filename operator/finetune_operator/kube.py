"""The few Kubernetes API calls the operator makes, each idempotent."""

from __future__ import annotations

import contextvars
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from . import __version__
from .api import GROUP, VERSION
from .manifests.names import LABEL_OWNER_UID

API_CLASSES = ("CoreV1Api", "RbacAuthorizationV1Api", "BatchV1Api", "CustomObjectsApi")
"""Every API class the operator calls through."""


def make_api_client(connections: int) -> client.ApiClient:
    """In-cluster credentials when running as a pod, else the kubeconfig (KUBECONFIG honoured).

    `connections` should be the number of threads that call the API: the client keeps at most that
    many connections for reuse (its default is 5 per CPU) and a call finding none idle opens one
    more (a TLS handshake, on the apiserver too) that is then thrown away.

    The API classes are resolved here, at start-up: the client imports each on first use, with the
    ~290 models its methods name (0.5 s of CPU under the import lock), which stalled the first
    reconciles and made them the slowest of a run (1000 creates at 30/s: p99 0.84-0.92 s with
    the first jobs as the tail, against 0.12-0.17 s now)."""
    for api_class in API_CLASSES:
        getattr(client, api_class)
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


def _request(
    api: client.ApiClient, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> bytes:
    """A write through the client's connection pool and credentials, without its generated methods.

    Those validate every argument with pydantic and build the body into client models (a Job is some
    40 of them) only to serialise them back, and build models from the response too: 16 % of the
    operator's CPU in a burst of 1000 jobs, beyond the third that decoding responses took before
    (py-spy profiles in docs/benchmarks.md). The body goes out as the JSON it is; the raw response
    body comes back. A non-2xx answer raises ApiException, as the generated methods do."""
    headers = {"Accept": "application/json", "Content-Type": content_type, **api.default_headers}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)  # refreshes expiring tokens
    response = api.call_api(method, api.configuration.host + path, headers, body)
    try:
        data = cast(bytes, response.read())  # type: ignore[no-untyped-call]
    finally:
        response.response.release_conn()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return data


_CUSTOM_PLURALS = {"EvalRun": "evalruns", "FineTuneJob": "finetunejobs"}
_COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    **{kind: f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{plural}" for kind, plural in _CUSTOM_PLURALS.items()},
}
"""Where each kind the operator creates lives, by kind."""
_KINDS = {plural: kind for kind, plural in _CUSTOM_PLURALS.items()}
MERGE_PATCH = "application/merge-patch+json"


def _path(kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    path = _COLLECTIONS[kind].format(namespace=quote(namespace, safe=""))
    return "/".join(filter(None, (path, quote(name, safe=""), subresource)))


def _readers(api: client.ApiClient) -> dict[str, Callable[..., Any]]:
    core, rbac, batch = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.BatchV1Api(api)
    return {
        "ServiceAccount": core.read_namespaced_service_account,
        "Role": rbac.read_namespaced_role,
        "RoleBinding": rbac.read_namespaced_role_binding,
        "Job": batch.read_namespaced_job,
    }


def _owner_uids(api: client.ApiClient, obj: Mapping[str, Any]) -> set[str]:
    """Owners of the existing object: its owner references, and the owner-uid label (for the one child
    that has no owner reference, the cleanup Job of a FineTuneJob being deleted)."""
    meta = obj["metadata"]
    if obj["kind"] in _CUSTOM_PLURALS:
        existing = get_custom(api, _CUSTOM_PLURALS[obj["kind"]], meta["namespace"], meta["name"]) or {}
        return {ref.get("uid") for ref in existing.get("metadata", {}).get("ownerReferences") or []}
    found = _readers(api)[obj["kind"]](meta["name"], meta["namespace"]).metadata
    labelled = (found.labels or {}).get(LABEL_OWNER_UID)
    return {ref.uid for ref in found.owner_references or []} | ({labelled} if labelled else set())


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


def get_custom(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        result = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        return cast(dict[str, Any], result)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def patch_custom_status(
    api: client.ApiClient, plural: str, namespace: str, name: str, status_patch: Mapping[str, Any]
) -> str:
    """JSON merge patch of the status subresource: touches only the keys given (not the trainer's
    progress). Returns the resource's new resourceVersion."""
    path = _path(_KINDS[plural], namespace, name, "status")
    patched = _request(api, "PATCH", path, {"status": dict(status_patch)}, MERGE_PATCH)
    return str(json.loads(patched)["metadata"]["resourceVersion"])


def _patch_custom(api: client.ApiClient, plural: str, namespace: str, name: str, body: Mapping[str, Any]) -> None:
    """JSON merge patch of one of our custom resources (not its status)."""
    _request(api, "PATCH", _path(_KINDS[plural], namespace, name), dict(body), MERGE_PATCH)


def patch_custom_spec(
    api: client.ApiClient, plural: str, namespace: str, name: str, spec_patch: Mapping[str, Any]
) -> None:
    """JSON merge patch of spec (nulls delete keys)."""
    _patch_custom(api, plural, namespace, name, {"spec": dict(spec_patch)})


def patch_custom_finalizers(
    api: client.ApiClient, plural: str, namespace: str, name: str, *, finalizers: list[str], resource_version: str
) -> None:
    """Set metadata.finalizers; the resourceVersion makes a concurrent change (another controller's
    finalizer) a 409 and a retry rather than a lost write."""
    _patch_custom(
        api, plural, namespace, name, {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
    )


def _delete(api: client.ApiClient, path: str) -> None:
    """Delete; an object already gone is what deleting it wanted."""
    try:
        _request(api, "DELETE", path)
    except ApiException as error:
        if error.status != 404:
            raise


def delete_custom(api: client.ApiClient, plural: str, namespace: str, name: str) -> None:
    _delete(api, _path(_KINDS[plural], namespace, name))


def patch_job(api: client.ApiClient, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    _request(api, "PATCH", _path("Job", namespace, name), dict(patch), "application/strategic-merge-patch+json")


def delete_job(api: client.ApiClient, namespace: str, name: str) -> None:
    _delete(api, _path("Job", namespace, name) + "?propagationPolicy=Background")


class KeyedLocks:
    """One lock per resource: reconciles of one FineTuneJob woken by different watches never interleave."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def __call__(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def discard(self, key: tuple[str, str]) -> None:
        with self._guard:
            self._locks.pop(key, None)


class DelayedCalls:
    """The operator's reconcile queue: at most one pending call per key, now or after a delay.

    Watch events only queue a reconcile of their resource and return, so kopf drops each event's
    body at once. Run inline in the handler, a burst of 1000 jobs kept nearly every event of the
    burst decoded while it waited for a thread (peak RSS 250 MB against 175 MB); queued, the events
    for one resource that arrive before its reconcile starts share that reconcile, which reads the
    state at the time it runs. Rechecks (outcomes that change with time, retries) go through the
    same queue. The worker threads take what is due from one heap only when they are free, so a
    backlog stays in the heap, where later events for the same resource join it. In memory only:
    after a restart the operator lists and reconciles everything anyway.

    Every call runs in a copy of the context of the first handler that scheduled one: kopf.event()
    finds kopf's operator-wide event queue through context variables, which a bare thread lacks.
    One context, not one per call: kopf's context also holds the handler's cause, the watch event
    itself, so a context per queued call kept a whole burst's events decoded (peak RSS at 1000
    suspended jobs 158-160 MB against 115 MB).
    """

    WORKERS = 16
    """Threads that run reconciles: their API calls, not the CPU, bound them."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._pending: dict[tuple[str, str], tuple[int, Callable[[], None], float]] = {}
        self._context: contextvars.Context | None = None
        self._tokens = itertools.count()
        self._workers = workers
        self._threads: list[threading.Thread] = []

    def schedule(self, key: tuple[str, str], delay: float, call: Callable[[], None]) -> None:
        """Run `call` after `delay` seconds, or at the key's pending call's time if that is sooner.

        The new call replaces the pending one but never postpones it: a recheck queued by a reconcile
        must not delay the reconcile that an event queued meanwhile.
        """
        due = time.monotonic() + max(delay, 0.0)
        with self._cond:
            if self._context is None:
                self._context = contextvars.copy_context()
            pending = self._pending.get(key)
            if pending is not None:
                due = min(due, pending[2])
            token = next(self._tokens)
            self._pending[key] = (token, call, due)
            heapq.heappush(self._heap, (due, token, key))
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
                    for i in range(self._workers)
                ]
                for thread in self._threads:
                    thread.start()
            self._cond.notify()

    def cancel(self, key: tuple[str, str]) -> None:
        with self._cond:
            self._pending.pop(key, None)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _next_due(self) -> tuple[tuple[str, str], Callable[[], None], contextvars.Context]:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                due, token, key = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                entry = self._pending.get(key)
                if entry is not None and entry[0] == token:  # else replaced or cancelled since
                    del self._pending[key]
                    assert self._context is not None  # set by the schedule() that queued it
                    return key, entry[1], self._context.copy()

    def _work(self) -> None:
        while True:
            _run_logged(*self._next_due())


def _run_logged(key: tuple[str, str], call: Callable[[], None], context: contextvars.Context) -> None:
    try:
        context.run(call)
    except Exception:  # a pool thread has nobody to raise to
        logging.getLogger(__name__).exception("reconcile of %s/%s failed", *key)
