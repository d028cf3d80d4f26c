"""What a training recipe publishes: the adapter (files, then its manifest), optionally a merged
model, and the result the operator reads from the termination message."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import TrainerResult, TrainingRunSpec
from finetune_operator.api.training_status import Artifact, Provenance, TrainingMetrics

from . import __version__
from .report import last_logged
from .storage import Published, Store, publish


@dataclass(frozen=True)
class PublishedAdapter:
    published: Published
    provenance: Provenance
    metadata: dict[str, Any]
    """What its manifest records; a merged model's manifest records the same."""


def _artifact(published: Published) -> Artifact:
    return Artifact(uri=published.uri, sha256=published.manifest_sha256, size_bytes=published.size_bytes)


def publish_adapter(
    store: Store, local: Path, run: TrainingRunSpec, base_revision: str, dataset_sha256: str
) -> PublishedAdapter:
    """The adapter folder (PEFT's format, with the tokenizer) under output.adapter_uri, manifest last."""
    spec = run.job
    provenance = Provenance(
        base_model_revision=base_revision[:256],
        dataset_sha256=dataset_sha256,
        trainer_image=run.trainer_image,
        trainer_version=__version__,
    )
    metadata = {
        "kind": "adapter",
        "baseModel": spec.base_model.uri,
        "datasetUri": spec.dataset.uri,
        "provenance": provenance.to_json_dict(),
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return PublishedAdapter(publish(store, local, run.output.adapter_uri, metadata), provenance, metadata)


def publish_merged(
    store: Store,
    base: Path,
    adapter: Path,
    local: Path,
    uri: str,
    *,
    dtype_name: str,
    tokenizer: Any,
    metadata: Mapping[str, Any],
) -> Artifact:
    """Merge into a full-precision reload of the base (merging into 4-bit weights would lose precision)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter)
    model = merged.merge_and_unload()
    model.save_pretrained(local)
    tokenizer.save_pretrained(local)
    return _artifact(publish(store, local, uri, {**metadata, "kind": "merged-model"}))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def adapter_result(
    adapter: PublishedAdapter,
    metrics: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    *,
    merged: Artifact | None,
    state: Any,
    train_samples: int,
    truncated_examples: int,
    runtime: float,
    resumed_from_step: int | None,
    message: str | None,
) -> TrainerResult:
    """The succeeded result: where the adapter is, the run's figures (from the Trainer's `state`)."""
    seen = state.num_input_tokens_seen or 0
    train_runtime = float(metrics.get("train_runtime", runtime))
    # TRL's preference trainers log these (dpo, orpo); SFT has none.
    rewards = last_logged(state.log_history, "rewards/accuracies")
    return TrainerResult(
        result="succeeded",
        adapter=_artifact(adapter.published),
        merged_model=merged,
        metrics=TrainingMetrics(
            train_loss=_finite(metrics.get("train_loss")),
            eval_loss=_finite(evaluation.get("eval_loss")),
            reward_accuracy=_finite(rewards.get("rewards/accuracies")),
            reward_margin=_finite(rewards.get("rewards/margins")),
            steps=state.global_step,
            train_samples=train_samples,
            truncated_examples=truncated_examples,
            tokens_per_second=round(seen / train_runtime, 2) if train_runtime > 0 else None,
            runtime_seconds=round(runtime, 2),
        ),
        provenance=adapter.provenance,
        resumed_from_step=resumed_from_step,
        message=message,
    )
