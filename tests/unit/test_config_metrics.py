"""Operator settings from the environment, and the Prometheus collectors."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from finetune_operator.config import OperatorSettings
from finetune_operator.metrics import OperatorMetrics


def test_settings_come_from_prefixed_env_vars() -> None:
    settings = OperatorSettings.from_env(
        {
            "FINETUNE_TRAINER_IMAGE": "registry.example/trainer:2",
            "FINETUNE_OUTPUT_URI": "s3://team-adapters",
            "FINETUNE_NAMESPACES": "team-a, team-b,",
            "FINETUNE_S3_SECURE": "false",
            "FINETUNE_METRICS_PORT": "9090",
            "UNRELATED": "ignored",
        }
    )
    assert settings.trainer_image == "registry.example/trainer:2"
    assert settings.output_uri == "s3://team-adapters"
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.s3_secure is False
    assert settings.metrics_port == 9090


def test_the_storage_secrets_old_variable_is_still_read_and_named_deprecated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert OperatorSettings.from_env({"FINETUNE_STORAGE_SECRET": "old-name"}).storage_credentials == "old-name"
    assert "FINETUNE_STORAGE_SECRET is deprecated: set FINETUNE_STORAGE_CREDENTIALS" in caplog.text
    both = {"FINETUNE_STORAGE_SECRET": "old-name", "FINETUNE_STORAGE_CREDENTIALS": "new-name"}
    assert OperatorSettings.from_env(both).storage_credentials == "new-name"


def test_defaults_without_env() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.namespaces == ()
    assert settings.storage_credentials == "finetune-storage"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FINETUNE_OUTPUT_URI": "ftp://nope"}, "FINETUNE_OUTPUT_URI"),
        ({"FINETUNE_METRICS_PORT": "eighty"}, "FINETUNE_METRICS_PORT"),
        ({"FINETUNE_IMAGE_PULL_POLICY": "Sometimes"}, "FINETUNE_IMAGE_PULL_POLICY"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        OperatorSettings.from_env(env)


def _sample(metrics: OperatorMetrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_jobs_by_phase_follow_the_last_seen_status() -> None:
    metrics = OperatorMetrics()
    metrics.observe_status("a", "one", {"phase": "Running", "progress": {"percent": 40, "loss": 1.5}})
    metrics.observe_status("a", "two", {"phase": "Running"})
    metrics.observe_status("a", "two", {"phase": "Succeeded"})
    assert _sample(metrics, "finetune_jobs", {"phase": "Running"}) == 1
    assert _sample(metrics, "finetune_jobs", {"phase": "Succeeded"}) == 1
    assert _sample(metrics, "finetune_jobs", {"phase": "Failed"}) == 0
    assert _sample(metrics, "finetune_job_progress_ratio", {"namespace": "a", "name": "one"}) == 0.4
    assert _sample(metrics, "finetune_job_loss", {"namespace": "a", "name": "one"}) == 1.5
    metrics.forget("a", "one")
    assert _sample(metrics, "finetune_jobs", {"phase": "Running"}) == 0
    assert _sample(metrics, "finetune_job_loss", {"namespace": "a", "name": "one"}) is None


def test_evalruns_by_phase_and_their_latest_scores() -> None:
    metrics = OperatorMetrics()
    metrics.observe_status("a", "job", {"phase": "Running"})
    summary = [{"metric": "exact_match", "value": 0.9, "baseline": 0.1}, {"metric": "f1", "value": 0.95}]
    metrics.observe_evalrun("a", "eval", {"phase": "Succeeded", "summary": summary, "passed": False})
    assert _sample(metrics, "finetune_evalrun_passed", {"namespace": "a", "name": "eval"}) == 0
    assert _sample(metrics, "finetune_evalruns", {"phase": "Succeeded"}) == 1
    assert _sample(metrics, "finetune_jobs", {"phase": "Succeeded"}) == 0  # kinds are counted apart
    tuned = {"namespace": "a", "name": "eval", "metric": "exact_match", "model": "tuned"}
    assert _sample(metrics, "finetune_evalrun_metric", tuned) == 0.9
    assert _sample(metrics, "finetune_evalrun_metric", {**tuned, "model": "baseline"}) == 0.1
    assert _sample(metrics, "finetune_evalrun_metric", {**tuned, "metric": "f1", "model": "baseline"}) is None
    metrics.forget_evalrun("a", "eval")
    assert _sample(metrics, "finetune_evalruns", {"phase": "Succeeded"}) == 0
    assert _sample(metrics, "finetune_evalrun_metric", tuned) is None
    assert _sample(metrics, "finetune_evalrun_passed", {"namespace": "a", "name": "eval"}) is None


def test_model_versions_by_state_and_promotions_from_the_status() -> None:
    metrics = OperatorMetrics()
    states = ["Superseded", "Stable", "Rejected", "Rejected"]
    status = {"versions": [{"state": s} for s in states], "promotions": 2}
    metrics.observe_resource("Model", "a", "support", status)
    labels = {"namespace": "a", "model": "support"}
    assert _sample(metrics, "finetune_model_versions", {**labels, "state": "Rejected"}) == 2
    assert _sample(metrics, "finetune_model_versions", {**labels, "state": "Candidate"}) == 0
    assert _sample(metrics, "finetune_model_promotions_total", labels) == 2
    assert "finetune_models" not in generate_latest(metrics.registry).decode()  # no phases: it runs nothing
    metrics.forget_resource("Model", "a", "support")
    assert _sample(metrics, "finetune_model_versions", {**labels, "state": "Rejected"}) is None


def test_a_schedules_drift_pending_feedback_and_latest_run_from_the_status_and_no_job_figures() -> None:
    metrics = OperatorMetrics()
    status = {"drift": {"score": 0.31}, "feedback": {"pendingNegative": 7}, "lastRun": {"number": 4}}
    metrics.observe_resource("FineTuneSchedule", "a", "loop", status)
    labels = {"namespace": "a", "name": "loop"}
    assert _sample(metrics, "finetune_schedule_drift_score", labels) == 0.31
    assert _sample(metrics, "finetune_schedule_pending_negative_feedback", labels) == 7
    assert _sample(metrics, "finetune_schedule_last_run_number", labels) == 4
    assert metrics.phase_counts("FineTuneJob") == {}  # a schedule is not counted as a job
    metrics.forget_resource("FineTuneSchedule", "a", "loop")
    assert _sample(metrics, "finetune_schedule_drift_score", labels) is None


def test_duration_histogram_and_transitions() -> None:
    metrics = OperatorMetrics()
    metrics.observe_transition("Succeeded", "TrainingComplete")
    metrics.observe_finished("Succeeded", "2026-11-23T10:00:00Z", "2026-11-23T10:30:00Z")
    assert _sample(metrics, "finetune_job_duration_seconds_sum", {"kind": "FineTuneJob", "result": "succeeded"}) == 1800
    transitions = {"kind": "FineTuneJob", "phase": "Succeeded", "reason": "TrainingComplete"}
    assert _sample(metrics, "finetune_job_transitions_total", transitions) == 1
    metrics.reconcile_errors.labels("FineTuneJob", "ApiException").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_reconcile_errors_total{error="ApiException",kind="FineTuneJob"} 1.0' in text


def test_only_event_handlers_are_registered_so_kopf_needs_no_diff_base() -> None:
    """handlers/lifecycle.NoDiffBase drops kopf's per-event diff base: only sound while no
    create/update/delete handler (which reads it) is registered."""
    import kopf

    import finetune_operator.handlers  # noqa: F401  (registers)
    from finetune_operator.handlers.lifecycle import NoDiffBase

    registry = kopf.get_default_registry()
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert len(list(registry._watching.get_all_handlers())) >= 3
    assert NoDiffBase().build(body=kopf.Body({"spec": {"a": 1}})) == {}


def test_watched_copies_drop_what_planning_never_reads() -> None:
    from finetune_operator.handlers.resources import LAST_APPLIED, _watched
    from finetune_operator.kinds.base import Packed

    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "a",
            "resourceVersion": "7",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {LAST_APPLIED: "{...}", "team": "nlp"},
        },
        "spec": {"suspend": True},
        "status": {"phase": "Suspended"},
    }
    watched = _watched(body)
    assert watched["metadata"] == {"name": "a", "resourceVersion": "7", "annotations": {"team": "nlp"}}
    assert watched["spec"] == body["spec"] and watched["status"] == body["status"]
    assert body["metadata"]["managedFields"] and LAST_APPLIED in body["metadata"]["annotations"]  # untouched
    packed = Packed.of(watched)  # what the index keeps: compact JSON, a fresh copy on every read
    assert " " not in packed.text and packed.unpack() == watched and packed.unpack() is not packed.unpack()


def test_every_metric_the_charts_dashboard_queries_is_one_the_operator_exports() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "helm/finetune-operator/files/dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\bfinetune_[a-z_]+", target["expr"])
    }
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {
        family.name + suffix
        for family in OperatorMetrics().registry.collect()
        for suffix in ("", *suffixes.get(family.type, ()))
    }
    assert "finetune_schedule_drift_score" in queried
    assert queried <= exported, sorted(queried - exported)


def test_datasets_by_phase() -> None:
    metrics = OperatorMetrics()
    metrics.observe_resource("Dataset", "a", "docs", {"phase": "Running"})
    metrics.observe_resource("Dataset", "a", "docs", {"phase": "Succeeded"})
    metrics.observe_resource("Dataset", "a", "more", {"phase": "Failed"})
    assert _sample(metrics, "finetune_datasets", {"phase": "Succeeded"}) == 1
    assert _sample(metrics, "finetune_datasets", {"phase": "Running"}) == 0
    metrics.forget_resource("Dataset", "a", "more")
    assert _sample(metrics, "finetune_datasets", {"phase": "Failed"}) == 0
