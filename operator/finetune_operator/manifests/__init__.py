"""Pure builders: spec -> the Kubernetes objects the operator creates (as plain dicts)."""

from __future__ import annotations

from typing import Any

from ..api.evalrun import EvalRunSpec, ResolvedModel
from ..api.finetunejob import FineTuneJobSpec
from ..config import OperatorSettings
from .job import build_eval_job, build_training_job
from .names import Owner
from .rbac import build_trainer_identity


def build_children(
    owner: Owner, spec: FineTuneJobSpec, attempt: int, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Everything one attempt needs, in creation order (the Job's ServiceAccount must exist first)."""
    return [*build_trainer_identity(owner), build_training_job(owner, spec, attempt, settings)]


def build_eval_children(
    owner: Owner, spec: EvalRunSpec, model: ResolvedModel, attempt: int, settings: OperatorSettings
) -> list[dict[str, Any]]:
    return [*build_trainer_identity(owner), build_eval_job(owner, spec, model, attempt, settings)]
