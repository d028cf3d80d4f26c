"""A real MinIO server (built by hack/build-tools.sh), for tests and `make demo`: on loopback, or on the
real node's address so that pods reach it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .controlplane import free_port, tool_path


@dataclass
class MinioServer:
    workdir: Path
    address: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    access_key: str = "finetune"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self, timeout: float = 30) -> MinioServer:
        """Start (or restart, on the same port and data) and wait until it answers its health check."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        log = (self.workdir / "minio.log").open("ab")
        self.process = subprocess.Popen(
            [str(tool_path("minio")), "server", str(self.workdir / "data"), "--address", self.endpoint, "--quiet"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"minio exited with {self.process.returncode}: {(self.workdir / 'minio.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/minio/health/live", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise TimeoutError(f"minio not healthy after {timeout}s; log: {self.workdir / 'minio.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def client(self):  # type: ignore[no-untyped-def]
        from minio import Minio

        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def credentials_env(self, *roles: str) -> dict[str, str]:
        """The secretKeyRef env vars a trainer pod would get, for each role."""
        env = {}
        for role in roles:
            env[f"FINETUNE_{role}_AWS_ACCESS_KEY_ID"] = self.access_key
            env[f"FINETUNE_{role}_AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def bucket(self, name: str) -> str:
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return name

    def upload_file(self, bucket: str, key: str, path: Path) -> str:
        self.client().fput_object(self.bucket(bucket), key, str(path))
        return f"s3://{bucket}/{key}"

    def upload_folder(self, bucket: str, prefix: str, folder: Path) -> str:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.upload_file(bucket, f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}", path)
        return f"s3://{bucket}/{prefix.strip('/')}/"
