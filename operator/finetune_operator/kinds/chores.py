"""Short pods of the trainer image that work on the store for a kind that runs no attempts (a Model's
publish pod, a FineTuneSchedule's check pod): their Jobs as watched, what they reported, how long to wait
before trying again after one failed, and which waits are worth showing; and the clock such a kind's
reconcile steps share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.contract import TrainerResult
from ..manifests.names import LABEL_JOB_NAME
from ..plan import Plan
from ..status import CONFIG_WAITING, IMAGE_PULL_WAITING, format_time, last_result, parse_time, view_job, view_pod

UNSEEN_SECONDS = 300
"""How long a chore's Job may stay unseen by the watch before it counts as failed (deleted by hand)."""
BACKOFF_SECONDS = (30.0, 3600.0)
"""The wait before retrying a failed chore: the first, doubling per failure in a row, up to the second."""

STUCK = CONFIG_WAITING | IMAGE_PULL_WAITING
"""Waiting reasons of a chore's pod worth showing: they last until someone acts (a missing Secret, an
image that cannot be pulled), bounded by the Job's activeDeadlineSeconds, after which it fails."""


class Timed:
    """What a reconcile's shared state (a dataclass with `time` and `result` fields) offers its steps: the
    time as the status writes it, the time since a recorded one, and the earliest recheck any step asked."""

    time: datetime
    result: Plan

    @property
    def stamp(self) -> str:
        return format_time(self.time)

    def since(self, stamp: str | None) -> float:
        """Seconds from `stamp` (RFC 3339; None: now) to this reconcile."""
        return (self.time - (parse_time(stamp) or self.time)).total_seconds()

    def recheck(self, seconds: float) -> None:
        current = self.result.recheck_after
        self.result.recheck_after = seconds if current is None else min(current, seconds)


def backoff(failures: int) -> float:
    first, most = BACKOFF_SECONDS
    return min(most, first * 2.0 ** max(failures - 1, 0))


@dataclass(frozen=True)
class ChoreJobs:
    """A resource's chore Jobs and their pods, as watched (the only Jobs it owns)."""

    jobs: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()

    def job(self, name: str) -> Mapping[str, Any] | None:
        return next((j for j in self.jobs if j["metadata"]["name"] == name), None)

    def pods_of(self, job: str) -> list[Mapping[str, Any]]:
        return [p for p in self.pods if (p["metadata"].get("labels") or {}).get(LABEL_JOB_NAME) == job]

    def stuck(self, job: str) -> str | None:
        """Why the Job's pod waits, when that lasts until someone acts; None otherwise."""
        waiting = next((w for w in map(view_pod, self.pods_of(job)) if w.waiting_reason in STUCK), None)
        if waiting is None:
            return None
        return f"pod {waiting.name} waits: {waiting.waiting_reason}: {waiting.waiting_message or ''}"


def outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> TrainerResult:
    """A finished chore Job's result, in the trainer's words when its last pod left one."""
    name, view = job["metadata"]["name"], view_job(job)
    if view.complete:
        done = last_result(pods, "succeeded")
        return done or TrainerResult(result="succeeded", message=f"Job {name} completed without a result")
    failed = last_result(pods, "failed")
    return failed or TrainerResult(result="failed", message=view.failed_message or f"Job {name} failed")
