"""Dataset -> the build Job of an attempt (`finetune-trainer build-dataset`), and where it publishes."""

from __future__ import annotations

from typing import Any

from ..api.contract import DOCUMENTS_ROLE, GENERATOR_ROLE, DatasetBuildRunSpec
from ..api.dataset import DatasetSpec
from ..config import OperatorSettings
from .job import attempt_pod, build_job, secret_env, spec_hash
from .launch import Run
from .names import Owner
from .rbac import build_trainer_identity
from .runspec import attempt_prefix, resource_ref, storage_settings


def build_run_spec(owner: Owner, spec: DatasetSpec, attempt: int, settings: OperatorSettings) -> DatasetBuildRunSpec:
    return DatasetBuildRunSpec(
        resource=resource_ref(owner),
        attempt=attempt,
        dataset=spec,
        output_uri=attempt_prefix(owner, spec.output.uri, attempt, settings),
        storage=storage_settings(settings),
        trainer_image=spec.image or settings.trainer_image,
    )


def build_dataset_children(
    owner: Owner, spec: DatasetSpec, run: Run, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """The build runs in one pod, which reports its progress as the trainer does (so it has the per-job identity)."""
    run_spec = build_run_spec(owner, spec, run.attempt, settings)
    default = settings.storage_credentials
    documents = spec.documents
    secrets = secret_env(DOCUMENTS_ROLE, documents.uri, documents.secret_ref, default)
    uris: list[tuple[str, bool]] = [(documents.uri, False), (run_spec.output_uri, True)]
    generator = spec.generation.model
    if generator is not None:
        secrets += secret_env(GENERATOR_ROLE, generator.model.uri, generator.model.secret_ref, default)
        uris.append((generator.model.uri, False))
    secrets += secret_env("OUTPUT", run_spec.output_uri, spec.output.secret_ref, default)
    digest = spec_hash(spec)
    image = run_spec.trainer_image
    pod = attempt_pod("build-dataset", run_spec, image, secrets, uris, spec=spec, digest=digest, component="dataset")
    job = build_job(owner, run.attempt, pod, settings)
    return [*build_trainer_identity(owner), job]
