"""Operator scale on the local control plane: a burst of N FineTuneJobs, measured from outside.

    python bench/operator_scale.py --jobs 100                 # whole lifecycle: pods run the stand-in trainer
    python bench/operator_scale.py --jobs 1000 --suspended    # 1000 live resources, Jobs created suspended

Figures: time from the create request to the trainer Job's ADDED event (p50/p99, a watch in this
process), creation throughput (jobs/s from the first create to the last Job), the operator's Kubernetes
API requests per job over the run (from the apiserver's audit log, by the operator's user agents:
`finetune-operator/*` for its own calls, `kopf/*` for kopf's watches and patches; writes and reads
apart), and the operator's peak RSS (VmHWM) with all N resources live.

The pods of the lifecycle run are the stand-in trainer of the integration tests (it honours the
operator<->trainer contract in a second), so the figures are the operator's, not training's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO)]

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
NAMESPACE = "scale"


def stand_in_bin(folder: Path) -> Path:
    script = folder / "finetune-trainer"
    script.write_text(f"#!{sys.executable}\n" + (REPO / "tests" / "integration" / "stand_in_trainer.py").read_text())
    script.chmod(0o755)
    return folder


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator_requests(audit_log: Path) -> Counter[str]:
    """Completed requests by the operator, keyed "read"/"write"/"watch" (one per auditID)."""
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        agent = event.get("userAgent", "")
        if not agent.startswith(("finetune-operator/", "kopf/")) or event["auditID"] in seen:
            continue
        if event["stage"] not in {"ResponseComplete", "ResponseStarted"}:
            continue
        seen.add(event["auditID"])
        verb = event["verb"]
        counts["write" if verb in WRITE_VERBS else "watch" if verb == "watch" else "read"] += 1
        if verb in WRITE_VERBS:
            resource = event.get("objectRef", {})
            counts[f"write {verb} {resource.get('resource')}/{resource.get('subresource', '')}".rstrip("/")] += 1
    return counts


def run(jobs: int, suspended: bool, workdir: Path) -> dict[str, Any]:
    from kubernetes import client, watch
    from tests.kube import quick_spec

    from devcluster import LocalCluster, OperatorProcess, wait_for

    cluster = LocalCluster(workdir / "cluster", path_prepend=(str(stand_in_bin(workdir)),), audit=True).start()
    operator = None
    try:
        api = cluster.api()
        api.user_agent = "finetune-bench"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        operator = OperatorProcess(
            cluster.kubeconfig, workdir / "operator.log", env={"FINETUNE_TRAINER_IMAGE": "local/stand-in:dev"}
        ).start()
        operator.wait_ready()
        assert operator.process is not None
        added: dict[str, float] = {}
        stop = threading.Event()

        def watch_jobs() -> None:
            stream = watch.Watch()
            for event in stream.stream(client.BatchV1Api(api).list_namespaced_job, NAMESPACE, timeout_seconds=3600):
                if event["type"] == "ADDED":
                    owner = (event["object"].metadata.labels or {}).get("finetune.dev/finetunejob")
                    added.setdefault(owner, time.perf_counter())
                if stop.is_set():
                    stream.stop()

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(1)
        sent: dict[str, float] = {}
        custom = client.CustomObjectsApi(api)

        def create(index: int) -> None:
            name = f"scale-{index:04d}"
            spec = quick_spec("success", suspend=True) if suspended else quick_spec("success")
            body = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}}
            sent[name] = time.perf_counter()
            custom.create_namespaced_custom_object(
                "finetune.dev", "v1alpha1", NAMESPACE, "finetunejobs", {**body, "spec": spec}
            )

        processes = {name: proc.pid for name, proc in cluster.control_plane._procs}
        processes["operator"] = operator.process.pid
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, range(jobs)))
        created_in = time.perf_counter() - started
        wait_for(lambda: len(added) >= jobs, 1800, f"{jobs} trainer Jobs", describe=lambda: f"{len(added)} Jobs")
        busy = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in processes.items()}
        busy["wall"] = round(time.perf_counter() - started, 1)
        latencies = [added[name] - sent[name] for name in sent]
        throughput = jobs / (max(added.values()) - started)

        def finished() -> int:
            items = custom.list_namespaced_custom_object("finetune.dev", "v1alpha1", NAMESPACE, "finetunejobs")["items"]
            done = {"Suspended"} if suspended else {"Succeeded", "Failed"}
            return sum((i.get("status") or {}).get("phase") in done for i in items)

        wait_for(lambda: finished() >= jobs, 3600, f"{jobs} FineTuneJobs to settle", describe=lambda: str(finished()))
        time.sleep(5)  # let trailing events (pod deletion, final patches) land in the audit log
        stop.set()
        items = custom.list_namespaced_custom_object("finetune.dev", "v1alpha1", NAMESPACE, "finetunejobs")["items"]
        phases = Counter((i.get("status") or {}).get("phase") for i in items)
        reasons = Counter(
            next((c["reason"] for c in (i.get("status") or {}).get("conditions", []) if c["type"] == "Failed"), "")
            for i in items
            if (i.get("status") or {}).get("phase") == "Failed"
        )
        requests = operator_requests(cluster.control_plane.audit_log)
        return {
            "jobs": jobs,
            "suspended": suspended,
            "phases": dict(phases),
            "failure_reasons": dict(reasons),
            "failure_examples": {
                c["reason"]: c["message"][:300]
                for i in items
                for c in (i.get("status") or {}).get("conditions", [])
                if c["type"] == "Failed" and c["status"] == "True"
            },
            "create_burst_seconds": round(created_in, 2),
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p99_s": round(percentile(latencies, 0.99), 3),
            "jobs_per_second": round(throughput, 1),
            "operator_writes_per_job": round(requests["write"] / jobs, 2),
            "operator_reads_per_job": round(requests["read"] / jobs, 2),
            "operator_watches": requests["watch"],
            "writes_by_kind": {k.removeprefix("write "): v for k, v in requests.items() if k.startswith("write ")},
            "cpu_seconds_until_last_job": busy,
            "operator_peak_rss_mb": round(peak_rss_mb(operator.process.pid), 1),
        }
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--suspended", action="store_true", help="create the Jobs suspended: no pods run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(args.jobs, args.suspended, Path(folder))
    print(
        f"{result['jobs']} FineTuneJobs{' (suspended)' if args.suspended else ''}: create -> Job p50 "
        f"{result['latency_p50_s']:.3f}s p99 {result['latency_p99_s']:.3f}s, {result['jobs_per_second']:.1f} jobs/s, "
        f"{result['operator_writes_per_job']:.2f} API writes/job ({result['operator_reads_per_job']:.2f} reads/job), "
        f"operator peak RSS {result['operator_peak_rss_mb']:.0f} MB; phases {result['phases']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
