"""`kubectl finetune` as a krew plugin: hack/plugin-dist.sh builds the archive and the manifest, the real
krew installs them, and kubectl finds and runs the plugin with the system's python3 and nothing of
this repository's virtual environment. To keep it short, the archive bundles only the system
python3's version (a release bundles 3.11 to 3.13 the same way, one pip install each).

It proves the archive is complete and the manifest valid for krew; it does not publish anything (no
krew index entry exists), and it covers Linux x86-64 only. The commands themselves are tested in
tests/integration/test_plugin.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devcluster import tool_path

ROOT = Path(__file__).parents[2]


def _version_of(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_krew_installs_the_archive_and_kubectl_runs_it_with_the_system_python(tmp_path: Path) -> None:
    krew = tool_path("krew")
    python3 = shutil.which("python3", path="/usr/bin:/bin")
    if python3 is None:
        pytest.fail("no system python3 in /usr/bin or /bin to run the plugin with")
    dist = tmp_path / "dist"
    built = subprocess.run(
        ["bash", str(ROOT / "hack/plugin-dist.sh"), str(dist)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable, "PLUGIN_PYTHONS": _version_of(python3)},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    print(built.stdout.strip())
    manifest = yaml.safe_load((dist / "finetune.yaml").read_text())
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "finetune"
    [platform] = manifest["spec"]["platforms"]
    assert platform["bin"] == "kubectl-finetune" and len(platform["sha256"]) == 64

    root = tmp_path / "krew"
    installed = subprocess.run(
        [
            str(krew),
            "install",
            f"--manifest={dist / 'finetune.yaml'}",
            f"--archive={dist / 'kubectl-finetune-linux-amd64.tar.gz'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"KREW_ROOT": str(root), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert installed.returncode == 0, installed.stderr
    # A user's shell: krew's bin and the system's, no virtual environment, no PYTHONPATH.
    user = {"PATH": f"{root / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    kubectl = str(tool_path("kubectl"))
    listed = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=user, timeout=60)
    assert str(root / "bin" / "kubectl-finetune") in listed.stdout, listed
    helped = subprocess.run([kubectl, "finetune", "--help"], capture_output=True, text=True, env=user, timeout=60)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: kubectl finetune"), helped
    missing = tmp_path / "none.kubeconfig"
    refused = subprocess.run(
        [kubectl, "finetune", "get", "--kubeconfig", str(missing)], capture_output=True, text=True, env=user, timeout=60
    )
    assert refused.returncode == 1 and refused.stderr.startswith("error: cannot load the kubeconfig"), refused
