"""The decision of one reconcile: (FineTuneJob, its Jobs, its Pods, now) -> a Plan of API actions.

Level-triggered and idempotent: the plan depends only on what is observed, never on which event
woke the operator, so the FineTuneJob's own events, its Job's and its Pods' all call the same
function, and running it twice (a crash, a retry, a second replica) yields the same names and the
same status. Handlers execute the plan; nothing here touches the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from .api import TERMINAL_PHASES, Phase, format_validation_error
from .api.finetunejob import AttemptRecord, FineTuneJobSpec
from .config import OperatorSettings
from .manifests import build_children
from .manifests.job import spec_hash
from .manifests.names import LABEL_ATTEMPT, Owner, job_name
from .status import (
    JobView,
    Outcome,
    assess_attempt,
    build_conditions,
    format_time,
    result_fields,
    view_job,
    view_pod,
)

HISTORY_LIMIT = 10
_WARNING_REASONS = frozenset({"Unschedulable", "ImagePullBackOff", "ConfigError", "Retrying"})
# Fields that describe one attempt; cleared when the next attempt starts.
_ATTEMPT_FIELDS = (
    "progress",
    "adapter",
    "mergedModel",
    "checkpoint",
    "metrics",
    "provenance",
    "startTime",
    "completionTime",
)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    """API actions of one reconcile, in the order the handler performs them."""

    create: list[dict[str, Any]] = field(default_factory=list)
    job_patch: tuple[str, dict[str, Any]] | None = None
    delete_job: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    finished: Outcome | None = None
    recheck_after: float | None = None


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest JSON merge patch (RFC 7386) turning `current` into `desired` for the keys in `desired`.

    Keys absent from `desired` are left alone: status.progress belongs to the trainer.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if value is None:
            if old is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = merge_patch(old, value)
            if nested:
                patch[key] = nested
        elif value != old:
            patch[key] = value
    return patch


def _event_for(previous: Mapping[str, Any], outcome: Outcome) -> list[Event]:
    before: Mapping[str, Any] = next((c for c in previous.get("conditions") or [] if c.get("type") == "Running"), {})
    if previous.get("phase") == outcome.phase and before.get("reason") == outcome.reason:
        return []
    warning = outcome.phase == "Failed" or outcome.reason in _WARNING_REASONS
    return [Event("Warning" if warning else "Normal", outcome.reason, outcome.message)]


def _attempt_record(status: Mapping[str, Any]) -> dict[str, Any]:
    phase = status.get("phase") or "Failed"
    reason = next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == phase), None)
    return AttemptRecord(
        attempt=status["attempt"],
        generation=status.get("observedGeneration"),
        job_name=status.get("jobName"),
        phase=phase,
        reason=reason,
        adapter_uri=(status.get("adapter") or {}).get("uri"),
        completion_time=status.get("completionTime"),
    ).to_json_dict()


def _start_attempt(
    owner: Owner,
    *,
    spec: FineTuneJobSpec,
    generation: int,
    status: Mapping[str, Any],
    settings: OperatorSettings,
    now: datetime,
) -> Plan:
    attempt = (status.get("attempt") or 0) + 1
    history = list(status.get("history") or [])
    if status.get("attempt"):
        history = [*history, _attempt_record(status)][-HISTORY_LIMIT:]
    name = job_name(owner, attempt)
    initial: Phase = "Queued" if spec.queue_name else "Suspended" if spec.suspend else "Pending"
    outcome = Outcome(initial, "JobCreated", f"created Job {name} for attempt {attempt}")
    fields: dict[str, Any] = dict.fromkeys(_ATTEMPT_FIELDS)
    fields.update(
        phase=initial,
        attempt=attempt,
        jobName=name,
        specHash=spec_hash(spec),
        observedGeneration=generation,
        podFailures=0,
        history=history,
        conditions=build_conditions(outcome, status.get("conditions") or [], generation, now),
    )
    return Plan(
        create=build_children(owner, spec, attempt, settings),
        status=fields,
        events=[Event("Normal", "AttemptStarted", outcome.message)],
    )


def _invalid(message: str, current: JobView | None, status: Mapping[str, Any], generation: int, now: datetime) -> Plan:
    """An invalid spec never runs; if one slipped past admission mid-attempt, that attempt is stopped."""
    outcome = Outcome("Failed", "InvalidSpec", message)
    fields: dict[str, Any] = {
        "phase": "Failed",
        "observedGeneration": generation,
        "conditions": build_conditions(outcome, status.get("conditions") or [], generation, now, invalid=message),
        "completionTime": status.get("completionTime") or format_time(now),
    }
    validated: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Validated"), {})
    events = [] if validated.get("message") == message else [Event("Warning", "InvalidSpec", message)]
    running = current is not None and not current.finished
    return Plan(status=fields, events=events, delete_job=current.name if running and current else None)


def plan_finetunejob(
    body: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    settings: OperatorSettings,
    now: datetime,
) -> Plan:
    owner = Owner.from_body(body)
    generation = int(body["metadata"].get("generation") or 1)
    status: Mapping[str, Any] = body.get("status") or {}
    attempt = int(status.get("attempt") or 0)
    current = next((v for v in map(view_job, jobs) if attempt and v.attempt == attempt), None)

    try:
        spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _invalid(format_validation_error(error), current, status, generation, now)

    digest = spec_hash(spec)
    terminal = status.get("phase") in TERMINAL_PHASES
    if attempt == 0 or (terminal and status.get("specHash") != digest):
        return _start_attempt(owner, spec=spec, generation=generation, status=status, settings=settings, now=now)
    if terminal:
        # Same spec as the finished attempt (e.g. only spec.suspend changed): nothing to run.
        return Plan(status={"observedGeneration": generation})

    deferred = None
    if status.get("specHash") != digest:
        deferred = (
            f"spec generation {generation} differs from the spec attempt {attempt} runs; "
            f"it will run as attempt {attempt + 1} when this attempt finishes"
        )
    plan = Plan()
    if current is None:
        plan.create = build_children(owner, spec, attempt, settings)
    elif not spec.queue_name and not current.finished and not deferred and current.suspended != spec.suspend:
        plan.job_patch = (current.name, {"spec": {"suspend": spec.suspend}})
        current = replace(current, suspended=spec.suspend)
    attempt_pods = [
        view_pod(pod) for pod in pods if (pod["metadata"].get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt)
    ]
    outcome = assess_attempt(current, attempt_pods, spec, now, settings.image_pull_timeout_seconds)
    if outcome.terminal and current is not None and not current.finished:
        plan.delete_job = current.name  # e.g. an image that will never pull: stop the pod from waiting forever

    completion = None
    if outcome.terminal:
        completion = status.get("completionTime") or (current.completion_time if current else None) or format_time(now)
    fields: dict[str, Any] = {
        "phase": outcome.phase,
        "observedGeneration": status.get("observedGeneration") if deferred else generation,
        "podFailures": current.failed if current else 0,
        "startTime": current.start_time if current else None,
        "completionTime": completion,
        "conditions": build_conditions(outcome, status.get("conditions") or [], generation, now, deferred=deferred),
        **result_fields(outcome),
    }
    if outcome.phase == "Succeeded":
        fields["progress"] = {"percent": 100, "etaSeconds": 0}
    plan.status = fields
    plan.events = _event_for(status, outcome)
    plan.recheck_after = outcome.recheck_after
    if outcome.terminal:
        plan.finished = outcome
        if deferred:
            # The deferred spec starts now, recording the attempt that just ended.
            follow = _start_attempt(
                owner, spec=spec, generation=generation, status={**status, **fields}, settings=settings, now=now
            )
            follow.events = plan.events + follow.events
            follow.finished = outcome
            follow.delete_job = plan.delete_job
            return follow
    return plan
