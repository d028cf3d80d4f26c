"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller manager, scheduler.

Development tool only (tests and `make demo`), not part of the product. RBAC authorisation and
service-account token signing are on, so permission checks in tests are the apiserver's own. The
binaries come from `hack/build-tools.sh` (or `KUBEBUILDER_ASSETS`).
"""

from __future__ import annotations

import atexit
import base64
import functools
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from finetune_operator.api import FINETUNEJOB, GROUP

CACHE_DIR = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune-operator"))
BIN_DIR = Path(os.environ.get("FINETUNE_BIN_DIR", CACHE_DIR / "bin"))
REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_ADDRESS = "10.250.0.1"
"""The real node's address (node.py), on an interface of its own: kubelet refuses loopback."""

# Controllers a laptop cluster without a cloud must not run. Node lifecycle runs only beside a real
# kubelet (it lifts the not-ready taint once the kubelet heartbeats); the stand-in node sends none,
# so it would evict every pod.
_DISABLED_CONTROLLERS = (
    "nodeipam",
    "cloud-node-lifecycle",
    "service-lb-controller",
    "node-route-controller",
)


class ToolMissingError(RuntimeError):
    """A control-plane binary is not built yet."""


def tool_path(name: str) -> Path:
    """Where a binary is: KUBEBUILDER_ASSETS first (envtest users), then our build cache."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidates = [Path(assets) / name] if assets else []
    candidates.append(BIN_DIR / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    hint = "install Go (https://go.dev/dl/) and run" if shutil.which("go") is None else "run"
    raise ToolMissingError(f"{name} not found in {', '.join(map(str, candidates))}; {hint} `bash hack/build-tools.sh`")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(directory: Path, name: str, subject: str, *extra: str) -> None:
    """A key and a certificate `name`.key/.crt for `subject`, signed by the CA in `directory`."""
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        *extra,
        "-out",
        f"{name}.crt",
        cwd=directory,
    )


def stop_processes(procs: list[tuple[str, subprocess.Popen[bytes]]], timeout: float) -> None:
    """SIGTERM each process group, newest first, then SIGKILL what is left after `timeout`; empties `procs`."""
    for _, proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for _, proc in reversed(procs):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    procs.clear()


def make_pki(directory: Path) -> None:
    """A CA, the apiserver's serving and kubelet-client certificates, and the service-account signing key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=devcluster-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    (directory / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        f"DNS:kubernetes.default.svc,IP:10.0.0.1,IP:{NODE_ADDRESS}\n"
    )
    _signed(directory, "server", "/CN=kube-apiserver", "-extfile", "san.ext")
    # The apiserver's identity towards kubelets (`kubectl logs`, `exec`), which check it against the CA.
    _signed(directory, "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


@dataclass
class ControlPlane:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    workdir: Path
    controllers: bool = True
    scheduler: bool = True
    api_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    audit: bool = False
    """Write every request's metadata (user, user agent, verb, resource) to workdir/audit.log."""
    profiling: bool = False
    """Serve the apiserver's Go profiles at /debug/pprof (bench/operator_scale.py --apiserver-profile)."""
    address: str = "127.0.0.1"
    """Where the apiserver listens and what it advertises; a real node's pods reach it there."""
    node_lifecycle: bool = False
    """Run the node-lifecycle controller (only beside a real kubelet, which heartbeats)."""
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        binaries = {name: tool_path(name) for name in ("etcd", "kube-apiserver")}
        if self.controllers:
            binaries["kube-controller-manager"] = tool_path("kube-controller-manager")
        if self.scheduler:
            binaries["kube-scheduler"] = tool_path("kube-scheduler")
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)  # never leave an apiserver behind when a test run dies
        make_pki(self.pki)
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        try:
            self._start_etcd(binaries["etcd"], timeout)
            self._start_apiserver(binaries["kube-apiserver"], timeout)
            self._write_kubeconfig()
            if self.controllers:
                self._start_controller_manager(binaries["kube-controller-manager"])
            if self.scheduler:
                self._spawn(
                    "kube-scheduler",
                    [
                        str(binaries["kube-scheduler"]),
                        f"--kubeconfig={self.kubeconfig}",
                        "--leader-elect=false",
                        "--secure-port=0",
                    ],
                )
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def _wait(self, name: str, check: callable, timeout: float) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        proc = dict(self._procs)[name]
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{tail}")
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError) as error:
                last_error = str(error)
            time.sleep(0.25)
        raise TimeoutError(
            f"{name} not ready after {timeout:.0f}s (last: {last_error}); log: {self.workdir / name}.log"
        )

    def _start_etcd(self, binary: Path, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(binary),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return b'"true"' in response.read()

        self._wait("etcd", healthy, timeout)

    def _start_apiserver(self, binary: Path, timeout: float) -> None:
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(binary),
                f"--etcd-servers={self.etcd_url}",
                f"--secure-port={self.api_port}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=RBAC",
                # As on OpenShift and hardened clusters: setting blockOwnerDeletion needs update on <owner>/finalizers.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--enable-priority-and-fairness=false",
                f"--profiling={str(self.profiling).lower()}",
                "--v=0",
                *self._audit_flags(),
            ],
        )

        def ready() -> bool:
            try:
                self.get("/readyz", timeout=2)
                return True
            except urllib.error.HTTPError:
                return False

        self._wait("kube-apiserver", ready, timeout)

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        """Made once (it loads the CA): the readiness probe polls through it."""
        return ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    def get(self, path: str, timeout: float) -> bytes:
        """GET a path of the apiserver as the admin (health endpoints, /debug/pprof when `profiling`)."""
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout, context=self._tls) as response:
            body: bytes = response.read()
            return body

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
            # Status patches with their bodies, so a benchmark can say which step each write was.
            f"- level: Request\n  resources: [{{group: {GROUP}, resources: [{FINETUNEJOB.plural}/status]}}]\n"
            "- level: Metadata\n"
        )
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-maxsize=0"]

    def _write_kubeconfig(self) -> None:
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: devcluster\n  cluster:\n    server: {self.url}\n    certificate-authority-data: {ca}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.token}\n"
            "contexts:\n- name: devcluster\n  context:\n    cluster: devcluster\n    user: admin\n"
            "current-context: devcluster\n"
        )

    def _start_controller_manager(self, binary: Path) -> None:
        off = _DISABLED_CONTROLLERS if self.node_lifecycle else ("nodelifecycle", *_DISABLED_CONTROLLERS)
        disabled = ",".join(f"-{name}" for name in off)
        self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--controllers=*,{disabled}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                "--use-service-account-credentials=false",
                "--concurrent-job-syncs=10",
                "--concurrent-gc-syncs=10",
            ],
        )

    def stop_controllers(self) -> None:
        """Stop the controller manager and the scheduler, so nothing replaces or binds pods any more:
        a node drain's deletions then stick (a Deployment's ReplicaSet would recreate its pod at once)."""
        controllers = [entry for entry in self._procs if entry[0] in ("kube-controller-manager", "kube-scheduler")]
        self._procs = [entry for entry in self._procs if entry not in controllers]
        stop_processes(controllers, timeout=10)

    def stop(self) -> None:
        # 3 s, not the apiserver's full graceful shutdown: on SIGTERM it closes its listener and then
        # waits 10 s or more on requests to itself (its identity lease, the `kubernetes` endpoints),
        # and nothing of a throwaway cluster needs to outlive it.
        stop_processes(self._procs, timeout=3)
