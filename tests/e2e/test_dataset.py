"""A Dataset as a user runs it: a folder of documents in MinIO (text, markdown with headings, HTML, a real
three-page PDF, a .docx, JSONL, and three bad ones) becomes instruction pairs; a FineTuneJob applied at the
same time waits for it, trains on its train split, and its evaluation scores the test split with the chunks
as the faithfulness sources.

Real parts throughout: control plane, operator process, MinIO, and `finetune-trainer build-dataset|train|eval`
run by the local node as the pods, from examples/datasets/. What it proves: the plumbing from documents to a
trained, evaluated adapter, and that bad documents are named while the good ones are used. The tiny model's
answers are nonsense, so the evaluation's figures say nothing about quality.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import REPO_ROOT, apply_objects
from devcluster.quickstart import BUCKET, Quickstart
from documents import write_bad_documents, write_documents
from finetune_operator.api import DATASET, EVALRUN, FINETUNEJOB
from tests.e2e.resources import get, wait

pytestmark = pytest.mark.cluster
EXAMPLES = REPO_ROOT / "examples" / "datasets"
PREFIX = "documents/handbook"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(tmp_path_factory.mktemp("dataset")).start(say=lambda _: None)
    yield started
    started.stop()


def _first(file: str, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = next(d for d in yaml.safe_load_all((EXAMPLES / file).read_text()) if d["kind"] == kind)
    body["metadata"]["namespace"] = "default"
    return body


def _read(demo: Quickstart, uri: str) -> bytes:
    assert demo.minio
    return bytes(demo.minio.client().get_object(BUCKET, uri.removeprefix(f"s3://{BUCKET}/")).read())


def test_documents_become_a_dataset_a_job_trains_and_evaluates_on(demo: Quickstart, tmp_path: Path) -> None:
    assert demo.cluster and demo.minio
    folder = tmp_path / "handbook"
    good = write_documents(folder)
    bad = write_bad_documents(folder)
    demo.minio.upload_folder(BUCKET, PREFIX, folder)
    api = demo.cluster.api()
    # Both at once, as GitOps would apply them: the job waits for the Dataset.
    apply_objects(api, [_first("02-finetunejob.yaml", "FineTuneJob"), _first("01-dataset.yaml", "Dataset")])
    wait(demo, "Ready", "ftd/handbook", timeout=300)
    data = get(demo, DATASET.plural, "handbook")["status"]
    assert data["phase"] == "Succeeded"
    assert data["documents"]["read"] == len(good) and data["documents"]["failed"] == len(bad)
    assert {f["document"]: f["reason"] for f in data["failures"]} == bad
    assert data["splits"]["train"] > 0 and data["splits"]["test"] > 0 and data["samples"]
    print(f"dataset: {json.dumps({k: data[k] for k in ('documents', 'chunks', 'pairs', 'splits')})}")
    manifest = json.loads(_read(demo, data["output"]["uri"] + "manifest.json"))
    assert set(manifest["sources"]) == set(good)  # provenance: every document used, with its sha256
    test_rows = [json.loads(line) for line in _read(demo, data["output"]["uri"] + "test.jsonl").splitlines()]
    assert all(row["output"] in row["context"] for row in test_rows)  # template answers are spans of their chunk

    wait(demo, "Evaluated", "ftj/handbook-bot", timeout=600)
    job = get(demo, FINETUNEJOB.plural, "handbook-bot")["status"]
    assert job["phase"] == "Succeeded"
    assert job["dataset"] == {"name": "handbook", "uri": data["output"]["uri"] + "train.jsonl", "attempt": 1}
    assert 0 < job["metrics"]["trainSamples"] <= data["splits"]["train"]  # the train split, less evalLoss's share
    evalrun = get(demo, EVALRUN.plural, "handbook-bot-eval")["status"]
    assert evalrun["datasets"][0]["uri"] == data["output"]["uri"] + "test.jsonl"
    results = {r["metric"]: r for r in evalrun["results"]}
    assert {"f1", "rouge_l", "faithfulness"} <= results.keys()
    assert 0 <= results["faithfulness"]["value"] <= 1 and results["faithfulness"]["baseline"] is not None
    print(f"evaluation on the test split: {json.dumps(evalrun['summary'])}")
