"""Generated CRDs: in sync with the models, structural, self-documenting; shipped examples validate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import crdgen
from finetune_operator.api import FINETUNEJOB, KINDS
from finetune_operator.api.contract import EvaluationRunSpec, TrainingRunSpec

REPO = Path(__file__).resolve().parents[2]
SPEC_MODELS = {k.kind: k.spec_model for k in KINDS}


def _schema(kind_name: str) -> dict[str, Any]:
    kind = next(k for k in KINDS if k.kind == kind_name)
    crd = crdgen.build_crd(kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crds_match_the_models() -> None:
    assert crdgen.main(["--check"]) == 0


def test_api_reference_matches_the_models() -> None:
    from finetune_operator import apidocs

    assert apidocs.main(["--check"]) == 0
    text = apidocs.render()
    # every field of every kind appears, with its default and description
    assert "| `learningRate` | number | `0.0002` |" in text
    assert "### `EvalRun.spec.benchmarks[]`" in text
    assert "### `FineTuneJob.status.evaluation`" in text


def test_check_fails_when_a_crd_drifts(tmp_path: Path) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    target = tmp_path / f"{FINETUNEJOB.plural}.yaml"
    target.write_text(target.read_text().replace("Rank of the LoRA update matrices.", "edited by hand"))
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("kind", ["FineTuneJob", "EvalRun"])
def test_every_field_has_a_description(kind: str) -> None:
    missing = [
        path
        for path, node in _walk(_schema(kind), kind.lower())
        if path.count(".") >= 2 and not node.get("description") and not path.endswith(("[]", "{}"))
    ]
    assert missing == []


@pytest.mark.parametrize("kind", ["FineTuneJob", "EvalRun"])
def test_schema_is_structural(kind: str) -> None:
    for path, node in _walk(_schema(kind), kind):
        leftovers = {"$ref", "$defs", "allOf", "oneOf", "title", "const"} & set(node)
        assert not leftovers, f"{path}: {leftovers}"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
        assert (
            node.get("type")
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"
        assert node.get("type") != "null", path


def test_crd_names_columns_and_subresources() -> None:
    crd = crdgen.build_crd(KINDS[0])
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert crd["spec"]["names"]["categories"] == ["finetune"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Progress", "Loss", "Adapter", "Eval", "Objective", "Ranks", "Tokens/s", "Age"]
    evalrun = crdgen.build_crd(KINDS[1])
    assert [c["name"] for c in evalrun["spec"]["versions"][0]["additionalPrinterColumns"]] == [
        "Phase",
        "Score",
        "Passed",
        "Progress",
        "Report",
        "Age",
    ]


def test_cross_field_rules_are_in_the_schema() -> None:
    schema = _schema("FineTuneJob")
    training = schema["properties"]["spec"]["properties"]["training"]
    assert {
        "rule": "!(has(self.epochs) && has(self.maxSteps))",
        "message": "set either epochs or maxSteps, not both",
        "fieldPath": ".maxSteps",
    } in training["x-kubernetes-validations"]
    spec_rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
    assert "self.method == 'qlora' || !has(self.quantization)" in spec_rules
    root_rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any("oldSelf.status.phase" in rule and "self.spec.suspend" not in rule for rule in root_rules)


def test_nested_defaults_are_filled_by_the_apiserver() -> None:
    spec = _schema("FineTuneJob")["properties"]["spec"]
    assert spec["properties"]["training"]["default"] == {}
    assert spec["properties"]["training"]["properties"]["learningRate"]["default"] == 2e-4
    assert "default" not in spec["properties"]["training"]["properties"]["epochs"]  # would clash with maxSteps
    assert spec["properties"]["lora"]["properties"]["targetModules"]["default"] == ["all-linear"]  # a factory default
    # Optional objects whose absence means something are not defaulted into existence: an apiserver-
    # filled `quantization: {}` would make every method-lora job fail its own CEL rule.
    assert "default" not in spec["properties"]["quantization"]
    assert "default" not in spec["properties"]["evaluation"]["properties"]["resources"]
    evalrun = _schema("EvalRun")["properties"]["spec"]
    assert "default" not in evalrun["properties"]["model"]["properties"]["quantization"]
    assert evalrun["properties"]["generation"]["default"] == {}


def _examples() -> list[Path]:
    """Every manifest a user applies as it is; examples/gitops holds kustomize inputs and Argo CD objects,
    checked rendered (tests/integration/test_examples.py) and in tests/unit/test_gitops.py."""
    return sorted(p for p in (REPO / "examples").rglob("*.yaml") if "gitops" not in p.parts)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_examples_validate(path: Path) -> None:
    checked = 0
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "TrainingRun":  # a trainer run spec (examples/quickstart/run-spec.yaml)
            TrainingRunSpec.model_validate(doc)
            checked += 1
        elif doc and doc.get("kind") == "EvaluationRun":  # examples/evaluation/eval-run-spec.yaml
            EvaluationRunSpec.model_validate(doc)
            checked += 1
        elif doc and doc.get("apiVersion") == "finetune.dev/v1alpha1":
            SPEC_MODELS[doc["kind"]].model_validate(doc["spec"])
            assert len(doc["metadata"]["name"]) <= 63
            checked += 1
    assert checked > 0, f"{path} holds no finetune.dev resource"
