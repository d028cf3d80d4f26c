"""The reliability suite runs on its own local cluster and operator process (it kills the operator)."""

from tests.integration.conftest import cluster, kube, operator

__all__ = ["cluster", "kube", "operator"]
