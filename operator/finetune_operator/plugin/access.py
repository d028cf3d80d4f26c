"""The plugin's few API calls, made with the user's kubeconfig; the apiserver's refusals become `Refused`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlencode

from kubernetes import config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from .. import __version__
from ..api import GROUP, KINDS, VERSION, Kind
from ..kube import MERGE_PATCH, open_request


class Refused(Exception):  # noqa: N818 - a refusal is the normal answer, not a bug
    """The apiserver said no (403, 404, ...) or could not be reached: the message is for the user as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """Which cluster and namespace: kubectl's own flags, resolved against the kubeconfig."""

    kubeconfig: str | None
    context: str | None
    namespace: str | None
    all_namespaces: bool = False


def resolve_kind(word: str) -> Kind:
    """`ftj`, `finetunejob`, `finetunejobs`, `FineTuneJob`, `model`, ... as kubectl accepts them."""
    lowered = word.lower()
    for kind in KINDS:
        if lowered in {kind.kind.lower(), kind.plural, kind.singular, *kind.short_names}:
            return kind
    names = ", ".join(f"{k.singular} ({'/'.join(k.short_names)})" for k in KINDS)
    raise Refused(f'error: the server doesn\'t have a resource type "{word}" here; use one of: {names}')


def split_ref(ref: str) -> tuple[Kind, str]:
    """`ftj/x` or `finetunejob/x` -> (kind, name)."""
    kind, slash, name = ref.partition("/")
    if not slash or not name:
        raise Refused(f"error: {ref!r} is not TYPE/NAME (for example ftj/quickstart or model/support-bot)")
    return resolve_kind(kind), name


class Cluster:
    """An ApiClient from the kubeconfig, and the namespace kubectl would use."""

    def __init__(self, target: Target) -> None:
        try:
            self.api: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig, context=target.context
            )
            contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig
            )
        except (ConfigException, OSError) as error:
            raise Refused(f"error: cannot load the kubeconfig: {error}") from error
        if target.context:
            active = next((c for c in contexts if c["name"] == target.context), active)
        self.api.user_agent = f"kubectl-finetune/{__version__}"
        self.namespace = target.namespace or (active.get("context") or {}).get("namespace") or "default"
        self.all_namespaces = target.all_namespaces

    def request(self, method: str, path: str, body: Any = None, *, stream: bool = False, timeout: float = 30) -> Any:
        """One call with the user's credentials; the raw urllib3 response when `stream`, else parsed JSON."""
        content = MERGE_PATCH if method == "PATCH" else "application/json"
        try:
            response = open_request(self.api, method, path, body, content, timeout=None if stream else timeout)
        except ApiException as error:
            raise Refused(refusal(error.status, error.body or b""), error.status) from error
        except Exception as error:  # urllib3's connection errors: the cluster is not there
            raise Refused(f"error: cannot reach {self.api.configuration.host}: {error}", 502) from error
        if stream:
            return response
        try:
            return json.loads(response.read())
        finally:
            response.release_conn()

    def collection(self, kind: Kind, namespace: str | None) -> str:
        where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
        return f"/apis/{GROUP}/{VERSION}{where}/{kind.plural}"

    def items(self, kind: Kind) -> list[dict[str, Any]]:
        namespace = None if self.all_namespaces else self.namespace
        return cast(list[dict[str, Any]], self.request("GET", self.collection(kind, namespace))["items"])

    def get(self, kind: Kind, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.request("GET", f"{self.collection(kind, self.namespace)}/{quote(name)}"))

    def patch(self, kind: Kind, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        path = f"{self.collection(kind, self.namespace)}/{quote(name)}"
        return cast(dict[str, Any], self.request("PATCH", path, dict(body)))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        query = urlencode({"labelSelector": selector})
        path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods?{query}"
        return cast(list[dict[str, Any]], self.request("GET", path)["items"])

    def log(self, pod: str, *, follow: bool, tail: int | None) -> Iterator[bytes]:
        query = {"follow": "true" if follow else "false", **({"tailLines": str(tail)} if tail is not None else {})}
        path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods/{quote(pod)}/log?{urlencode(query)}"
        response = self.request("GET", path, stream=True)
        try:
            yield from response.stream(4096, decode_content=True)
        finally:
            response.release_conn()


def refusal(status: int, data: bytes | str) -> str:
    """kubectl's wording: `Error from server (Forbidden): <the apiserver's message>`."""
    text = data if isinstance(data, str) else data.decode(errors="replace")
    try:
        body = json.loads(text)
        reason, message = body.get("reason") or str(status), body.get("message") or ""
    except ValueError:
        reason, message = str(status), text[:500]
    return f"Error from server ({reason}): {message}"


__all__ = ["Cluster", "Refused", "Target", "resolve_kind", "split_ref"]
