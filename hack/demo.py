"""`make demo`: the quickstart FineTuneJob end to end on a local cluster with a real node, on CPU.

Everything is real: kube-apiserver and controllers built from Go modules, a node of kubelet +
containerd, MinIO, the operator installed with our Helm chart as a Deployment of the image built from
Dockerfile.operator, and the trainer as a container of the image built from Dockerfile.trainer.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devcluster import NodeUnavailableError
from devcluster.node import check_host
from devcluster.quickstart import EXAMPLE, OPERATOR_NAMESPACE, RELEASE, Quickstart


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def main() -> int:
    if problems := check_host():
        print("make demo runs a real node (kubelet + containerd) on this machine, and it cannot here:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print("With Docker, `make demo-kind` runs the same demo on a kind cluster.", file=sys.stderr)
        return 2
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="finetune-demo-"))
    demo = Quickstart(workdir)
    try:
        try:
            demo.start(say, run_operator=False)
        except NodeUnavailableError as error:
            print(error, file=sys.stderr)
            return 2
        assert demo.images
        say(f"helm install {RELEASE} helm/finetune-operator   (operator image {demo.images.operator})")
        installed = demo.install_chart()
        if installed.returncode != 0:
            say(f"helm install failed: {installed.stderr.strip()}")
            print(demo.kubectl("-n", OPERATOR_NAMESPACE, "describe", "pods").stdout[-3000:])
            return 1
        say("kubectl get nodes -o wide")
        print(demo.kubectl("get", "nodes", "-o", "wide").stdout)
        say(f"kubectl apply -f {EXAMPLE.relative_to(EXAMPLE.parents[2])}")
        demo.apply_example()
        say("kubectl get ftj -w   (phase, progress %, loss, adapter)")
        phase = follow(demo, deadline=time.monotonic() + 900)
        status = demo.finetunejob().get("status", {})
        say("final status")
        print(demo.kubectl("get", "ftj", "quickstart", "-o", "wide").stdout)
        for condition in status.get("conditions", []):
            print(f"    {condition['type']:<10} {condition['status']:<6} {condition['reason']}: {condition['message']}")
        if phase != "Succeeded":
            logs = demo.kubectl("-n", OPERATOR_NAMESPACE, "logs", f"deploy/{RELEASE}-finetune-operator", "--tail=40")
            say(f"the job did not succeed (phase {phase or 'unknown'}); operator log:\n{logs.stdout}")
            return 1
        metrics = status.get("metrics", {})
        say(f"adapter: {status['adapter']['uri']}")
        print(
            f"    sha256 of its manifest {status['adapter']['sha256']}, {status['adapter']['sizeBytes']} bytes; "
            f"train loss {metrics.get('trainLoss', 0):.3f}, eval loss {metrics.get('evalLoss', 0):.3f}, "
            f"{metrics.get('steps')} steps"
        )
        say("the trainer pod's container, as the kubelet reports it")
        print(trainer_container(demo))
        print(f"""
What just happened ({time.monotonic() - started:.0f}s):
  - the operator and trainer images were built from Dockerfile.operator and Dockerfile.trainer
    (air-gapped, on a Debian base; cached by content) and imported into the node's containerd;
  - a real kube-apiserver validated the FineTuneJob against its CRD (schema + CEL rules);
  - the chart-installed operator, a pod on the node, created a ServiceAccount/Role/RoleBinding for the
    trainer (it may patch only this job's status) and a restricted, CPU-only Job;
  - the kubelet ran the trainer as a container (read-only root, UID 1000, cgroup limits, emptyDirs):
    4-bit NF4 QLoRA with bitsandbytes on CPU, model and data read from MinIO, checkpoints synced every
    25 steps, progress patched onto the FineTuneJob with the pod's projected token;
  - the adapter was published to MinIO (files first, manifest.json last) and the operator copied its
    URI from the container's termination message into status.adapter.

Next steps:
  - kubectl explain finetunejob.spec --recursive        (every field is documented)
  - kubectl finetune describe ftj/quickstart            (its pipeline steps; docs/plugin.md)
  - kubectl finetune dashboard                          (steps and the loss curve, live in a browser)
  - examples/qlora-llama-3.1-8b.yaml                    (the same on a GPU with a real model)
  - docs/install.md                                     (build both images for your registry)
""")
        return 0
    finally:
        demo.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def follow(demo: Quickstart, deadline: float) -> str:
    """Print each new row of `kubectl get ftj` until the job ends; its last phase."""
    last, phase = "", ""
    while time.monotonic() < deadline:
        row = demo.kubectl("get", "ftj", "quickstart", "--no-headers").stdout.strip()
        if row != last:
            print("   ", row, flush=True)
            last = row
        phase = demo.finetunejob().get("status", {}).get("phase", "")
        if phase in {"Succeeded", "Failed"}:
            break
        time.sleep(1)
    return phase


def trainer_container(demo: Quickstart) -> str:
    pods = json.loads(demo.kubectl("get", "pods", "-l", "finetune.dev/finetunejob=quickstart", "-o", "json").stdout)
    lines = []
    for pod in pods["items"]:
        for container in pod["status"].get("containerStatuses", []):
            terminated = container.get("state", {}).get("terminated", {})
            lines.append(
                f"    pod {pod['metadata']['name']} on {pod['spec'].get('nodeName')}: image {container['image']}\n"
                f"    imageID {container.get('imageID')}, containerID {container.get('containerID', '')[:25]}..., "
                f"exit {terminated.get('exitCode')} ({terminated.get('reason')})"
            )
    return "\n".join(lines) or "    (the Job's pods were already cleaned up)"


if __name__ == "__main__":
    sys.exit(main())
