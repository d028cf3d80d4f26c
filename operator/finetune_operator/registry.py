"""A Model's versions: registration, the promotion gate, and which version is stable. Pure functions.

The Model controller (kinds/model.py) reads the FineTuneJobs that publish into the Model and the
EvalRuns that judge them, and calls these to decide; nothing here reads the API or builds objects.

Versions are append-only: a version is numbered once, when its FineTuneJob attempt is first seen
succeeded, and keeps its number, adapter and provenance for ever. The gate writes its verdict once.
Only the state and reason of a version move afterwards, as stable moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .api.common import AdapterSource
from .api.evaluation import LOWER_IS_BETTER, MetricResult, MetricSummary
from .api.finetunejob import FineTuneJobSpec
from .api.model import Hyperparameters, ModelSpec, ModelVersion, MustBeat, VersionEvaluation, VersionJob
from .api.training_status import Provenance


@dataclass(frozen=True)
class Publication:
    """A FineTuneJob attempt that succeeded and published an adapter into the Model."""

    job: VersionJob
    spec: FineTuneJobSpec
    adapter_uri: str
    sha256: str | None
    provenance: Provenance | None
    completion_time: str
    dataset_uri: str
    """What it trained on: spec.dataset.uri, or the Dataset split its datasetRef resolved to."""


@dataclass(frozen=True)
class Scored:
    """A finished EvalRun of one adapter, as the gate reads it."""

    eval_run: str
    failed: str | None
    """Why the EvalRun failed, or None when it finished scoring."""
    passed: bool | None
    missed: str
    """What its Passed condition says when it is False (the thresholds missed)."""
    results: tuple[MetricResult, ...]
    summary: tuple[MetricSummary, ...]
    report_uri: str | None


def publication(body: Mapping[str, Any]) -> Publication | None:
    """The adapter a FineTuneJob's current attempt published, or None while it has none (not succeeded)."""
    status = body.get("status") or {}
    adapter = status.get("adapter") or {}
    attempt = status.get("attempt")
    if status.get("phase") != "Succeeded" or not adapter.get("uri") or not attempt:
        return None
    meta = body["metadata"]
    provenance = status.get("provenance")
    spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    return Publication(
        job=VersionJob(name=meta["name"], uid=meta["uid"], attempt=attempt),
        spec=spec,
        adapter_uri=adapter["uri"],
        sha256=adapter.get("sha256"),
        provenance=Provenance.model_validate(provenance) if provenance else None,
        completion_time=status.get("completionTime") or "",
        dataset_uri=(status.get("dataset") or {}).get("uri") or spec.dataset.uri or "",
    )


def unregistered(versions: Sequence[ModelVersion], publications: Sequence[Publication]) -> list[Publication]:
    """The publications no version records yet (by job uid and attempt), oldest first: a re-applied or
    re-listed job is never registered twice, a new attempt or a re-created job is."""
    seen = {(v.fine_tune_job.uid, v.fine_tune_job.attempt) for v in versions}
    fresh = [p for p in publications if (p.job.uid, p.job.attempt) not in seen]
    return sorted(fresh, key=lambda p: (p.completion_time, p.job.name))


def hyperparameters(spec: FineTuneJobSpec) -> Hyperparameters:
    starts_from_adapter = spec.adapter is not None
    training = spec.training
    return Hyperparameters(
        objective=spec.objective,
        method=spec.method,
        lora_r=None if starts_from_adapter else spec.lora.r,
        lora_alpha=None if starts_from_adapter else spec.lora.alpha,
        learning_rate=training.learning_rate,
        epochs=training.effective_epochs,
        max_steps=training.max_steps,
        batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        max_seq_length=training.max_seq_length,
        seed=training.seed,
    )


def register(published: Publication, number: int, model: ModelSpec, gate_evalrun: str | None, now: str) -> ModelVersion:
    """Version `number` of the Model for this publication: a Candidate waiting for its gate, or at once
    Rejected when it adapts another base model (the one mismatch no evaluation can excuse).

    `gate_evalrun`: the EvalRun that will judge it (its job's own, or the Model's `<model>-v<N>`), or
    None when it has no evaluation."""
    job_base = published.spec.base_model.uri
    version = ModelVersion(
        version=number,
        adapter=AdapterSource(uri=published.adapter_uri, secret_ref=published.spec.output.secret_ref),
        sha256=published.sha256,
        fine_tune_job=published.job,
        base_model=job_base,
        dataset_uri=published.dataset_uri,
        output_uri=published.spec.output.uri,
        hyperparameters=hyperparameters(published.spec),
        quantization=published.spec.effective_quantization,
        provenance=published.provenance,
        evaluation=VersionEvaluation(eval_run=gate_evalrun) if gate_evalrun else None,
        state="Candidate",
        reason="registered; waiting for the gate",
        registered_time=now,
    )
    if job_base != model.base_model.uri:
        reason = (
            f"spec.baseModel.uri is {model.base_model.uri}, but FineTuneJob {published.job.name} adapted "
            f"{job_base}: an adapter only works on the base it was trained on"
        )
        return decided(version, False, reason)
    return version


def decided(version: ModelVersion, passed: bool, why: str) -> ModelVersion:
    """The version with its gate's verdict, written once."""
    verdict = "Passed" if passed else "Rejected"
    return version.model_copy(update={"verdict": verdict, "verdict_reason": why[:1024]})


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def compare(must_beat: MustBeat, candidate: ModelVersion, stable: ModelVersion) -> tuple[bool, str]:
    """(beats, why): the candidate's mean of the metric over the benchmarks both versions were scored
    on, against stable's over the same ones."""
    metric = must_beat.metric

    def scores(version: ModelVersion) -> dict[str, float]:
        results = version.evaluation.results if version.evaluation else []
        return {r.benchmark: r.value for r in results if r.metric == metric}

    mine, theirs = scores(candidate), scores(stable)
    shared = sorted(mine.keys() & theirs.keys())
    if not shared:
        return False, (
            f"stable v{stable.version} has no {metric} score on the benchmarks of this evaluation "
            f"({', '.join(sorted(mine))}): evaluate both on the same benchmark"
        )
    value, bar = _mean([mine[b] for b in shared]), _mean([theirs[b] for b in shared])
    lower = metric in LOWER_IS_BETTER
    better = (bar - value if lower else value - bar) > must_beat.margin
    sign = ("<" if better else ">=") if lower else (">" if better else "<=")
    limit = f"{bar:.4g} - {must_beat.margin:g}" if lower else f"{bar:.4g} + {must_beat.margin:g}"
    return better, f"{metric} {value:.4g} {sign} stable v{stable.version} {limit}"


def judge(
    version: ModelVersion, scored: Scored | None, model: ModelSpec, stable: ModelVersion | None
) -> tuple[bool, str] | None:
    """The gate: (passed, why), or None while its evaluation has not finished.

    `scored` is the finished EvalRun named by the version (None: not finished, or it has none)."""
    expected = version.evaluation.eval_run if version.evaluation else None
    promotion = model.promotion
    if expected is None:
        if promotion.require_evaluation:
            return False, (
                "no evaluation: its FineTuneJob has no spec.evaluation and the Model no "
                "spec.promotion.evaluation (spec.promotion.requireEvaluation is true)"
            )
        return True, "no evaluation required (spec.promotion.requireEvaluation is false)"
    if scored is None:
        return None
    if scored.failed is not None:
        return False, f"EvalRun {scored.eval_run} failed: {scored.failed}"[:1024]
    if scored.passed is False:
        return False, f"EvalRun {scored.eval_run} missed its thresholds: {scored.missed}"[:1024]
    must_beat = promotion.must_beat
    if must_beat is None:
        return True, f"EvalRun {scored.eval_run} passed"
    if not any(r.metric == must_beat.metric for r in scored.results):
        return False, f"spec.promotion.mustBeat.metric {must_beat.metric} was not computed by EvalRun {scored.eval_run}"
    if stable is None:
        return True, f"EvalRun {scored.eval_run} passed; no stable version to beat yet"
    return compare(must_beat, version, stable)


def with_scores(version: ModelVersion, scored: Scored) -> ModelVersion:
    evaluation = VersionEvaluation(
        eval_run=scored.eval_run,
        passed=scored.passed,
        results=list(scored.results[:64]),
        summary=list(scored.summary[:8]),
        report_uri=scored.report_uri,
    )
    return version.model_copy(update={"evaluation": evaluation})


@dataclass(frozen=True)
class Pin:
    """Whether spec.pin can hold stable: (usable, reason)."""

    usable: bool | None
    """True: it holds; False: refused (the reason says why); None: its version's gate has not decided yet."""
    reason: str
    message: str


def numbered(versions: Sequence[ModelVersion], number: int | None) -> ModelVersion | None:
    """Version `number` of the list, or None (no such version, or no number)."""
    return next((v for v in versions if v.version == number), None)


def check_pin(pin: int, versions: Sequence[ModelVersion]) -> Pin:
    found = numbered(versions, pin)
    if found is None:
        latest = f"the newest is v{versions[-1].version}" if versions else "there are none yet"
        return Pin(False, "PinNotFound", f"spec.pin: version {pin} does not exist ({latest}); stable stays")
    if found.verdict == "Rejected":
        return Pin(False, "PinRejected", f"spec.pin: v{pin} was rejected ({found.reason}); pin a version that passed")
    if found.verdict is None:
        return Pin(None, "PinWaiting", f"spec.pin: v{pin} is waiting for its gate")
    return Pin(True, "Pinned", f"spec.pin holds stable at v{pin}")


@dataclass(frozen=True)
class Aliases:
    stable: int | None
    promoted: int | None


def states(versions: Sequence[ModelVersion], aliases: Aliases, model: ModelSpec, now: str) -> list[ModelVersion]:
    """Every version's state and reason for this stable version; the verdicts stay as the gate wrote them."""
    return [_state(version, aliases, model, now) for version in versions]


def _state(version: ModelVersion, aliases: Aliases, model: ModelSpec, now: str) -> ModelVersion:
    number, stable, gate = version.version, aliases.stable, version.verdict_reason or ""
    if version.verdict is None:
        return version.model_copy(update={"state": "Candidate"})
    if version.verdict == "Rejected":
        return version.model_copy(update={"state": "Rejected", "reason": gate})
    if number == stable:
        how = "pinned (spec.pin)" if model.pin == number else "promoted"
        return version.model_copy(
            update={"state": "Stable", "reason": f"{how}: {gate}", "promoted_time": version.promoted_time or now}
        )
    if version.promoted_time is not None or (stable is not None and number < stable):
        held = model.pin is not None and model.pin == stable
        why = f"spec.pin holds stable at v{stable}" if held else f"superseded by v{stable}" if stable else "not stable"
        return version.model_copy(update={"state": "Superseded", "reason": why})
    if model.promotion.mode == "Manual":
        why = f"passed the gate ({gate}); promotion is Manual: set spec.pin: {number} to make it stable"
    else:
        why = f"passed the gate ({gate}); spec.pin holds stable at v{stable}"
    return version.model_copy(update={"state": "Candidate", "reason": why})


def candidate(versions: Sequence[ModelVersion]) -> int | None:
    """The newest version in state Candidate."""
    return next((v.version for v in reversed(versions) if v.state == "Candidate"), None)


def replaced(versions: Sequence[ModelVersion], version: ModelVersion) -> list[ModelVersion]:
    return [version if v.version == version.version else v for v in versions]


__all__ = [
    "Aliases",
    "Pin",
    "Publication",
    "Scored",
    "candidate",
    "check_pin",
    "compare",
    "decided",
    "judge",
    "numbered",
    "publication",
    "register",
    "replaced",
    "states",
    "unregistered",
    "with_scores",
]
