"""A real node for the local cluster: containerd + runc, a CNI bridge, the kubelet, kube-proxy, CoreDNS.

Development tool only (tests and `make demo`), never part of the product. Every pod the scheduler
binds here is a real container: the kernel enforces its cgroup limits, the kubelet mounts its
projected token and emptyDirs, sends SIGTERM on deletion and writes its termination message. Images
come from `hack/build-images.sh` (built from our Dockerfiles, imported here); nothing is pulled.

One node runs on a machine at a time (it owns a network interface, iptables rules and port 53 of
its address); `start()` takes a lock and says who holds it. It needs root, Linux with cgroups, and
the packages and binaries `hack/build-tools.sh` installs; `check_host()` names what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .controlplane import CACHE_DIR, NODE_ADDRESS, free_port, stop_processes, tool_path

NODE_NAME = "finetune-node"
NODE_IP = NODE_ADDRESS
"""On an interface of its own (a bridge without ports): kubelet refuses loopback as the node IP."""
POD_CIDR = "10.244.0.0/24"
INTERFACE = "finetune0"
BRIDGE = "finetune-cni0"
RUN_DIR = Path("/run/finetune-node")
"""Short and fixed: unix socket paths are limited to 108 bytes, and only one node runs at a time."""
CONTAINERD_ROOT = CACHE_DIR / "containerd"
"""Persistent, so that imported images survive from one cluster to the next."""
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
NAMESPACE = "k8s.io"
LOCAL_REGISTRY = "finetune.local"
IMAGE_ID_LABEL = "finetune.dev/image-id"
"""The registry name hack/build-images.sh tags with; nothing is ever pulled from it."""


class NodeUnavailableError(RuntimeError):
    """This machine cannot run the real node; the message says why and what to do instead."""


def check_host() -> list[str]:
    """What this machine lacks to run the node (empty: it can), each with how to get it."""
    problems = []
    if os.uname().sysname != "Linux":
        problems.append("the node runs Linux containers; on macOS or Windows use kind with Docker: make demo-kind")
    elif os.geteuid() != 0:
        problems.append(
            "containerd, the kubelet and CNI need root: run as root, or use kind with Docker: make demo-kind"
        )
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        problems.append("no cgroup filesystem at /sys/fs/cgroup: the kubelet needs cgroups for pod limits")
    for command, package in (
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("ctr", "containerd"),
        ("iptables", "iptables"),
        ("ip", "iproute2"),
    ):
        if shutil.which(command) is None:
            problems.append(
                f"'{command}' is missing: apt-get install {package} (hack/build-tools.sh does this as root)"
            )
    if _cni_bin_dir() is None:
        problems.append("CNI plugins are missing: apt-get install containernetworking-plugins")
    for name in ("kubelet", "kube-proxy", "coredns"):
        try:
            tool_path(name)
        except Exception as error:  # ToolMissingError, with its own hint
            problems.append(str(error))
    return problems


def _cni_bin_dir() -> Path | None:
    return next((d for d in CNI_BIN_DIRS if (d / "bridge").exists() and (d / "host-local").exists()), None)


@dataclass
class RealNode:
    """Start with `start()` once the control plane serves; `stop()` removes every pod it ran."""

    workdir: Path
    kubeconfig: Path
    """Admin credentials the node components use (a dev cluster: no per-node certificates)."""
    pki: Path
    images: dict[str, Path]
    """Image reference -> `docker save` archive, imported into containerd unless already there."""
    image_ids: dict[str, str]
    """Reference -> the built image's ID: a tag rebuilt (same content, new ID) is imported again."""
    pause_image: str
    """The sandbox image (one of `images`)."""
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _lock: IO[str] | None = None

    @property
    def socket(self) -> Path:
        return RUN_DIR / "containerd.sock"

    def start(self) -> RealNode:
        if self._lock is None:
            self.claim()
        try:
            self._start_containerd()
            self._import_images()
            self._start_coredns()
            self._start_kube_proxy()
            self._start_kubelet()
        except BaseException:
            self.stop()
            raise
        return self

    def claim(self) -> RealNode:
        """Take the machine's node lock and make the node's address, which the control plane binds
        to: called before the apiserver starts, since pods reach it there."""
        problems = check_host()
        if problems:
            raise NodeUnavailableError("the real node cannot run here:\n  - " + "\n  - ".join(problems))
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._network()
        except BaseException:
            self.stop()
            raise
        return self

    # --- lifecycle --------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        lock = (RUN_DIR / "lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise NodeUnavailableError(f"a local node already runs on this machine ({holder}); stop it first") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, workdir {self.workdir}\n")
        lock.flush()
        self._lock = lock

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
        self._procs.append((name, proc))

    def _log_tail(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        proc = dict(self._procs)[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{self._log_tail(name)}")
            if ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"{name} not ready after {timeout:.0f}s; log: {self.workdir / name}.log")

    def assert_running(self) -> None:
        """Raise with the log tail of a node component that has exited (say why a wait is futile)."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self._log_tail(name)}")

    def stop(self) -> None:
        """Stop the kubelet's pods first (so CNI releases their addresses), then everything else."""
        with contextlib.suppress(Exception):
            self._remove_pods()
        stop_processes(self._procs, timeout=15)
        _kill_shims()
        _unmount_under(self.workdir)
        for netns in Path("/run/netns").glob("cni-*"):  # sandboxes the kubelet had no time to remove
            subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True, check=False)
        with contextlib.suppress(Exception):
            subprocess.run([str(tool_path("kube-proxy")), "--cleanup"], capture_output=True, timeout=30, check=False)
        for link in (BRIDGE, INTERFACE):
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- parts ------------------------------------------------------------------------------------

    def _network(self) -> None:
        subprocess.run(["ip", "link", "delete", INTERFACE], capture_output=True, check=False)
        for argv in (
            ["ip", "link", "add", INTERFACE, "type", "bridge"],  # a portless bridge: no dummy module in every kernel
            ["ip", "addr", "add", f"{NODE_IP}/32", "dev", INTERFACE],
            ["ip", "link", "set", INTERFACE, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-finetune.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "finetune",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni" / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )

    def _ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _start_containerd(self) -> None:
        state = RUN_DIR / "containerd-state"
        shutil.rmtree(state, ignore_errors=True)
        config = self.workdir / "containerd.toml"
        cni_bin = _cni_bin_dir()
        # restrict_oom_score_adj: root in this VM lacks CAP_SYS_RESOURCE, so runc may not lower the
        # score below its own; without it every sandbox fails with "can't get final child's PID".
        config.write_text(
            f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{state}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_image}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
"""
        )
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd", lambda: self._ctr("version", timeout=5).returncode == 0, 30)

    def _import_images(self) -> None:
        """Import each image containerd lacks, or holds under the same tag but as another build (its
        ID label differs); drop earlier builds, since each trainer image is gigabytes."""
        present = self._present_images()
        # The CRI also names each image by its ID (`sha256:...`); an earlier build's ID holds its content.
        current = set(self.images) | set(self.image_ids.values())
        stale = [ref for ref in present if ref.startswith((f"{LOCAL_REGISTRY}/", "sha256:")) and ref not in current]
        if stale:
            # --sync: their content and unpacked layers are gone before the new build's arrive.
            self._ctr("images", "remove", "--sync", *stale)
        for ref, archive in self.images.items():
            if present.get(ref) == self.image_ids[ref]:
                continue
            if not archive.is_file():
                raise NodeUnavailableError(f"image {ref} is not built ({archive}); run `bash hack/build-images.sh`")
            done = self._ctr("images", "import", str(archive))
            if done.returncode != 0:
                raise RuntimeError(f"importing {archive} into containerd failed: {done.stderr.strip()}")
            self._ctr("images", "label", ref, f"{IMAGE_ID_LABEL}={self.image_ids[ref]}")

    def _present_images(self) -> dict[str, str]:
        """Reference -> the image ID label this node set when it imported it ("" if none)."""
        present = {}
        for line in self._ctr("images", "list").stdout.splitlines()[1:]:
            ref, *_, labels = line.split()
            found = [pair.split("=", 1)[1] for pair in labels.split(",") if pair.startswith(f"{IMAGE_ID_LABEL}=")]
            present[ref] = found[0] if found else ""
        return present

    def _start_coredns(self) -> None:
        corefile = self.workdir / "Corefile"
        # Pods use NODE_IP as their nameserver directly (kubelet clusterDNS); no kube-dns Service.
        corefile.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 10
}}
"""
        )
        self._spawn("coredns", [str(tool_path("coredns")), "-conf", str(corefile)])

    def _start_kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            f"clientConnection: {{kubeconfig: {self.kubeconfig}}}\n"
            f"hostnameOverride: {NODE_NAME}\nmode: iptables\nclusterCIDR: {POD_CIDR}\n"
            f"bindAddress: 0.0.0.0\nhealthzBindAddress: 127.0.0.1:{free_port()}\n"
            f"metricsBindAddress: 127.0.0.1:{free_port()}\n"
            # The VM's conntrack table is the host's; leave its size alone.
            "conntrack: {maxPerCore: 0}\n"
        )
        self._spawn("kube-proxy", [str(tool_path("kube-proxy")), f"--config={config}"])

    def _start_kubelet(self) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "kubelet.yaml"
        config.write_text(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
            # This host is cgroup v1 (hybrid); kubelet 1.35 refuses it unless told otherwise.
            "failCgroupV1: false\ncgroupDriver: cgroupfs\nfailSwapOn: false\n"
            f"containerRuntimeEndpoint: unix://{self.socket}\n"
            f"clusterDomain: cluster.local\nclusterDNS: [{NODE_IP}]\nresolvConf: /etc/resolv.conf\n"
            f"address: {NODE_IP}\nport: 10250\nreadOnlyPort: 0\nhealthzPort: 0\n"
            "authentication:\n  anonymous: {enabled: false}\n  webhook: {enabled: true}\n"
            f"  x509: {{clientCAFile: {self.pki / 'ca.crt'}}}\n"
            "authorization: {mode: Webhook}\n"
            "serializeImagePulls: false\n"
            # Tests fill the disk with images and checkpoints; never evict for it or collect images.
            "evictionHard: {memory.available: 100Mi}\nimageGCHighThresholdPercent: 100\n"
            "nodeStatusReportFrequency: 10s\nnodeStatusUpdateFrequency: 2s\n"
            "syncFrequency: 5s\nfileCheckFrequency: 5s\n"
            "shutdownGracePeriod: 0s\n"
        )
        self._spawn(
            "kubelet",
            [
                str(tool_path("kubelet")),
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def idle(self) -> bool:
        """No container runs (after the pods were deleted, the kubelet has torn their sandboxes down)."""
        return self._procs != [] and not self._ctr("tasks", "list", "--quiet", timeout=10).stdout.split()

    def kill_container(self, container_id: str, sig: str = "SIGKILL") -> None:
        """Signal a container's process from outside the kubelet, as a crash or a dying host would; the
        kubelet sees it exit (137 for SIGKILL) and reports it. `container_id` as a pod's status gives it."""
        done = self._ctr("tasks", "kill", "--signal", sig, container_id.removeprefix("containerd://"), timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"ctr tasks kill {container_id}: {done.stderr.strip()}")

    def _remove_pods(self) -> None:
        """Kill what the kubelet left running (it tears pods down itself when they are deleted first)."""
        tasks = self._ctr("tasks", "list", "--quiet", timeout=10).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._ctr("tasks", "list", "--quiet", timeout=10).stdout.split():
            time.sleep(0.5)
        for task in tasks:
            self._ctr("tasks", "delete", "--force", task, timeout=10)
        containers = self._ctr("containers", "list", "--quiet", timeout=10).stdout.split()
        if containers:
            self._ctr("containers", "delete", *containers, timeout=30)


def _kill_shims() -> None:
    """containerd-shim processes outlive containerd by design; ours are found by their socket."""
    done = subprocess.run(["pgrep", "-f", f"containerd-shim.*{RUN_DIR}"], capture_output=True, text=True, check=False)
    for pid in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    """The kubelet's tmpfs volumes (tokens, Secrets) of pods it did not tear down, deepest first."""
    done = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False)
    inside = [m for m in done.stdout.splitlines() if m.startswith(f"{root.resolve()}/")]
    for target in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
