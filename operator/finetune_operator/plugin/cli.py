"""`kubectl-finetune`: the command line. Each command is a thin shell around views (what to print)
and access (the calls, with the user's kubeconfig)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlencode

from ..api import DATASET, EVALRUN, FINETUNEJOB, FINETUNESCHEDULE, MODEL
from ..api.model import ModelStatus
from ..registry import check_pin
from . import views
from .access import Cluster, Refused, Target, resolve_kind, split_ref

GET_ORDER = (FINETUNEJOB, EVALRUN, MODEL, DATASET, FINETUNESCHEDULE)

EXAMPLES = """\
examples:
  kubectl finetune get                        # jobs, evaluations, models and datasets of the namespace
  kubectl finetune get ftj -A                 # FineTuneJobs of every namespace
  kubectl finetune describe ftj/quickstart    # pipeline steps; on failure, why and what to do
  kubectl finetune logs ftj/quickstart -f     # the current attempt's pod (every pod of a multi-node group)
  kubectl finetune promote model/support-bot v3
  kubectl finetune rollback model/support-bot # back to the version stable before this one
  kubectl finetune dashboard                  # live steps, loss curves, evaluations and models in a browser
"""


def _target_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--kubeconfig", help="path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    flags.add_argument("--context", help="the kubeconfig context to use")
    flags.add_argument("-n", "--namespace", help="the namespace (default: the context's, else default)")
    return flags


def parser() -> argparse.ArgumentParser:
    flags = _target_flags()
    top = argparse.ArgumentParser(
        prog="kubectl finetune",
        description="See and steer finetune-operator resources with your own kubeconfig and RBAC: the plugin "
        "has no privileges of its own.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    get = commands.add_parser("get", parents=[flags], help="list jobs, evaluations, models and datasets in one view")
    get.add_argument("kinds", nargs="*", metavar="TYPE", help="ftj, evr, model, ftd, fts (default: all)")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    describe = commands.add_parser(
        "describe", parents=[flags], help="a resource's pipeline steps, conditions, and what to do about a failure"
    )
    describe.add_argument("ref", metavar="TYPE/NAME", help="for example ftj/quickstart")
    logs = commands.add_parser("logs", parents=[flags], help="the log of the current attempt's pod(s)")
    logs.add_argument("ref", metavar="TYPE/NAME", help="a FineTuneJob, EvalRun or Dataset, e.g. ftj/quickstart")
    logs.add_argument("-f", "--follow", action="store_true", help="stream the log")
    logs.add_argument("--tail", type=int, default=None, help="lines of recent log to show (default: all)")
    for name, text in (
        ("promote", "make version N stable: sets spec.pin (what a GitOps review would change)"),
        ("rollback", "pin a version again: N, or by default the one stable before the current one"),
    ):
        command = commands.add_parser(name, parents=[flags], help=text, description=text)
        command.add_argument("ref", metavar="model/NAME")
        command.add_argument("version", nargs="?" if name == "rollback" else None, metavar="vN", help="e.g. v3")
        command.add_argument("--timeout", type=float, default=30, help="seconds to wait for stable to move (0: none)")
    unpin = commands.add_parser("unpin", parents=[flags], help="remove spec.pin: stable follows the gate again")
    unpin.add_argument("ref", metavar="model/NAME")
    dashboard = commands.add_parser(
        "dashboard", parents=[flags], help="a live dashboard on http://127.0.0.1, through your kubeconfig"
    )
    dashboard.add_argument("-A", "--all-namespaces", action="store_true", help="show every namespace")
    dashboard.add_argument("--port", type=int, default=8001, help="local port (0: any free one)")
    dashboard.add_argument("--open", action="store_true", help="open it in the default browser")
    return top


def _cluster(args: argparse.Namespace) -> Cluster:
    target = Target(args.kubeconfig, args.context, args.namespace, getattr(args, "all_namespaces", False))
    return Cluster(target)


def cmd_get(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    kinds = [resolve_kind(k) for k in args.kinds] if args.kinds else list(GET_ORDER)
    now, printed, refused = views.now_utc(), 0, 0
    for kind in kinds:
        try:
            items = cluster.items(kind)
        except Refused as error:
            refused += 1
            print(error, file=err)
            continue
        if not items and not args.kinds:
            continue
        short = kind.short_names[0]
        named = [{**i, "metadata": {**i["metadata"], "name": f"{short}/{i['metadata']['name']}"}} for i in items]
        if printed:
            print(file=out)
        if items:
            print(views.kind_table(kind, named, now, namespaces=cluster.all_namespaces), file=out)
            printed += 1
    if not printed and not refused:
        where = "any namespace" if cluster.all_namespaces else f"{cluster.namespace} namespace"
        print(f"No resources found in {where}.", file=err)
    return 1 if refused else 0


def _events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    query = urlencode({"fieldSelector": f"involvedObject.name={name}"})
    try:
        items: list[dict[str, Any]] = cluster.request("GET", f"/api/v1/namespaces/{cluster.namespace}/events?{query}")[
            "items"
        ]
    except Refused:
        return []  # a user who may not read events still gets the rest
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")[-10:]


def cmd_describe(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    kind, name = split_ref(args.ref)
    body = cluster.get(kind, name)
    now = views.now_utc()
    if kind is FINETUNEJOB:
        try:
            models = cluster.items(MODEL)
        except Refused:
            models = []
        print(views.describe(body, models, now), file=out)
    else:
        print(views.describe_other(kind, body, now), file=out)
    events = _events(cluster, name)
    if events:
        print("Events:", file=out)
        for event in events:
            print(f"  {event.get('type', '')}  {event.get('reason', '')}  {event.get('message', '')}", file=out)
    return 0


def current_pods(body: dict[str, Any], pods: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest pod of each completion index of the current Job: one pod, or one per node of a group."""
    newest: dict[str, dict[str, Any]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        labels = pod["metadata"].get("labels") or {}
        newest[labels.get("batch.kubernetes.io/job-completion-index", "0")] = pod
    return [newest[i] for i in sorted(newest, key=lambda i: int(i) if i.isdigit() else 0)]


def cmd_logs(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    kind, name = split_ref(args.ref)
    if not kind.attempts:
        raise Refused(f"error: a {kind.kind} runs no pods; logs are for {FINETUNEJOB.kind}, {EVALRUN.kind}, ...")
    body = cluster.get(kind, name)
    status = body.get("status") or {}
    job = status.get("jobName")
    pods = current_pods(body, cluster.pods(f"job-name={job}")) if job else []
    if not pods:
        phase = status.get("phase") or "Pending"
        raise Refused(f"error: {args.ref} has no pod now (phase {phase}; its Job {job or 'is not created yet'})")
    prefix = len(pods) > 1
    lock = threading.Lock()

    def copy(pod: dict[str, Any]) -> None:
        label = f"[pod/{pod['metadata']['name']}] " if prefix else ""
        pending = b""
        for chunk in cluster.log(pod["metadata"]["name"], follow=args.follow, tail=args.tail):
            *lines, pending = (pending + chunk).split(b"\n")
            with lock:
                for line in lines:
                    out.write(f"{label}{line.decode(errors='replace')}\n")
                out.flush()
        if pending:
            with lock:
                out.write(f"{label}{pending.decode(errors='replace')}\n")

    threads = [threading.Thread(target=copy, args=(p,), daemon=True) for p in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


def _version(word: str) -> int:
    digits = word.lower().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise Refused(f"error: {word!r} is not a version (write v3 or 3)")
    return int(digits)


def _model(args: argparse.Namespace) -> str:
    kind, name = split_ref(args.ref)
    if kind is not MODEL:
        raise Refused(f"error: {args.command} works on a Model (model/NAME), not a {kind.kind}")
    return name


def cmd_pin(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    name = _model(args)
    model = cluster.get(MODEL, name)
    versions = ModelStatus.model_validate(model.get("status") or {}).versions
    if args.version is None:
        version = views.previous_stable(model)
        if version is None:
            raise Refused(f"error: model/{name} has no earlier stable version to roll back to; name one (vN)")
    else:
        version = _version(args.version)
    pin = check_pin(version, versions)
    if pin.usable is False:
        raise Refused(f"error: {pin.message}")
    cluster.patch(MODEL, name, {"spec": {"pin": version}})
    print(f"model/{name} pinned to v{version} (spec.pin)", file=out)
    if pin.usable is None:
        print(pin.message, file=out)
        return 0
    return _await(lambda: cluster.get(MODEL, name), version, args.timeout, out)


def _await(read: Callable[[], dict[str, Any]], version: int, timeout: float, out: TextIO) -> int:
    """Until the operator moved stable (or said why not): what the user would otherwise poll for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read().get("status") or {}
        pinned: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Pinned"), {})
        if status.get("stable") == version:
            print(f"stable is v{version}", file=out)
            return 0
        if pinned.get("status") == "False":
            print(f"the operator refused the pin: {pinned.get('message')}", file=out)
            return 1
        time.sleep(0.5)
    if timeout:
        print(f"stable has not moved to v{version} yet; see kubectl finetune describe model/...", file=out)
    return 0


def cmd_unpin(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    name = _model(args)
    cluster.patch(MODEL, name, {"spec": {"pin": None}})
    print(f"model/{name} unpinned: stable follows the promotion gate", file=out)
    return 0


def cmd_dashboard(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .dashboard import serve

    return serve(cluster, args.port, open_browser=args.open, out=out)


COMMANDS: dict[str, Callable[[Cluster, argparse.Namespace, TextIO, TextIO], int]] = {
    "get": cmd_get,
    "describe": cmd_describe,
    "logs": cmd_logs,
    "promote": cmd_pin,
    "rollback": cmd_pin,
    "unpin": cmd_unpin,
    "dashboard": cmd_dashboard,
}


def run(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = parser().parse_args(list(argv))
    try:
        return COMMANDS[args.command](_cluster(args), args, out, err)
    except Refused as error:
        print(error, file=err)
        return 1
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":  # the krew archive's launcher runs `python3 -m finetune_operator.plugin.cli`
    main()
