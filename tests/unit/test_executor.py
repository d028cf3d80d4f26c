"""The executor performs a plan's actions in order around the status write, through executor.Api.

`RecordingApi` is a recording implementation of the operator's own API protocol (the seam the code
defines), not a stand-in for the kubernetes client: integration tests run the same executor against
the real apiserver (tests/integration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from finetune_operator.api import EVALRUN, FINETUNEJOB, KINDS
from finetune_operator.config import OperatorSettings
from finetune_operator.executor import execute
from finetune_operator.kinds import CONTROLLERS
from finetune_operator.kinds.finetunejob import Inputs
from finetune_operator.kinds.finetunejob import plan as plan_finetunejob
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.plan import Create, Delete, Event, Patch, Plan
from finetune_operator.status import Outcome
from tests.factories import MINIMAL_SPEC, finetunejob

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@dataclass
class RecordingApi:
    """Records every call in order (events too, through `post_event`); answers status patches with a new version."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    version: int = 100

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        return None

    def create_or_adopt(self, obj: Mapping[str, Any]) -> bool:
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        return True

    def patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any], patch_type: str = "merge") -> None:
        self.calls.append(("patch", kind, name, patch_type))

    guards: list[str | None] = field(default_factory=list)

    def patch_status(
        self, kind: str, namespace: str, name: str, status_patch: Mapping[str, Any], resource_version: str | None = None
    ) -> str:
        self.version += 1
        self.calls.append(("status", kind, name, sorted(status_patch)))
        self.guards.append(resource_version)
        return str(self.version)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))

    def post_event(self, resource: Mapping[str, Any], event: Event) -> None:
        self.calls.append(("event", event.reason))


def _resource(**meta: Any) -> dict[str, Any]:
    body = finetunejob(status={"phase": "Running"})
    body["metadata"].update(resourceVersion="7", **meta)
    return body


def _run(plan: Plan, resource: dict[str, Any] | None = None) -> tuple[RecordingApi, str | None, OperatorMetrics]:
    api, metrics = RecordingApi(), OperatorMetrics()
    version = execute(api, FINETUNEJOB, resource or _resource(), plan, post_event=api.post_event, metrics=metrics)
    return api, version, metrics


def _job(name: str) -> dict[str, Any]:
    return {"kind": "Job", "metadata": {"name": name}}


def test_before_actions_in_order_then_status_then_events_then_after_actions() -> None:
    plan = Plan(
        actions=[
            Create({"kind": "EvalRun", "metadata": {"name": "own-eval"}}, stage="after"),
            Create(_job("a-1")),
            Patch("Job", "a-1", {"spec": {"suspend": True}}, patch_type="strategic"),
            Delete(EVALRUN.kind, "stale-eval", stage="after"),
            Delete("Job", "a-0"),
        ],
        status={"phase": "Succeeded"},
        events=[Event("Normal", "TrainingComplete", "done")],
    )
    api, version, _ = _run(plan)
    assert api.calls == [
        ("create", "Job", "a-1"),
        ("patch", "Job", "a-1", "strategic"),
        ("delete", "Job", "a-0"),
        ("status", "FineTuneJob", "support-bot", ["phase"]),
        ("event", "TrainingComplete"),
        ("create", "EvalRun", "own-eval"),
        ("delete", "EvalRun", "stale-eval"),
    ]
    assert version == "101"  # the status patch's; nothing after it touched the resource itself


def test_a_status_already_in_place_is_not_written_and_the_read_version_stands() -> None:
    api, version, _ = _run(Plan(status={"phase": "Running"}))
    assert api.calls == [] and version == "7"


def test_a_guarded_status_is_written_only_onto_the_version_it_was_planned_on() -> None:
    api, _, _ = _run(Plan(status={"phase": "Succeeded"}, guarded=True))
    assert api.guards == ["7"]
    api, _, _ = _run(Plan(status={"phase": "Succeeded"}))
    assert api.guards == [None]  # the trainer's progress patches must not make the others conflict


def test_a_patch_of_the_resource_itself_makes_its_version_unknown() -> None:
    adding = Patch(FINETUNEJOB.kind, "support-bot", {"metadata": {"finalizers": ["x"]}})
    api, version, _ = _run(Plan(actions=[adding]))
    assert api.calls == [("patch", "FineTuneJob", "support-bot", "merge")] and version is None
    # Followed by a status write, the status patch's version is known again.
    api, version, _ = _run(Plan(actions=[adding], status={"phase": "Succeeded"}))
    assert version == "101"
    # A release after the status: unknown again.
    releasing = Patch(FINETUNEJOB.kind, "support-bot", {"metadata": {"finalizers": []}}, stage="after")
    api, version, _ = _run(Plan(actions=[releasing], status={"phase": "Succeeded"}))
    assert [c[0] for c in api.calls] == ["status", "patch"] and version is None
    # A patch of another object of the same kind leaves the resource's version alone.
    other = Patch(FINETUNEJOB.kind, "someone-else", {"metadata": {"labels": {"a": "b"}}})
    assert _run(Plan(actions=[other]))[1] == "7"


def test_transitions_and_finished_attempts_reach_the_metrics() -> None:
    finished = Outcome("Succeeded", "TrainingComplete", "done")
    status = {"phase": "Succeeded", "startTime": "2026-11-23T10:00:00Z", "completionTime": "2026-11-23T10:10:00Z"}
    plan = Plan(status=status, events=[Event("Normal", "TrainingComplete", "done")], finished=finished)
    _, _, metrics = _run(plan)
    text = metrics.registry.get_sample_value(
        "finetune_job_transitions_total", {"kind": "FineTuneJob", "phase": "Succeeded", "reason": "TrainingComplete"}
    )
    assert text == 1.0
    count = metrics.registry.get_sample_value(
        "finetune_job_duration_seconds_count", {"kind": "FineTuneJob", "result": "succeeded"}
    )
    assert count == 1.0


def test_a_real_plan_adds_the_finalizer_before_its_children_exist() -> None:
    """A FineTuneJob with deletePolicy Delete: the finalizer is on before anything it guards is created."""
    body = finetunejob({**MINIMAL_SPEC, "output": {"deletePolicy": "Delete"}})
    body["metadata"]["resourceVersion"] = "7"
    plan = plan_finetunejob(Inputs(body, [], [], OperatorSettings()), NOW)
    api, version, _ = _run(plan, body)
    kinds = [(c[0], c[1]) for c in api.calls]
    assert kinds[:5] == [
        ("patch", "FineTuneJob"),
        ("create", "ServiceAccount"),
        ("create", "Role"),
        ("create", "RoleBinding"),
        ("create", "Job"),
    ]
    assert kinds[5:] == [("status", "FineTuneJob"), ("event", "AttemptStarted")]
    assert version == "101"


def test_every_registered_kind_has_a_controller() -> None:
    assert sorted(CONTROLLERS) == sorted(k.kind for k in KINDS)
    assert all(CONTROLLERS[k.kind].kind is k for k in KINDS)
