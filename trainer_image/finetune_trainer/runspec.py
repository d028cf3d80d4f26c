"""Read the run spec (contract): FINETUNE_RUN_SPEC in a pod, or `--spec FILE` (JSON or YAML) on a laptop."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from finetune_operator.api import format_validation_error
from finetune_operator.api.contract import (
    RUN_SPEC_ENV,
    CleanupRunSpec,
    DatasetBuildRunSpec,
    EvaluationRunSpec,
    ModelPublishRunSpec,
    ScheduleCheckRunSpec,
    TrainingRunSpec,
)

from .errors import InputError

RunSpec = TypeVar(
    "RunSpec",
    TrainingRunSpec,
    EvaluationRunSpec,
    CleanupRunSpec,
    ModelPublishRunSpec,
    ScheduleCheckRunSpec,
    DatasetBuildRunSpec,
)


def load_run_spec(
    spec_file: Path | None, environ: Mapping[str, str], model: type[RunSpec] = TrainingRunSpec
) -> RunSpec:
    """The run spec, validated with the operator's own models; `model` is what the command expects."""
    if spec_file is not None:
        try:
            raw = yaml.safe_load(spec_file.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"{spec_file}: cannot read the run spec ({error})", reason="InvalidSpec") from error
        source = str(spec_file)
    elif RUN_SPEC_ENV in environ:
        try:
            raw = json.loads(environ[RUN_SPEC_ENV])
        except json.JSONDecodeError as error:
            raise InputError(f"{RUN_SPEC_ENV} is not valid JSON ({error})", reason="InvalidSpec") from error
        source = RUN_SPEC_ENV
    else:
        raise InputError(f"no run spec: set {RUN_SPEC_ENV} or pass --spec FILE", reason="InvalidSpec")
    expected = model.model_fields["kind"].default
    if isinstance(raw, dict) and raw.get("kind", expected) != expected:
        commands = {"TrainingRun": "train", "EvaluationRun": "eval", "CleanupRun": "cleanup"}
        more = {
            "ModelPublishRun": "publish-model",
            "ScheduleCheckRun": "check-schedule",
            "DatasetBuildRun": "build-dataset",
        }
        command = {**commands, **more}.get(raw.get("kind"), "?")
        raise InputError(
            f"{source}: a {raw.get('kind')} run spec is for `finetune-trainer {command}`, not this command",
            reason="InvalidSpec",
        )
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise InputError(f"{source}: {format_validation_error(error, root='runSpec')}", reason="InvalidSpec") from error
