"""The operator's Kubernetes client is ready before the first reconcile needs it."""

from __future__ import annotations

import re
from pathlib import Path

from finetune_operator import kube

GENERATED_API = re.compile(r"client\.(\w+Api)\(")


def test_the_operator_calls_no_generated_api_class() -> None:
    # A generated API class is imported by the first call that uses it, with the ~290 models its
    # methods name: half a second that stalls every reconcile thread at once. Every call the
    # operator makes goes through kube._request instead, so no start-up preload is needed.
    assert GENERATED_API.findall("client.CoreV1Api(api)") == ["CoreV1Api"]  # the pattern does match a call
    package = Path(kube.__file__).parent
    called = {str(p.relative_to(package)): GENERATED_API.findall(p.read_text()) for p in package.rglob("*.py")}
    assert {path: apis for path, apis in called.items() if apis} == {}
