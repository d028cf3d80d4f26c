"""Evaluation as a user runs it: a FineTuneJob with spec.evaluation learns a QA set by heart and passes its
gate against a baseline that fails; an EvalRun of the untuned base model misses the same gate by name.

Real parts throughout: control plane, operator process, MinIO, and `finetune-trainer train|eval` run
by the local node as the pods.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from devcluster import REPO_ROOT, apply_objects
from devcluster.quickstart import BUCKET, Quickstart
from finetune_operator.api import EVALRUN, FINETUNEJOB
from tests.e2e.resources import get, wait

pytestmark = pytest.mark.cluster
EXAMPLES = REPO_ROOT / "examples" / "evaluation"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(tmp_path_factory.mktemp("evaluation")).start(say=lambda _: None)
    yield started
    started.stop()


def _apply(demo: Quickstart, file: str) -> None:
    assert demo.cluster
    body = yaml.safe_load((EXAMPLES / file).read_text())
    body["metadata"]["namespace"] = "default"
    apply_objects(demo.cluster.api(), [body])


def _report_files(demo: Quickstart, uri: str) -> set[str]:
    assert demo.minio
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    objects = demo.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)
    return {o.object_name.removeprefix(prefix) for o in objects}


def test_finetunejob_evaluation_beats_the_baseline_and_passes(demo: Quickstart) -> None:
    _apply(demo, "finetunejob-with-evaluation.yaml")
    wait(demo, "Evaluated", "ftj/capitals")
    job = get(demo, FINETUNEJOB.plural, "capitals")["status"]
    assert job["phase"] == "Succeeded"
    assert job["evaluation"]["passed"] is True
    assert job["evaluation"]["adapterUri"] == job["adapter"]["uri"]
    evalrun = get(demo, EVALRUN.plural, "capitals-eval")
    assert evalrun["metadata"]["ownerReferences"][0]["name"] == "capitals"
    status = evalrun["status"]
    results = {r["metric"]: r for r in status["results"]}
    # Memorised by the adapter, unknown to the base model alone.
    assert results["exact_match"]["value"] >= 0.9, results
    assert results["exact_match"]["baseline"] <= 0.1, results
    assert results["f1"]["delta"] >= 0.8, results
    assert {"bleu", "rouge_l"} <= results.keys()
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert (passed["status"], passed["reason"]) == ("True", "ThresholdsMet")
    assert {"results.json", "report.md", "report.html", "manifest.json"} <= _report_files(demo, status["report"]["uri"])


def test_evalrun_of_the_untuned_model_misses_the_threshold_by_name(demo: Quickstart) -> None:
    _apply(demo, "evalrun-base-model.yaml")
    wait(demo, "Passed=False", "evr/capitals-base")
    status = get(demo, EVALRUN.plural, "capitals-base")["status"]
    assert status["phase"] == "Succeeded"  # the run worked; the model did not pass
    assert status["passed"] is False
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert passed["reason"] == "ThresholdsMissed"
    assert passed["message"].startswith("missed: exact_match ")
    assert all(r.get("baseline") is None for r in status["results"])  # no adapter, so no baseline
    assert "report.html" in _report_files(demo, status["report"]["uri"])
