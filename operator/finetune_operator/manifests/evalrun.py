"""FineTuneJob.spec.evaluation -> the EvalRun the job owns: same image, queue, output and (default) resources."""

from __future__ import annotations

from typing import Any

from ..api import API_VERSION, EVALRUN
from ..api.common import LocalRef
from ..api.evalrun import EvalModel, EvalRunSpec
from ..api.evaluation import EvaluationSettings
from ..api.finetunejob import FineTuneJobSpec
from .names import Owner, bounded_name, child_metadata


def owned_evalrun_name(job: str) -> str:
    """The EvalRun that FineTuneJob `job`'s spec.evaluation stands for."""
    return bounded_name(job, "-eval")


def evalrun_name(owner: Owner) -> str:
    return owned_evalrun_name(owner.name)


def evalrun_spec(evaluation: EvaluationSettings, model: EvalModel, **fields: Any) -> EvalRunSpec:
    """The EvalRun that runs `evaluation` on `model`; `fields` are the rest of its spec (resources,
    output, image, queue), which the owner decides."""
    return EvalRunSpec(
        model=model,
        benchmarks=evaluation.benchmarks,
        baseline=evaluation.baseline,
        generation=evaluation.generation,
        thresholds=evaluation.thresholds,
        **fields,
    )


def build_owned_evalrun(owner: Owner, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The EvalRun a FineTuneJob's spec.evaluation stands for."""
    evaluation = spec.evaluation
    assert evaluation is not None
    eval_spec = evalrun_spec(
        evaluation,
        EvalModel(fine_tune_job_ref=LocalRef(name=owner.name)),
        resources=evaluation.resources or spec.resources,
        output_uri=spec.output.uri,
        output_secret_ref=spec.output.secret_ref,
        image=spec.image,
        queue_name=spec.queue_name,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": EVALRUN.kind,
        "metadata": child_metadata(owner, evalrun_name(owner), "evaluation"),
        "spec": eval_spec.to_json_dict(),
    }
