"""Trainer Jobs and Pods changed: queue a reconcile of the FineTuneJob or EvalRun that owns them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..manifests.names import LABEL_EVALRUN, LABEL_FINETUNEJOB
from .common import CHILDREN, indices_in
from .evalrun import queue_evalrun
from .finetunejob import queue_finetunejob
from .runtime import MEMO_KEY


@kopf.on.event("batch", "v1", "jobs", labels=CHILDREN)
@kopf.on.event("", "v1", "pods", labels=CHILDREN)
async def child_changed(
    *,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: Any,
    **kwargs: Any,
) -> None:
    runtime, ns = memo[MEMO_KEY], namespace or ""
    if LABEL_EVALRUN in labels:
        queue_evalrun(runtime, ns, labels[LABEL_EVALRUN], indices_in(kwargs))
    elif LABEL_FINETUNEJOB in labels:
        queue_finetunejob(runtime, ns, labels[LABEL_FINETUNEJOB], indices_in(kwargs))
