"""Dataset: its API rules, its build Job, Ready, and the datasetRefs of FineTuneJobs and EvalRuns."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_operator.api import DATASET, EVALRUN, FINETUNEJOB, format_validation_error
from finetune_operator.api.dataset import DatasetSpec
from finetune_operator.api.evaluation import Benchmark
from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.schedule import FineTuneScheduleSpec
from finetune_operator.config import OperatorSettings
from finetune_operator.kinds import dataset as datasets
from finetune_operator.kinds.base import EVALRUNS_BY_DATASET, FINETUNEJOBS_BY_DATASET, Gathered
from finetune_operator.kinds.evalrun import Inputs as EvalRunInputs
from finetune_operator.kinds.evalrun import plan as plan_evalrun
from finetune_operator.kinds.finetunejob import Inputs as FineTuneJobInputs
from finetune_operator.kinds.finetunejob import plan as plan_finetunejob
from tests.factories import applied, finetunejob, job, pod, result_message

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()
DATASET_UID = "1d2c3b4a-0000-4000-8000-00000000d5e7"
PREFIX = f"s3://finetune/team-a/docs/{DATASET_UID}/attempt-1/"


def dataset(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "docs", "namespace": "team-a", "uid": DATASET_UID, "generation": 1},
        "spec": copy.deepcopy(spec or {"documents": {"uri": "s3://raw/handbook/"}}),
        "status": status or {},
    }


def ready(attempt: int = 1, secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"documents": {"uri": "s3://raw/handbook/"}}
    if secret:
        spec["output"] = {"uri": "s3://finetune/", "secretRef": {"name": secret}}
    prefix = PREFIX.replace("attempt-1", f"attempt-{attempt}")
    return dataset(
        spec, {"phase": "Succeeded", "attempt": attempt, "output": {"uri": prefix, "manifestSha256": "a" * 64}}
    )


def built_message() -> str:
    return result_message(
        result="succeeded",
        dataset={
            "documents": {"read": 5, "failed": 1, "pages": 9, "bytes": 48_000},
            "failures": [{"document": "broken.pdf", "reason": "Unreadable", "message": "not a readable PDF"}],
            "chunks": 18,
            "pairs": {"generated": 54, "kept": 36, "dropped": {"duplicate": 18}},
            "splits": {"train": 28, "validation": 3, "test": 5},
            "output": {"uri": PREFIX, "manifestSha256": "b" * 64, "sizeBytes": 9000},
            "samples": [{"question": "What is a warranty?", "answer": "A promise.", "source": "terms.pdf page 1"}],
        },
    )


def plan_dataset(body: dict[str, Any], jobs: list[Any] = (), pods: list[Any] = ()) -> Any:  # type: ignore[assignment]
    return datasets.plan(Gathered(body, list(jobs), list(pods), SETTINGS), NOW)


def errors(model: type, data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return format_validation_error(caught.value)


# --- API -------------------------------------------------------------------------------------------


def test_defaults_are_cpu_template_mode_with_every_filter() -> None:
    spec = DatasetSpec.model_validate({"documents": {"uri": "s3://raw/docs/"}})
    assert spec.generation.mode == "template" and spec.resources.gpus == 0
    assert spec.filters.dedupe and spec.filters.near_dedupe == 0.8 and spec.filters.grounding == 0.8
    assert spec.chunking.max_tokens == 256 and spec.chunking.overlap == 32


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"chunking": {"maxTokens": 64, "overlap": 64}}, "spec.chunking.overlap: overlap must be smaller"),
        ({"generation": {"mode": "model"}}, "spec.generation.model: model is set exactly when mode is model"),
        (
            {"generation": {"mode": "model", "model": {"model": {"uri": "s3://m/"}, "prompt": "no passage"}}},
            "spec.generation.model.prompt: prompt must contain {chunk}",
        ),
        ({"splits": {"test": 0.7}}, "spec.splits.test"),
        ({"splits": {"test": 0.5, "validation": 0.5}}, "spec.splits.test: validation + test must leave a share"),
        ({"filters": {"languages": ["english"]}}, "spec.filters.languages.0"),
    ],
)
def test_bad_specs_name_the_field(data: dict[str, Any], names: str) -> None:
    assert names in errors(DatasetSpec, {"documents": {"uri": "s3://raw/docs/"}, **data})


def test_a_finetunejob_reads_a_uri_or_a_dataset_not_both() -> None:
    base = {"baseModel": {"uri": "s3://m/"}}
    both = {**base, "dataset": {"uri": "s3://d/x.jsonl", "datasetRef": {"name": "docs"}}}
    assert "set exactly one of uri and datasetRef" in errors(FineTuneJobSpec, both)
    spec = FineTuneJobSpec.model_validate({**base, "dataset": {"datasetRef": {"name": "docs"}}})
    assert spec.dataset.uri is None
    template = {"jobTemplate": {"spec": {**base, "dataset": {"datasetRef": {"name": "docs"}}}}, "schedule": "0 * * * *"}
    assert "spec.jobTemplate.spec.dataset.datasetRef" in errors(FineTuneScheduleSpec, template)


def test_faithfulness_takes_its_sources_from_a_dataset_ref() -> None:
    benchmark = {"name": "docs", "task": "qa", "metrics": ["faithfulness"], "dataset": {"datasetRef": {"name": "docs"}}}
    assert Benchmark.model_validate(benchmark).dataset.dataset_ref.split == "test"  # type: ignore[union-attr]
    without = {**benchmark, "dataset": {"uri": "s3://d/qa.jsonl"}}
    assert "faithfulness needs dataset.contextColumn" in errors(Benchmark, without)


# --- the build -------------------------------------------------------------------------------------


def test_a_new_dataset_starts_a_cpu_build_pod_that_reads_only_its_own_sources() -> None:
    plan = plan_dataset(dataset())
    assert [o["kind"] for o in plan.created()] == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    build = plan.created("Job")[0]
    container = build["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["finetune-trainer", "build-dataset"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    roles = {e["name"].split("_AWS")[0] for e in container["env"] if "AWS_" in e["name"]}
    assert roles == {"FINETUNE_DOCUMENTS", "FINETUNE_OUTPUT"}
    run_spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "FINETUNE_RUN_SPEC"))
    assert run_spec["kind"] == "DatasetBuildRun" and run_spec["outputUri"].endswith(f"/docs/{DATASET_UID}/attempt-1/")
    role = next(o for o in plan.created() if o["kind"] == "Role")
    assert role["rules"][0]["resources"] == ["datasets/status"] and role["rules"][0]["resourceNames"] == ["docs"]
    assert plan.status["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in plan.status["conditions"]}["Ready"] == "False"


def test_model_mode_reads_the_generating_model_with_its_own_secret() -> None:
    spec = {
        "documents": {"uri": "s3://raw/handbook/"},
        "generation": {"mode": "model", "model": {"model": {"uri": "s3://models/big/", "secretRef": {"name": "m"}}}},
        "resources": {"gpus": 1},
    }
    container = plan_dataset(dataset(spec)).created("Job")[0]["spec"]["template"]["spec"]["containers"][0]
    generator = [e for e in container["env"] if e["name"].startswith("FINETUNE_GENERATOR_")]
    assert generator and all(e["valueFrom"]["secretKeyRef"]["name"] == "m" for e in generator)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_finished_build_shows_its_counts_and_is_ready() -> None:
    body = applied(dataset(), plan_dataset(dataset()))
    spec_hash = body["status"]["specHash"]
    done = job(succeeded=1, conditions=[{"type": "Complete"}], spec_hash=spec_hash)
    done["metadata"]["name"] = body["status"]["jobName"]
    finished = pod(phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": built_message()})
    status = applied(body, plan_dataset(body, [done], [finished]))["status"]
    assert status["phase"] == "Succeeded"
    assert status["splits"] == {"train": 28, "validation": 3, "test": 5}
    assert status["failures"][0]["document"] == "broken.pdf" and status["pairs"]["dropped"] == {"duplicate": 18}
    assert status["output"]["uri"] == PREFIX
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and "1 documents skipped" in conditions["Ready"]["message"]


def test_a_failed_build_is_not_ready_and_publishes_nothing() -> None:
    body = applied(dataset(), plan_dataset(dataset()))
    failed_job = job(failed=1, conditions=[{"type": "Failed", "reason": "PodFailurePolicy"}])
    failed_job["metadata"]["name"] = body["status"]["jobName"]
    message = result_message(result="failed", reason="DataError", message="documents.uri: no usable document")
    gone = pod(phase="Failed", terminated={"exitCode": 2, "reason": "Error", "message": message})
    status = applied(body, plan_dataset(body, [failed_job], [gone]))["status"]
    assert status["phase"] == "Failed" and "output" not in status
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"


# --- readers -----------------------------------------------------------------------------------------


def reader(**dataset_fields: Any) -> dict[str, Any]:
    return finetunejob(
        {"baseModel": {"uri": "s3://models/base/"}, "dataset": {"datasetRef": {"name": "docs"}, **dataset_fields}}
    )


def plan_job(body: dict[str, Any], data: dict[str, Any] | None, jobs: list[Any] = ()) -> Any:  # type: ignore[assignment]
    return plan_finetunejob(FineTuneJobInputs(body, list(jobs), [], SETTINGS, dataset=data), NOW)


def test_a_finetunejob_waits_for_its_dataset_then_trains_on_the_train_split() -> None:
    waiting = plan_job(reader(), None)
    assert not waiting.created() and waiting.status["phase"] == "Pending"
    assert "Dataset docs does not exist" in json.dumps(waiting.status["conditions"])
    building = plan_job(reader(), dataset(status={"phase": "Running", "attempt": 1}))
    assert "waiting for Dataset docs to be Ready (it is Running)" in json.dumps(building.status["conditions"])
    plan = plan_job(reader(), ready(secret="store"))
    container = plan.created("Job")[0]["spec"]["template"]["spec"]["containers"][0]
    run_spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "FINETUNE_RUN_SPEC"))
    assert (
        run_spec["job"]["dataset"]["uri"] == PREFIX + "train.jsonl" and "datasetRef" not in run_spec["job"]["dataset"]
    )
    keys = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if e["name"].startswith("FINETUNE_DATASET_")
    }
    assert keys == {"store"}  # read with the Dataset's output secret
    assert plan.status["dataset"] == {"name": "docs", "uri": PREFIX + "train.jsonl", "attempt": 1}


def test_a_running_attempt_keeps_its_split_while_the_dataset_rebuilds() -> None:
    started = applied(reader(), plan_job(reader(), ready()))
    running = job(active=1, spec_hash=started["status"]["specHash"])
    running["metadata"]["name"] = started["status"]["jobName"]
    rebuilding = dataset(status={"phase": "Running", "attempt": 2})
    plan = plan_job(started, rebuilding, [running])
    assert not plan.created("Job") and plan.status.get("phase") != "Failed"
    assert applied(started, plan)["status"]["dataset"]["attempt"] == 1


def test_a_failed_dataset_fails_the_job_that_waits_for_it() -> None:
    failed = dataset(
        status={
            "phase": "Failed",
            "conditions": [{"type": "Failed", "status": "True", "message": "no usable document"}],
        }
    )
    plan = plan_job(reader(), failed)
    assert plan.status["phase"] == "Failed" and "Dataset docs failed: no usable document" in json.dumps(plan.status)


def test_an_evalrun_scores_the_test_split_with_the_chunks_as_faithfulness_sources() -> None:
    benchmark = {
        "name": "docs-qa",
        "task": "qa",
        "metrics": ["f1", "faithfulness"],
        "dataset": {"datasetRef": {"name": "docs"}},
    }
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "docs-eval", "namespace": "team-a", "uid": "e" * 8, "generation": 1},
        "spec": {"model": {"baseModel": {"uri": "s3://models/base/"}}, "benchmarks": [benchmark]},
        "status": {},
    }
    waiting = plan_evalrun(EvalRunInputs(body, [], [], SETTINGS, datasets={"docs": None}), NOW)
    assert waiting.status["phase"] == "Pending" and not waiting.created()
    plan = plan_evalrun(EvalRunInputs(body, [], [], SETTINGS, datasets={"docs": ready()}), NOW)
    container = plan.created("Job")[0]["spec"]["template"]["spec"]["containers"][0]
    run_spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "FINETUNE_RUN_SPEC"))
    data = run_spec["evaluation"]["benchmarks"][0]["dataset"]
    assert data["uri"] == PREFIX + "test.jsonl"
    assert (data["questionColumn"], data["answerColumn"], data["contextColumn"]) == ("instruction", "output", "context")
    assert plan.status["datasets"] == [
        {"name": "docs", "uri": PREFIX + "test.jsonl", "attempt": 1, "benchmark": "docs-qa"}
    ]


def test_a_dataset_wakes_the_jobs_and_evalruns_that_read_it() -> None:
    indices = {
        FINETUNEJOBS_BY_DATASET: {("team-a", "docs"): ["a", "a"]},
        EVALRUNS_BY_DATASET: {("team-a", "docs"): ["e"]},
    }
    assert datasets.dependents(None, ready(), indices) == [(FINETUNEJOB, "a"), (EVALRUN, "e")]
    assert datasets.mirrored(ready()) == ("Succeeded", 1, PREFIX)
    assert DATASET.short_names == ("ftd",)
