"""The API models: defaults, validation messages that name the field, and the rules shared with CEL."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_operator.api import EvalRunSpec, FineTuneJobSpec, format_validation_error
from finetune_operator.api.contract import TrainerResult, TrainingRunSpec
from tests.factories import MINIMAL_SPEC, with_field


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = FineTuneJobSpec.model_validate(MINIMAL_SPEC)
    assert spec.method == "qlora"
    assert spec.effective_quantization is not None
    assert (spec.effective_quantization.bits, spec.effective_quantization.quant_type) == (4, "nf4")
    assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout, spec.lora.target_modules) == (16, 32, 0.05, ["all-linear"])
    assert spec.training.effective_epochs == 3.0
    assert spec.training.packing is True
    assert spec.resources.gpus == 1
    assert spec.resources.gpu_resource_name == "nvidia.com/gpu"


def test_lora_has_no_quantization_and_max_steps_replaces_epochs() -> None:
    spec = FineTuneJobSpec.model_validate({**MINIMAL_SPEC, "method": "lora", "training": {"maxSteps": 50}})
    assert spec.effective_quantization is None
    assert spec.training.effective_epochs is None
    assert spec.training.max_steps == 50


def test_quantities_accept_integers_as_yaml_users_write_them() -> None:
    spec = FineTuneJobSpec.model_validate({**MINIMAL_SPEC, "resources": {"cpu": 8, "memory": "48Gi"}})
    assert spec.resources.cpu == "8"


def _with(path: str, value: Any) -> dict[str, Any]:
    return with_field(MINIMAL_SPEC, path, value)


INVALID_SPECS = [
    (_with("baseModel.uri", "ftp://models/llama"), "spec.baseModel.uri"),
    (_with("baseModel.uri", ""), "spec.baseModel.uri"),
    (_with("dataset.uri", "data.jsonl"), "spec.dataset.uri"),
    (_with("dataset.format", "sharegpt"), "spec.dataset.format"),
    (_with("dataset.validationSplit", 0.9), "spec.dataset.validationSplit"),
    (_with("dataset.refine", {"minChars": 100, "maxChars": 10}), "spec.dataset.refine.maxChars"),
    (_with("training.learningRate", 0), "spec.training.learningRate"),
    (_with("training.learningRate", -1e-4), "spec.training.learningRate"),
    (_with("training.batchSize", 0), "spec.training.batchSize"),
    (_with("training.maxSeqLength", 8), "spec.training.maxSeqLength"),
    (_with("training", {"epochs": 2, "maxSteps": 100}), "spec.training.maxSteps"),
    (_with("training.epochs", "three"), "spec.training.epochs"),
    (_with("training.scheduler", "exponential"), "spec.training.scheduler"),
    (_with("lora.r", 0), "spec.lora.r"),
    (_with("lora.dropout", 1.5), "spec.lora.dropout"),
    (_with("lora.targetModules", []), "spec.lora.targetModules"),
    ({**MINIMAL_SPEC, "method": "lora", "quantization": {"bits": 4}}, "spec.quantization"),
    (_with("quantization", {"bits": 3}), "spec.quantization.bits"),
    (_with("resources.gpus", -1), "spec.resources.gpus"),
    (_with("resources.memory", "lots"), "spec.resources.memory"),
    (_with("resources.gpuResourceName", "nvidia gpu"), "spec.resources.gpuResourceName"),
    ({**MINIMAL_SPEC, "queueName": "team-a", "suspend": True}, "spec.suspend"),
    (_with("output.uri", "hf://org/out"), "spec.output.uri"),
    (_with("output", {"uri": "pvc://claim/out", "secretRef": {"name": "s3"}}), "spec.output.secretRef"),
    (_with("dataset.secretRef", {"name": "Not_A_Name"}), "spec.dataset.secretRef.name"),
    (_with("baseModel", {"uri": "file:///models/llama", "secretRef": {"name": "hf"}}), "spec.baseModel.secretRef"),
    (_with("dataset.secretRef", {"name": "s3", "namespace": "other-team"}), "spec.dataset.secretRef.namespace"),
    ({**MINIMAL_SPEC, "activeDeadlineSeconds": 5}, "spec.activeDeadlineSeconds"),
    ({**MINIMAL_SPEC, "backoffLimit": -1}, "spec.backoffLimit"),
    ({**MINIMAL_SPEC, "learningRate": 1e-4}, "spec.learningRate"),
    ({"dataset": MINIMAL_SPEC["dataset"]}, "spec.baseModel"),
    (_with("dataset.uri", "s3://" + "x" * 3000), "spec.dataset.uri"),
    # Preference training.
    ({**MINIMAL_SPEC, "preference": {"beta": 0.2}}, "spec.preference"),
    (_with("dataset.format", "preference"), "spec.dataset.format"),
    ({**_with("dataset.format", "chat"), "objective": "orpo"}, "spec.dataset.format"),
    ({**MINIMAL_SPEC, "objective": "orpo", "preference": {"lossType": "ipo"}}, "spec.preference.lossType"),
    ({**MINIMAL_SPEC, "objective": "dpo", "preference": {"maxPromptLength": 4096}}, "spec.preference.maxPromptLength"),
    ({**MINIMAL_SPEC, "objective": "dpo", "preference": {"beta": -1}}, "spec.preference.beta"),
    ({**MINIMAL_SPEC, "adapter": {}}, "spec.adapter.uri"),
    (
        {**MINIMAL_SPEC, "adapter": {"fineTuneJobRef": {"name": "sft"}, "secretRef": {"name": "s"}}},
        "spec.adapter.secretRef",
    ),
]


@pytest.mark.parametrize(("spec", "field"), INVALID_SPECS, ids=[field for _, field in INVALID_SPECS])
def test_invalid_spec_is_rejected_with_the_field_named(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FineTuneJobSpec.model_validate(spec)
    message = format_validation_error(caught.value)
    assert message.startswith(field + ":") or f"; {field}:" in message, message


def test_cross_field_rule_message_says_what_to_do() -> None:
    with pytest.raises(ValidationError) as caught:
        FineTuneJobSpec.model_validate(_with("training", {"epochs": 2, "maxSteps": 100}))
    assert format_validation_error(caught.value) == "spec.training.maxSteps: set either epochs or maxSteps, not both"


EVAL_MODEL = {"fineTuneJobRef": {"name": "support-bot"}}
BENCH = {"name": "support-qa", "dataset": {"uri": "s3://eval/qa.jsonl"}, "task": "qa", "metrics": ["exact_match", "f1"]}
LM_EVAL = {"name": "mc", "task": "lmEval", "lmEval": {"tasks": ["capitals_mc"]}, "metrics": ["acc"]}
ENDPOINT = {"url": "http://vllm:8000/v1", "model": "judge"}
JUDGE = {
    "name": "judged",
    "task": "judge",
    "dataset": {"uri": "s3://eval/questions.jsonl"},
    "judge": {"model": {"uri": "s3://models/judge/"}},
    "metrics": ["win_rate", "order_disagreement"],
}


def test_harness_and_judge_benchmarks_are_valid() -> None:
    spec = EvalRunSpec.model_validate(
        {
            "model": EVAL_MODEL,
            "benchmarks": [
                {**LM_EVAL, "lmEval": {"tasks": ["capitals_mc"], "include": "s3://eval/tasks/"}},
                JUDGE,
                {
                    **JUDGE,
                    "name": "rated",
                    "judge": {"endpoint": ENDPOINT, "mode": "single"},
                    "metrics": ["judge_score"],
                },
            ],
            "thresholds": {"acc": 0.5, "win_rate": 0.5, "order_disagreement": 0.3},
        }
    )
    assert spec.benchmarks[1].judge and spec.benchmarks[1].judge.scale.max == 10
    assert spec.benchmarks[0].source() == ("s3://eval/tasks/", None)
    assert spec.benchmarks[2].source() == ("s3://eval/questions.jsonl", None)


def test_evalrun_minimal_is_valid() -> None:
    spec = EvalRunSpec.model_validate({"model": EVAL_MODEL, "benchmarks": [BENCH], "thresholds": {"f1": 0.5}})
    assert spec.baseline is True
    assert spec.generation.temperature == 0.0


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {}, "benchmarks": [BENCH]}, "spec.model.baseModel"),
        ({"model": {**EVAL_MODEL, "baseModel": {"uri": "hf://a/b"}}, "benchmarks": [BENCH]}, "spec.model.baseModel"),
        ({"model": {**EVAL_MODEL, "adapter": {"uri": "s3://a/b/"}}, "benchmarks": [BENCH]}, "spec.model.adapter"),
        ({"model": EVAL_MODEL, "benchmarks": []}, "spec.benchmarks"),
        ({"model": EVAL_MODEL, "benchmarks": [{**BENCH, "metrics": ["perplexity"]}]}, "spec.benchmarks.0.metrics"),
        ({"model": EVAL_MODEL, "benchmarks": [{**BENCH, "metrics": ["faithfulness"]}]}, "spec.benchmarks.0.metrics"),
        ({"model": EVAL_MODEL, "benchmarks": [BENCH], "thresholds": {"accuracy": 0.5}}, "spec.thresholds.accuracy"),
        (
            {"model": EVAL_MODEL, "benchmarks": [{**BENCH, "metrics": ["preference_accuracy"]}]},
            "spec.benchmarks.0.metrics",
        ),
        (
            {"model": EVAL_MODEL, "benchmarks": [{**BENCH, "task": "preference", "metrics": ["f1"]}]},
            "spec.benchmarks.0.metrics",
        ),
        # lm-evaluation-harness and judge benchmarks: each names the field at fault.
        ({"model": EVAL_MODEL, "benchmarks": [{**LM_EVAL, "lmEval": None}]}, "spec.benchmarks.0.lmEval"),
        ({"model": EVAL_MODEL, "benchmarks": [{**LM_EVAL, "dataset": BENCH["dataset"]}]}, "spec.benchmarks.0.dataset"),
        ({"model": EVAL_MODEL, "benchmarks": [{**LM_EVAL, "lmEval": {"tasks": []}}]}, "spec.benchmarks.0.lmEval.tasks"),
        (
            {"model": EVAL_MODEL, "benchmarks": [{**LM_EVAL, "lmEval": {"tasks": ["mmlu; rm -rf /"]}}]},
            "spec.benchmarks.0.lmEval.tasks.0",
        ),
        (
            {"model": EVAL_MODEL, "benchmarks": [{**LM_EVAL, "lmEval": {"tasks": ["t"], "secretRef": {"name": "s"}}}]},
            "spec.benchmarks.0.lmEval.secretRef",
        ),
        ({"model": EVAL_MODEL, "benchmarks": [{**LM_EVAL, "metrics": ["rouge_l"]}]}, "spec.benchmarks.0.metrics"),
        ({"model": EVAL_MODEL, "benchmarks": [{**BENCH, "metrics": ["acc"]}]}, "spec.benchmarks.0.metrics"),
        ({"model": EVAL_MODEL, "benchmarks": [{**JUDGE, "metrics": ["judge_score"]}]}, "spec.benchmarks.0.metrics"),
        ({"model": EVAL_MODEL, "benchmarks": [{**JUDGE, "judge": {}}]}, "spec.benchmarks.0.judge.model"),
        (
            {"model": EVAL_MODEL, "benchmarks": [{**JUDGE, "judge": {**JUDGE["judge"], "endpoint": ENDPOINT}}]},
            "spec.benchmarks.0.judge.model",
        ),
        (
            {"model": EVAL_MODEL, "benchmarks": [{**JUDGE, "judge": {"endpoint": {**ENDPOINT, "url": "ftp://x"}}}]},
            "spec.benchmarks.0.judge.endpoint.url",
        ),
        (
            {
                "model": EVAL_MODEL,
                "benchmarks": [{**JUDGE, "judge": {**JUDGE["judge"], "scale": {"min": 5, "max": 5}}}],
            },
            "spec.benchmarks.0.judge.scale.max",
        ),
        ({"model": EVAL_MODEL, "benchmarks": [JUDGE], "baseline": False}, "spec.baseline"),
        ({"model": EVAL_MODEL, "benchmarks": [{**JUDGE, "dataset": None}]}, "spec.benchmarks.0.dataset"),
    ],
)
def test_invalid_evalrun_is_rejected_with_the_field_named(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EvalRunSpec.model_validate(spec)
    message = format_validation_error(caught.value)
    assert message.startswith(field), message


def test_trainer_result_round_trips_within_the_termination_message_limit() -> None:
    result = TrainerResult.model_validate(
        {"result": "succeeded", "adapter": {"uri": "s3://a/b/", "sha256": "0" * 64, "sizeBytes": 10}}
    )
    assert len(result.model_dump_json(by_alias=True, exclude_none=True)) < 4096
    assert result.adapter is not None and result.adapter.size_bytes == 10


def test_run_spec_rejects_unknown_contract_version() -> None:
    with pytest.raises(ValidationError):
        TrainingRunSpec.model_validate({"apiVersion": "finetune.dev/v2", "kind": "TrainingRun"})


def test_api_imports_without_kopf_kubernetes_or_torch() -> None:
    code = (
        "import sys; import finetune_operator.api, finetune_operator.api.contract;"
        "bad = {'kopf', 'kubernetes', 'torch'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_max_steps_is_described_as_the_rule_enforces_it() -> None:
    """kubectl explain said "overrides epochs" while setting both is refused; the text follows the rule."""
    from finetune_operator.api.finetunejob import TrainingSettings

    text = TrainingSettings.model_fields["max_steps"].description or ""
    assert "overrides" not in text and "not both" in text
    with pytest.raises(ValidationError):
        TrainingSettings.model_validate({"epochs": 2, "maxSteps": 100})
