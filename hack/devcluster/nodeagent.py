"""A "local node": fake kubelets that run pods' container commands as local processes.

Development tool only (tests and `make demo`), never part of the product. It registers Nodes (one
with GPUs and the usual GPU taint, one CPU-only), and for every pod the scheduler binds to them it
does what a kubelet would, as far as a process can stand in for a container:

- resolves env (`value`, `secretKeyRef`, `configMapKeyRef`, `fieldRef`) and fails the pod with
  `CreateContainerConfigError` while a referenced Secret or key is missing, as the kubelet does;
- gives the process its service-account identity: a bound token from the TokenRequest API, in a
  kubeconfig named by `KUBECONFIG`;
- maps emptyDir mount paths inside env values (`HOME=/workspace`) to a per-pod folder, and points
  `FINETUNE_TERMINATION_LOG` at the file it reads as the termination message;
- reports Running, then Succeeded/Failed with the exit code, the termination message (or the log
  tail with FallbackToLogsOnError), and `OOMKilled` when the process died of SIGKILL (the kernel OOM
  killer's signal);
- pulls nothing: images are ignored, except that an image from an `*.invalid` registry fails with
  `ErrImagePull` (RFC 6761 reserves .invalid), so image-pull failures can be exercised;
- stops the process when the pod is deleted as the kubelet does (SIGTERM, SIGKILL after the pod's
  grace period) and reports the exit as the pod's final status, so the Job controller counts it and
  starts a replacement.

What it cannot do: resource limits, PVC mounts, networking, real images. A command that is not on
this machine fails the pod with a message saying so.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("devcluster.nodeagent")

TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: str
    memory: str
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"

    def manifest(self) -> dict[str, Any]:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "finetune.dev/local-node": "true"}
        taints = []
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
            taints.append({"key": self.gpu_resource, "value": "present", "effect": "NoSchedule"})
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": taints},
        }

    def status(self) -> dict[str, Any]:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "ephemeral-storage": "100Gi"}
        if self.gpus:
            capacity[self.gpu_resource] = str(self.gpus)
        now = _now()
        return {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "LocalNodeReady",
                        "message": "local node agent",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    },
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "v0.0.0-local",
                    "containerRuntimeVersion": "local-process://0",
                    "kernelVersion": "",
                    "osImage": "local",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }


DEFAULT_NODES = (
    NodeSpec("local-gpu", cpu="32", memory="256Gi", gpus=2),
    NodeSpec("local-cpu", cpu="32", memory="128Gi"),
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """A Secret/ConfigMap (or key) the pod needs is missing: the kubelet's CreateContainerConfigError."""


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    started_at: str
    name: str
    stopping: bool = False
    """The pod is being deleted: the exit is the kubelet's kill, not the container's doing."""
    reported: threading.Event = field(default_factory=threading.Event)


@dataclass
class LocalNodeAgent:
    api: client.ApiClient
    workdir: Path
    server: str
    ca_file: Path
    nodes: tuple[NodeSpec, ...] = DEFAULT_NODES
    path_prepend: tuple[str, ...] = ()
    _running: dict[str, _Running] = field(default_factory=dict)
    _handled: set[str] = field(default_factory=set)
    _stopping: set[str] = field(default_factory=set)
    _terminating: int = 0
    """Pods being stopped right now: new processes wait for them (on this node they share one network,
    so a replacement operator pod would find its ports still taken)."""
    _terminated: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def register_nodes(self) -> None:
        for node in self.nodes:
            try:
                self.core.create_node(node.manifest())
            except ApiException as error:
                if error.status != 409:
                    raise
            # The TaintNodesByCondition admission plugin taints every new Node not-ready; no node
            # lifecycle controller runs here to lift it, so set the taints we mean.
            self.core.patch_node(node.name, {"spec": {"taints": node.manifest()["spec"]["taints"] or None}})
            self.core.patch_node_status(node.name, node.status())

    def start(self) -> None:
        self.register_nodes()
        thread = threading.Thread(target=self._watch_loop, name="local-node-agent", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            running = list(self._running.values())
        for item in running:
            _terminate(item.process, grace=5)
        for thread in self._threads:
            thread.join(timeout=10)

    # --- watching -------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        names = {node.name for node in self.nodes}
        resource_version = ""
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                if not resource_version:
                    listing = self.core.list_pod_for_all_namespaces()
                    resource_version = listing.metadata.resource_version
                    for pod in listing.items:
                        self._on_pod("ADDED", self.api.sanitize_for_serialization(pod), names)
                for event in stream.stream(
                    self.core.list_pod_for_all_namespaces, resource_version=resource_version, timeout_seconds=5
                ):
                    pod = event["raw_object"]
                    resource_version = pod["metadata"].get("resourceVersion", resource_version)
                    self._on_pod(event["type"], pod, names)
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    resource_version = ""  # history compacted: list again
                else:
                    log.warning("pod watch failed: %s", error)
                    time.sleep(1)
            except Exception:  # a dev tool keeps going; the log says what broke
                log.exception("pod watch crashed; restarting it")
                time.sleep(1)
            finally:
                stream.stop()

    def _on_pod(self, kind: str, pod: dict[str, Any], names: set[str]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if spec.get("nodeName") not in names:
            return
        uid = meta["uid"]
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            with self._lock:
                if uid in self._stopping:
                    return
                self._stopping.add(uid)
            grace = 0 if kind == "DELETED" else int(spec.get("terminationGracePeriodSeconds", 30))
            thread = threading.Thread(
                target=self._stop_pod, args=(pod, grace), name=f"stop-{meta['name']}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        with self._lock:
            if uid in self._handled or phase in {"Succeeded", "Failed"}:
                return
            self._handled.add(uid)
        thread = threading.Thread(target=self._run_pod, args=(pod,), name=f"pod-{meta['name']}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _stop_pod(self, pod: dict[str, Any], grace: int) -> None:
        """What the kubelet does for a deleted pod: SIGTERM, SIGKILL after the grace period, report
        the container's exit as the pod's final status, then let the deletion complete."""
        meta = pod["metadata"]
        with self._lock:
            running = self._running.get(meta["uid"])
        with self._terminated:
            self._terminating += 1
        try:
            if running:
                running.stopping = True
                _terminate(running.process, grace=max(grace, 1))
                running.reported.wait(timeout=10)
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0)
        finally:
            with self._terminated:
                self._terminating -= 1
                self._terminated.notify_all()

    def signal_container(self, namespace: str, pod_name: str, sig: signal.Signals) -> bool:
        """Send `sig` to a running pod's process group, as a crash or the OOM killer would; False if none runs."""
        with self._lock:
            running = next((r for r in self._running.values() if r.name == f"{namespace}/{pod_name}"), None)
        if running is None or running.process.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.process.pid, sig)
        return True

    # --- running a pod ----------------------------------------------------------------------------

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})
        except ApiException as error:
            if error.status != 404:
                log.warning("status of pod %s/%s not patched: %s", meta["namespace"], meta["name"], error.reason)

    def _container_status(self, container: dict[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def _waiting(self, pod: dict[str, Any], container: dict[str, Any], reason: str, message: str) -> None:
        state = {"waiting": {"reason": reason, "message": message}}
        self._patch_status(
            pod,
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "startTime": (pod.get("status") or {}).get("startTime") or _now(),
                "containerStatuses": [self._container_status(container, state, ready=False)],
            },
        )

    def _run_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")
        registry = image.split("/", 1)[0] if "/" in image else ""
        if registry.split(":")[0].endswith(".invalid"):
            self._waiting(
                pod,
                container,
                "ErrImagePull",
                f'failed to pull image "{image}": dial tcp: lookup {registry}: no such host',
            )
            return
        pod_dir = self.workdir / "pods" / f"{meta['namespace']}_{meta['name']}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        env = None
        while env is None and not self._stop.is_set():
            try:
                env = self._environment(pod, container, pod_dir)
            except ConfigError as error:
                self._waiting(pod, container, "CreateContainerConfigError", str(error))
                time.sleep(2)
                if self._deleted(pod):
                    return
        if env is None:
            return
        argv = [*container.get("command", []), *container.get("args", [])]
        executable = shutil.which(argv[0], path=env["PATH"]) if argv else None
        with self._terminated:
            self._terminated.wait_for(lambda: self._terminating == 0, timeout=90)
        started = _now()
        if executable is None:
            message = (
                f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH (the local node runs '
                "container commands as local processes; install the command on this machine)"
            )
            self._finish(pod, container, started, code=128, reason="StartError", message=message)
            return
        log_path = pod_dir / "container.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [executable, *argv[1:]],
                env=env,
                cwd=pod_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self._running[meta["uid"]] = running_entry = _Running(
                process, started, f"{meta['namespace']}/{meta['name']}"
            )
        running = {"running": {"startedAt": started}}
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": (pod.get("status") or {}).get("startTime") or started,
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "containerStatuses": [self._container_status(container, running, ready=True)],
            },
        )
        code = process.wait()
        with self._lock:
            self._running.pop(meta["uid"], None)
        reason = "Completed" if code == 0 else "Error"
        if code < 0:
            # SIGKILL is the kernel OOM killer's signal, unless the kubelet sent it after the grace period.
            killed = -code == signal.SIGKILL and not running_entry.stopping
            reason = "OOMKilled" if killed else "Error"
            code = 128 - code
        message = _termination_message(pod_dir / "termination-log", log_path, code != 0, container)
        self._finish(pod, container, started, code=code, reason=reason, message=message)
        running_entry.reported.set()

    def _finish(
        self, pod: dict[str, Any], container: dict[str, Any], started: str, *, code: int, reason: str, message: str
    ) -> None:
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": _now(),
            "containerID": f"local://{pod['metadata']['uid']}",
        }
        if message:
            terminated["message"] = message
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "hostIP": "127.0.0.1",
                "startTime": (pod.get("status") or {}).get("startTime") or started,
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PodCompleted"},
                    {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"},
                ],
                "containerStatuses": [self._container_status(container, {"terminated": terminated}, ready=False)],
            },
        )

    def _deleted(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        try:
            current = self.core.read_namespaced_pod(meta["name"], meta["namespace"])
        except ApiException as error:
            return error.status == 404
        return current.metadata.uid != meta["uid"] or current.metadata.deletion_timestamp is not None

    # --- environment ------------------------------------------------------------------------------

    def _environment(self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        volumes = _empty_dir_paths(pod, container, pod_dir)
        env = {
            "PATH": os.pathsep.join([*self.path_prepend, os.environ.get("PATH", "")]),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            TERMINATION_LOG_ENV: str(pod_dir / "termination-log"),
        }
        for item in container.get("env") or []:
            value = self._env_value(item, meta, spec)
            if value is not None:
                env[item["name"]] = _remap(value, volumes)
        if spec.get("automountServiceAccountToken", True) and spec.get("serviceAccountName"):
            env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod, pod_dir))
        return env

    def _env_value(self, item: dict[str, Any], meta: dict[str, Any], spec: dict[str, Any]) -> str | None:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": meta["name"],
                "metadata.namespace": meta["namespace"],
                "metadata.uid": meta["uid"],
                "spec.nodeName": spec.get("nodeName", ""),
                "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
            }
            return fields.get(path, "")
        for key, reader in (("secretKeyRef", self._secret_data), ("configMapKeyRef", self._config_map_data)):
            if key in source:
                ref = source[key]
                data = reader(ref["name"], meta["namespace"], optional=bool(ref.get("optional")))
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    kind = "secret" if key == "secretKeyRef" else "configmap"
                    if data is None:
                        raise ConfigError(f'{kind} "{ref["name"]}" not found')
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind.capitalize()} {meta['namespace']}/{ref['name']}"
                    )
                return data[ref["key"]]
        return None

    def _secret_data(self, name: str, namespace: str, optional: bool) -> dict[str, str] | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _config_map_data(self, name: str, namespace: str, optional: bool) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _service_account_kubeconfig(self, pod: dict[str, Any], pod_dir: Path) -> Path:
        meta = pod["metadata"]
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=3600 * 24,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
                ),
            )
        )
        token = self.core.create_namespaced_service_account_token(
            pod["spec"]["serviceAccountName"], meta["namespace"], request
        ).status.token
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        path = pod_dir / "serviceaccount.kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster:\n    server: {self.server}\n    certificate-authority-data: {ca}\n"
            f"users:\n- name: sa\n  user:\n    token: {token}\n"
            "contexts:\n- name: local\n  context:\n    cluster: local\n    user: sa\n"
            f"    namespace: {meta['namespace']}\n"
            "current-context: local\n"
        )
        path.chmod(0o600)
        return path


def _empty_dir_paths(pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
    """mountPath -> local folder for each emptyDir the container mounts."""
    empty_dirs = {v["name"] for v in pod["spec"].get("volumes") or [] if "emptyDir" in v}
    result = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in empty_dirs and mount["mountPath"] != "/dev/shm":
            local = pod_dir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            result[mount["mountPath"].rstrip("/")] = local
    return result


def _remap(value: str, volumes: dict[str, Path]) -> str:
    for mount_path, local in sorted(volumes.items(), key=lambda item: -len(item[0])):
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(local) + value[len(mount_path) :]
    return value


def _termination_message(path: Path, log_path: Path, failed: bool, container: dict[str, Any]) -> str:
    if path.exists():
        message = path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if message.strip():
            return message
    if failed and container.get("terminationMessagePolicy") == "FallbackToLogsOnError" and log_path.exists():
        lines = log_path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
        return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return ""


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
