"""The reliability suite's stacks, each on the real node and owned by one module (the machine holds
one real node at a time): the integration stack (stand-in trainer image; its tests kill the
operator), and `demo`, the quickstart stack with the real trainer image, whose pods reach MinIO
through a StoreLink so tests can stop the store at an exact request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from devcluster.quickstart import Quickstart
from tests.integration.conftest import kube, open_cluster, open_operator
from tests.kube import RESTRICTED_NAMESPACE

__all__ = ["cluster", "demo", "kube", "operator"]
CLEANUP_DEADLINE = 45
"""FINETUNE_CLEANUP_DEADLINE_SECONDS of the demo operator: a store outage releases a deletion this fast."""

cluster = pytest.fixture(scope="module", name="cluster")(open_cluster)
operator = pytest.fixture(scope="module", name="operator")(open_operator)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(
        tmp_path_factory.mktemp("faults"),
        link_store=True,
        operator_env={"FINETUNE_CLEANUP_DEADLINE_SECONDS": str(CLEANUP_DEADLINE)},
    ).start(say=lambda _: None)
    assert started.cluster
    # Every pod these tests make (trainer, retries, cleanup) is admitted by Pod Security itself.
    client.CoreV1Api(started.cluster.api()).patch_namespace("default", {"metadata": {"labels": RESTRICTED_NAMESPACE}})
    yield started
    started.stop()
