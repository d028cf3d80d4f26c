"""A local Kubernetes for tests and `make demo`: a real control plane, a node, the operator.

Development tooling, not part of the product. The node is real (node.py: kubelet + containerd, pods
as containers of the images built from our Dockerfiles) for every test and `make demo`; only
bench/operator_scale.py, whose hundreds of pods a 2-core node cannot hold, runs the stand-in
(nodeagent.py: pods as local processes; docs/architecture.md says why). See controlplane.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from .controlplane import REPO_ROOT, ControlPlane, ToolMissingError, free_port, tool_path
from .images import BuiltImages, built_images
from .node import NODE_IP, NODE_NAME, NodeUnavailableError, RealNode
from .nodeagent import DEFAULT_NODES, LocalNodeAgent, NodeSpec

__all__ = [
    "DEFAULT_NODES",
    "KSERVE_CRDS",
    "NODE_IP",
    "NODE_NAME",
    "REPO_ROOT",
    "BuiltImages",
    "ControlPlane",
    "LocalCluster",
    "LocalNodeAgent",
    "NodeSpec",
    "NodeUnavailableError",
    "OperatorProcess",
    "RealNode",
    "ToolMissingError",
    "apply_objects",
    "built_images",
    "tool_path",
    "wait_for",
]

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    expected: str,
    describe: Callable[[], str] | None = None,
    interval: float = 0.2,
) -> T:
    """Poll `probe` until it returns something truthy; on timeout say what was expected and what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = describe() if describe else repr(value)
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {expected}; last seen: {seen}")
        time.sleep(interval)


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def apply_objects(api: client.ApiClient, objects: Iterable[dict[str, Any]], manager: str = "devcluster") -> None:
    """Server-side apply each object, custom resources included (what `kubectl apply --server-side` does)."""
    dynamic = DynamicClient(api)
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace") if resource.namespaced else None
        resource.server_side_apply(body=obj, namespace=namespace, field_manager=manager, force_conflicts=True)


KSERVE_CRDS = REPO_ROOT / "hack" / "kserve"
"""KServe's LLMInferenceService CRD, vendored (its README says from where), for tests of that serving target."""


def install_crds(api: client.ApiClient, crd_dir: Path = REPO_ROOT / "crds") -> None:
    apply_crds(api, [yaml.safe_load(path.read_text()) for path in sorted(crd_dir.glob("*.yaml"))])


def apply_crds(api: client.ApiClient, docs: list[dict[str, Any]], timeout: float = 30) -> None:
    """Apply CustomResourceDefinitions and wait until the apiserver serves them."""
    apply_objects(api, docs)
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        for doc in docs:
            crd = ext.read_custom_resource_definition(doc["metadata"]["name"])
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                return False
        return True

    wait_for(established, timeout, "CRDs to be Established")


@dataclass
class LocalCluster:
    """Control plane + a node: the real one when `images` is given, else the stand-in agent (for
    bench/operator_scale.py only). `start()`/`stop()` or a `with` block."""

    workdir: Path
    path_prepend: tuple[str, ...] = ()  # the stand-in agent's PATH for pod commands
    crds: bool = True  # install crds/ at start (off when a test installs them, e.g. through the Helm chart)
    audit: bool = False  # apiserver audit log (bench/operator_scale.py counts the operator's requests)
    profiling: bool = False  # apiserver /debug/pprof (bench/operator_scale.py --apiserver-profile)
    images: BuiltImages | None = None  # run the real node with these images (see built_images())
    control_plane: ControlPlane = field(init=False)
    agent: LocalNodeAgent = field(init=False, repr=False)
    node: RealNode = field(init=False, repr=False)

    def __post_init__(self) -> None:
        real = self.images is not None
        self.control_plane = ControlPlane(
            self.workdir,
            audit=self.audit,
            profiling=self.profiling,
            address=NODE_IP if real else "127.0.0.1",
            node_lifecycle=real,
        )

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def api(self) -> client.ApiClient:
        return api_client(self.kubeconfig)

    def start(self) -> LocalCluster:
        if self.images is not None:
            self.node = RealNode(
                self.workdir / "node",
                kubeconfig=self.control_plane.kubeconfig,
                pki=self.control_plane.pki,
                images=self.images.archives,
                image_ids=self.images.ids,
                pause_image=self.images.pause,
            ).claim()
        try:
            self.control_plane.start()
        except BaseException:
            if self.images is not None:
                self.node.stop()
            raise
        try:
            if self.images is not None:
                self.node.start()
                wait_for(
                    lambda: self.node.assert_running() or _node_ready(self.api()),
                    90,
                    f"node {NODE_NAME} Ready and untainted",
                    describe=lambda: _node_state(self.api()),
                )
            else:
                self.agent = LocalNodeAgent(
                    api=self.api(),
                    workdir=self.workdir,
                    server=self.control_plane.url,
                    ca_file=self.control_plane.pki / "ca.crt",
                    path_prepend=self.path_prepend,
                )
                self.agent.start()
            if self.crds:
                install_crds(self.api())
            wait_for(lambda: _default_service_account(self.api()), 30, "the default ServiceAccount")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if hasattr(self, "agent"):
            self.agent.stop()
        if hasattr(self, "node"):
            self._drain()
            self.node.stop()
        self.control_plane.stop()

    def _drain(self) -> None:
        """Delete every pod while the kubelet still runs, so it stops them as it would on a real node
        (SIGTERM, then the sandbox and its CNI address are released); node.stop() kills what is left.
        The controllers stop first, or the operator Deployment's pod would be back before the node idles."""
        try:
            self.control_plane.stop_controllers()
            core = client.CoreV1Api(self.api())
            for pod in core.list_pod_for_all_namespaces().items:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            wait_for(self.node.idle, 30, "the node's containers to stop")
        except Exception:  # a control plane that already died: the node's own teardown still runs
            pass

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_ready(api: client.ApiClient) -> bool:
    try:
        node = client.CoreV1Api(api).read_node(NODE_NAME)
    except ApiException:
        return False
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    return ready and not node.spec.taints


def _node_state(api: client.ApiClient) -> str:
    try:
        node = client.CoreV1Api(api).read_node(NODE_NAME)
    except ApiException as error:
        return f"no Node yet ({error.reason})"
    conditions = {c.type: c.status for c in node.status.conditions or []}
    return f"conditions {conditions}, taints {[t.key for t in node.spec.taints or []]}"


def _default_service_account(api: client.ApiClient) -> bool:
    try:
        client.CoreV1Api(api).read_namespaced_service_account("default", "default")
        return True
    except ApiException:
        return False


@dataclass
class OperatorProcess:
    """The operator as users run it (`python -m finetune_operator`), in a subprocess."""

    kubeconfig: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "FINETUNE_METRICS_PORT": str(self.metrics_port),
            "FINETUNE_HEALTH_PORT": str(self.health_port),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "operator"), env.get("PYTHONPATH")]))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finetune_operator", "--standalone"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout: float = 60) -> OperatorProcess:
        def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(healthy, timeout, "the operator's /healthz", describe=lambda: self.log()[-2000:])
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        """The operator's /metrics page, as Prometheus scrapes it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, sample: str) -> float | None:
        """One sample's value, `sample` as the page prints it (name and labels); None while absent."""
        for line in self.metrics().splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
