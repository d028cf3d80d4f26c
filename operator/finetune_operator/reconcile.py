"""The decision of one reconcile: (resource, its Jobs, its Pods, now) -> a Plan of API actions.

Level-triggered and idempotent: the plan depends only on what is observed, never on which event
woke the operator, so the FineTuneJob's own events, its Job's and its Pods' all call the same
function, and running it twice (a crash, a retry, a second replica) yields the same names and the
same status. Handlers execute the plan; nothing here touches the API.

FineTuneJobs and EvalRuns run attempts the same way (`plan_attempts`); what differs per kind is a
`Workload` (workloads.py). On top, an EvalRun first resolves its model (possibly waiting for a
FineTuneJob), and a FineTuneJob with spec.evaluation owns an EvalRun and mirrors its verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from .api import TERMINAL_PHASES, format_validation_error
from .api.evalrun import EvalRunSpec, ResolvedModel
from .api.finetunejob import AttemptRecord, FineTuneJobSpec
from .config import OperatorSettings
from .manifests.names import ARTIFACTS_FINALIZER, LABEL_ATTEMPT, Owner, job_name
from .status import (
    JobView,
    Outcome,
    assess_attempt,
    build_conditions,
    condition_of,
    format_time,
    held,
    make_condition,
    pod_failures,
    stamp_conditions,
    view_job,
    view_pod,
)
from .workloads import (
    Workload,
    build_owned_evalrun,
    evalrun_name,
    evaluation_workload,
    resolve_model,
    training_workload,
)

HISTORY_LIMIT = 10
STEP_WRITE_DELAY_SECONDS = 5.0
"""A transient step (Starting, Finishing) is written to status only once it has lasted this long."""
_TRANSIENT_STEPS = frozenset({"Starting", "Finishing"})
_LAZY_FIELDS = frozenset({"startTime", "podFailures"})
"""Recorded with the next change, never worth a write of their own (the Job's startTime lands a moment
after the Job, which would otherwise cost every job one more patch)."""
_WARNING_REASONS = frozenset({"Unschedulable", "ImagePullBackOff", "ConfigError", "Retrying"})


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
    evalrun_create: dict[str, Any] | None = None
    """The FineTuneJob's own EvalRun, created after the status patch: a failure there (e.g. RBAC) must
    not keep a finished training from being recorded."""
    evalrun_patch: tuple[str, dict[str, Any]] | None = None
    """(name, spec merge patch) of the FineTuneJob's own EvalRun, when spec.evaluation changed."""
    evalrun_delete: str | None = None
    finalizers: list[str] | None = None
    """The resource's whole new metadata.finalizers list, when it changes."""


def is_idle(plan: Plan, status: Mapping[str, Any]) -> bool:
    """Whether executing the plan against this status would make no API call (a recheck aside).

    Every field of a Plan but status and recheck_after is an action, so any field a Plan gains
    counts here without being listed."""
    return replace(plan, status={}, recheck_after=None) == Plan() and not merge_patch(status, plan.status)


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


def replacing_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that makes `current` equal `desired`: unlike `merge_patch`, keys missing from
    `desired` are deleted (a dropped threshold must go)."""
    patch = merge_patch(current, desired)
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = replacing_patch(old, value)
            if nested:
                patch[key] = nested
    patch.update({key: None for key in current if key not in desired})
    return patch


def _event_for(previous: Mapping[str, Any], outcome: Outcome) -> list[Event]:
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


def observe(body: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> Observed:
    status: Mapping[str, Any] = body.get("status") or {}
    attempt = int(status.get("attempt") or 0)
    return Observed(
        owner=Owner.from_body(body),
        generation=int(body["metadata"].get("generation") or 1),
        status=status,
        attempt=attempt,
        current=next((v for v in map(view_job, jobs) if attempt and v.attempt == attempt), None),
    )


def _start_attempt(obs: Observed, work: Workload, now: datetime) -> Plan:
    status = obs.status
    attempt = obs.attempt + 1
    history = list(status.get("history") or [])
    if status.get("attempt"):
        history = [*history, _attempt_record(status)][-HISTORY_LIMIT:]
    name = job_name(obs.owner, attempt)
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
        create=work.children(attempt),
        status=fields,
        events=[Event("Normal", "AttemptStarted", f"{created}; {outcome.message}" if holding else outcome.message)],
    )


def _invalid(message: str, obs: Observed, now: datetime) -> Plan:
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
    return Plan(status=fields, events=events, delete_job=current.name if running and current else None)


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
        plan.create = work.children(attempt)
    elif not spec.queue_name and not current.finished and not deferred and current.suspended != spec.suspend:
        plan.job_patch = (current.name, {"spec": {"suspend": spec.suspend}})
        current = replace(current, suspended=spec.suspend)
    attempt_pods = [
        view_pod(pod) for pod in pods if (pod["metadata"].get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt)
    ]
    outcome = assess_attempt(current, attempt_pods, spec, now, settings.image_pull_timeout_seconds, judge=work.judge)
    if outcome.terminal and current is not None and not current.finished:
        plan.delete_job = current.name  # e.g. an image that will never pull: stop the pod from waiting forever

    completion = None
    if outcome.terminal:
        completion = status.get("completionTime") or (current.completion_time if current else None) or format_time(now)
    previous = status.get("conditions") or []
    fields: dict[str, Any] = {
        "phase": outcome.phase,
        "observedGeneration": status.get("observedGeneration") if deferred else generation,
        "podFailures": pod_failures(current, attempt_pods),
        "startTime": current.start_time if current else None,
        "completionTime": completion,
        "conditions": build_conditions(
            outcome, previous, generation, now, deferred=deferred, extra=work.extra_conditions(outcome)
        ),
        **work.result_fields(outcome),
    }
    if outcome.phase == "Succeeded":
        fields["progress"] = {**(status.get("progress") or {}), "percent": 100, "etaSeconds": 0}
    plan.status = fields
    plan.events = _event_for(status, outcome)
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
            follow.delete_job = plan.delete_job
            return follow
    return plan


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


def plan_finetunejob(
    body: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    settings: OperatorSettings,
    now: datetime,
    *,
    evalrun: Mapping[str, Any] | None = None,
) -> Plan:
    """`evalrun`: the job's own EvalRun (`<name>-eval`) as read, when spec.evaluation is or was set."""
    obs = observe(body, jobs)
    try:
        spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _invalid(format_validation_error(error), obs, now)
    plan = plan_attempts(obs, training_workload(obs.owner, spec, settings), pods, settings, now)
    _mirror_evaluation(plan, obs, spec, evalrun, now)
    plan.finalizers = _finalizers(body, spec)
    return plan


def _finalizers(body: Mapping[str, Any], spec: FineTuneJobSpec) -> list[str] | None:
    """The artifacts finalizer is held exactly while output.deletePolicy is Delete; None: no change."""
    current = list(body["metadata"].get("finalizers") or [])
    holding = ARTIFACTS_FINALIZER in current
    if spec.output.delete_policy == "Delete" and not holding:
        return [*current, ARTIFACTS_FINALIZER]
    if spec.output.delete_policy == "Retain" and holding:
        return [f for f in current if f != ARTIFACTS_FINALIZER]
    return None


def _waiting(obs: Observed, outcome: Outcome, now: datetime) -> Plan:
    """An EvalRun whose model cannot be resolved yet (Pending) or ever (Failed): no Job, a condition saying why."""
    fields: dict[str, Any] = {
        "phase": outcome.phase,
        "observedGeneration": obs.generation,
        "conditions": build_conditions(
            outcome,
            obs.status.get("conditions") or [],
            obs.generation,
            now,
            extra=[make_condition("Passed", False if outcome.terminal else None, outcome.reason, outcome.message)],
        ),
    }
    if outcome.terminal:
        fields["completionTime"] = obs.status.get("completionTime") or format_time(now)
    return Plan(status=fields, events=_event_for(obs.status, outcome), finished=outcome if outcome.terminal else None)


def plan_evalrun(
    body: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    settings: OperatorSettings,
    now: datetime,
    *,
    ftj: Mapping[str, Any] | None = None,
) -> Plan:
    """`ftj`: the FineTuneJob named by spec.model.fineTuneJobRef, as read (None if absent or not referenced)."""
    obs = observe(body, jobs)
    try:
        spec = EvalRunSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _invalid(format_validation_error(error), obs, now)
    in_flight = obs.attempt > 0 and obs.status.get("phase") not in TERMINAL_PHASES
    recorded = obs.status.get("model")
    if in_flight and recorded:
        # A running attempt finishes with the model it started with, even if the job has moved on.
        model = ResolvedModel.model_validate(recorded)
    else:
        resolved = resolve_model(spec, ftj)
        if isinstance(resolved, Outcome):
            if obs.attempt:
                # The last verdict stands (e.g. the FineTuneJob is re-training); a new adapter brings a new attempt.
                return Plan(status={"observedGeneration": obs.generation})
            return _waiting(obs, resolved, now)
        model = resolved
    return plan_attempts(obs, evaluation_workload(obs.owner, spec, model, settings), pods, settings, now)


# --- a FineTuneJob's own EvalRun ------------------------------------------------------------------


def _owned_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    return any(ref.get("uid") == owner.uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _same_eval_spec(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    try:
        return EvalRunSpec.model_validate(current) == EvalRunSpec.model_validate(desired)
    except ValidationError:
        return False


def _evaluated(
    owner: Owner, spec: FineTuneJobSpec, status: Mapping[str, Any], evalrun: Mapping[str, Any] | None, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Evaluated condition, status.evaluation) of a succeeded job with spec.evaluation; may add to `plan`."""
    name = evalrun_name(owner)
    desired = build_owned_evalrun(owner, spec)
    summary: dict[str, Any] = {"evalRun": name}
    if evalrun is None:
        plan.evalrun_create = desired
        return make_condition("Evaluated", None, "EvaluationPending", f"creating EvalRun {name}"), summary
    if not _owned_by(evalrun, owner):
        message = f"EvalRun {name} exists and is not owned by this job; delete or rename it"
        return make_condition("Evaluated", False, "EvalRunConflict", message), summary
    ev_status: Mapping[str, Any] = evalrun.get("status") or {}
    phase = ev_status.get("phase")
    summary["phase"] = phase
    up_to_date = _same_eval_spec(evalrun.get("spec") or {}, desired["spec"])
    if not up_to_date:
        if phase in TERMINAL_PHASES or phase is None:
            # Active EvalRuns refuse spec changes (CEL); this one is done or has not started.
            plan.evalrun_patch = (name, replacing_patch(evalrun.get("spec") or {}, desired["spec"]))
        return make_condition("Evaluated", None, "Evaluating", f"EvalRun {name} runs the new evaluation spec"), summary
    adapter = (status.get("adapter") or {}).get("uri")
    evaluated = ((ev_status.get("model") or {}).get("adapter") or {}).get("uri")
    if phase not in TERMINAL_PHASES or evaluated != adapter:
        message = f"EvalRun {name} is {phase or 'starting'}"
        return make_condition("Evaluated", None, "Evaluating", message), summary
    summary.update(
        passed=ev_status.get("passed"),
        score=ev_status.get("score"),
        reportUri=(ev_status.get("report") or {}).get("uri"),
        adapterUri=evaluated,
    )
    conditions = {c.get("type"): c for c in ev_status.get("conditions") or []}
    if phase == "Failed":
        why = conditions.get("Failed", {}).get("message", "")
        return make_condition("Evaluated", False, "EvaluationFailed", f"EvalRun {name} failed: {why}"), summary
    verdict = conditions.get("Passed", {})
    passed = ev_status.get("passed") is True
    reason = verdict.get("reason") or ("ThresholdsMet" if passed else "ThresholdsMissed")
    return make_condition("Evaluated", passed, reason, f"EvalRun {name}: {verdict.get('message', '')}"), summary


def _mirror_evaluation(
    plan: Plan, obs: Observed, spec: FineTuneJobSpec, evalrun: Mapping[str, Any] | None, now: datetime
) -> None:
    """Own an EvalRun once training succeeded (spec.evaluation) and copy its verdict into this job's status.

    Evaluated is True only when the evaluation of the current adapter finished and met every
    threshold, so `kubectl wait --for=condition=Evaluated` waits for a passing model.
    """
    merged = {**obs.status, **plan.status}
    conditions: list[dict[str, Any]] = list(merged.get("conditions") or [])
    others = [c for c in conditions if c.get("type") != "Evaluated"]
    if spec.evaluation is None or merged.get("phase") != "Succeeded":
        if spec.evaluation is None and evalrun is not None and _owned_by(evalrun, obs.owner):
            plan.evalrun_delete = evalrun_name(obs.owner)
        if merged.get("evaluation") is not None:
            plan.status["evaluation"] = None
        if len(others) != len(conditions):
            plan.status["conditions"] = others
        return
    condition, summary = _evaluated(obs.owner, spec, merged, evalrun, plan)
    previous = obs.status.get("conditions") or []
    stamped = stamp_conditions([condition], previous, obs.generation, now)
    plan.status["conditions"] = [*others, *stamped]
    plan.status["evaluation"] = summary
    before: Mapping[str, Any] = next((c for c in previous if c.get("type") == "Evaluated"), {})
    if condition["status"] != "Unknown" and before.get("status") != condition["status"]:
        kind: Literal["Normal", "Warning"] = "Normal" if condition["status"] == "True" else "Warning"
        plan.events.append(Event(kind, condition["reason"], condition["message"]))
