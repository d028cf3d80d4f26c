"""`finetune-trainer publish-model`: a Model's store copy, on a file:// store.

What this proves: every version folder holds the adapter files, a README.md that huggingface_hub parses
as a model card (its YAML header, the metadata and the evaluation as model-index, checked offline with
the library's own parser; the Hub's online validation is not reachable here), the loss curve drawn from
the Trainer's log history, and a manifest written last; stable.json is written after the folders; a
corrupt adapter is refused, naming the file. The real pod against MinIO is in tests/e2e/test_evaluation.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import yaml

from finetune_trainer import cli
from finetune_trainer.model_card import hub_id, loss_series
from finetune_trainer.storage import LocalStore, publish

HYPERPARAMETERS = {
    "objective": "sft",
    "method": "qlora",
    "loraR": 8,
    "loraAlpha": 16,
    "learningRate": 0.0002,
    "epochs": 3.0,
    "batchSize": 4,
    "gradientAccumulationSteps": 2,
    "maxSeqLength": 512,
    "seed": 42,
}


def adapter(tmp_path: Path, name: str, *, logged: bool) -> str:
    local = tmp_path / "made" / name
    local.mkdir(parents=True)
    (local / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (local / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    if logged:
        history = [{"step": s, "loss": 3.0 - 0.2 * s, "epoch": s / 10} for s in range(1, 11)]
        history.append({"step": 10, "eval_loss": 2.4})
        (local / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": history}))
    uri = f"file://{tmp_path}/out/{name}/adapter/"
    publish(LocalStore(), local, uri, {"kind": "adapter"})
    return uri


def version(number: int, uri: str, *, scored: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "version": number,
        "adapter": {"uri": uri},
        "sha256": "ab" * 32,
        "fineTuneJob": {"name": f"job-{number}", "uid": f"uid-{number}", "attempt": 1},
        "baseModel": "hf://meta-llama/Llama-3.1-8B-Instruct@main",
        "datasetUri": "s3://datasets/support/train.jsonl",
        "hyperparameters": HYPERPARAMETERS,
        "provenance": {"datasetSha256": "cd" * 32, "trainerImage": "trainer:1"},
        "verdict": "Passed" if scored else "Rejected",
        "verdictReason": "exact_match 0.7000 > stable v0" if scored else "no evaluation",
        "state": "Stable" if scored else "Rejected",
        "reason": "the gate promoted it" if scored else "no evaluation",
        "registeredTime": "2026-12-01T10:00:00Z",
    }
    if scored:
        record["evaluation"] = {
            "evalRun": f"job-{number}-eval",
            "passed": True,
            "results": [{"benchmark": "qa", "metric": "exact_match", "value": 0.7, "baseline": 0.5, "delta": 0.2}],
        }
    return record


def run_spec(tmp_path: Path, versions: list[dict[str, Any]], stable: int | None) -> Path:
    prefix = f"file://{tmp_path}/store/models/team-a/support/"
    spec: dict[str, Any] = {
        "kind": "ModelPublishRun",
        "resource": {
            "group": "finetune.dev",
            "version": "v1alpha1",
            "plural": "models",
            "namespace": "team-a",
            "name": "support",
            "uid": "m-uid",
        },
        "uri": prefix,
        "versions": versions,
    }
    if stable is not None:
        spec["stable"] = {
            "model": "support",
            "namespace": "team-a",
            "version": stable,
            "name": f"support-v{stable}",
            "uri": versions[0]["adapter"]["uri"],
            "baseModel": versions[0]["baseModel"],
            "folder": f"{prefix}v{stable}/",
        }
    path = tmp_path / "publish.json"
    path.write_text(json.dumps(spec))
    return path


def test_each_version_is_published_with_a_model_card_the_hub_library_parses(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    versions = [
        version(1, adapter(tmp_path, "one", logged=True), scored=True),
        version(2, adapter(tmp_path, "two", logged=False), scored=False),
    ]
    work, result = tmp_path / "work", tmp_path / "result.json"
    argv = ["publish-model", "--spec", str(run_spec(tmp_path, versions, 1)), "--workdir", str(work)]
    assert cli.main([*argv, "--result", str(result)]) == 0
    outcome = json.loads(result.read_text())
    assert outcome["publishedVersions"] == [1, 2] and outcome["stableVersion"] == 1

    folder = tmp_path / "store" / "models" / "team-a" / "support"
    one = folder / "v1"
    manifest = json.loads((one / "manifest.json").read_text())
    assert {"README.md", "training_loss.svg", "adapter_model.safetensors", "trainer_state.json"} <= set(
        manifest["files"]
    )
    assert manifest["version"] == 1 and manifest["adapter"]["uri"] == versions[0]["adapter"]["uri"]
    assert json.loads((folder / "stable.json").read_text())["folder"].endswith("/models/team-a/support/v1/")

    text = (one / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "peft" and header["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert header["datasets"] == ["s3://datasets/support/train.jsonl"]
    assert header["hyperparameters"]["loraR"] == 8
    card = ModelCard.load(one / "README.md", ignore_metadata_errors=False)
    assert card.data.library_name == "peft"
    [result_row] = card.data.eval_results
    assert (result_row.dataset_name, result_row.metric_type, result_row.metric_value) == ("qa", "exact_match", 0.7)
    assert "| qa | exact_match | 0.7000 | 0.5000 | 0.2000 |" in card.text
    assert "![training loss](training_loss.svg)" in card.text

    curve = ElementTree.fromstring((one / "training_loss.svg").read_text())
    lines = [e for e in curve.iter() if e.tag.endswith("polyline")]
    assert [len(e.attrib["points"].split()) for e in lines] == [10, 1], "train loss and eval loss"

    two = ModelCard.load(folder / "v2" / "README.md", ignore_metadata_errors=False)
    assert two.data.eval_results is None and "No evaluation scored this version." in two.text
    assert "The training run logged no loss." in two.text and not (folder / "v2" / "training_loss.svg").exists()


def test_a_corrupt_adapter_is_refused_naming_the_file_and_no_pointer_is_written(tmp_path: Path) -> None:
    uri = adapter(tmp_path, "one", logged=True)
    (tmp_path / "out" / "one" / "adapter" / "adapter_model.safetensors").write_bytes(b"garbage")
    result = tmp_path / "result.json"
    argv = ["publish-model", "--spec", str(run_spec(tmp_path, [version(1, uri, scored=True)], 1))]
    assert cli.main([*argv, "--workdir", str(tmp_path / "w"), "--result", str(result)]) != 0
    failed = json.loads(result.read_text())
    assert failed["reason"] == "StorageUnavailable" and "adapter_model.safetensors" in failed["message"]
    assert not (tmp_path / "store" / "models" / "team-a" / "support" / "stable.json").exists()


def test_hub_ids_and_loss_series() -> None:
    assert hub_id("hf://org/name@rev") == "org/name" and hub_id("s3://models/x/") == "s3://models/x/"
    assert loss_series([{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.0}, {"loss": 3}], "loss") == [(1, 2.0)]
