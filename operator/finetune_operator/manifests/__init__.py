"""Pure builders: spec -> the Kubernetes objects the operator creates (as plain dicts)."""

from __future__ import annotations

from typing import Any

from ..api.evalrun import EvalRunSpec, ResolvedModel
from ..api.finetunejob import FineTuneJobSpec
from ..config import OperatorSettings
from .job import build_eval_job
from .launch import Run, launch
from .names import Owner
from .rbac import build_trainer_identity


def build_children(owner: Owner, spec: FineTuneJobSpec, run: Run, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Everything one run of an attempt needs, in creation order (the Job's ServiceAccount must exist first)."""
    return [*build_trainer_identity(owner), *launch(owner, spec, run, settings)]


def build_eval_children(
    owner: Owner, spec: EvalRunSpec, model: ResolvedModel, run: Run, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """An evaluation runs in one pod: a failed pod is retried by its Job, never as a group restart."""
    return [*build_trainer_identity(owner), build_eval_job(owner, spec, model, run.attempt, settings)]
