"""Pod start to first optimizer step: how long `finetune-trainer train` takes until the first step is
done, for the quickstart's tiny model, and where that time goes; as a process and as a container.

    python bench/pod_start.py                  # both, 3 runs each, side by side
    python bench/pod_start.py --only process   # the trainer as a local process (no node needed)

The process runs what the trainer pod runs (same entry point, same run spec). The container is a pod
of the image built from Dockerfile.trainer on the local real node (hack/devcluster/node.py), timed
from the pod's creation, so it includes scheduling, the sandbox, CNI and container start (the image
is already on the node, as with IfNotPresent after the first pull). Each line the trainer prints is
time-stamped on arrival (the pod's log stream); phases are split at the trainer's own progress
messages. Import costs of the heavy libraries are measured apart, each in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack")]

MARKERS = (
    ("fetch", "fetching the base model and dataset"),
    ("data", "preparing the dataset"),
    ("model", "loading the base model"),
    ("train", "INFO training"),
    ("first step", "'loss'"),
)


def one_run(spec: Path, workdir: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FINETUNE_TERMINATION_LOG": str(workdir / "result.json")}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer.cli", "train", "--spec", str(spec), "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen: dict[str, float] = {}
    assert process.stdout is not None
    for line in process.stdout:
        now = time.perf_counter() - started
        for name, marker in MARKERS:
            if name not in seen and marker in line:
                seen[name] = now
        if "first step" in seen:
            process.kill()
            break
    process.wait()
    missing = [name for name, _ in MARKERS if name not in seen]
    if missing:
        raise RuntimeError(f"trainer output lacked {missing}")
    return seen


def _phases(lines: Iterator[str], started: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    tail: list[str] = []
    for line in lines:
        tail = [*tail[-20:], line]
        now = time.perf_counter() - started
        for name, marker in MARKERS:
            if name not in seen and marker in line:
                seen[name] = now
        if "first step" in seen:
            break
    missing = [name for name, _ in MARKERS if name not in seen]
    if missing:
        raise RuntimeError(f"trainer output lacked {missing}; its last lines:\n" + "\n".join(tail))
    return seen


def container_runs(spec: Path, root: Path, runs: int) -> list[dict[str, float]]:
    """`runs` trainer pods on the real node, each timed from its creation to its first step."""
    from kubernetes import client

    from devcluster import LocalCluster, built_images, wait_for

    images = built_images()
    cluster = LocalCluster(root / "cluster", images=images).start()
    try:
        core = client.CoreV1Api(cluster.api())
        results = []
        for index in range(runs):
            name = f"pod-start-{index}"
            started = time.perf_counter()
            core.create_namespaced_pod("default", _pod(name, images.trainer, spec, root))
            wait_for(
                lambda n=name: core.read_namespaced_pod(n, "default").status.phase != "Pending",  # type: ignore[misc]
                120,
                f"{name} to start",
            )
            stream = core.read_namespaced_pod_log(name, "default", follow=True, _preload_content=False)
            lines = (chunk.decode(errors="replace") for chunk in stream.stream(amt=1))
            results.append(_phases(_lines(lines), started))
            stream.close()
            core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        return results
    finally:
        cluster.stop()


def _lines(chunks: Iterator[str]) -> Iterator[str]:
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            yield line


def _pod(name: str, image: str, spec: Path, root: Path) -> dict[str, Any]:
    """The trainer pod's shape (restricted, read-only root, emptyDirs); the run spec's local files
    come from this machine through a read-only hostPath at the same path."""
    empty = [("workspace", "/workspace"), ("tmp", "/tmp"), ("work", "/work")]
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": n, "emptyDir": {}} for n, _ in empty]
            + [{"name": "assets", "hostPath": {"path": str(root), "type": "Directory"}}],
            "containers": [
                {
                    "name": "trainer",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["train", "--spec", str(spec), "--workdir", "/work"],
                    "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                    "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                    "volumeMounts": [{"name": n, "mountPath": m} for n, m in empty]
                    + [{"name": "assets", "mountPath": str(root), "readOnly": True}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def import_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("process", "container"), help="one of the two (default: both)")
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()

    from tinymodel import make_quickstart

    kinds = [args.only] if args.only else ["process", "container"]
    medians: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_quickstart(root)
        # The container's UID 1000 reads the assets through the hostPath (safetensors writes 0600).
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        spec = root / "run-spec.yaml"
        text = (REPO / "examples" / "quickstart" / "run-spec.yaml").read_text()
        spec.write_text(
            text.replace("/tmp/finetune-quickstart", str(root)).replace("loggingSteps: 5", "loggingSteps: 1")
        )
        for kind in kinds:
            if kind == "process":
                runs = [one_run(spec, root / f"work-{i}") for i in range(args.runs)]
            else:
                runs = container_runs(spec, root, args.runs)
            medians[kind] = {name: statistics.median(run[name] for run in runs) for name, _ in MARKERS}
    imports = {m: round(import_seconds(m), 2) for m in ("torch", "transformers", "peft", "bitsandbytes", "datasets")}
    print(f"median of {args.runs} runs, seconds since process start (process) or pod creation (container):")
    print(f"  {'phase':<30} " + "".join(f"{kind:>12}" for kind in kinds))
    previous = dict.fromkeys(kinds, 0.0)
    before = "start"
    for name, _ in MARKERS:
        cells = "".join(f"{medians[k][name] - previous[k]:12.2f}" for k in kinds)
        print(f"  {before + ' -> ' + name:<30} {cells}")
        previous = {k: medians[k][name] for k in kinds}
        before = name
    print(f"  {'total':<30} " + "".join(f"{medians[k]['first step']:12.2f}" for k in kinds))
    print("import in a fresh interpreter:", ", ".join(f"{k} {v:.2f}s" for k, v in imports.items()))
    from record import record

    figures: dict[str, float] = {}
    for kind in kinds:
        prefix = "" if kind == "process" else "container "
        figures[f"{prefix}first step s"] = round(medians[kind]["first step"], 2)
    if "process" in medians:
        figures.update({f"at {k} s": round(v, 2) for k, v in medians["process"].items()})
    record("pod_start.py", figures, enabled=not args.no_record)
    print(json.dumps({"first_step_seconds": figures, "phases": medians, "imports": imports}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
