"""What every handler shares, created once at start-up and carried in kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes import client

from ..config import OperatorSettings
from ..kube import DelayedCalls, KeyedLocks
from ..metrics import OperatorMetrics

MEMO_KEY = "finetune"


@dataclass
class Runtime:
    settings: OperatorSettings
    api: client.ApiClient
    metrics: OperatorMetrics
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    reconciles: DelayedCalls = field(default_factory=DelayedCalls)
    """Every reconcile runs from this queue: queued by watch events, rechecks and retries."""
    verdicts: dict[tuple[str, str], tuple[object, ...]] = field(default_factory=dict)
    """Last seen phase/verdict of each owned EvalRun: only a change wakes its FineTuneJob."""
    versions: dict[tuple[str, str], str] = field(default_factory=dict)
    """resourceVersion of each resource as of its last fresh read or our own last write to it: a
    watched copy at that version is what a GET would return (handlers/common.reconcile_resource)."""

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)
