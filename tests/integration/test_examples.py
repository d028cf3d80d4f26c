"""Every shipped example passes the real apiserver's validation (server-side dry run: schema, CEL,
defaults), and the GitOps overlays render with kustomize into what each environment should run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator.api import DatasetSpec, EvalRunSpec, FineTuneJobSpec, FineTuneScheduleSpec, ModelSpec
from tests.kube import Kube

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "examples" / "gitops" / "kustomize"
SPECS: dict[str, Any] = {
    "FineTuneJob": FineTuneJobSpec,
    "EvalRun": EvalRunSpec,
    "Model": ModelSpec,
    "FineTuneSchedule": FineTuneScheduleSpec,
    "Dataset": DatasetSpec,
}


def _finetune_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d and d.get("kind") in SPECS]  # not run specs


def _dry_run(kube: Kube, docs: list[dict[str, Any]], tmp_path: Path) -> str:
    for doc in docs:
        doc["metadata"].pop("namespace", None)  # into the test's own namespace
    manifest = tmp_path / "docs.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    result = kube.kubectl("create", "--dry-run=server", "-o", "yaml", "-f", str(manifest), check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_example_passes_server_side_validation(kube: Kube, tmp_path: Path) -> None:
    examples = sorted(p for p in (REPO / "examples").rglob("*.yaml") if "gitops" not in p.parts)
    docs = [doc for path in examples for doc in _finetune_docs(path.read_text())]
    assert len(docs) >= 6
    created = _finetune_docs(_dry_run(kube, docs, tmp_path))
    assert [d["metadata"]["name"] for d in created] == [d["metadata"]["name"] for d in docs]
    # The apiserver filled the defaults from the schema, and the models accept what it stored.
    for doc in created:
        SPECS[doc["kind"]].model_validate(doc["spec"])
        if doc["kind"] == "FineTuneJob":
            assert doc["spec"]["lora"]["targetModules"] == ["all-linear"]


def _render(kube: Kube, overlay: str) -> dict[str, Any]:
    rendered = kube.kubectl("kustomize", str(KUSTOMIZE / "overlays" / overlay)).stdout
    docs = _finetune_docs(rendered)
    assert [d["kind"] for d in docs] == ["FineTuneJob"]
    return docs[0]


def test_gitops_overlays_render_what_each_environment_runs(kube: Kube, tmp_path: Path) -> None:
    staging, production = _render(kube, "staging"), _render(kube, "production")
    assert staging["metadata"]["namespace"] == "support-staging"
    assert staging["metadata"]["labels"]["team"] == "support"
    assert staging["spec"]["training"]["maxSteps"] == 200 and "epochs" not in staging["spec"]["training"]
    assert staging["spec"]["evaluation"]["thresholds"] == {"f1": 0.3}
    assert production["metadata"]["namespace"] == "support-prod"
    assert production["spec"]["queueName"] == "gpu-h100"
    assert production["spec"]["dataset"] == {
        "uri": "s3://datasets/support/v3/train.jsonl",
        "format": "chat",
        "validationSplit": 0.05,
    }
    assert production["spec"]["evaluation"]["thresholds"] == {"f1": 0.6, "exact_match": 0.3}
    assert production["spec"]["evaluation"]["benchmarks"][0]["name"] == "support-qa"
    _dry_run(kube, [staging, production], tmp_path)
