"""The reliability suite runs its own clusters: the integration one (stand-in trainer, and it kills
the operator), and `demo`, the quickstart stack with the real trainer, whose pods reach MinIO through
a StoreLink so tests can stop the store at an exact request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from devcluster.quickstart import Quickstart
from tests.integration.conftest import cluster, kube, operator
from tests.kube import RESTRICTED_NAMESPACE

__all__ = ["cluster", "demo", "kube", "operator"]
CLEANUP_DEADLINE = 45
"""FINETUNE_CLEANUP_DEADLINE_SECONDS of the demo operator: a store outage releases a deletion this fast."""


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    # Still on the stand-in node: these tests read pod files and signal pod processes through it
    # (docs/architecture.md lists them); tests/node covers SIGTERM and OOM on the real node.
    started = Quickstart(
        tmp_path_factory.mktemp("faults"),
        real_node=False,
        link_store=True,
        operator_env={"FINETUNE_CLEANUP_DEADLINE_SECONDS": str(CLEANUP_DEADLINE)},
    ).start(say=lambda _: None)
    assert started.cluster
    # Every pod these tests make (trainer, retries, cleanup) is admitted by Pod Security itself.
    client.CoreV1Api(started.cluster.api()).patch_namespace("default", {"metadata": {"labels": RESTRICTED_NAMESPACE}})
    yield started
    started.stop()
