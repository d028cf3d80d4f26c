"""(Job, Pods, trainer result) -> phase, reason, conditions. Pure functions, table-tested.

The Job's own conditions say *that* an attempt ended; the pods say *why* (OOMKilled, exit code 2,
image pull errors, unschedulable), and the trainer's termination message says what it produced.
The trainer's progress patches are never trusted for the outcome.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from .api.common import TERMINAL_PHASES, Phase, Resources
from .api.contract import EXIT_INVALID_INPUT, TrainerResult
from .manifests.names import (
    ANNOTATION_COMPLETION_INDEX,
    ANNOTATION_COUNTED_RESTARTS,
    ANNOTATION_SPEC_HASH,
    LABEL_ATTEMPT,
    LABEL_JOB_NAME,
    LABEL_RESTART,
    TRAINER_CONTAINER,
)

IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
PERMANENT_IMAGE_ERRORS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError"})
MESSAGE_LIMIT = 2048
# How long a finished Job may wait for its pod's final status to reach the operator's pod index (the Job
# and Pod watches are separate streams; under load the Job's Complete can arrive first).
POD_STATUS_GRACE_SECONDS = 60.0
_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(message: str) -> str:
    message = message.strip()
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


@dataclass(frozen=True)
class PodView:
    """What matters of a trainer pod."""

    name: str
    phase: str
    image: str | None = None
    created: str | None = None
    exit_code: int | None = None
    terminated_reason: str | None = None
    message: str | None = None
    finished_at: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    unschedulable: str | None = None
    attempt: int | None = None
    job: str | None = None
    index: int | None = None
    """Completion index in a pod group (its node rank); None for a one-pod Job."""
    disrupted: bool = False
    """Preempted, evicted or drained (the DisruptionTarget condition): not the trainer's fault."""

    @property
    def where(self) -> str:
        """How a message names the pod: a group's pods by node rank too."""
        return f"pod {self.name}" + (f" (node rank {self.index})" if self.index is not None else "")

    @property
    def terminated(self) -> bool:
        return self.exit_code is not None

    @property
    def failed(self) -> bool:
        return self.phase == "Failed" or (self.exit_code is not None and self.exit_code != 0)


def view_pod(pod: Mapping[str, Any]) -> PodView:
    status = pod.get("status") or {}
    container: Mapping[str, Any] = next(
        (c for c in status.get("containerStatuses") or [] if c.get("name") == TRAINER_CONTAINER), {}
    )
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    unschedulable = next(
        (
            c.get("message", "")
            for c in status.get("conditions") or []
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        ),
        None,
    )
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    conditions = status.get("conditions") or []
    return PodView(
        name=pod["metadata"]["name"],
        phase=status.get("phase", "Pending"),
        image=containers[0].get("image"),
        created=pod["metadata"].get("creationTimestamp"),
        exit_code=terminated.get("exitCode"),
        terminated_reason=terminated.get("reason"),
        message=terminated.get("message"),
        finished_at=terminated.get("finishedAt"),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        unschedulable=unschedulable,
        attempt=_number(labels.get(LABEL_ATTEMPT)),
        job=labels.get(LABEL_JOB_NAME),
        index=_number((meta.get("annotations") or {}).get(ANNOTATION_COMPLETION_INDEX)),
        disrupted=any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions),
    )


@dataclass(frozen=True)
class JobView:
    """What matters of a trainer Job."""

    name: str
    attempt: int | None
    spec_hash: str | None
    suspended: bool
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    finished_at: str | None = None
    """completionTime, or when the Failed condition appeared."""
    group: bool = False
    """An Indexed Job of several pods that stand or fall together (manifests/launch.py)."""
    restart: int = 0
    counted_restarts: int = 0

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_reason is not None


def view_job(job: Mapping[str, Any]) -> JobView:
    meta = job["metadata"]
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    # FailureTarget appears before Failed while the Job controller is still terminating pods.
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    # SuccessCriteriaMet comes before Complete (and before completionTime is set).
    ended = failed or conditions.get("SuccessCriteriaMet") or conditions.get("Complete") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    spec = job.get("spec") or {}
    return JobView(
        name=meta["name"],
        attempt=_number(labels.get(LABEL_ATTEMPT)),
        spec_hash=annotations.get(ANNOTATION_SPEC_HASH),
        suspended=bool(spec.get("suspend")),
        active=status.get("active", 0) or 0,
        succeeded=status.get("succeeded", 0) or 0,
        failed=status.get("failed", 0) or 0,
        complete="Complete" in conditions or "SuccessCriteriaMet" in conditions,
        failed_reason=(failed.get("reason") or "JobFailed") if failed else None,
        failed_message=failed.get("message") if failed else None,
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        finished_at=ended.get("lastTransitionTime") or status.get("completionTime"),
        group=spec.get("completionMode") == "Indexed" and (spec.get("completions") or 1) > 1,
        restart=_number(labels.get(LABEL_RESTART)) or 0,
        counted_restarts=_number(annotations.get(ANNOTATION_COUNTED_RESTARTS)) or 0,
    )


def _number(value: str | None) -> int | None:
    """A label's or annotation's number; None when absent or not a number."""
    return int(value) if value and value.isdigit() else None


def pod_failures(job: JobView | None, pods: Sequence[PodView]) -> int:
    """Failed pods of an attempt: the Job's count, or the failed pods we see where it lags.

    The Job controller counts a failed pod a moment after the pod's status says so, and the
    operator may record a terminal phase from the pod first (a terminal phase is never revisited).
    A deleted pod is gone from `pods` but stays in the Job's count.
    """
    return max(job.failed if job else 0, sum(pod.failed for pod in pods))


def parse_result(message: str | None) -> TrainerResult | None:
    """The trainer's JSON result; None when the message is a log tail (FallbackToLogsOnError) or garbage."""
    if not message:
        return None
    try:
        return TrainerResult.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def last_result(pods: Sequence[Mapping[str, Any]], result: str) -> TrainerResult | None:
    """The result (`succeeded` or `failed`) that the last of these pods to leave one wrote, if any."""
    for pod in reversed(pods):
        found = parse_result(view_pod(pod).message)
        if found is not None and found.result == result:
            return found
    return None


@dataclass(frozen=True)
class Outcome:
    """Where an attempt stands, and why."""

    phase: Phase
    reason: str
    message: str
    result: TrainerResult | None = None
    recheck_after: float | None = None
    """Seconds after which the outcome may change with no event to announce it (a timeout expiring)."""
    since: datetime | None = None
    """For a transient step (Starting, Finishing): when it began, as the observed objects say."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


class Scheduling(Protocol):
    """The spec fields that decide how an attempt runs; FineTuneJob and EvalRun share them."""

    @property
    def queue_name(self) -> str | None: ...
    @property
    def suspend(self) -> bool: ...
    @property
    def backoff_limit(self) -> int: ...
    @property
    def active_deadline_seconds(self) -> int | None: ...
    @property
    def resources(self) -> Resources: ...


@dataclass(frozen=True)
class Judge:
    """What success means for one kind of run, read from the trainer's result."""

    success: Callable[[TrainerResult], Outcome | None]
    """The Succeeded outcome of a `succeeded` result; None when the result lacks what this kind must produce."""
    produces: str
    """What a successful run must report, for the ResultMissing message (e.g. "an adapter")."""
    memory_hint: str
    """What to lower when the pod ran out of memory."""


def _last_terminated(pods: Sequence[PodView]) -> PodView | None:
    ended = [pod for pod in pods if pod.terminated]
    return max(ended, key=lambda pod: pod.finished_at or "", default=None)


def first_failed(pods: Sequence[PodView]) -> PodView | None:
    """The pod whose failure decides: the newest of a one-pod Job's retries, but in a pod group the
    first to fail; its peers fail after it, because it did (a lost connection, the Job stopping them)."""
    failed = [pod for pod in pods if pod.terminated and pod.exit_code != 0]
    if any(pod.index is not None for pod in failed):
        # Within the same second, a pod stopped with SIGTERM (exit 143) is the consequence, not the cause.
        return min(failed, key=lambda pod: (pod.finished_at or "", pod.exit_code == 143))
    return _last_terminated(failed)


def _failure(job: JobView, pods: Sequence[PodView], spec: Scheduling, judge: Judge) -> Outcome:
    last = first_failed(pods)
    result = parse_result(last.message) if last else None
    detail = (result.message if result else None) or (last.message if last else None) or ""
    if job.failed_reason == "DeadlineExceeded":
        return Outcome(
            "Failed",
            "DeadlineExceeded",
            f"the attempt ran longer than spec.activeDeadlineSeconds={spec.active_deadline_seconds}; "
            "raise it, or train fewer steps",
        )
    # In a pod group, say which pod: its peers fail too, only because it did.
    where = f"{last.where}: " if last and last.index is not None else ""
    if last and last.terminated_reason == "OOMKilled":
        return Outcome(
            "Failed",
            "OutOfMemory",
            f"{where}the trainer was killed for exceeding its memory limit "
            f"(spec.resources.memory={spec.resources.memory}); raise it, or lower {judge.memory_hint}",
        )
    if result and result.reason and _REASON.match(result.reason):
        return Outcome("Failed", result.reason, _clip(where + (detail or result.reason)), result)
    if last and last.exit_code == EXIT_INVALID_INPUT:
        message = where + (detail or "the trainer rejected its input (exit code 2)")
        return Outcome("Failed", "DataError", _clip(message), result)
    if job.failed_reason == "BackoffLimitExceeded":
        code = last.exit_code if last else "unknown"
        failures = (
            f"the pod group failed {job.counted_restarts + 1}" if job.group else f"the trainer failed {job.failed}"
        )
        return Outcome(
            "Failed",
            "BackoffLimitExceeded",
            _clip(
                f"{failures} time(s) (spec.backoffLimit={spec.backoff_limit}); "
                f"last exit code {code}: {where}{detail or 'no message'}"
            ),
            result,
        )
    return Outcome(
        "Failed",
        job.failed_reason or "JobFailed",
        _clip(job.failed_message or detail or "the trainer Job failed"),
        result,
    )


def _success(pods: Sequence[PodView], judge: Judge) -> Outcome:
    # A group's result is its rank 0's, in pod 0; the other pods' results are theirs alone.
    last = _last_terminated([pod for pod in pods if pod.exit_code == 0 and pod.index in (None, 0)])
    result = parse_result(last.message) if last else None
    outcome = judge.success(result) if result and result.result == "succeeded" else None
    if outcome is not None:
        return outcome
    seen = (last.message or "nothing") if last else "no finished pod"
    return Outcome(
        "Failed",
        "ResultMissing",
        _clip(
            f"the trainer exited 0 but wrote no result with {judge.produces} to its termination message (got: {seen})"
        ),
        result,
    )


def _running_pod(pod: PodView, now: datetime, image_pull_timeout: int) -> Outcome | None:
    if pod.waiting_reason in IMAGE_PULL_WAITING:
        created = parse_time(pod.created)
        stuck = (now - created).total_seconds() if created else 0.0
        message = f"cannot pull image {pod.image}: {pod.waiting_message or pod.waiting_reason}"
        if pod.waiting_reason in PERMANENT_IMAGE_ERRORS or stuck >= image_pull_timeout:
            return Outcome("Failed", "ImagePullError", _clip(message))
        return Outcome(
            "Pending",
            "ImagePullBackOff",
            _clip(message + f" (retrying; fails after {image_pull_timeout}s)"),
            recheck_after=image_pull_timeout - stuck,
        )
    if pod.waiting_reason in CONFIG_WAITING:
        return Outcome("Pending", "ConfigError", _clip(pod.waiting_message or pod.waiting_reason or ""))
    if pod.unschedulable is not None:
        return Outcome("Pending", "Unschedulable", _clip(pod.unschedulable))
    if pod.phase == "Running":
        return Outcome("Running", "Training", f"trainer pod {pod.name} is running")
    return None


def _pod_status_pending(job: JobView, pods: Sequence[PodView], now: datetime) -> Outcome | None:
    """A finished Job whose deciding pod has not reached us yet: wait (briefly) rather than judge blind.

    Judging now would fail a successful attempt as ResultMissing, or lose the pod's reason (exit code,
    OOMKilled, the trainer's message) for a failed one, and a terminal phase is never revisited.
    """
    if not job.finished or job.failed_reason == "DeadlineExceeded":  # the Job itself says why
        return None
    seen = any(p.exit_code == 0 for p in pods) if job.complete else any(p.terminated for p in pods)
    if seen:
        return None
    finished = parse_time(job.finished_at)
    waited = (now - finished).total_seconds() if finished else POD_STATUS_GRACE_SECONDS
    if waited >= POD_STATUS_GRACE_SECONDS:
        return None
    return Outcome(
        "Running",
        "Finishing",
        f"Job {job.name} finished; waiting for its pod's final status",
        recheck_after=POD_STATUS_GRACE_SECONDS - waited,
        since=finished,
    )


def held(spec: Scheduling) -> Outcome:
    """Why a created Job does not run: Kueue has not admitted it, or spec.suspend holds it."""
    if spec.queue_name:
        return Outcome(
            "Queued", "WaitingForAdmission", f"waiting for Kueue to admit the job from LocalQueue {spec.queue_name}"
        )
    return Outcome("Suspended", "Suspended", "spec.suspend is true; set it to false to continue")


def assess_attempt(
    job: JobView | None,
    pods: Sequence[PodView],
    spec: Scheduling,
    now: datetime,
    image_pull_timeout: int,
    *,
    judge: Judge,
) -> Outcome:
    """The phase of the current attempt from its Job and pods; `judge` says what success means for its kind."""
    if job is None:
        return Outcome("Pending", "JobCreating", "creating the trainer Job")
    waiting = _pod_status_pending(job, pods, now)
    if waiting is not None:
        return waiting
    if job.complete:
        return _success(pods, judge)
    if job.failed_reason is not None:
        return _failure(job, pods, spec, judge)
    if job.suspended and job.active == 0:
        return held(spec)
    for pod in sorted((p for p in pods if not p.terminated), key=lambda p: p.created or ""):
        outcome = _running_pod(pod, now, image_pull_timeout)
        if outcome is not None:
            return outcome
    done = [p for p in pods if p.exit_code == 0]
    if done:
        # The pod is done but the Job controller has not marked the Job Complete yet; stay Running
        # rather than flap back to Pending for a moment.
        ended = parse_time(max(p.finished_at or "" for p in done)) or now
        return Outcome("Running", "Finishing", "the trainer exited; waiting for the Job to complete", since=ended)
    if job.failed > 0 and not any(not p.terminated for p in pods):
        last = _last_terminated(pods)
        why = f"exit code {last.exit_code}" if last else "pod failed"
        return Outcome(
            "Pending",
            "Retrying",
            f"trainer pod failed ({why}); retry {job.failed} of spec.backoffLimit={spec.backoff_limit}",
        )
    unstarted = [p.created for p in pods if not p.terminated and p.created]
    began = parse_time(max(unstarted)) if unstarted else parse_time(job.start_time)
    return Outcome("Pending", "Starting", "waiting for the trainer pod to start", since=began or now)
