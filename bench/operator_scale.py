"""Operator scale on the local control plane: a burst of N FineTuneJobs, measured from outside.

    python bench/operator_scale.py --jobs 100                 # whole lifecycle: pods run the stand-in trainer
    python bench/operator_scale.py --jobs 1000 --suspended    # 1000 live resources, Jobs created suspended
    python bench/operator_scale.py --jobs 1000 --suspended --rate 30   # the same creates, paced at 30/s

Figures: time from the create request to the trainer Job's ADDED event (p50/p99, a watch in this
process), creation throughput (jobs/s from the first create to the last Job), the operator's Kubernetes
API requests per job over the run (from the apiserver's audit log, by the operator's user agents:
`finetune-operator/*` for its own calls, `kopf/*` for kopf's watches and patches; writes and reads
apart), and the operator's peak RSS (VmHWM) with all N resources live.

A burst arrives faster than two cores can reconcile, so its latency is queueing behind throughput;
`--rate` paces the creates to show the latency of a load the machine keeps up with.

The pods of the lifecycle run are the stand-in trainer of the integration tests (it honours the
operator<->trainer contract in a second), so the figures are the operator's, not training's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status (VmHWM and VmRSS are in kB), 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def peak_rss_mb(pid: int) -> float:
    return proc_status(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exited_children_cpu() -> float:
    """CPU of this process's exited children: the pods the in-process node agent ran and reaped (the
    control plane's processes are children too, but they are reaped only when the cluster stops)."""
    times = os.times()
    return times.children_user + times.children_system


HEAP_HOOK = """
import signal, tracemalloc, os

def _dump(*_):
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("filename")
    total = sum(s.size for s in stats)
    path = os.environ["FINETUNE_BENCH_HEAP_DUMP"]
    with open(path + ".partial", "w") as out:
        out.write(f"total {total}\\n")
        for stat in stats[:25]:
            out.write(f"{stat.size} {stat.count} {stat.traceback[0].filename}\\n")
    os.replace(path + ".partial", path)  # whole or absent for the reader

signal.signal(signal.SIGUSR1, _dump)
"""


def heap_env(folder: Path) -> dict[str, str]:
    """Operator env that traces Python allocations and dumps them by file on SIGUSR1 (a sitecustomize)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HEAP_HOOK)
    return {"PYTHONPATH": str(folder), "PYTHONTRACEMALLOC": "1", "FINETUNE_BENCH_HEAP_DUMP": str(folder / "heap.txt")}


def heap_by_package(dump: Path) -> dict[str, float]:
    """MB of live Python allocations by top-level package (site-packages name, or our own modules)."""
    lines = dump.read_text().splitlines()
    by: Counter[str] = Counter()
    for line in lines[1:]:
        size, _, filename = line.split(" ", 2)
        path = Path(filename)
        parts = path.parts
        if "site-packages" in parts:
            package = parts[parts.index("site-packages") + 1]
        elif "finetune_operator" in parts:
            package = "finetune_operator/" + path.name
        else:
            package = path.name
        by[package] += int(size)
    by["(all Python allocations)"] = int(lines[0].split()[1])
    return {k: round(v / 2**20, 1) for k, v in by.most_common(12)}


def current_rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def open_sockets(pid: int) -> int:
    """Sockets the process holds open now (its API connections, watches included)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(fd).startswith("socket:")
    return count


class PeakSampler(threading.Thread):
    """The highest value of `probe()` seen, sampled every 0.1 s until stopped."""

    def __init__(self, probe: Any) -> None:
        super().__init__(daemon=True)
        self.probe, self.peak, self.done = probe, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, self.probe())


def _step(status: dict[str, Any]) -> str:
    """What a status patch recorded: the Running condition's reason, or the fields it set."""
    running = next((c for c in status.get("conditions") or [] if c.get("type") == "Running"), None)
    if running is not None:
        return f"{status.get('phase', '')}/{running.get('reason')}".lstrip("/")
    return "+".join(sorted(status))


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
            status = (event.get("requestObject") or {}).get("status")
            if status is not None:
                counts[f"status patch {_step(status)}"] += 1
    return counts


class ProfileGrab(threading.Thread):
    """The apiserver's Go CPU profile over the next `seconds`, written to `path` (pprof format)."""

    def __init__(self, control_plane: Any, path: Path, seconds: int) -> None:
        super().__init__(daemon=True)
        self.control_plane, self.path, self.seconds = control_plane, path, seconds

    def run(self) -> None:
        body = self.control_plane.get(f"/debug/pprof/profile?seconds={self.seconds}", timeout=self.seconds + 30)
        self.path.write_bytes(body)


def run(
    jobs: int,
    suspended: bool,
    workdir: Path,
    heap: bool = False,
    rate: float = 0,
    apiserver_profile: Path | None = None,
    profile_seconds: int = 15,
) -> dict[str, Any]:
    from kubernetes import client, watch
    from tests.kube import quick_spec
    from urllib3.exceptions import ProtocolError

    from devcluster import LocalCluster, OperatorProcess, wait_for
    from finetune_operator.api import FINETUNEJOB, GROUP, VERSION

    cluster = LocalCluster(
        workdir / "cluster",
        path_prepend=(str(stand_in_bin(workdir)),),
        audit=True,
        profiling=apiserver_profile is not None,
    ).start()
    operator = None
    try:
        api = cluster.api()
        api.user_agent = "finetune-bench"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        env = {"FINETUNE_TRAINER_IMAGE": "local/stand-in:dev", **(heap_env(workdir / "heap") if heap else {})}
        operator = OperatorProcess(cluster.kubeconfig, workdir / "operator.log", env=env).start()
        operator.wait_ready()
        assert operator.process is not None
        time.sleep(2)
        idle_rss = current_rss_mb(operator.process.pid)
        added: dict[str, float] = {}
        stop = threading.Event()

        watch_failed: list[BaseException] = []
        watch_starts = 0

        def watch_jobs() -> None:
            """The first ADDED time of each FineTuneJob's Job. The apiserver ends a watch that reads too
            slowly for its event rate (this process shares the 2 busy cores), so an ended watch is resumed
            from the last version seen; a failed one fails the wait below rather than stalling it."""
            nonlocal watch_starts
            jobs_api, version = client.BatchV1Api(api), ""
            while not stop.is_set():
                watch_starts += 1
                stream = watch.Watch()
                try:
                    for event in stream.stream(
                        jobs_api.list_namespaced_job, NAMESPACE, resource_version=version, timeout_seconds=3600
                    ):
                        meta = event["raw_object"]["metadata"]  # not decoded into models: this client's CPU counts
                        version = meta["resourceVersion"]
                        if event["type"] == "ADDED":
                            added.setdefault((meta.get("labels") or {}).get(FINETUNEJOB.label), time.perf_counter())
                        if stop.is_set():
                            return
                except ProtocolError:
                    if stop.is_set():  # the apiserver going away at the end of the run ends the watch too
                        return
                except BaseException as error:
                    watch_failed.append(error)
                    raise

        def all_jobs_seen() -> bool:
            if watch_failed:
                raise RuntimeError("the benchmark's Job watch failed") from watch_failed[0]
            return len(added) >= jobs

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(1)
        sent: dict[str, float] = {}
        custom = client.CustomObjectsApi(api)

        def create(index: int) -> None:
            name = f"scale-{index:04d}"
            spec = quick_spec("success", suspend=True) if suspended else quick_spec("success")
            body = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}}
            if rate:
                time.sleep(max(0.0, started + index / rate - time.perf_counter()))
            sent[name] = time.perf_counter()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, FINETUNEJOB.plural, {**body, "spec": spec}
            )

        processes = {name: proc.pid for name, proc in cluster.control_plane._procs}
        processes["operator"] = operator.process.pid
        processes["benchmark client"] = os.getpid()  # the creates and the Job watch share the 2 cores too
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        pods_before = exited_children_cpu()
        operator_pid = operator.process.pid
        sockets = PeakSampler(lambda: open_sockets(operator_pid))
        sockets.start()
        profile = ProfileGrab(cluster.control_plane, apiserver_profile, profile_seconds) if apiserver_profile else None
        if profile is not None:
            profile.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, range(jobs)))
        created_in = time.perf_counter() - started
        wait_for(all_jobs_seen, 1800, f"{jobs} trainer Jobs", describe=lambda: f"{len(added)} Jobs")
        busy = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in processes.items()}
        busy["pods (exited by then)"] = round(exited_children_cpu() - pods_before, 1)
        sockets.done.set()
        busy["wall"] = round(time.perf_counter() - started, 1)
        latencies = [added[name] - sent[name] for name in sent]
        throughput = jobs / (max(added.values()) - started)

        def finished() -> int:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, FINETUNEJOB.plural)["items"]
            done = {"Suspended"} if suspended else {"Succeeded", "Failed"}
            return sum((i.get("status") or {}).get("phase") in done for i in items)

        if profile is not None:
            profile.join()
        wait_for(lambda: finished() >= jobs, 3600, f"{jobs} FineTuneJobs to settle", describe=lambda: str(finished()))
        time.sleep(5)  # let trailing events (pod deletion, final patches) land in the audit log
        time.sleep(25)  # quiet: kopf's per-object workers exit after their idle timeout
        settled_rss = current_rss_mb(operator.process.pid)
        heap_mb: dict[str, float] = {}
        if heap:
            dump = workdir / "heap" / "heap.txt"
            os.kill(operator.process.pid, signal.SIGUSR1)
            wait_for(dump.exists, 120, "the heap dump")
            time.sleep(1)
            heap_mb = heap_by_package(dump)
        stop.set()
        items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, FINETUNEJOB.plural)["items"]
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
            "rate_per_second": rate or None,
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
            "benchmark_job_watches": watch_starts,
            "writes_by_kind": {k.removeprefix("write "): v for k, v in requests.items() if k.startswith("write ")},
            "status_patches_by_step": {
                k.removeprefix("status patch "): v for k, v in requests.items() if k.startswith("status patch ")
            },
            "cpu_seconds_until_last_job": busy,
            "operator_peak_rss_mb": round(peak_rss_mb(operator.process.pid), 1),
            "operator_idle_rss_mb": round(idle_rss, 1),
            "operator_rss_mb_settled": round(settled_rss, 1),
            "operator_threads": proc_status(operator.process.pid, "Threads"),
            "operator_peak_sockets": sockets.peak,
            "python_heap_mb_by_package": heap_mb,
        }
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--suspended", action="store_true", help="create the Jobs suspended: no pods run")
    parser.add_argument(
        "--heap", action="store_true", help="attribute the operator's Python heap by package (tracemalloc: slow)"
    )
    parser.add_argument("--rate", type=float, default=0, help="create at most this many per second (default: a burst)")
    parser.add_argument(
        "--apiserver-profile",
        type=Path,
        metavar="PATH",
        help="write the apiserver's CPU profile (pprof) over the burst's first seconds to PATH; not recorded",
    )
    parser.add_argument("--profile-seconds", type=int, default=15, help="how long --apiserver-profile samples")
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run(
            args.jobs,
            args.suspended,
            Path(folder),
            heap=args.heap,
            rate=args.rate,
            apiserver_profile=args.apiserver_profile,
            profile_seconds=args.profile_seconds,
        )
    paced = f", created at {args.rate:g}/s" if args.rate else ""
    print(
        f"{result['jobs']} FineTuneJobs{' (suspended)' if args.suspended else ''}{paced}: create -> Job p50 "
        f"{result['latency_p50_s']:.3f}s p99 {result['latency_p99_s']:.3f}s, {result['jobs_per_second']:.1f} jobs/s, "
        f"{result['operator_writes_per_job']:.2f} API writes/job ({result['operator_reads_per_job']:.2f} reads/job), "
        f"operator peak RSS {result['operator_peak_rss_mb']:.0f} MB, {result['operator_peak_sockets']} sockets at most;"
        f" phases {result['phases']}"
    )
    print(json.dumps(result))
    from record import record

    if args.heap:
        print("Python heap by package (MB):", result["python_heap_mb_by_package"])
        return 0  # tracemalloc slows the operator: these figures are for attribution, not the log
    if args.apiserver_profile:
        print(f"apiserver CPU profile: {args.apiserver_profile} (go tool pprof -top -cum {args.apiserver_profile})")
        return 0  # sampling costs the apiserver a little CPU: attribution, not the log
    record(
        "operator_scale.py",
        {
            "run": f"{result['jobs']}{', suspended' if args.suspended else ', lifecycle'}{paced}",
            "p50 s": result["latency_p50_s"],
            "p99 s": result["latency_p99_s"],
            "jobs/s": result["jobs_per_second"],
            "writes/job": result["operator_writes_per_job"],
            "reads/job": result["operator_reads_per_job"],
            "peak RSS MB": result["operator_peak_rss_mb"],
            "idle RSS MB": result["operator_idle_rss_mb"],
            "settled RSS MB": result["operator_rss_mb_settled"],
            "operator CPU s": result["cpu_seconds_until_last_job"].get("operator"),
            "phases": ", ".join(f"{k} {v}" for k, v in result["phases"].items()),
        },
        enabled=not args.no_record,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
