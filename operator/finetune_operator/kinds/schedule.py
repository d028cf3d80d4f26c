"""FineTuneSchedule: start runs (FineTuneJobs from a template) on cron times, by hand, or when the store
triggers fire, the way a CronJob starts Jobs.

    inputs = gather(body, indices, settings)   # its runs' FineTuneJobs, its check Jobs and their pods
    plan(inputs, now) -> Plan                  # pure: a check to start, a run to create, runs to drop

The operator holds no store credentials, so everything that reads the store is a short check pod of the
trainer image (`finetune-trainer check-schedule`, started every triggers.pollSeconds, and whenever a run
is due by cron or by hand): it counts the new data objects and the unconsumed negative feedback, scores
the drift of new documents, and when a run is due it writes the run's training set and marks what it
consumed in the store. Run N's FineTuneJob is `<schedule>-<N>`, N being the number of the check that
found it due, and the check's result stays on its Job until the status records the run: a reconcile
repeated after a crash (or an operator restart between the check and the run) creates the same name
and adopts the job instead of starting a second one. Its status is a record (run numbers), so each write
is guarded by the resourceVersion it was planned on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from .. import cron
from ..api import FINETUNEJOB, FINETUNESCHEDULE, TERMINAL_PHASES, format_validation_error
from ..api.contract import ScheduleCheckOutcome, TrainerResult
from ..api.schedule import FineTuneScheduleSpec, FineTuneScheduleStatus, ScheduleCheck, ScheduleRun, valid_time_zone
from ..conditions import make_condition, stamp_conditions
from ..config import OperatorSettings
from ..manifests.names import Owner
from ..manifests.schedule import (
    ANNOTATION_REASONS,
    ANNOTATION_RUN,
    RUN_NOW,
    build_check_job,
    build_run,
    check_job_name,
    run_name,
)
from ..plan import Create, Delete, Event, Plan
from ..status import format_time, parse_time, view_job
from .base import FINETUNEJOBS_BY_SCHEDULE, Controller, Indices, children_of, watched
from .chores import UNSEEN_SECONDS, ChoreJobs, Timed, backoff, outcome


@dataclass(frozen=True)
class Inputs:
    body: Mapping[str, Any]
    runs: Sequence[Mapping[str, Any]]
    """The FineTuneJobs it created (labelled with it and owned by it), as watched."""
    settings: OperatorSettings
    checks: ChoreJobs = field(default_factory=ChoreJobs)
    """Its check Jobs and their pods."""


def gather(body: Mapping[str, Any], indices: Indices, settings: OperatorSettings) -> Inputs:
    meta = body["metadata"]
    namespace, name, uid = meta.get("namespace") or "", meta["name"], meta["uid"]
    runs = [
        job
        for job_name in sorted(set(indices[FINETUNEJOBS_BY_SCHEDULE].get((namespace, name), [])))
        if (job := watched(indices, FINETUNEJOB, namespace, job_name)) is not None
        and any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or [])
    ]
    return Inputs(body, runs, settings, ChoreJobs(*children_of(indices, body)))


def pending(body: Mapping[str, Any]) -> bool:
    """Whether its own event carries news a new generation does not show: a new run-now annotation."""
    manual = ((body.get("metadata") or {}).get("annotations") or {}).get(RUN_NOW)
    return bool(manual) and manual != (body.get("status") or {}).get("manualTrigger")


@dataclass
class Step(Timed):
    """What one reconcile shares: the spec, the schedule, the time, the plan being built."""

    spec: FineTuneScheduleSpec
    owner: Owner
    body: Mapping[str, Any]
    settings: OperatorSettings
    time: datetime
    result: Plan


def _run_of(job: Mapping[str, Any]) -> ScheduleRun | None:
    meta = job["metadata"]
    annotations = meta.get("annotations") or {}
    try:
        number = int(annotations.get(ANNOTATION_RUN, ""))
    except ValueError:
        return None
    reasons = [r for r in (annotations.get(ANNOTATION_REASONS) or "").split("; ") if r][:8]
    return ScheduleRun(
        name=meta["name"],
        number=number,
        reasons=reasons,
        start_time=meta.get("creationTimestamp") or "",
        phase=(job.get("status") or {}).get("phase"),
    )


def runs_of(jobs: Sequence[Mapping[str, Any]]) -> list[ScheduleRun]:
    """Its runs as their FineTuneJobs show them, newest first."""
    found = [run for run in map(_run_of, jobs) if run is not None]
    return sorted(found, key=lambda r: r.number, reverse=True)


def is_active(run: ScheduleRun) -> bool:
    return run.phase not in TERMINAL_PHASES


def _invalid(body: Mapping[str, Any]) -> str | None:
    try:
        spec = FineTuneScheduleSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return format_validation_error(error)
    if not valid_time_zone(spec.time_zone):
        return f"spec.timeZone: {spec.time_zone!r} is not an IANA time zone (e.g. UTC, Europe/Paris)"
    return None


def plan(inputs: Inputs, now: datetime) -> Plan:
    body = inputs.body
    meta = body["metadata"]
    generation = meta.get("generation") or 0
    status = body.get("status") or {}
    previous = status.get("conditions") or []
    invalid = _invalid(body)
    if invalid is not None:
        conditions = [make_condition("Validated", False, "InvalidSpec", invalid)]
        return Plan(
            status={
                "conditions": stamp_conditions(conditions, previous, generation, now),
                "observedGeneration": generation,
            }
        )
    spec = FineTuneScheduleSpec.model_validate(body["spec"])
    recorded = FineTuneScheduleStatus.model_validate(status)
    step = Step(spec, Owner.from_body(body), body, inputs.settings, now, Plan(guarded=True))
    runs = runs_of(inputs.runs)
    update: dict[str, Any] = {}
    check = recorded.check
    if check is not None and check.state == "Checking":
        check, found, runs = _settle(step, check, inputs, runs, recorded.problems)
        if found is not None:
            update |= _findings(found)
    if check is None or check.state != "Checking":
        check = _start_check(step, check, recorded, runs, update) or check
    runs = _drop_old_runs(step, runs)
    next_time = cron.next_time(spec.schedule, spec.time_zone, now) if spec.schedule else None
    if next_time is not None:
        step.recheck((next_time - now).total_seconds())
    if check is not None and check.state == "Checking" and check.job:
        step.recheck(UNSEEN_SECONDS)
    last_run = runs[0] if runs else recorded.last_run
    step.result.status = {
        "lastScheduleTime": recorded.last_schedule_time,
        "manualTrigger": recorded.manual_trigger,
        **update,
        "runs": [r.to_json_dict() for r in runs],
        "active": [r.name for r in runs if is_active(r)],
        "lastRun": last_run.to_json_dict() if last_run else None,
        "nextScheduleTime": format_time(next_time) if next_time else None,
        "check": check.to_json_dict() if check else None,
        "conditions": stamp_conditions(
            _conditions(spec, check, runs, update.get("problems", recorded.problems)), previous, generation, now
        ),
        "observedGeneration": generation,
    }
    return step.result


def _findings(found: ScheduleCheckOutcome) -> dict[str, Any]:
    """What a finished check showed, as the status shows it."""
    problems = list(found.problems)
    if found.problem_count > len(problems):
        problems.append(f"... and {found.problem_count - len(problems)} more (the check pod's log lists them)")
    return {
        "newObjects": found.new_objects,
        "feedback": found.feedback.to_json_dict() if found.feedback else None,
        "drift": found.drift.to_json_dict() if found.drift else None,
        "problems": problems,
    }


def _settle(
    step: Step, check: ScheduleCheck, inputs: Inputs, runs: list[ScheduleRun], shown: Sequence[str]
) -> tuple[ScheduleCheck, ScheduleCheckOutcome | None, list[ScheduleRun]]:
    """Record what the check at work did once it finished: start the run it found due (or vanished).
    `shown`: the problems the status shows already (a Warning is posted only for new ones)."""
    job = inputs.checks.job(check.job)
    if job is None and step.since(check.start_time) < UNSEEN_SECONDS:
        return check, None, runs
    if job is not None and not view_job(job).finished:
        stuck = inputs.checks.stuck(check.job)
        return (check.model_copy(update={"message": f"check {stuck}"[:2048]}) if stuck else check), None, runs
    result = (
        outcome(job, inputs.checks.pods_of(check.job))
        if job is not None
        else TrainerResult(result="failed", message=f"check Job {check.job} is gone before it finished")
    )
    done = {"finish_time": step.stamp}
    if result.result == "failed" or result.schedule is None:
        message = f"check Job {check.job} failed: {result.reason or 'Error'}: {result.message or 'no detail'}"[:2048]
        step.result.events.append(Event("Warning", "CheckFailed", message))
        failures = check.failures + 1
        step.recheck(backoff(failures))
        return (
            check.model_copy(update={**done, "state": "Failed", "failures": failures, "message": message}),
            None,
            runs,
        )
    step.result.actions.append(Delete("Job", check.job, stage="after"))
    found = result.schedule
    if found.problems and found.problems != list(shown)[: len(found.problems)]:
        step.result.events.append(Event("Warning", "InputProblems", "; ".join(found.problems)))
    if not found.reasons or found.dataset_uri is None:
        message = result.message or "no run is due"
        return check.model_copy(update={**done, "state": "Done", "failures": 0, "message": message}), found, runs
    message, runs = _start_run(step, check.number, found, runs)
    return check.model_copy(update={**done, "state": "Done", "failures": 0, "message": message}), found, runs


def _start_run(
    step: Step, number: int, found: ScheduleCheckOutcome, runs: list[ScheduleRun]
) -> tuple[str, list[ScheduleRun]]:
    """Create run `number` on the training set the check prepared (Replace: deleting the runs still going);
    what the check's message says, and the runs with it."""
    assert found.dataset_uri is not None
    name = run_name(step.owner.name, number)
    step.result.actions.append(Create(build_run(step.owner, step.spec, number, found.dataset_uri, found.reasons)))
    replaced = {r.name for r in runs if is_active(r) and step.spec.concurrency_policy == "Replace"}
    for active in sorted(replaced):
        step.result.actions.append(Delete(FINETUNEJOB.kind, active))
        step.result.events.append(Event("Normal", "RunReplaced", f"{active} is replaced by {name}"))
    started = ScheduleRun(name=name, number=number, reasons=found.reasons, start_time=step.stamp)
    why = "; ".join(found.reasons)
    step.result.events.append(Event("Normal", "RunStarted", f"{name}: {why} (training set {found.dataset_uri})"))
    return f"started {name}: {why}", [started, *[r for r in runs if r.name != name and r.name not in replaced]]


def _due(step: Step, recorded: FineTuneScheduleStatus, update: dict[str, Any]) -> list[str]:
    """Reasons a run is due now regardless of the store: a new cron time, a new run-now annotation, or
    the reasons a failed check could not act on (retried)."""
    spec, body = step.spec, step.body
    due: list[str] = []
    if spec.schedule:
        last = parse_time(recorded.last_schedule_time) or parse_time(body["metadata"].get("creationTimestamp"))
        fire = cron.due(spec.schedule, spec.time_zone, last or step.time, step.time)
        if fire is not None:
            update["lastScheduleTime"] = format_time(fire)
            due.append("schedule")
    manual = (body["metadata"].get("annotations") or {}).get(RUN_NOW)
    if manual and manual != recorded.manual_trigger:
        due.append("manual")
    check = recorded.check
    if check is not None and check.state == "Failed":
        due += [r for r in check.due if r not in due]
    return due


def _start_check(
    step: Step,
    last: ScheduleCheck | None,
    recorded: FineTuneScheduleStatus,
    runs: Sequence[ScheduleRun],
    update: dict[str, Any],
) -> ScheduleCheck | None:
    """Start a check when a run is due or the store triggers' poll is; None when none starts now."""
    spec = step.spec
    if spec.suspend:
        return None
    due = _due(step, recorded, update)
    active = [r.name for r in runs if is_active(r)]
    if active and spec.concurrency_policy == "Forbid":
        if "schedule" in due:
            message = f"the run due at {update.get('lastScheduleTime')} is skipped: {', '.join(active)} still runs"
            step.result.events.append(Event("Normal", "RunSkipped", message))
        return None  # a manual run, a failed check's reasons and the poll wait for the run to end (its end wakes us)
    failures = last.failures if last is not None and last.state == "Failed" else 0
    since_last = step.since(last.finish_time or last.start_time) if last is not None else None
    wait = backoff(failures) if failures else float(spec.triggers.poll_seconds)
    if due and failures and since_last is not None and since_last < wait:
        step.recheck(wait - since_last)
        return None
    poll = spec.triggers.store_triggers and (since_last is None or since_last >= wait)
    if not due and not poll:
        if spec.triggers.store_triggers and since_last is not None:
            step.recheck(wait - since_last)
        return None
    number = (last.number if last is not None else 0) + 1
    if "manual" in due:
        update["manualTrigger"] = (step.body["metadata"].get("annotations") or {}).get(RUN_NOW)
    step.result.actions.append(
        Create(build_check_job(step.owner, spec, number=number, due=due, settings=step.settings))
    )
    return ScheduleCheck(
        number=number,
        job=check_job_name(step.owner, number),
        state="Checking",
        due=due,
        start_time=step.stamp,
        failures=failures,
        message=f"checking {'the store triggers' if not due else 'before a run (' + ', '.join(due) + ')'}",
    )


def _drop_old_runs(step: Step, runs: list[ScheduleRun]) -> list[ScheduleRun]:
    """Delete the finished runs beyond spec.historyLimit (oldest first); the runs kept."""
    finished = [r for r in runs if not is_active(r)]
    dropped = {r.name for r in finished[step.spec.history_limit :]}
    for name in sorted(dropped):
        step.result.actions.append(Delete(FINETUNEJOB.kind, name, stage="after"))
    return [r for r in runs if r.name not in dropped]


def _conditions(
    spec: FineTuneScheduleSpec, check: ScheduleCheck | None, runs: Sequence[ScheduleRun], problems: Sequence[str]
) -> list[dict[str, Any]]:
    active = [r.name for r in runs if is_active(r)]
    if spec.suspend:
        scheduled = make_condition("Scheduled", False, "Suspended", "spec.suspend is true: no run starts")
    elif active and spec.concurrency_policy == "Forbid":
        message = f"{', '.join(active)} still runs; concurrencyPolicy Forbid holds new runs until it ends"
        scheduled = make_condition("Scheduled", False, "RunActive", message)
    else:
        when = [f"cron '{spec.schedule}' ({spec.time_zone})"] if spec.schedule else []
        if spec.triggers.store_triggers:
            when.append(f"store triggers checked every {spec.triggers.poll_seconds} s")
        when.append(f"annotation {RUN_NOW}")
        scheduled = make_condition("Scheduled", True, "Scheduling", "runs start on " + ", ".join(when))
    conditions = [make_condition("Validated", True, "SpecValid", "spec is valid"), scheduled]
    if problems:
        conditions.append(make_condition("InputProblems", True, "BadInputSkipped", "; ".join(problems)[:2048]))
    else:
        conditions.append(make_condition("InputProblems", False, "NoProblems", "the last check read every input"))
    failed = check is not None and check.state == "Failed"
    message = (check.message if failed and check else None) or "the last check succeeded"
    conditions.append(make_condition("CheckFailed", failed, "CheckFailed" if failed else "CheckSucceeded", message))
    return conditions


CONTROLLER: Controller[Inputs] = Controller(kind=FINETUNESCHEDULE, gather=gather, plan=plan, pending=pending)
