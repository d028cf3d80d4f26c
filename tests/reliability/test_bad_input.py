"""The bad-input catalogue, through the real apiserver, operator and trainer: every invalid manifest is
refused at admission with the field named (and no Job is ever created for it); every bad dataset or
unusable combination ends with a named reason whose message names the field, file or line. The
operator survives all of it.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import wait_for
from devcluster.quickstart import BUCKET, Quickstart
from finetune_operator.api import kind_named
from tests.factories import with_field
from tests.reliability import stack
from tests.reliability.stack import GROUP, VERSION, apply, condition, example_finetunejob

pytestmark = pytest.mark.cluster
# CPU only (the API defaults to one GPU, which the real node does not have), and two trainer pods at a
# time on its 2 cores (the examples' 1500m leaves room for one).
RESOURCES = {"gpus": 0, "cpu": "1", "memory": "4Gi"}


def _example(name: str) -> dict[str, Any]:
    """The quickstart FineTuneJob, 5 steps, on RESOURCES."""
    body = example_finetunejob(name, maxSteps=5)
    body["spec"]["resources"] = dict(RESOURCES)
    return body


BASE = _example("base")
BENCH = {
    "name": "capitals",
    "dataset": {"uri": f"s3://{BUCKET}/datasets/capitals-qa.jsonl"},
    "task": "qa",
    "metrics": ["exact_match"],
}
EVALRUN_SPEC = {"model": {"fineTuneJobRef": {"name": "base"}}, "benchmarks": [BENCH], "resources": RESOURCES}


def _ftj(path: str | None = None, value: Any = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    chosen = copy.deepcopy(spec if spec is not None else BASE["spec"])
    return with_field(chosen, path, value) if path else chosen


def _evr(path: str | None = None, value: Any = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    chosen = copy.deepcopy(spec if spec is not None else EVALRUN_SPEC)
    return with_field(chosen, path, value) if path else chosen


# (case, kind, spec, what the refusal names)
ADMISSION: list[tuple[str, str, dict[str, Any], str]] = [
    ("wrong type", "FineTuneJob", _ftj("training.batchSize", "four"), "spec.training.batchSize"),
    ("missing dataset", "FineTuneJob", {"baseModel": BASE["spec"]["baseModel"]}, "spec.dataset"),
    ("missing base model uri", "FineTuneJob", _ftj("baseModel", {}), "spec.baseModel.uri"),
    ("negative learning rate", "FineTuneJob", _ftj("training.learningRate", -0.1), "spec.training.learningRate"),
    ("zero batch size", "FineTuneJob", _ftj("training.batchSize", 0), "spec.training.batchSize"),
    ("zero max steps", "FineTuneJob", _ftj("training.maxSteps", 0), "spec.training.maxSteps"),
    ("zero lora rank", "FineTuneJob", _ftj("lora.r", 0), "spec.lora.r"),
    ("dropout above one", "FineTuneJob", _ftj("lora.dropout", 1.5), "spec.lora.dropout"),
    ("epochs and maxSteps", "FineTuneJob", _ftj("training.epochs", 2), "set either epochs or maxSteps"),
    (
        "quantization with lora",
        "FineTuneJob",
        {**_ftj(), "method": "lora", "quantization": {"bits": 4}},
        "quantization applies only to method qlora",
    ),
    ("unknown uri scheme", "FineTuneJob", _ftj("dataset.uri", "ftp://data/x.jsonl"), "spec.dataset.uri"),
    ("oversized uri", "FineTuneJob", _ftj("dataset.uri", "s3://" + "x" * 3000), "spec.dataset.uri"),
    ("queue and suspend", "FineTuneJob", {**_ftj(), "queueName": "q", "suspend": True}, "suspend cannot be combined"),
    (
        "secret for a local path",
        "FineTuneJob",
        _ftj("baseModel", {"uri": "file:///models/x", "secretRef": {"name": "s"}}),
        "secretRef is only used with s3:// and hf://",
    ),
    ("bad memory quantity", "FineTuneJob", _ftj("resources.memory", "a lot"), "spec.resources.memory"),
    ("unknown method", "FineTuneJob", {**_ftj(), "method": "dpo"}, "spec.method"),
    ("validation split too large", "FineTuneJob", _ftj("dataset.validationSplit", 0.9), "spec.dataset.validationSplit"),
    ("unknown delete policy", "FineTuneJob", _ftj("output.deletePolicy", "Sometimes"), "spec.output.deletePolicy"),
    (
        "cross-namespace secret",
        "FineTuneJob",
        _ftj("output.secretRef", {"name": "s", "namespace": "kube-system"}),
        "spec.output.secretRef.namespace",
    ),
    ("unknown field", "FineTuneJob", {**_ftj(), "learningRate": 0.1}, "spec.learningRate"),
    ("deadline too short", "FineTuneJob", {**_ftj(), "activeDeadlineSeconds": 5}, "spec.activeDeadlineSeconds"),
    ("evalrun without a model", "EvalRun", _evr("model", {}), "spec.model"),
    ("evalrun without benchmarks", "EvalRun", _evr("benchmarks", []), "spec.benchmarks"),
    ("threshold nothing computes", "EvalRun", _evr("thresholds", {"bleu": 0.5}), "thresholds"),
    ("perplexity on a qa task", "EvalRun", _evr("benchmarks", [{**BENCH, "metrics": ["perplexity"]}]), "metrics"),
]


@pytest.mark.parametrize(("case", "kind", "spec", "named"), ADMISSION, ids=[a[0] for a in ADMISSION])
def test_invalid_manifests_are_refused_at_admission(
    demo: Quickstart, case: str, kind: str, spec: dict[str, Any], named: str
) -> None:
    assert demo.cluster
    name = "invalid-" + case.replace(" ", "-")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    plural = kind_named(kind).plural
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(demo.cluster.api()).create_namespaced_custom_object(
            GROUP, VERSION, "default", plural, body, field_validation="Strict"
        )
    assert refused.value.status in {400, 422}, refused.value.body
    assert named in refused.value.body, refused.value.body
    assert stack.get(demo, name, plural) is None
    jobs = client.BatchV1Api(demo.cluster.api()).list_namespaced_job(
        "default", label_selector=f"finetune.dev/{kind.lower()}={name}"
    )
    assert jobs.items == []  # zero Jobs for a spec refused at admission


@dataclass(frozen=True)
class Runtime:
    """A manifest the apiserver accepts that cannot work: it must end with `reason` and name `names`."""

    name: str
    body: dict[str, Any]
    reason: str
    names: str
    data: bytes | None = None
    """Uploaded to datasets/bad/<name>.jsonl, which the FineTuneJob reads."""
    condition: str | None = None
    """Condition carrying the reason when the resource waits instead of failing (e.g. Running)."""


def _bad_data(name: str, data: bytes, reason: str, names: str, **dataset: Any) -> Runtime:
    body = _example(name)
    body["spec"]["dataset"] = {"uri": f"s3://{BUCKET}/datasets/bad/{name}.jsonl", "format": "auto", **dataset}
    return Runtime(name, body, reason, names, data=data)


def _row(**fields: Any) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def _with_spec(
    name: str, path: str, value: Any, reason: str, names: str, resources: dict[str, Any] | None = None, **more: Any
) -> Runtime:
    body = _example(name)
    body["spec"] = with_field(body["spec"], path, value)
    if resources:
        body["spec"]["resources"] = resources
    return Runtime(name, body, reason, names, **more)


def _evalrun(name: str, spec: dict[str, Any], reason: str, names: str) -> Runtime:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvalRun", "metadata": {"name": name, "namespace": "default"}}
    return Runtime(name, {**body, "spec": spec}, reason, names)


GOOD = _row(instruction="What is the capital of France?", output="Paris")
RUNTIME = [
    _bad_data("malformed-jsonl", GOOD + b'{"instruction": "broken"\n', "DataError", "line 2: invalid JSON"),
    _bad_data("empty-dataset", b"", "DataError", "empty-dataset.jsonl"),
    _bad_data("non-utf8", b'{"text": "caf\xe9 au lait, long enough"}\n', "DataError", "line 1: not valid UTF-8"),
    _bad_data("giant-row", _row(instruction="word " * 400_000, output="ok"), "DataError", "maxSeqLength"),
    _bad_data("unknown-columns", _row(question="q", reply="a") * 3, "DataError", "cannot tell the dataset format"),
    _bad_data("wrong-type", _row(prompt="p", completion=42), "DataError", "field 'completion' must be a string"),
    _bad_data(
        "missing-mapped-column", GOOD * 3, "DataError", "'answer'", format="alpaca", columns={"output": "answer"}
    ),
    _with_spec("not-a-model", "baseModel.uri", f"s3://{BUCKET}/datasets/", "DataError", "no config.json"),
    _with_spec("no-such-bucket", "dataset.uri", "s3://no-such-bucket/x.jsonl", "DataError", "NoSuchBucket"),
    _with_spec("fp16-on-cpu", "quantization", {"computeDtype": "float16"}, "InvalidSpec", "computeDtype"),
    _with_spec(
        "missing-secret",
        "output.secretRef",
        {"name": "nowhere"},
        "ConfigError",
        'secret "nowhere" not found',
        condition="Running",
        # Its pod waits for the Secret holding its CPU request; a small one leaves the 2-core node to the rest.
        resources={"gpus": 0, "cpu": "100m", "memory": "256Mi"},
    ),
    _evalrun(
        "eval-of-a-failed-job",
        {**EVALRUN_SPEC, "model": {"fineTuneJobRef": {"name": "malformed-jsonl"}}},
        "FineTuneJobFailed",
        "malformed-jsonl",
    ),
    _evalrun(
        "eval-bad-benchmark",
        {
            "model": {"baseModel": BASE["spec"]["baseModel"]},
            "benchmarks": [{**BENCH, "dataset": {"uri": f"s3://{BUCKET}/datasets/support.jsonl"}}],
            "resources": RESOURCES,
        },
        "DataError",
        "support.jsonl",
    ),
]


def test_bad_data_and_unusable_specs_end_with_a_named_reason(demo: Quickstart) -> None:
    assert demo.minio and demo.operator and demo.operator.process
    log_start = len(demo.operator.log())
    for case in RUNTIME:
        if case.data is not None:
            demo.minio.client().put_object(
                BUCKET, f"datasets/bad/{case.name}.jsonl", io.BytesIO(case.data), len(case.data)
            )
    apply(demo, *(case.body for case in RUNTIME))

    def plural(case: Runtime) -> str:
        return kind_named(case.body["kind"]).plural

    def verdict(case: Runtime) -> dict[str, Any]:
        current = stack.status(demo, case.name, plural(case))
        return condition(current, case.condition) if case.condition or current.get("phase") == "Failed" else {}

    def pending() -> list[str]:
        return [c.name for c in RUNTIME if verdict(c).get("reason") != c.reason]

    wait_for(lambda: not pending(), 420, "every bad input to end with its reason", describe=lambda: str(pending()))
    unnamed = []
    for case in RUNTIME:
        found = verdict(case)
        print(f"{case.name}: {found['reason']}: {found['message'][:200]}")
        if case.names not in found["message"]:
            unnamed.append((case.name, case.names, found["message"]))
    assert not unnamed, unnamed
    assert demo.operator.process.poll() is None, "the operator crashed"
    log = demo.operator.log()[log_start:]
    assert "Traceback" not in log, log[-3000:]
