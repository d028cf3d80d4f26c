"""Reading and waiting on our resources in a running Quickstart, as the e2e suites do."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from kubernetes import client

from devcluster import tool_path
from devcluster.quickstart import Quickstart
from finetune_operator.api import EVALRUN, FINETUNEJOB


def get(demo: Quickstart, plural: str, name: str) -> dict[str, Any]:
    assert demo.cluster
    result: dict[str, Any] = client.CustomObjectsApi(demo.cluster.api()).get_namespaced_custom_object(
        "finetune.dev", "v1alpha1", "default", plural, name
    )
    return result


def wait(demo: Quickstart, condition: str, target: str, timeout: int = 300) -> None:
    """`kubectl wait --for=condition=...` on `ftj/<name>` or `evr/<name>`; on failure, the resource and the
    operator's log say why."""
    assert demo.cluster
    kubectl = [str(tool_path("kubectl")), "--kubeconfig", str(demo.cluster.kubeconfig)]
    done = subprocess.run(
        [*kubectl, "wait", f"--for=condition={condition}", target, f"--timeout={timeout}s"],
        capture_output=True,
        text=True,
    )
    plural, name = target.split("/")
    assert done.returncode == 0, (
        f"{done.stderr}\n{json.dumps(get(demo, (FINETUNEJOB if plural == 'ftj' else EVALRUN).plural, name))}\n"
        f"{demo.operator.log()[-3000:] if demo.operator else ''}"
    )
