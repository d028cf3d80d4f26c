"""`python -m finetune_operator`: run the operator (what the container's entrypoint does)."""

from __future__ import annotations

import argparse
import os
import sys

from .config import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-operator", description="Run the finetune-operator controller.")
    parser.add_argument(
        "--standalone", action="store_true", help="no peering with other replicas (single replica or local runs)"
    )
    parser.add_argument("--peering", metavar="NAME", help="kopf peering (a ClusterKopfPeering) shared by the replicas")
    parser.add_argument("--priority", type=int, default=0, help="kopf peering priority of this replica")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        settings = OperatorSettings.from_env(os.environ)
    except ValueError as error:
        print(f"finetune-operator: {error}", file=sys.stderr)
        return 2

    # Imported only now: a bad env var fails fast with its name, before kopf starts.
    import kopf

    from . import handlers  # noqa: F401  (importing registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
