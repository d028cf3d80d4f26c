"""The attempt planner every kind that runs Jobs shares: start, follow and finish attempts of a spec.

Level-triggered and idempotent: the plan depends only on what is observed, never on which event
woke the operator, and planning twice (a crash, a retry, a second replica) yields the same names
and the same status. What differs per kind is a `Workload`: the children of an attempt, what a
successful trainer result must contain, which status fields it fills, extra conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .api import TERMINAL_PHASES
from .api.training_status import AttemptRecord
from .conditions import build_conditions, condition_of, make_condition
from .config import OperatorSettings
from .manifests.launch import Run
from .manifests.names import Owner
from .plan import Action, Create, Delete, Event, Patch, Plan, merge_patch
from .status import (
    JobView,
    Judge,
    Outcome,
    PodView,
    Scheduling,
    assess_attempt,
    first_failed,
    format_time,
    held,
    pod_failures,
    view_job,
    view_pod,
)


@dataclass(frozen=True)
class Workload:
    """What one kind contributes to an attempt; `plan_attempts` runs every kind's attempts the same way."""

    spec: Scheduling
    digest: str
    judge: Judge
    children: Callable[[Run], list[dict[str, Any]]]
    """A run of an attempt -> the objects it needs, in creation order (one Job among them)."""
    attempt_fields: tuple[str, ...]
    """Status fields that describe one attempt; cleared when the next starts."""
    result_fields: Callable[[Outcome], dict[str, Any]]
    extra_conditions: Callable[[Outcome], list[dict[str, Any]]] = lambda _: []
    start_fields: Mapping[str, Any] = field(default_factory=dict)
    """Status fields set when an attempt starts."""


HISTORY_LIMIT = 10
STEP_WRITE_DELAY_SECONDS = 5.0
"""A transient step (Starting, Finishing) is written to status only once it has lasted this long."""
_TRANSIENT_STEPS = frozenset({"Starting", "Finishing"})
_LAZY_FIELDS = frozenset({"startTime", "podFailures"})
"""Recorded with the next change, never worth a write of their own (the Job's startTime lands a moment
after the Job, which would otherwise cost every job one more patch)."""
_WARNING_REASONS = frozenset({"Unschedulable", "ImagePullBackOff", "ConfigError", "Retrying", "Restarting"})


def event_for(previous: Mapping[str, Any], outcome: Outcome) -> list[Event]:
    """An Event per phase change, and per new warning reason within a phase (e.g. Unschedulable).

    A routine step within a phase (JobCreating -> Starting) updates the condition but is no Event:
    each Event is an API write, and users read them for what changed, not for every step.
    """
    before = condition_of(previous, "Running")
    warning = outcome.phase == "Failed" or outcome.reason in _WARNING_REASONS
    same_phase = previous.get("phase") == outcome.phase
    if same_phase and (not warning or before.get("reason") == outcome.reason):
        return []
    return [Event("Warning" if warning else "Normal", outcome.reason, outcome.message)]


def _attempt_record(status: Mapping[str, Any]) -> dict[str, Any]:
    phase = status.get("phase") or "Failed"
    reason = condition_of(status, phase).get("reason")
    return AttemptRecord(
        attempt=status["attempt"],
        generation=status.get("observedGeneration"),
        job_name=status.get("jobName"),
        phase=phase,
        reason=reason,
        adapter_uri=(status.get("adapter") or {}).get("uri"),
        completion_time=status.get("completionTime"),
    ).to_json_dict()


@dataclass(frozen=True)
class Observed:
    """The resource as read, with its current attempt's Job."""

    owner: Owner
    generation: int
    status: Mapping[str, Any]
    attempt: int
    current: JobView | None

    @property
    def in_flight(self) -> bool:
        """An attempt started and not finished: it keeps the inputs it resolved when it started (an adapter, a
        dataset split), even if what they were resolved from has moved on."""
        return self.attempt > 0 and self.status.get("phase") not in TERMINAL_PHASES


def observe(body: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> Observed:
    status: Mapping[str, Any] = body.get("status") or {}
    attempt = int(status.get("attempt") or 0)
    runs = [v for v in map(view_job, jobs) if attempt and v.attempt == attempt]
    return Observed(
        owner=Owner.from_body(body),
        generation=int(body["metadata"].get("generation") or 1),
        status=status,
        attempt=attempt,
        # A restarted pod group leaves its failed Job behind (its pods' logs say why); the newest runs.
        current=max(runs, key=lambda v: v.restart, default=None),
    )


def _job_name(children: Sequence[Mapping[str, Any]]) -> str:
    return str(next(obj["metadata"]["name"] for obj in children if obj["kind"] == "Job"))


def _start_attempt(obs: Observed, work: Workload, now: datetime) -> Plan:
    status = obs.status
    attempt = obs.attempt + 1
    history = list(status.get("history") or [])
    if status.get("attempt"):
        history = [*history, _attempt_record(status)][-HISTORY_LIMIT:]
    children = work.children(Run(attempt))
    name = _job_name(children)
    created = f"created Job {name} for attempt {attempt}"
    # A held Job (queued or suspended) is recorded as held at once: the same status its Job's first
    # event would give, so that event costs no second write.
    holding = bool(work.spec.queue_name or work.spec.suspend)
    waiting = Outcome("Pending", "JobCreated", f"{created}; waiting for its pod to start")
    outcome = held(work.spec) if holding else waiting
    fields: dict[str, Any] = dict.fromkeys(work.attempt_fields)
    fields.update(
        phase=outcome.phase,
        attempt=attempt,
        jobName=name,
        specHash=work.digest,
        observedGeneration=obs.generation,
        podFailures=0,
        history=history,
        conditions=build_conditions(
            outcome, status.get("conditions") or [], obs.generation, now, extra=work.extra_conditions(outcome)
        ),
        **work.start_fields,
    )
    return Plan(
        actions=[Create(obj) for obj in children],
        status=fields,
        events=[Event("Normal", "AttemptStarted", f"{created}; {outcome.message}" if holding else outcome.message)],
    )


def invalid(message: str, obs: Observed, now: datetime) -> Plan:
    """An invalid spec never runs; if one slipped past admission mid-attempt, that attempt is stopped."""
    status, current = obs.status, obs.current
    outcome = Outcome("Failed", "InvalidSpec", message)
    fields: dict[str, Any] = {
        "phase": "Failed",
        "observedGeneration": obs.generation,
        "conditions": build_conditions(outcome, status.get("conditions") or [], obs.generation, now, invalid=message),
        "completionTime": status.get("completionTime") or format_time(now),
    }
    validated = condition_of(status, "Validated")
    events = [] if validated.get("message") == message else [Event("Warning", "InvalidSpec", message)]
    running = current is not None and not current.finished
    actions: list[Action] = [Delete("Job", current.name)] if running and current else []
    return Plan(actions=actions, status=fields, events=events)


def waiting(obs: Observed, outcome: Outcome, now: datetime, passed_too: bool = False) -> Plan:
    """A resource whose input cannot be resolved yet (Pending) or ever (Failed), such as the adapter of a
    FineTuneJob it references: no Job, conditions saying why. `passed_too`: an EvalRun's Passed as well."""
    extra = [make_condition("Passed", False if outcome.terminal else None, outcome.reason, outcome.message)]
    fields: dict[str, Any] = {
        "phase": outcome.phase,
        "observedGeneration": obs.generation,
        "conditions": build_conditions(
            outcome, obs.status.get("conditions") or [], obs.generation, now, extra=extra if passed_too else ()
        ),
    }
    if outcome.terminal:
        fields["completionTime"] = obs.status.get("completionTime") or format_time(now)
    return Plan(status=fields, events=event_for(obs.status, outcome), finished=outcome if outcome.terminal else None)


def plan_attempts(
    obs: Observed, work: Workload, pods: Sequence[Mapping[str, Any]], settings: OperatorSettings, now: datetime
) -> Plan:
    """Start, follow and finish attempts of a valid spec: the part FineTuneJob and EvalRun share."""
    status, attempt, generation = obs.status, obs.attempt, obs.generation
    current = obs.current
    terminal = status.get("phase") in TERMINAL_PHASES
    if attempt == 0 or (terminal and status.get("specHash") != work.digest):
        return _start_attempt(obs, work, now)
    if terminal:
        # Same spec as the finished attempt (e.g. only spec.suspend changed): nothing to run.
        return Plan(status={"observedGeneration": generation})

    deferred = None
    if status.get("specHash") != work.digest:
        deferred = (
            f"spec generation {generation} differs from the spec attempt {attempt} runs; "
            f"it will run as attempt {attempt + 1} when this attempt finishes"
        )
    spec = work.spec
    plan = Plan()
    if current is None:
        plan.actions += [Create(obj) for obj in work.children(Run(attempt))]
    elif not spec.queue_name and not current.finished and not deferred and current.suspended != spec.suspend:
        plan.actions.append(Patch("Job", current.name, {"spec": {"suspend": spec.suspend}}, patch_type="strategic"))
        current = replace(current, suspended=spec.suspend)
    attempt_pods = [
        pod
        for pod in map(view_pod, pods)
        if pod.attempt == attempt and (current is None or pod.job in (None, current.name))
    ]
    outcome = assess_attempt(current, attempt_pods, spec, now, settings.image_pull_timeout_seconds, judge=work.judge)
    outcome, restarted = _restart_group(current, attempt_pods, outcome, work, plan)
    if outcome.terminal and current is not None and not current.finished:
        # e.g. an image that will never pull: stop the pod from waiting forever
        plan.actions.append(Delete("Job", current.name))

    completion = None
    if outcome.terminal:
        completion = status.get("completionTime") or (current.completion_time if current else None) or format_time(now)
    previous = status.get("conditions") or []
    fields: dict[str, Any] = {
        "phase": outcome.phase,
        "observedGeneration": status.get("observedGeneration") if deferred else generation,
        "podFailures": pod_failures(current, attempt_pods),
        "restarts": current.restart if current and current.group else None,
        "startTime": current.start_time if current else None,
        "completionTime": completion,
        "conditions": build_conditions(
            outcome, previous, generation, now, deferred=deferred, extra=work.extra_conditions(outcome)
        ),
        **work.result_fields(outcome),
        **restarted,
    }
    if outcome.phase == "Succeeded":
        fields["progress"] = {**(status.get("progress") or {}), "percent": 100, "etaSeconds": 0}
    plan.status = fields
    plan.events = event_for(status, outcome)
    plan.recheck_after = outcome.recheck_after
    if set(merge_patch(status, fields)) <= _LAZY_FIELDS:
        plan.status = {}
    quiet = _quiet_step(status, outcome, generation, now)
    if quiet is not None:
        # A step usually over in a moment (a pod starting, a Job being marked complete): writing it
        # would cost every job an API write nobody reads. If it lasts, the recheck writes it.
        plan.status = {}
        rechecks = [x for x in (quiet or None, outcome.recheck_after) if x is not None]  # quiet 0: never
        plan.recheck_after = min(rechecks, default=None)
    if outcome.terminal:
        plan.finished = outcome
        if deferred:
            # The deferred spec starts now, recording the attempt that just ended.
            follow = _start_attempt(replace(obs, status={**status, **fields}), work, now)
            follow.events = plan.events + follow.events
            follow.finished = outcome
            follow.actions += plan.actions
            return follow
    return plan


def _group_restart(current: JobView | None, pods: Sequence[PodView], outcome: Outcome, limit: int) -> Run | None:
    """The next run of a pod group that failed in a way a retry may fix, while spec.backoffLimit allows.

    Not retried: what the Job fails by policy (exit code 2: bad input), a deadline. A group stopped
    because one of its pods was preempted restarts without counting, as a preempted single pod does.
    """
    if current is None or not current.group or outcome.phase != "Failed":
        return None
    if current.failed_reason != "BackoffLimitExceeded":
        return None
    counted = current.counted_restarts + (0 if any(pod.disrupted for pod in pods) else 1)
    if counted > limit:
        return None
    return Run(current.attempt or 0, current.restart + 1, counted)


def _restart_group(
    current: JobView | None, pods: Sequence[PodView], outcome: Outcome, work: Workload, plan: Plan
) -> tuple[Outcome, dict[str, Any]]:
    """For a failed pod group that may restart: its next Job added to `plan`, and the outcome and
    status fields that say so. Otherwise `outcome` as it is, and no fields."""
    limit = work.spec.backoff_limit
    run = _group_restart(current, pods, outcome, limit)
    if run is None or current is None:
        return outcome, {}
    children = work.children(run)
    plan.actions += [Create(obj) for obj in children]
    name = _job_name(children)
    restarting = _restarting(current, pods, outcome, run, name=name, limit=limit)
    return restarting, {"jobName": name, "restarts": run.restart}


def _restarting(
    current: JobView, pods: Sequence[PodView], failed: Outcome, run: Run, *, name: str, limit: int
) -> Outcome:
    cause = first_failed(pods)
    why = f"{cause.where} failed (exit code {cause.exit_code})" if cause else "a pod failed"
    counted = (
        "not counted: a pod was preempted"
        if run.counted_restarts == current.counted_restarts
        else f"{run.counted_restarts} of spec.backoffLimit={limit}"
    )
    return Outcome(
        "Pending",
        "Restarting",
        f"{why}: {failed.reason}: {failed.message}; restarting all pods as Job {name}, from the newest "
        f"checkpoint (restart {run.restart}, {counted})",
    )


def _quiet_step(status: Mapping[str, Any], outcome: Outcome, generation: int, now: datetime) -> float | None:
    """Seconds until a transient step (Starting, Finishing) is worth writing, 0 for never; None: write it now.

    Only within the same phase, with nothing else to record. Starting right after JobCreated is never
    written: JobCreated already says the pod is awaited.
    """
    if outcome.reason not in _TRANSIENT_STEPS or outcome.since is None:
        return None
    if status.get("phase") != outcome.phase or status.get("observedGeneration") != generation:
        return None
    running = condition_of(status, "Running")
    if running.get("reason") == outcome.reason:
        return None
    if outcome.reason == "Starting" and running.get("reason") == "JobCreated":
        return 0.0
    left = STEP_WRITE_DELAY_SECONDS - (now - outcome.since).total_seconds()
    return left if left > 0 else None
