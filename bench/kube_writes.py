"""The operator's CPU per Kubernetes write: the generated client's methods vs `kube._request`.

    python bench/kube_writes.py                 # 200 FineTuneJobs' writes per variant, ABBA rounds

Each job is the operator's own writes for one attempt: ServiceAccount, Role, RoleBinding and Job
creates (the manifests the operator builds), then one status patch of its FineTuneJob. The baseline
calls the generated methods as the operator did up to 2026-11-24 (`_preload_content=False`, so the
response is not decoded into models either); ours sends the same bodies through `kube._request`.
Both run in this process against the local apiserver, one job at a time, and the figure is this
process's CPU per job (`time.process_time`), which is what the operator pays per job on its
cores; the apiserver's work is the same for both. Rounds alternate the order (ABBA).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_operator.api import FINETUNEJOB

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO), str(REPO / "operator")]

NAMESPACE = "writes"


def generated_writes(api: Any) -> Callable[[list[dict[str, Any]], str, dict[str, Any]], None]:
    """The baseline: the kubernetes client's generated methods, response left undecoded."""
    from kubernetes import client

    from finetune_operator.api import GROUP, VERSION

    core, rbac, batch = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.BatchV1Api(api)
    custom = client.CustomObjectsApi(api)
    create = {
        "ServiceAccount": core.create_namespaced_service_account,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
        "Job": batch.create_namespaced_job,
    }

    def raw(response: Any) -> bytes:
        data: bytes = response.read()
        response.release_conn()
        return data

    def write(children: list[dict[str, Any]], name: str, status: dict[str, Any]) -> None:
        for child in children:
            raw(create[child["kind"]](NAMESPACE, child, _preload_content=False))
        raw(
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, NAMESPACE, FINETUNEJOB.plural, name, {"status": status}, _preload_content=False
            )
        )

    return write


def request_writes(api: Any) -> Callable[[list[dict[str, Any]], str, dict[str, Any]], None]:
    """Ours: the operator's `kube` functions as they are now."""
    from finetune_operator import kube

    def write(children: list[dict[str, Any]], name: str, status: dict[str, Any]) -> None:
        for child in children:
            kube.create_or_adopt(api, child)
        kube.patch_status(api, FINETUNEJOB.kind, NAMESPACE, name, status)

    return write


def owners(api: Any, prefix: str, count: int) -> list[dict[str, Any]]:
    """`count` suspended FineTuneJobs to own the children (no operator runs: nothing else writes)."""
    from kubernetes import client
    from tests.kube import quick_spec

    from finetune_operator.api import API_VERSION, GROUP, VERSION

    custom = client.CustomObjectsApi(api)
    return [
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NAMESPACE,
            FINETUNEJOB.plural,
            {
                "apiVersion": API_VERSION,
                "kind": "FineTuneJob",
                "metadata": {"name": f"{prefix}-{index:04d}"},
                "spec": quick_spec("success", suspend=True),
            },
        )
        for index in range(count)
    ]


def children_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    from finetune_operator.api import FineTuneJobSpec
    from finetune_operator.config import OperatorSettings
    from finetune_operator.manifests import build_children
    from finetune_operator.manifests.launch import Run
    from finetune_operator.manifests.names import Owner

    spec = FineTuneJobSpec.model_validate(body["spec"])
    return build_children(Owner.from_body(body), spec, Run(1), OperatorSettings(trainer_image="local/stand-in:dev"))


def time_writes(write: Callable[..., None], bodies: list[dict[str, Any]]) -> float:
    """CPU seconds of this process per job, for all of `bodies`."""
    work = [(children_of(body), body["metadata"]["name"]) for body in bodies]  # built outside the timing
    status = {"phase": "Suspended", "observedGeneration": 1}
    started = time.process_time()
    for children, name in work:
        write(children, name, status)
    return (time.process_time() - started) / len(work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200, help="jobs per variant and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; every other one runs ours first")
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()
    from kubernetes import client

    from devcluster import ControlPlane, api_client, install_crds

    with tempfile.TemporaryDirectory() as folder:
        plane = ControlPlane(Path(folder) / "cluster", controllers=False, scheduler=False)
        plane.start()
        try:
            api = api_client(plane.kubeconfig)
            install_crds(api)
            client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
            for api_class in ("CoreV1Api", "RbacAuthorizationV1Api", "BatchV1Api", "CustomObjectsApi"):
                getattr(client, api_class)  # the generated baseline's classes, imported before timing
            variants = {"generated": generated_writes(api), "ours": request_writes(api)}
            warm = owners(api, "warm", 2)
            for index, write in enumerate(variants.values()):
                time_writes(write, warm[index : index + 1])
            per_job: dict[str, list[float]] = {label: [] for label in variants}
            for round_ in range(args.rounds):
                order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
                for label in order:
                    bodies = owners(api, f"r{round_}-{label}", args.jobs)
                    per_job[label].append(time_writes(variants[label], bodies))
                    print(f"round {round_ + 1} {label}: {per_job[label][-1] * 1000:.2f} ms CPU per job", flush=True)
        finally:
            plane.stop()
    generated, ours = (statistics.median(per_job[label]) * 1000 for label in ("generated", "ours"))
    print(
        f"client CPU per job (4 creates + 1 status patch, median of {args.rounds} rounds): "
        f"generated methods {generated:.2f} ms, kube._request {ours:.2f} ms, {generated / ours:.2f}x"
    )
    from record import record

    record(
        "kube_writes.py",
        {
            "jobs x rounds": f"{args.jobs} x {args.rounds}",
            "generated ms/job": round(generated, 2),
            "ours ms/job": round(ours, 2),
            "ratio": round(generated / ours, 2),
        },
        enabled=not args.no_record,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
