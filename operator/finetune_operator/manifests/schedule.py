"""What a FineTuneSchedule creates: the short check pod that reads its store triggers and prepares a run's
training set, and each run's FineTuneJob."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..api import API_VERSION, FINETUNEJOB
from ..api.common import SecretRef
from ..api.contract import (
    DRIFT_ROLE,
    FEEDBACK_ROLE,
    NEW_DATA_ROLE,
    ScheduleCheckRunSpec,
)
from ..api.finetunejob import FineTuneJobSpec
from ..api.schedule import FineTuneScheduleSpec
from ..config import OperatorSettings
from .job import build_job, chore_plan, secret_env
from .names import Owner, bounded_name, child_metadata
from .runspec import output_root, resource_ref, storage_settings

RUN_NOW = "finetune.dev/run-now"
"""Annotation that starts a run by hand: any new value (`kubectl annotate fts/x finetune.dev/run-now="$(date
+%s)" --overwrite`) starts one run, the way `kubectl create job --from=cronjob/x` serves CronJobs."""
ANNOTATION_REASONS = "finetune.dev/run-reasons"
"""On a run's FineTuneJob: why it ran."""
ANNOTATION_RUN = "finetune.dev/run"
"""On a run's FineTuneJob: its number."""
CHECK_DEADLINE_SECONDS = 900


def schedule_prefix(owner: Owner, spec: FineTuneScheduleSpec, settings: OperatorSettings) -> str:
    """`<output>/schedules/<namespace>/<name>/<uid>/` (storage layout, a contract): state.json and each run's
    training set, written with the template's output credentials."""
    root = output_root(spec.job_template.spec.output.uri, settings)
    return f"{root}/schedules/{owner.namespace}/{owner.name}/{owner.uid}/"


def check_job_name(owner: Owner, number: int) -> str:
    return bounded_name(owner.name, f"-{owner.uid[:5]}-check-{number}")


def run_name(schedule: str, number: int) -> str:
    """Run N's FineTuneJob: derived from the check that started it, so a reconcile repeated after a crash
    creates the same name and adopts what exists instead of starting a second run."""
    return bounded_name(schedule, f"-{number}")


def _trigger_secrets(spec: FineTuneScheduleSpec, default: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    triggers = spec.triggers
    sources: list[tuple[str, str | None, SecretRef | None]] = []
    if triggers.new_data is not None:
        sources.append((NEW_DATA_ROLE, triggers.new_data.uri, triggers.new_data.secret_ref))
    if triggers.feedback is not None:
        sources.append((FEEDBACK_ROLE, triggers.feedback.uri, triggers.feedback.secret_ref))
    if triggers.drift is not None:
        drift = triggers.drift
        uri = drift.uri or (triggers.new_data.uri if triggers.new_data else None)
        sources.append((DRIFT_ROLE, uri or drift.reference_uri, drift.secret_ref))
    env: list[dict[str, Any]] = []
    uris: list[str] = []
    for role, uri, ref in sources:
        if uri is not None:
            env += secret_env(role, uri, ref, default)
            uris.append(uri)
    return env, uris


def build_check_job(
    owner: Owner,
    spec: FineTuneScheduleSpec,
    *,
    number: int,
    due: Sequence[str],
    settings: OperatorSettings,
) -> dict[str, Any]:
    """A short pod of the trainer image (`finetune-trainer check-schedule`) with the store triggers' secretRefs,
    the template dataset's and its output's, and no API token: it reports through its termination message."""
    template = spec.job_template.spec
    prefix = schedule_prefix(owner, spec, settings)
    run_spec = ScheduleCheckRunSpec(
        resource=resource_ref(owner),
        run=number,
        due=list(due),
        uri=prefix,
        dataset=template.dataset,
        objective=template.objective,
        triggers=spec.triggers,
        storage=storage_settings(settings),
    )
    default = settings.storage_credentials
    secrets = secret_env("OUTPUT", prefix, template.output.secret_ref, default)
    secrets += secret_env("DATASET", template.dataset.location, template.dataset.secret_ref, default)
    trigger_env, trigger_uris = _trigger_secrets(spec, default)
    uris = [(prefix, True), (template.dataset.location, False), *((uri, False) for uri in trigger_uris)]
    digest = hashlib.sha256(json.dumps(run_spec.to_json_dict(), sort_keys=True).encode()).hexdigest()[:16]
    pod = chore_plan(
        "check-schedule",
        run_spec,
        settings.trainer_image,
        secrets + trigger_env,
        uris,
        deadline_seconds=CHECK_DEADLINE_SECONDS,
        spec_hash=digest,
    )
    return build_job(owner, None, pod, settings, name=check_job_name(owner, number))


def run_spec(spec: FineTuneScheduleSpec, dataset_uri: str) -> FineTuneJobSpec:
    """The template's spec on the run's training set (in the schedule's store, read with the output's
    credentials), registered into the schedule's Model."""
    template = spec.job_template.spec
    dataset = template.dataset.model_copy(update={"uri": dataset_uri, "secret_ref": template.output.secret_ref})
    output = template.output.model_copy(update={"model": spec.model or template.output.model})
    return template.model_copy(update={"dataset": dataset, "output": output})


def build_run(
    owner: Owner, spec: FineTuneScheduleSpec, number: int, dataset_uri: str, reasons: Sequence[str]
) -> dict[str, Any]:
    metadata = child_metadata(owner, run_name(owner.name, number), "run")
    metadata["annotations"] = {ANNOTATION_REASONS: "; ".join(reasons), ANNOTATION_RUN: str(number)}
    return {
        "apiVersion": API_VERSION,
        "kind": FINETUNEJOB.kind,
        "metadata": metadata,
        "spec": FineTuneJobSpec.model_validate(run_spec(spec, dataset_uri).to_json_dict()).to_json_dict(),
    }
