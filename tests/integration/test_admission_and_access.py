"""What the apiserver itself enforces: CRD schema and CEL rules at admission, RBAC on the trainer's identity."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import wait_for
from finetune_operator.api import EVALRUN
from tests.factories import with_field
from tests.integration.conftest import GROUP, PLURAL, VERSION, Kube, quick_spec

pytestmark = pytest.mark.cluster


def _create(kube: Kube, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL, body)


def _spec(path: str, value: Any) -> dict[str, Any]:
    return with_field(quick_spec("success"), path, value)


def _evaluating(benchmark: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {**quick_spec("success"), "evaluation": {"benchmarks": [benchmark], **settings}}


LM_EVAL = {"name": "mc", "task": "lmEval", "lmEval": {"tasks": ["capitals_mc"]}, "metrics": ["acc"]}
JUDGE = {
    "name": "judged",
    "task": "judge",
    "dataset": {"uri": "s3://eval/questions.jsonl"},
    "judge": {"model": {"uri": "s3://models/judge/"}},
    "metrics": ["win_rate"],
}
ENDPOINT = {"url": "http://vllm:8000/v1", "model": "judge"}

REJECTED = [
    ("unknown scheme", _spec("baseModel.uri", "ftp://x/y"), "spec.baseModel.uri"),
    ("negative learning rate", _spec("training.learningRate", -0.1), "spec.training.learningRate"),
    ("wrong type", _spec("training.batchSize", "four"), "spec.training.batchSize"),
    ("epochs and maxSteps", _spec("training", {"epochs": 1, "maxSteps": 5}), "set either epochs or maxSteps"),
    (
        "quantization with lora",
        {**quick_spec("success"), "method": "lora", "quantization": {"bits": 4}},
        "quantization applies only to method qlora",
    ),
    (
        "queue and suspend",
        {**quick_spec("success"), "queueName": "q", "suspend": True},
        "suspend cannot be combined with queueName",
    ),
    (
        "secret for a local path",
        _spec("baseModel.secretRef", {"name": "hf"}),
        "secretRef is only used with s3:// and hf://",
    ),
    ("oversized uri", _spec("dataset.uri", "s3://" + "x" * 3000), "spec.dataset.uri"),
    ("missing dataset", {"baseModel": {"uri": "hf://a/b"}}, "spec.dataset"),
    ("bad quantity", _spec("resources.memory", "a lot"), "spec.resources.memory"),
    # Distributed training: each names the field at fault.
    ("fsdp on one GPU", {**_spec("resources.gpus", 1), "distributed": {"strategy": "fsdp"}}, "fsdp needs at least 2"),
    ("fsdp on CPU", {**_spec("resources.nodes", 2), "distributed": {"strategy": "fsdp"}}, "on CPU (resources.gpus 0)"),
    (
        "ranks unlike GPUs",
        {**_spec("resources.gpus", 4), "distributed": {"processesPerNode": 2}},
        "processesPerNode must equal resources.gpus",
    ),
    (
        "fsdp with 8-bit",
        {**_spec("resources.gpus", 2), "distributed": {"strategy": "fsdp"}, "quantization": {"bits": 8}},
        "quantization.bits 8 cannot be sharded",
    ),
    (
        "file output on two nodes",
        {**_spec("resources.nodes", 2), "output": {"uri": "file:///out"}},
        "output.uri file:// is a path inside one pod",
    ),
    ("zero nodes", _spec("resources.nodes", 0), "spec.resources.nodes"),
    ("65 nodes", _spec("resources.nodes", 65), "spec.resources.nodes"),
    (
        "short collective timeout",
        {**quick_spec("success"), "distributed": {"timeoutSeconds": 5}},
        "spec.distributed.timeoutSeconds",
    ),
    ("unknown strategy", {**quick_spec("success"), "distributed": {"strategy": "zero3"}}, "spec.distributed.strategy"),
    # Preference training (dpo, orpo): each names the field at fault.
    ("unknown objective", _spec("objective", "ppo"), "spec.objective"),
    ("preference with sft", _spec("preference", {"beta": 0.2}), "preference settings apply only to objective dpo"),
    ("pairs with sft", _spec("dataset.format", "preference"), "dataset.format preference (chosen/rejected pairs)"),
    (
        "dpo on alpaca",
        {**_spec("dataset.format", "alpaca"), "objective": "dpo"},
        "objective dpo and orpo train on preference pairs",
    ),
    (
        "loss type with orpo",
        {**quick_spec("success"), "objective": "orpo", "preference": {"lossType": "ipo"}},
        "preference.lossType applies only to objective dpo",
    ),
    ("unknown loss type", {**quick_spec("success"), "objective": "dpo", "preference": {"lossType": "ppo"}}, "lossType"),
    ("zero beta", {**quick_spec("success"), "objective": "dpo", "preference": {"beta": 0}}, "spec.preference.beta"),
    (
        "prompt as long as the sequence",
        {**_spec("training.maxSeqLength", 256), "objective": "dpo", "preference": {"maxPromptLength": 256}},
        "preference.maxPromptLength must be below training.maxSeqLength",
    ),
    (
        "dpo under fsdp",
        {**_spec("resources.gpus", 2), "objective": "dpo", "distributed": {"strategy": "fsdp"}},
        "fsdp is not supported with them yet",
    ),
    ("adapter from ftp", {**quick_spec("success"), "adapter": {"uri": "ftp://x/y"}}, "spec.adapter.uri"),
    (
        "adapter by uri and by job",
        {**quick_spec("success"), "adapter": {"uri": "s3://a/b/", "fineTuneJobRef": {"name": "sft"}}},
        "set exactly one of uri and fineTuneJobRef",
    ),
    (
        "secret for a referenced adapter",
        {**quick_spec("success"), "adapter": {"fineTuneJobRef": {"name": "sft"}, "secretRef": {"name": "s3"}}},
        "a fineTuneJobRef brings its job's own",
    ),
    # lm-evaluation-harness and judge benchmarks (CEL and schema, as the apiserver runs them).
    ("lmEval without its tasks", _evaluating({**LM_EVAL, "lmEval": None}), "lmEval is set exactly when task is lmEval"),
    (
        "lmEval with a dataset",
        _evaluating({**LM_EVAL, "dataset": {"uri": "s3://eval/x.jsonl"}}),
        "dataset is required, except with task lmEval",
    ),
    (
        "lmEval task name with a shell",
        _evaluating({**LM_EVAL, "lmEval": {"tasks": ["mmlu; rm -rf /"]}}),
        "spec.evaluation.benchmarks[0].lmEval.tasks[0]",
    ),
    (
        "lmEval metric on a qa benchmark",
        _evaluating({"name": "qa", "task": "qa", "dataset": {"uri": "s3://e/q.jsonl"}, "metrics": ["acc"]}),
        "every metric must be one the task computes",
    ),
    (
        "judge with a model and an endpoint",
        _evaluating({**JUDGE, "judge": {**JUDGE["judge"], "endpoint": ENDPOINT}}),
        "set exactly one of judge.model and judge.endpoint",
    ),
    (
        "single-answer metric from a pairwise judge",
        _evaluating({**JUDGE, "metrics": ["judge_score"]}),
        "judge mode pairwise computes win_rate",
    ),
    (
        "pairwise judge without a baseline",
        _evaluating(JUDGE, baseline=False),
        "a pairwise judge compares the tuned answers with the baseline's",
    ),
    (
        "judge endpoint over ftp",
        _evaluating({**JUDGE, "judge": {"endpoint": {**ENDPOINT, "url": "ftp://judge/v1"}}}),
        "spec.evaluation.benchmarks[0].judge.endpoint.url",
    ),
    (
        "judge scale upside down",
        _evaluating({**JUDGE, "judge": {**JUDGE["judge"], "scale": {"min": 5, "max": 2}}}),
        "scale.min must be below scale.max",
    ),
    (
        "include secret without include",
        _evaluating({**LM_EVAL, "lmEval": {"tasks": ["t"], "secretRef": {"name": "s3"}}}),
        "secretRef is only used with s3:// and hf:// URIs",
    ),
]


@pytest.mark.parametrize(("case", "spec", "expected"), REJECTED, ids=[r[0] for r in REJECTED])
def test_invalid_finetunejob_is_rejected_at_admission(
    kube: Kube, case: str, spec: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ApiException) as rejected:
        _create(kube, "invalid", spec)
    assert rejected.value.status == 422, rejected.value.body
    assert expected in rejected.value.body
    assert kube.jobs() == []


def test_names_longer_than_a_label_are_rejected(kube: Kube) -> None:
    with pytest.raises(ApiException) as rejected:
        _create(kube, "x" * 64, quick_spec("success"))
    assert "metadata.name must be at most 63 characters" in rejected.value.body
    causes = json.loads(rejected.value.body)["details"]["causes"]
    assert [c["field"] for c in causes] == ["metadata.name"], causes  # not "<nil>"
    assert causes[0]["reason"] == "FieldValueInvalid"


def test_apiserver_fills_in_documented_defaults(kube: Kube) -> None:
    _create(
        kube,
        "defaults",
        {
            "baseModel": {"uri": "hf://a/b"},
            "dataset": {"uri": "s3://d/train.jsonl"},
            "resources": {"gpus": 0},
            "suspend": True,
        },
    )
    spec = kube.ftj("defaults")["spec"]
    assert spec["method"] == "qlora"
    assert spec["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}
    assert "quantization" not in spec  # optional: unset means the qlora default, and lora must stay possible
    assert spec["training"]["learningRate"] == 0.0002
    assert "epochs" not in spec["training"]


def test_a_lora_job_is_admitted(kube: Kube) -> None:
    """Regression: a schema default of `quantization: {}` once made every method-lora job fail its CEL rule."""
    spec = {"baseModel": {"uri": "hf://a/b"}, "dataset": {"uri": "s3://d/t.jsonl"}, "method": "lora", "suspend": True}
    _create(kube, "plain-lora", spec)
    assert kube.ftj("plain-lora")["spec"]["method"] == "lora"


def test_gates_without_thresholds_are_admitted(kube: Kube) -> None:
    """Regression: the threshold rule read `self.thresholds` unguarded, so every EvalRun (and FineTuneJob
    spec.evaluation) without thresholds was refused with "no such key: thresholds"."""
    bench = {"name": "qa", "dataset": {"uri": "s3://eval/qa.jsonl"}, "task": "qa", "metrics": ["f1"]}
    evaluation = {"model": {"fineTuneJobRef": {"name": "x"}}, "benchmarks": [bench]}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvalRun", "metadata": {"name": "ungated"}, "spec": evaluation}
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.namespace, EVALRUN.plural, body)
    spec = {**quick_spec("success"), "suspend": True, "evaluation": {"benchmarks": [bench]}}
    _create(kube, "ungated", spec)
    assert kube.ftj("ungated")["spec"]["evaluation"]["benchmarks"][0]["name"] == "qa"


def test_kubectl_explain_teaches_the_api(kube: Kube) -> None:
    out = kube.kubectl("explain", "finetunejob.spec.training.maxSteps").stdout
    assert "Optimizer steps to run" in out
    recursive = kube.kubectl("explain", "ftj.spec", "--recursive").stdout
    for field in ("baseModel", "gradientAccumulationSteps", "gpuResourceName", "queueName"):
        assert field in recursive


def _client_as(kube: Kube, service_account: str) -> client.ApiClient:
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = (
        client.CoreV1Api(kube.api)
        .create_namespaced_service_account_token(service_account, kube.namespace, request)
        .status.token
    )
    admin = kube.api.configuration
    configuration = client.Configuration(host=admin.host, api_key={"authorization": f"Bearer {token}"})
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    return client.ApiClient(configuration)


def test_trainer_identity_can_patch_only_its_own_status(kube: Kube) -> None:
    kube.apply_ftj("mine", quick_spec("slow"))
    kube.apply_ftj("theirs", quick_spec("slow", suspend=True))
    kube.wait_phase("mine", "Running")
    account = next(
        sa.metadata.name
        for sa in client.CoreV1Api(kube.api).list_namespaced_service_account(kube.namespace).items
        if sa.metadata.name.startswith("mine-")
    )
    trainer = client.CustomObjectsApi(_client_as(kube, account))
    progress = {"status": {"progress": {"step": 42, "totalSteps": 100, "percent": 42, "loss": 0.9}}}
    # The patch's response, not a later read: the running stand-in trainer reports its own progress
    # too and may overwrite step 42 before a read (a CI failure).
    patched = trainer.patch_namespaced_custom_object_status(GROUP, VERSION, kube.namespace, PLURAL, "mine", progress)
    assert patched["status"]["progress"]["step"] == 42
    for attempt in (
        lambda: trainer.patch_namespaced_custom_object_status(
            GROUP, VERSION, kube.namespace, PLURAL, "theirs", progress
        ),
        lambda: trainer.patch_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, PLURAL, "mine", {"spec": {"suspend": True}}
        ),
        lambda: trainer.list_namespaced_custom_object(GROUP, VERSION, kube.namespace, PLURAL),
        lambda: client.CoreV1Api(trainer.api_client).list_namespaced_secret(kube.namespace),
    ):
        with pytest.raises(ApiException) as denied:
            attempt()
        assert denied.value.status == 403


def test_metrics_endpoint_reports_jobs_by_phase(kube: Kube, operator: Any) -> None:
    kube.apply_ftj("counted", quick_spec("success"))
    kube.wait_phase("counted", "Succeeded")

    scrape = operator.metrics

    def counted() -> str | None:
        text = scrape()
        lines = [line for line in text.splitlines() if line.startswith("finetune_job_progress_ratio{")]
        return text if any('name="counted"' in line and line.endswith(" 1.0") for line in lines) else None

    text = wait_for(counted, 20, "progress 1.0 of 'counted' in /metrics", describe=scrape)
    succeeded = next(line for line in text.splitlines() if line.startswith('finetune_jobs{phase="Succeeded"}'))
    assert float(succeeded.split()[-1]) >= 1
    assert 'finetune_job_transitions_total{kind="FineTuneJob",phase="Succeeded",reason="TrainingComplete"}' in text
    # At least three reconciles: the one that created the Job, then Running, then Succeeded.
    assert (operator.metric('finetune_reconciles_total{kind="FineTuneJob"}') or 0) >= 3
    assert operator.metric("finetune_reconciles_pending") is not None
