"""The operator's Kubernetes client is ready before the first reconcile needs it."""

from __future__ import annotations

import re
from pathlib import Path

from finetune_operator import kube


def test_every_api_class_the_operator_calls_is_resolved_at_start_up() -> None:
    # An API class missing from API_CLASSES is imported by the first reconcile that calls it, with
    # the models its methods name: half a second that stalls every reconcile thread at once.
    source = Path(kube.__file__).read_text()
    called = set(re.findall(r"client\.(\w+Api)\(", source))
    assert called and called <= set(kube.API_CLASSES)
