"""FineTuneSchedule: retrain on a cron schedule, on new data, on negative feedback or on drift, the way a
CronJob repeats Jobs; every run is a FineTuneJob from a template, registered into a Model whose gate
decides whether it replaces stable."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import URI_HELP, Condition, SecretRef, Uri, remote_secret_rule
from .finetunejob import FineTuneJobSpec
from .schema import ApiModel, ObjectName, Rule

# --- cron (the five fields of crontab(5), as a CronJob takes them) ---

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DAYS = "sun|mon|tue|wed|thu|fri|sat"
_FIELDS = (
    ("minute", "[0-5]?[0-9]"),
    ("hour", "[01]?[0-9]|2[0-3]"),
    ("day of month", "0?[1-9]|[12][0-9]|3[01]"),
    ("month", f"0?[1-9]|1[0-2]|{_MONTHS}|{_MONTHS.upper()}"),
    ("day of week", f"[0-7]|{_DAYS}|{_DAYS.upper()}"),
)
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _field_pattern(value: str) -> str:
    item = f"([*]|({value})(-({value}))?)(/[0-9]{{1,2}})?"
    return f"{item}(,{item})*"


CRON_PATTERN = "^(" + "|".join(MACROS) + "|" + " +".join(f"({_field_pattern(v)})" for _, v in _FIELDS) + ")$"
"""Five space-separated fields (minute hour day-of-month month day-of-week), each `*`, a value, a range,
a list, with an optional `/step`, each value within its field's range; or one of MACROS. The apiserver
checks it in CEL (RE2), the operator also with croniter."""


def valid_cron(expression: str) -> bool:
    import re

    from croniter import croniter  # type: ignore[import-untyped]

    return bool(re.match(CRON_PATTERN, expression.strip())) and croniter.is_valid(expression.strip())


def valid_time_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


CronExpression = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TimeZone = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+\-/]+$", max_length=64)]


class JobTemplate(ApiModel):
    """What every run creates: a FineTuneJob `<schedule>-<run>` with this spec, except that its dataset is
    the training set the run's check prepared (the template's dataset plus new data and feedback)."""

    spec: FineTuneJobSpec = Field(description="The FineTuneJob spec of every run.")

    __rules__ = (
        Rule(
            cel="!has(self.spec.dataset.datasetRef)",
            message="a schedule's runs train on a training set its check prepares from spec.dataset.uri; "
            "spec.dataset.datasetRef is not supported here (use the Dataset's published train split URI)",
            check=lambda t: t.spec.dataset.dataset_ref is None,
            field="spec.dataset.datasetRef",
        ),
    )


class NewDataTrigger(ApiModel):
    """New training data: objects under `uri` the schedule has not consumed yet, in the template dataset's
    format; they join every later run's training set."""

    uri: Uri = Field(description="Prefix the new data objects are uploaded under. " + URI_HELP)
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")
    min_objects: int = Field(default=1, ge=1, le=100_000, description="Start a run once this many new objects exist.")

    __rules__ = (remote_secret_rule(),)


class FeedbackTrigger(ApiModel):
    """User feedback: JSONL records `{id, prompt, response, rating (1-5), correction?, timestamp?}` under `uri`
    (docs/continuous-learning.md). A record is negative when its rating is at most `negativeAtMost`; each is
    counted once (the consumed ids are kept in the store)."""

    uri: Uri = Field(description="Prefix the feedback JSONL files are written under. " + URI_HELP)
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")
    min_negative: int = Field(
        default=1, ge=1, le=1_000_000, description="Start a run once this many negative records were not yet consumed."
    )
    negative_at_most: int = Field(default=2, ge=1, le=4, description="Ratings up to this one are negative.")
    positive_at_least: int = Field(
        default=4, ge=2, le=5, description="Ratings from this one up are good answers, trained on as they are (sft)."
    )

    __rules__ = (
        Rule(
            cel="self.negativeAtMost < self.positiveAtLeast",
            message="negativeAtMost must be below positiveAtLeast",
            check=lambda t: t.negative_at_most < t.positive_at_least,
            field="negativeAtMost",
        ),
        remote_secret_rule(),
    )


class DriftTrigger(ApiModel):
    """Drift of new documents away from the last training set: the Jensen-Shannon divergence (base 2, 0 to 1)
    between their word distributions, computed by the run's check pod; a run starts when it exceeds
    `threshold`."""

    uri: Uri | None = Field(
        default=None, description="Prefix of the new documents (unset: triggers.newData.uri). " + URI_HELP
    )
    reference_uri: Uri | None = Field(
        default=None,
        description="The text they are compared with (unset: the last run's training set, before the first run "
        "the template's dataset).",
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Secret with the credentials for `uri` and `referenceUri`."
    )
    threshold: float = Field(gt=0.0, lt=1.0, description="Start a run when the divergence exceeds this (0 to 1).")

    __rules__ = (
        Rule(
            cel="!has(self.secretRef) || (has(self.uri) && (self.uri.startsWith('s3://') || "
            "self.uri.startsWith('hf://'))) || (has(self.referenceUri) && (self.referenceUri.startsWith('s3://') "
            "|| self.referenceUri.startsWith('hf://')))",
            message="secretRef is only used with s3:// and hf:// URIs",
            check=lambda t: (
                t.secret_ref is None or any((u or "").startswith(("s3://", "hf://")) for u in (t.uri, t.reference_uri))
            ),
            field="secretRef",
        ),
    )


class Triggers(ApiModel):
    """What starts a run besides the cron schedule and the manual annotation. The store is read by a short
    check pod every `pollSeconds` (the operator holds no store credentials)."""

    new_data: NewDataTrigger | None = Field(default=None, description="Start a run on new data objects.")
    feedback: FeedbackTrigger | None = Field(default=None, description="Start a run on negative feedback.")
    drift: DriftTrigger | None = Field(default=None, description="Start a run when new documents drift.")
    poll_seconds: int = Field(
        default=300, ge=5, le=86_400, description="How often the store triggers are checked, in seconds."
    )

    __rules__ = (
        Rule(
            cel="!has(self.drift) || has(self.drift.uri) || has(self.newData)",
            message="drift needs documents: set drift.uri or newData",
            check=lambda t: t.drift is None or t.drift.uri is not None or t.new_data is not None,
            field="drift",
        ),
    )

    @property
    def store_triggers(self) -> bool:
        return any(t is not None for t in (self.new_data, self.feedback, self.drift))


ConcurrencyPolicy = Literal["Forbid", "Replace"]


class FineTuneScheduleSpec(ApiModel):
    """Retraining as a resource: when to run, what each run trains, and the Model each run registers into."""

    job_template: JobTemplate = Field(description="The FineTuneJob every run creates.")
    schedule: CronExpression | None = Field(
        default=None,
        description="Cron schedule (`minute hour day-of-month month day-of-week`, or @hourly, @daily, ...). Runs "
        "missed while the operator was down collapse into one. Unset: runs start only on triggers or by hand "
        "(annotation finetune.dev/run-now).",
    )
    time_zone: TimeZone = Field(default="UTC", description="IANA time zone the schedule is read in, e.g. Europe/Paris.")
    triggers: Triggers = Field(default_factory=Triggers, description="Store triggers: new data, feedback, drift.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default="Forbid",
        description="While a run is still going: `Forbid` skips a scheduled run and holds triggers until it ends "
        "(a manual run waits); `Replace` deletes it and starts the new one.",
    )
    suspend: bool = Field(default=False, description="Start no runs (a run in progress goes on).")
    history_limit: int = Field(
        default=3, ge=1, le=100, description="Finished runs' FineTuneJobs kept; older ones are deleted."
    )
    model: ObjectName | None = Field(
        default=None,
        description="The Model every run registers into (sets the runs' spec.output.model); its promotion gate "
        "decides whether a run replaces stable, so a worse adapter never ships.",
    )

    __rules__ = (
        Rule(
            cel=f"!has(self.schedule) || self.schedule.trim().matches('{CRON_PATTERN}')",
            message="schedule is not a valid cron expression: use five fields (minute hour day-of-month month "
            "day-of-week, e.g. '0 3 * * *'), each *, a value in range, a range a-b or a list, with an optional "
            "/step; or @hourly, @daily, @weekly, @monthly, @yearly",
            check=lambda s: s.schedule is None or valid_cron(s.schedule),
            field="schedule",
        ),
        Rule(
            cel="!has(self.model) || !has(self.jobTemplate.spec.output.model) || "
            "self.jobTemplate.spec.output.model == self.model",
            message="jobTemplate.spec.output.model differs from model: set one of them",
            check=lambda s: s.model is None or s.job_template.spec.output.model in (None, s.model),
            field="model",
        ),
    )


# --- status ---

RunReason = Annotated[str, StringConstraints(max_length=256)]


class ScheduleRun(ApiModel):
    """One run: the FineTuneJob it created and why."""

    name: ObjectName = Field(description="The run's FineTuneJob.")
    number: int = Field(ge=1, description="The run's number (its check's number).")
    reasons: list[RunReason] = Field(
        max_length=8,
        description="Why it ran, e.g. 'schedule', '48 negative feedback records >= 40', 'drift 0.31 > 0.25'.",
    )
    start_time: str = Field(description="When it was created (RFC 3339).", json_schema_extra={"format": "date-time"})
    phase: str | None = Field(default=None, description="Its FineTuneJob's phase, as last seen.")


CheckState = Literal["Checking", "Done", "Failed"]


class ScheduleCheck(ApiModel):
    """The latest check pod: it reads the store triggers and, when a run is due, prepares its training set."""

    number: int = Field(ge=1, description="The check's number; a run it starts is `<schedule>-<number>`.")
    job: ObjectName = Field(description="The check's Job.")
    state: CheckState = Field(description="Checking (its pod runs), Done or Failed.")
    due: list[RunReason] = Field(
        default_factory=list, max_length=4, description="Reasons it ran with (schedule, manual); empty: a poll."
    )
    start_time: str = Field(description="When it was started (RFC 3339).", json_schema_extra={"format": "date-time"})
    finish_time: str | None = Field(
        default=None, description="When it finished (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    failures: int = Field(default=0, ge=0, description="Checks failed in a row (the next one backs off).")
    message: Annotated[str, StringConstraints(max_length=2048)] | None = Field(default=None, description="Outcome.")


class FeedbackCounts(ApiModel):
    """The feedback under triggers.feedback.uri, as the last check read it."""

    records: int = Field(ge=0, description="Valid records.")
    negative: int = Field(ge=0, description="Negative records (rating <= negativeAtMost).")
    pending_negative: int = Field(ge=0, description="Negative records not consumed by a run yet.")
    corrections: int = Field(ge=0, description="Records with a correction.")
    positive: int = Field(ge=0, description="Records rated >= positiveAtLeast.")
    consumed: int = Field(ge=0, description="Records consumed by runs so far (never counted again).")
    invalid: int = Field(ge=0, description="Lines that were not valid records (named in status.problems).")


class DriftScore(ApiModel):
    """The last drift check."""

    score: float = Field(ge=0.0, le=1.0, description="Jensen-Shannon divergence (base 2) of the new documents.")
    threshold: float = Field(description="triggers.drift.threshold.")
    documents: int = Field(ge=0, description="New documents compared.")
    reference: Annotated[str, StringConstraints(max_length=2048)] = Field(description="What they were compared with.")


class FineTuneScheduleStatus(ApiModel):
    """What ran, why, what is next, and what the store triggers last showed."""

    last_run: ScheduleRun | None = Field(default=None, description="The latest run.")
    runs: list[ScheduleRun] = Field(
        default_factory=list, max_length=101, description="The runs whose FineTuneJobs exist, newest first."
    )
    active: list[ObjectName] = Field(default_factory=list, max_length=101, description="Runs not finished yet.")
    last_schedule_time: str | None = Field(
        default=None,
        description="The latest cron time acted on (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    next_schedule_time: str | None = Field(
        default=None, description="The next cron time (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    manual_trigger: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The value of annotation finetune.dev/run-now last acted on."
    )
    check: ScheduleCheck | None = Field(default=None, description="The latest check pod.")
    new_objects: int | None = Field(default=None, ge=0, description="New data objects not consumed yet, last check.")
    feedback: FeedbackCounts | None = Field(default=None, description="Feedback counts, last check.")
    drift: DriftScore | None = Field(default=None, description="The last drift score.")
    problems: list[Annotated[str, StringConstraints(max_length=512)]] = Field(
        default_factory=list,
        max_length=10,
        description="What the last check could not use, each naming the file and line (the rest was used).",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Validated; Scheduled (False: suspended, or why runs cannot start); InputProblems (True: "
        "the last check skipped bad input, named in problems); CheckFailed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation last acted on.")
