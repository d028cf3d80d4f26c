"""A stand-in for `finetune-trainer` in operator integration tests (the real trainer has its own tests).

It honours the operator<->trainer contract: reads FINETUNE_RUN_SPEC, patches status.progress of its
own resource with the pod's service-account identity, writes a TrainerResult to the termination log
and exits 0 / 2 / other. What it does is chosen by the dataset URI, file:///scenario/<name>:
success, data-error, crash, oom (SIGKILL, reported as OOMKilled by the local node), slow; and for
an evaluation (`finetune-trainer eval`), by its first benchmark's: eval-pass (exact_match 0.9).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from kubernetes import client, config


def report_progress(run: dict, step: int, total: int, loss: float) -> None:
    config.load_kube_config()  # the local node gives the pod's token through KUBECONFIG
    resource = run["resource"]
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        resource["group"],
        resource["version"],
        resource["namespace"],
        resource["plural"],
        resource["name"],
        {"status": {"progress": {"step": step, "totalSteps": total, "percent": int(100 * step / total), "loss": loss}}},
    )


def finish(result: dict, code: int) -> None:
    with open(os.environ["FINETUNE_TERMINATION_LOG"], "w") as out:
        json.dump(result, out)
    sys.exit(code)


def evaluate(run: dict) -> None:
    scenario = run["evaluation"]["benchmarks"][0]["dataset"]["uri"].rsplit("/", 1)[-1]
    print(f"stand-in trainer: evaluation scenario {scenario} for {run['resource']['name']}", flush=True)
    if scenario == "eval-pass":
        summary = [{"metric": "exact_match", "value": 0.9}]
        results = [{"benchmark": run["evaluation"]["benchmarks"][0]["name"], "metric": "exact_match", "value": 0.9}]
        outcome = {"summary": summary, "results": results, "report": {"uri": run["reportUri"]}, "samples": 10}
        finish({"result": "succeeded", "evaluation": outcome}, 0)
    print(f"unknown evaluation scenario {scenario}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    run = json.loads(os.environ["FINETUNE_RUN_SPEC"])
    if "evaluation" in run:
        evaluate(run)
    scenario = run["job"]["dataset"]["uri"].rsplit("/", 1)[-1]
    print(f"stand-in trainer: scenario {scenario} for {run['resource']['name']}", flush=True)
    if scenario == "success":
        report_progress(run, 5, 10, 1.75)
        adapter = {"uri": run["output"]["adapterUri"], "sha256": "ab" * 32, "sizeBytes": 4096}
        finish({"result": "succeeded", "adapter": adapter, "metrics": {"trainLoss": 1.5, "steps": 10}}, 0)
    if scenario == "data-error":
        finish(
            {"result": "failed", "reason": "DataError", "message": "train.jsonl line 3: field 'output' is missing"}, 2
        )
    if scenario == "crash":
        print("Traceback: RuntimeError: CUDA error: an illegal memory access was encountered", file=sys.stderr)
        sys.exit(1)
    if scenario == "oom":
        os.kill(os.getpid(), signal.SIGKILL)
    if scenario == "slow":
        report_progress(run, 1, 100, 3.0)
        time.sleep(120)
        sys.exit(0)
    print(f"unknown scenario {scenario}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
