"""What every handler and reconcile shares, created once at start-up and carried in kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from .config import OperatorSettings
from .executor import Api
from .metrics import OperatorMetrics
from .workqueue import DelayedCalls, Key, KeyedLocks

MEMO_KEY = "finetune"


@dataclass
class Runtime:
    settings: OperatorSettings
    api: Api
    metrics: OperatorMetrics
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    reconciles: DelayedCalls = field(default_factory=DelayedCalls)
    """Every reconcile runs from this queue: queued by watch events, rechecks and retries."""
    mirrored: dict[Key, tuple[object, ...]] = field(default_factory=dict)
    """What each resource last showed the resources that depend on it (Controller.mirrored): only a
    change wakes them."""
    versions: dict[Key, str] = field(default_factory=dict)
    """resourceVersion of each resource as of its last fresh read or our own last write to it: a
    watched copy at that version is what a GET would return (reconciler.reconcile)."""

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)
