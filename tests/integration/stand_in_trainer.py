#!/usr/bin/env python3
"""A stand-in for `finetune-trainer` in operator integration tests (the real trainer has its own tests).

It runs as `finetune-trainer` in the stand-in image (tests/integration/stand-in.Dockerfile: the
operator image plus this file), on the real node, so the operator meets a real kubelet, and a
scenario costs a second instead of a training run. It honours the operator<->trainer contract:
reads FINETUNE_RUN_SPEC, patches status.progress of its own resource with the pod's projected
service-account token, writes a TrainerResult to /dev/termination-log and exits 0 / 2 / other.
What it does is chosen by the dataset URI, file:///scenario/<name>: success, data-error, crash,
oom (allocates past its cgroup's memory limit until the kernel kills it), slow; and for an
evaluation (`finetune-trainer eval`), by its first benchmark's: eval-pass (exact_match 0.9), eval-score-<x>
(exact_match x); and for a Model's store copy (`finetune-trainer publish-model`), by the store URI:
one containing `publish-fail` fails as an unreachable store does, any other reports every version published
(it writes nothing: the real command is tested against MinIO in tests/e2e and tests/trainer); and for a
FineTuneSchedule's check (`finetune-trainer check-schedule`), a run is due exactly when the operator says
so (`due`), on the template's own dataset (it reads and writes nothing either: the real command is tested
in tests/trainer/test_check_schedule.py and tests/e2e/test_schedule.py).
bench/operator_scale.py runs it as a host process under the stand-in node agent instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from kubernetes import client, config


def report_progress(run: dict, step: int, total: int, loss: float) -> None:
    if "KUBERNETES_SERVICE_HOST" in os.environ:  # a pod on the real node: its projected token
        config.load_incluster_config()
    else:  # a process of the stand-in node agent, which passes the pod's token through KUBECONFIG
        config.load_kube_config()
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
    with open(os.environ.get("FINETUNE_TERMINATION_LOG", "/dev/termination-log"), "w") as out:
        json.dump(result, out)
    sys.exit(code)


MEMORY_LIMIT_FILES = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
"""Where the container's memory limit is: cgroup v1, then v2."""
MOST_TO_ALLOCATE = 4 << 30
"""The oom scenario refuses a limit above this (or none): it must not eat the machine's memory."""


def memory_limit() -> int | None:
    for path in MEMORY_LIMIT_FILES:
        text = Path(path).read_text().strip() if Path(path).exists() else ""
        if text.isdigit():
            return int(text)
    return None


def exhaust_memory() -> None:
    """Touch memory past the cgroup limit, so the kernel's OOM killer ends this process (exit 137)."""
    limit = memory_limit()
    if limit is None or limit > MOST_TO_ALLOCATE:
        print(f"oom scenario: memory limit {limit} is none or above {MOST_TO_ALLOCATE}; refusing", file=sys.stderr)
        sys.exit(1)
    chunk = 16 << 20
    held = [b"\x01" * chunk for _ in range(2 * limit // chunk + 1)]  # filled: every page is really resident
    del held
    print("oom scenario: allocated twice the limit and was not killed", file=sys.stderr)
    sys.exit(1)


def evaluate(run: dict) -> None:
    scenario = run["evaluation"]["benchmarks"][0]["dataset"]["uri"].rsplit("/", 1)[-1]
    print(f"stand-in trainer: evaluation scenario {scenario} for {run['resource']['name']}", flush=True)
    if scenario == "eval-pass" or scenario.startswith("eval-score-"):
        score = 0.9 if scenario == "eval-pass" else float(scenario.removeprefix("eval-score-"))
        summary = [{"metric": "exact_match", "value": score}]
        results = [{"benchmark": run["evaluation"]["benchmarks"][0]["name"], "metric": "exact_match", "value": score}]
        outcome = {"summary": summary, "results": results, "report": {"uri": run["reportUri"]}, "samples": 10}
        finish({"result": "succeeded", "evaluation": outcome}, 0)
    print(f"unknown evaluation scenario {scenario}", file=sys.stderr)
    sys.exit(1)


def publish_model(run: dict) -> None:
    if "publish-fail" in run["uri"]:
        finish({"result": "failed", "reason": "StorageUnavailable", "message": f"{run['uri']}: connection refused"}, 1)
    versions = [v["version"] for v in run.get("versions") or []]
    stable = (run.get("stable") or {}).get("version")
    finish({"result": "succeeded", "publishedVersions": versions, "stableVersion": stable}, 0)


def check_schedule(run: dict) -> None:
    due = run.get("due") or []
    outcome = {"reasons": due, "datasetUri": run["dataset"]["uri"], "rows": 10} if due else {}
    finish({"result": "succeeded", "message": "; ".join(due) or "no run is due", "schedule": outcome}, 0)


def stop_on_sigterm(signum: int, frame: object) -> None:
    """What the real trainer does on SIGTERM, minus the checkpoint. A handler is needed at all because
    a container's first process ignores SIGTERM without one: it would wait out the grace period."""
    finish({"result": "failed", "reason": "Interrupted", "message": "terminated (SIGTERM) at step 1"}, 143)


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    run = json.loads(os.environ["FINETUNE_RUN_SPEC"])
    if "evaluation" in run:
        evaluate(run)
    if run.get("kind") == "ModelPublishRun":
        publish_model(run)
    if run.get("kind") == "ScheduleCheckRun":
        check_schedule(run)
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
        exhaust_memory()
    if scenario == "slow":
        report_progress(run, 1, 100, 3.0)
        time.sleep(120)
        sys.exit(0)
    print(f"unknown scenario {scenario}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
