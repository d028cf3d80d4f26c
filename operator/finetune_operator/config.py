"""Operator settings, read once from the environment (the Helm chart sets them).

One typed model, so the defaults live in one place and a bad value stops the operator at start-up
with a message naming the variable, instead of surfacing later as a broken Job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

ENV_PREFIX = "FINETUNE_"


class OperatorSettings(BaseModel):
    """Every field maps to the env var FINETUNE_<FIELD_NAME_IN_UPPER_CASE>."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainer_image: Annotated[str, StringConstraints(min_length=1)] = Field(
        default="ghcr.io/finetune-operator/trainer:0.1.0",
        description="Image of the trainer Jobs (spec.image overrides).",
    )
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    output_uri: Annotated[str, StringConstraints(pattern=r"^(s3|pvc|file)://[^\s]+$")] = Field(
        default="s3://finetune", description="Default output prefix when spec.output.uri is unset."
    )
    storage_secret: str = Field(
        default="finetune-storage",
        description="Secret (in the job's namespace) used for s3:// URIs that name no secretRef.",
    )
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint (host:port or URL); unset means AWS.")
    s3_region: str | None = Field(default=None)
    s3_secure: bool = Field(default=True, description="HTTPS to the S3 endpoint.")
    namespaces: tuple[str, ...] = Field(default=(), description="Namespaces to watch (comma-separated); empty: all.")
    job_ttl_seconds: int = Field(default=86400, ge=0, description="ttlSecondsAfterFinished of trainer Jobs.")
    image_pull_timeout_seconds: int = Field(
        default=300, ge=0, description="How long a pod may fail to pull its image before the attempt fails."
    )
    cleanup_deadline_seconds: int = Field(
        default=300,
        ge=10,
        description="How long the cleanup of a deleted FineTuneJob's stored objects (output.deletePolicy: Delete) "
        "may take before its finalizer is released anyway, with a Warning event.",
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="0 disables the metrics server.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="kopf liveness (/healthz); 0 disables it.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            values[name] = (
                tuple(part.strip() for part in raw.split(",") if part.strip()) if name == "namespaces" else raw
            )
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(f"{ENV_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']}" for e in error.errors())
            raise ValueError(f"invalid operator settings: {problems}") from error
