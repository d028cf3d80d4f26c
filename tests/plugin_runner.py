"""Running `kubectl finetune` the way a user does: kubectl finds the plugin on PATH and hands it the args."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devcluster import tool_path

PLUGIN_DIR = Path(sys.executable).parent
"""Where `pip install finetune-operator[operator]` put the kubectl-finetune script (the venv's bin)."""


def kubectl_finetune(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert (PLUGIN_DIR / "kubectl-finetune").exists(), f"kubectl-finetune is not installed in {PLUGIN_DIR}"
    env = {**os.environ, "PATH": f"{PLUGIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [str(tool_path("kubectl")), "finetune", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
