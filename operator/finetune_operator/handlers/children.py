"""Trainer Jobs and Pods changed: reconcile the FineTuneJob or EvalRun that owns them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ..manifests.names import LABEL_EVALRUN, LABEL_FINETUNEJOB
from .common import CHILDREN
from .evalrun import reconcile_evalrun
from .finetunejob import reconcile_finetunejob
from .runtime import MEMO_KEY


@kopf.on.event("batch", "v1", "jobs", labels=CHILDREN)
@kopf.on.event("", "v1", "pods", labels=CHILDREN)
def child_changed(
    *,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: Any,
    **kwargs: Any,
) -> None:
    runtime, ns = memo[MEMO_KEY], namespace or ""
    if LABEL_EVALRUN in labels:
        reconcile_evalrun(runtime, ns, labels[LABEL_EVALRUN], kwargs)
    elif LABEL_FINETUNEJOB in labels:
        reconcile_finetunejob(runtime, ns, labels[LABEL_FINETUNEJOB], kwargs)
