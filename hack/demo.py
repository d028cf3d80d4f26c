"""`make demo`: the quickstart FineTuneJob end to end on a local control plane, on CPU.

Everything is real except the nodes: kube-apiserver and controllers built from Go modules, MinIO,
the operator as a process, and the trainer run by a local "kubelet" as the pod's process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devcluster import tool_path
from devcluster.quickstart import EXAMPLE, Quickstart


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="finetune-demo-"))
    demo = Quickstart(workdir)
    try:
        demo.start(say)
        kubectl = [str(tool_path("kubectl")), "--kubeconfig", str(demo.cluster.kubeconfig)]  # type: ignore[union-attr]
        say(f"kubectl apply -f {EXAMPLE.relative_to(EXAMPLE.parents[2])}")
        demo.apply_example()
        say("kubectl get ftj -w   (phase, progress %, loss, adapter)")
        last = ""
        deadline = time.monotonic() + 600
        phase = ""
        while time.monotonic() < deadline:
            row = subprocess.run(
                [*kubectl, "get", "ftj", "quickstart", "--no-headers"], capture_output=True, text=True
            ).stdout.strip()
            if row != last:
                print("   ", row, flush=True)
                last = row
            phase = demo.finetunejob().get("status", {}).get("phase", "")
            if phase in {"Succeeded", "Failed"}:
                break
            time.sleep(1)
        status = demo.finetunejob().get("status", {})
        say("final status")
        print(
            subprocess.run([*kubectl, "get", "ftj", "quickstart", "-o", "wide"], capture_output=True, text=True).stdout
        )
        for condition in status.get("conditions", []):
            print(f"    {condition['type']:<10} {condition['status']:<6} {condition['reason']}: {condition['message']}")
        if phase != "Succeeded":
            say(f"the job did not succeed (phase {phase or 'unknown'}); operator log: {demo.workdir / 'operator.log'}")
            return 1
        metrics = status.get("metrics", {})
        say(f"adapter: {status['adapter']['uri']}")
        print(
            f"    sha256 of its manifest {status['adapter']['sha256']}, {status['adapter']['sizeBytes']} bytes; "
            f"train loss {metrics.get('trainLoss', 0):.3f}, eval loss {metrics.get('evalLoss', 0):.3f}, "
            f"{metrics.get('steps')} steps"
        )
        print(f"""
What just happened ({time.monotonic() - started:.0f}s):
  - a real kube-apiserver validated the FineTuneJob against its CRD (schema + CEL rules);
  - the operator created a ServiceAccount/Role/RoleBinding for the trainer (it may patch only this
    job's status) and a restricted, CPU-only Job;
  - the scheduler bound the pod to the local node, which ran `finetune-trainer train` as a process:
    4-bit NF4 QLoRA with bitsandbytes on CPU, model and data read from MinIO, checkpoints synced every
    25 steps, progress patched onto the FineTuneJob;
  - the adapter was published to MinIO (files first, manifest.json last) and the operator copied its
    URI from the pod's termination message into status.adapter.

Next steps:
  - kubectl explain finetunejob.spec --recursive        (every field is documented)
  - examples/qlora-llama-3.1-8b.yaml                    (the same on a GPU with a real model)
  - finetune-trainer train --spec examples/quickstart/run-spec.yaml   (the trainer alone, no Kubernetes)
""")
        return 0
    finally:
        demo.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
