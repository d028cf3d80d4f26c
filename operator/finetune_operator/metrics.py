"""Prometheus metrics, served on :8080/metrics.

Jobs-by-phase is computed at scrape time from the last status seen per resource (not kept as
inc/dec counters), so an operator restart or a missed event cannot make the numbers drift.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .api import DATASET, EVALRUN, FINETUNEJOB, FINETUNESCHEDULE, KINDS, MODEL
from .api.common import Phase
from .status import parse_time

PHASES: tuple[Phase, ...] = ("Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended")
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 48 * 3600, float("inf"))


_PHASE_FAMILIES = tuple((k.kind, k.metrics_family, f"{k.kind}s by phase.") for k in KINDS if k.attempts)


class _PhaseCollector(Collector):
    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for kind, name, text in _PHASE_FAMILIES:
            family = GaugeMetricFamily(name, text, labels=["phase"])
            counts = self._metrics.phase_counts(kind)
            for phase in PHASES:
                family.add_metric([phase], counts.get(phase, 0))
            yield family


VERSION_STATES = ("Candidate", "Stable", "Superseded", "Rejected")


class _ModelCollector(Collector):
    """Model registries as last seen: versions by state, and the gate's promotions (a count kept in
    the Model's status, so a restarted operator reports the same totals)."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        versions = GaugeMetricFamily(
            "finetune_model_versions", "Versions of each Model by state.", labels=["namespace", "model", "state"]
        )
        promotions = CounterMetricFamily(
            "finetune_model_promotions",
            "Times the promotion gate moved a Model's stable version.",
            labels=["namespace", "model"],
        )
        for (namespace, name), (states, promoted) in self._metrics.models().items():
            for state in VERSION_STATES:
                versions.add_metric([namespace, name, state], states.get(state, 0))
            promotions.add_metric([namespace, name], promoted)
        yield versions
        yield promotions


class OperatorMetrics:
    """All collectors on one registry, so tests can make a fresh, isolated set."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._phases: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        self.job_duration = Histogram(
            "finetune_job_duration_seconds",
            "Wall time of finished attempts (FineTuneJob or EvalRun), from Job start to completion.",
            ["kind", "result"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.progress = Gauge(
            "finetune_job_progress_ratio",
            "Training progress of a FineTuneJob (0-1).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.loss = Gauge(
            "finetune_job_loss", "Latest training loss of a FineTuneJob.", ["namespace", "name"], registry=self.registry
        )
        self.reconciles = Counter(
            "finetune_reconciles_total",
            "Reconciles that ran to the end, by kind (each may stand for several watch events).",
            ["kind"],
            registry=self.registry,
        )
        self.reconciles_pending = Gauge(
            "finetune_reconciles_pending",
            "Reconciles queued: due now and waiting for a thread, or waiting for their recheck time.",
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "finetune_reconcile_errors_total",
            "Reconciles that failed, by kind and exception type.",
            ["kind", "error"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "finetune_job_transitions_total",
            "Phase transitions of FineTuneJobs and EvalRuns.",
            ["kind", "phase", "reason"],
            registry=self.registry,
        )
        self.eval_metric = Gauge(
            "finetune_evalrun_metric",
            "Latest score of an EvalRun per metric (mean over its benchmarks), for the tuned model and the baseline.",
            ["namespace", "name", "metric", "model"],
            registry=self.registry,
        )
        self.eval_passed = Gauge(
            "finetune_evalrun_passed",
            "1 if an EvalRun's latest verdict met every threshold, 0 if not.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.schedule_gauges = {
            "drift": Gauge(
                "finetune_schedule_drift_score",
                "A FineTuneSchedule's last drift score (Jensen-Shannon divergence of its new documents, 0-1).",
                ["namespace", "name"],
                registry=self.registry,
            ),
            "pendingNegative": Gauge(
                "finetune_schedule_pending_negative_feedback",
                "A FineTuneSchedule's negative feedback records not consumed by a run yet, at its last check.",
                ["namespace", "name"],
                registry=self.registry,
            ),
            "runs": Gauge(
                "finetune_schedule_last_run_number",
                "The number of a FineTuneSchedule's latest run (its FineTuneJob is <name>-<number>).",
                ["namespace", "name"],
                registry=self.registry,
            ),
        }
        self._models: dict[tuple[str, str], tuple[Tally[str], int]] = {}
        self.registry.register(_PhaseCollector(self))
        self.registry.register(_ModelCollector(self))

    def models(self) -> dict[tuple[str, str], tuple[Tally[str], int]]:
        with self._lock:
            return dict(self._models)

    def observe_model(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        states = Tally(str(v.get("state")) for v in status.get("versions") or [])
        with self._lock:
            self._models[(namespace, name)] = (states, int(status.get("promotions") or 0))

    def observe_schedule(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        shown = {
            "drift": (status.get("drift") or {}).get("score"),
            "pendingNegative": (status.get("feedback") or {}).get("pendingNegative"),
            "runs": (status.get("lastRun") or {}).get("number"),
        }
        for key, value in shown.items():
            if value is not None:
                self.schedule_gauges[key].labels(namespace, name).set(value)

    def forget_schedule(self, namespace: str, name: str) -> None:
        for gauge in self.schedule_gauges.values():
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def phase_counts(self, kind: str = "FineTuneJob") -> Tally[str]:
        with self._lock:
            return Tally(phase for (k, _, _), phase in self._phases.items() if k == kind)

    def observe_evalrun(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if status.get("phase"):
            with self._lock:
                self._phases[("EvalRun", namespace, name)] = status["phase"]
        if status.get("passed") is not None:
            self.eval_passed.labels(namespace, name).set(1 if status["passed"] else 0)
        for item in status.get("summary") or []:
            self.eval_metric.labels(namespace, name, item["metric"], "tuned").set(item["value"])
            if item.get("baseline") is not None:
                self.eval_metric.labels(namespace, name, item["metric"], "baseline").set(item["baseline"])

    def forget_evalrun(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop(("EvalRun", namespace, name), None)
        with contextlib.suppress(KeyError):
            self.eval_passed.remove(namespace, name)
        for labels in list(self.eval_metric._metrics):
            if labels[:2] == (namespace, name):
                self.eval_metric.remove(*labels)

    def observe_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        phase = status.get("phase")
        with self._lock:
            if phase:
                self._phases[("FineTuneJob", namespace, name)] = phase
        progress = status.get("progress") or {}
        if progress.get("percent") is not None:
            self.progress.labels(namespace, name).set(progress["percent"] / 100)
        if progress.get("loss") is not None:
            self.loss.labels(namespace, name).set(progress["loss"])

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop(("FineTuneJob", namespace, name), None)
        for gauge in (self.progress, self.loss):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def observe_resource(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """What a watch event of one of our resources shows, by kind."""
        if kind == EVALRUN.kind:
            self.observe_evalrun(namespace, name, status)
        elif kind == MODEL.kind:
            self.observe_model(namespace, name, status)
        elif kind == FINETUNESCHEDULE.kind:
            self.observe_schedule(namespace, name, status)
        elif kind == FINETUNEJOB.kind:
            self.observe_status(namespace, name, status)
        elif kind == DATASET.kind and status.get("phase"):
            with self._lock:
                self._phases[(kind, namespace, name)] = status["phase"]

    def forget_resource(self, kind: str, namespace: str, name: str) -> None:
        if kind == EVALRUN.kind:
            self.forget_evalrun(namespace, name)
        elif kind == MODEL.kind:
            with self._lock:
                self._models.pop((namespace, name), None)
        elif kind == FINETUNESCHEDULE.kind:
            self.forget_schedule(namespace, name)
        elif kind == FINETUNEJOB.kind:
            self.forget(namespace, name)
        elif kind == DATASET.kind:
            with self._lock:
                self._phases.pop((kind, namespace, name), None)

    def observe_transition(self, phase: str, reason: str, kind: str = "FineTuneJob") -> None:
        self.transitions.labels(kind, phase, reason).inc()

    def observe_finished(self, phase: str, start: str | None, end: str | None, kind: str = "FineTuneJob") -> None:
        started, ended = parse_time(start), parse_time(end)
        if started and ended:
            self.job_duration.labels(kind, "succeeded" if phase == "Succeeded" else "failed").observe(
                max((ended - started).total_seconds(), 0.0)
            )

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
