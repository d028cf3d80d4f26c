"""Spec -> the trainer's run spec (api/contract.py): every default resolved, every location decided.

Where an object publishes (storage layout, a contract): `<output>/<namespace>/<name>/<uid>/attempt-<n>/`.
"""

from __future__ import annotations

from ..api import GROUP, VERSION, kind_named
from ..api.contract import EvaluationRunSpec, ResourceRef, RunOutput, StorageSettings, TrainingRunSpec
from ..api.evalrun import EvalRunSpec, ResolvedModel
from ..api.finetunejob import FineTuneJobSpec
from ..config import OperatorSettings
from .names import Owner


def output_root(output_uri: str | None, settings: OperatorSettings) -> str:
    """<output>, without its trailing slash: the resource's own URI, else the operator's default."""
    return (output_uri or settings.output_uri).rstrip("/")


def owner_prefix(owner: Owner, output_uri: str | None, settings: OperatorSettings) -> str:
    """<output>/<namespace>/<name>/<uid>/: everything one object ever publishes, and nothing else."""
    return f"{output_root(output_uri, settings)}/{owner.namespace}/{owner.name}/{owner.uid}/"


def attempt_prefix(owner: Owner, output_uri: str | None, attempt: int, settings: OperatorSettings) -> str:
    """<output>/<namespace>/<name>/<uid>/attempt-<n>/: unique per object and attempt, never overwritten."""
    return owner_prefix(owner, output_uri, settings) + f"attempt-{attempt}/"


def run_output(owner: Owner, spec: FineTuneJobSpec, attempt: int, settings: OperatorSettings) -> RunOutput:
    base = attempt_prefix(owner, spec.output.uri, attempt, settings)
    return RunOutput(
        uri=base,
        adapter_uri=base + "adapter/",
        checkpoints_uri=base + "checkpoints/",
        merged_model_uri=base + "merged/" if spec.output.merge else None,
    )


def resource_ref(owner: Owner) -> ResourceRef:
    return ResourceRef(
        group=GROUP,
        version=VERSION,
        plural=kind_named(owner.kind).plural,
        namespace=owner.namespace,
        name=owner.name,
        uid=owner.uid,
    )


def storage_settings(settings: OperatorSettings) -> StorageSettings:
    return StorageSettings(s3_endpoint=settings.s3_endpoint, s3_region=settings.s3_region, s3_secure=settings.s3_secure)


def build_run_spec(owner: Owner, spec: FineTuneJobSpec, attempt: int, settings: OperatorSettings) -> TrainingRunSpec:
    """The trainer's whole input, with every default resolved so the trainer decides nothing the operator did."""
    training = spec.training.model_copy(update={"epochs": spec.training.effective_epochs})
    resolved = spec.model_copy(
        update={"training": training, "quantization": spec.effective_quantization, "evaluation": None}
    )
    return TrainingRunSpec(
        resource=resource_ref(owner),
        attempt=attempt,
        job=resolved,
        output=run_output(owner, spec, attempt, settings),
        storage=storage_settings(settings),
        trainer_image=spec.image or settings.trainer_image,
    )


def build_eval_run_spec(
    owner: Owner, spec: EvalRunSpec, model: ResolvedModel, attempt: int, settings: OperatorSettings
) -> EvaluationRunSpec:
    return EvaluationRunSpec(
        resource=resource_ref(owner),
        attempt=attempt,
        evaluation=spec,
        model=model,
        report_uri=attempt_prefix(owner, spec.output_uri, attempt, settings) + "report/",
        storage=storage_settings(settings),
        trainer_image=spec.image or settings.trainer_image,
    )
