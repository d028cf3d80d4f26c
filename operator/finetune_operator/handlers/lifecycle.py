"""Start-up: kopf settings, the shared API client, the metrics server."""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import kopf

from ..config import OperatorSettings
from ..kube import KubeApi, make_api_client
from ..metrics import OperatorMetrics
from ..runtime import MEMO_KEY, Runtime
from ..workqueue import DelayedCalls


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf deep-copies every event's body into a diff base for change-detecting (create/update)
    handlers; with none registered it is never read, yet cost a share of the operator's CPU in a burst
    worth removing (docs/benchmarks.md, "Operator scale")."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    operator_settings = OperatorSettings.from_env(os.environ)
    # Only event handlers and indices are registered (kinds.base.needs_reconcile), so kopf
    # keeps no per-object state in annotations or .status: no bookkeeping patches at all.
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    # kopf posts each object's Events from a worker of its own, unlimited by default, and its HTTP
    # session opens a connection for each concurrent request (a TLS handshake on both ends): 54
    # sockets open at the peak of a 1000-job burst, 33 with a few posters that exit when done.
    settings.posting.worker_limit = 8
    settings.posting.idle_timeout = 0.05
    # kopf's worker for an object keeps the last event it handled (the decoded body) while it idles
    # waiting for the next one, 5 s by default: at a hundred events a second that is hundreds of
    # bodies kept for nothing (peak RSS of a 1000-job burst: docs/benchmarks.md, "Operator scale"). A worker
    # that exits is re-created by the next event: a task and a queue.
    settings.queueing.idle_timeout = 0.5
    # Re-list periodically so a watch silently dropped by a proxy cannot leave the operator blind.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    metrics = OperatorMetrics()
    metrics.serve(operator_settings.metrics_port)
    api = KubeApi(make_api_client(DelayedCalls.WORKERS))
    runtime = Runtime(settings=operator_settings, api=api, metrics=metrics)
    metrics.reconciles_pending.set_function(runtime.reconciles.pending)
    memo[MEMO_KEY] = runtime
    logger.info("finetune-operator configured: %s", operator_settings.model_dump())
