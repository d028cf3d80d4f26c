"""Real QLoRA on CPU: a tiny model and dataset in a real MinIO, trained, published, reloaded, resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import wait_for
from finetune_operator.api.contract import TrainerResult, TrainingRunSpec
from finetune_trainer.report import ProgressReporter
from finetune_trainer.storage import LocalStore, fetch_verified, store_for
from tinymodel import PRODUCTS, support_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TRAINER = [sys.executable, "-m", "finetune_trainer.cli"]


def run_spec(model_uri: str, data_uri: str, out: str, **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "TrainingRun",
        "attempt": 1,
        "trainerImage": "test",
        "job": {
            "baseModel": {"uri": model_uri},
            "dataset": {"uri": data_uri, "validationSplit": 0.1},
            "method": "qlora",
            "quantization": {"bits": 4, "quantType": "nf4", "doubleQuant": True, "computeDtype": "auto"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "training": {
                "maxSteps": 100,
                "learningRate": 0.005,
                "batchSize": 8,
                "gradientAccumulationSteps": 1,
                "maxSeqLength": 128,
                "warmupRatio": 0.0,
                "scheduler": "constant",
                "saveSteps": 20,
                "loggingSteps": 10,
                **training,
            },
            "resources": {"gpus": 0},
        },
        "output": {"uri": out, "adapterUri": out + "adapter/", "checkpointsUri": out + "checkpoints/"},
    }


@pytest.fixture(scope="module")
def store_env(minio: Any, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model and the support dataset uploaded to MinIO, as a user would put them there."""
    data = write_jsonl(support_rows(32), tmp_path_factory.mktemp("data") / "support.jsonl")
    return {
        "model": minio.upload_folder("models", "tiny-llama", tiny_model),
        "data": minio.upload_file("datasets", "support/train.jsonl", data),
        "out": "s3://" + minio.bucket("adapters") + "/team-a/support-bot/uid/attempt-1/",
        "env": minio.credentials_env("BASE_MODEL", "DATASET", "OUTPUT"),
        "storage": {"s3Endpoint": minio.url, "s3Secure": False},
    }


def mean_loss(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> float:
    import torch

    from finetune_trainer.data.encode import encode, ensure_chat_template
    from finetune_trainer.data.formats import Example

    ensure_chat_template(tokenizer)
    losses = []
    with torch.no_grad():
        for row in rows:
            item, _ = encode(
                Example(kind="pair", prompt=row["instruction"], completion=row["output"]),
                tokenizer,
                128,
                use_template=True,
                completion_only=True,
            )
            ids, labels = torch.tensor([item["input_ids"]]), torch.tensor([item["labels"]])
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return sum(losses) / len(losses)


def test_qlora_from_minio_publishes_an_adapter_that_lowers_the_loss(store_env: dict[str, Any], tmp_path: Path) -> None:
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoTokenizer

    from finetune_operator.api.common import Quantization
    from finetune_trainer.model import Device, load_base_model
    from finetune_trainer.recipes.sft import SFTRecipe

    spec = TrainingRunSpec.model_validate(
        {**run_spec(store_env["model"], store_env["data"], store_env["out"]), "storage": store_env["storage"]}
    )
    recipe = SFTRecipe(spec, tmp_path / "work", store_env["env"], ProgressReporter(None))
    result = recipe.run()
    # The real QLoRA path: the frozen base is bitsandbytes 4-bit.
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in recipe.model.modules())
    assert result.adapter is not None and result.adapter.uri == store_env["out"] + "adapter/"
    assert result.metrics is not None and result.metrics.steps == 100
    assert result.provenance is not None and result.provenance.dataset_sha256

    store = store_for(result.adapter.uri, "OUTPUT", spec.storage, store_env["env"])
    manifest = fetch_verified(store, result.adapter.uri, tmp_path / "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["spec"]["lora"]["r"] == 16
    # The log history the Model's card draws its loss curve from, beside the adapter files.
    history = json.loads((tmp_path / "adapter" / "trainer_state.json").read_text())["log_history"]
    assert len([e for e in history if "loss" in e]) >= 10

    rows = support_rows(32)
    base_dir = tmp_path / "work" / "base-model"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    before = mean_loss(load_base_model(base_dir, Quantization(), Device("cpu", "float32"), False), tokenizer, rows)
    tuned = PeftModel.from_pretrained(
        load_base_model(base_dir, Quantization(), Device("cpu", "float32"), False), tmp_path / "adapter"
    )
    after = mean_loss(tuned, tokenizer, rows)
    print(f"mean response loss on the training data: base {before:.3f} -> adapter {after:.3f}")
    assert after < 0.75 * before, (before, after)  # the stated margin: at least 25% lower


def _trainer(spec_file: Path, env: dict[str, str], result_file: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "FINETUNE_TERMINATION_LOG": str(result_file)}
    return subprocess.Popen(
        [*TRAINER, "train", "--spec", str(spec_file)], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_a_killed_trainer_resumes_from_the_last_synced_checkpoint(
    store_env: dict[str, Any], minio: Any, tmp_path: Path
) -> None:
    out = store_env["out"].replace("attempt-1", "resume")
    spec = {
        **run_spec(store_env["model"], store_env["data"], out, maxSteps=400, saveSteps=25, loggingSteps=25),
        "storage": store_env["storage"],
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    result_file = tmp_path / "result.json"
    first = _trainer(spec_file, store_env["env"], result_file)
    checkpoints = out.removeprefix("s3://adapters/") + "checkpoints/"

    def synced() -> list[str]:
        objects = minio.client().list_objects("adapters", prefix=checkpoints, recursive=True)
        return [o.object_name for o in objects if o.object_name.endswith("manifest.json")]

    wait_for(lambda: synced() or first.poll() is not None, 120, "a synced checkpoint")
    assert first.poll() is None, "training finished before it could be interrupted"
    first.send_signal(signal.SIGKILL)  # a preempted node: no goodbye
    first.wait()
    killed_at = synced()
    assert killed_at, "expected a complete checkpoint before the kill"

    second = _trainer(spec_file, store_env["env"], result_file)
    output = second.communicate(timeout=600)[0].decode()
    assert second.returncode == 0, output[-3000:]
    result = TrainerResult.model_validate_json(result_file.read_text())
    resumed = result.resumed_from_step
    assert resumed is not None and resumed >= 25, output[-2000:]
    assert f"checkpoint-{resumed:08d}/manifest.json" in " ".join(killed_at)
    assert result.metrics is not None and result.metrics.steps == 400
    print(f"killed after checkpoint {killed_at[-1].split('/')[-2]}; resumed from step {resumed}; finished 400")
    store = store_for(out, "OUTPUT", TrainingRunSpec.model_validate(spec).storage, store_env["env"])
    fetch_verified(store, out + "adapter/", tmp_path / "adapter")
    # Only the newest checkpoint is kept in the store.
    assert len(synced()) == 1


def test_laptop_run_from_the_shipped_example_spec(tiny_model: Path, tmp_path: Path) -> None:
    """examples/quickstart/run-spec.yaml, pointed at a temp folder instead of /tmp/finetune-quickstart; one
    row longer than its maxSeqLength (128) is counted as truncated in the result."""
    long_row = {"instruction": "Describe every product", "input": "", "output": "Atlas Beacon Comet " * 200}
    short = [{"instruction": f"Name product {i}", "input": "", "output": product} for i, product in enumerate(PRODUCTS)]
    write_jsonl([*support_rows(32), long_row, *short], tmp_path / "support.jsonl")
    (tmp_path / "model").symlink_to(tiny_model)
    text = (
        (REPO / "examples" / "quickstart" / "run-spec.yaml")
        .read_text()
        .replace("/tmp/finetune-quickstart", str(tmp_path))
    )
    spec_file = tmp_path / "run-spec.yaml"
    spec_file.write_text(text)
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        [*TRAINER, "train", "--spec", str(spec_file)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FINETUNE_TERMINATION_LOG": str(result_file)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "adapter published to file://" in done.stdout
    result = json.loads(result_file.read_text())
    assert result["result"] == "succeeded"
    assert result["metrics"]["truncatedExamples"] == 1
    assert "1 truncated to maxSeqLength=128 tokens" in done.stderr
    # trainSamples counts examples (the summary's "N train examples"), not the packed rows they fill.
    counts = re.search(r"(\d+) train examples \(\d+ tokens\) in (\d+) rows", done.stderr)
    assert counts is not None
    examples, rows = int(counts.group(1)), int(counts.group(2))
    assert rows < examples  # the short rows share packed rows, so the two counts differ
    assert result["metrics"]["trainSamples"] == examples
    adapter = tmp_path / "out" / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= {p.name for p in adapter.iterdir()}
    fetch_verified(LocalStore(), f"file://{adapter}/", tmp_path / "check")


def _run_cli(
    args: list[str], env: dict[str, str], tmp_path: Path, timeout: float = 300
) -> tuple[int, dict[str, Any], str]:
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        [*TRAINER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env, "FINETUNE_TERMINATION_LOG": str(result_file)},
    )
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return done.returncode, result, done.stderr


def test_bad_run_spec_exits_2(tmp_path: Path) -> None:
    code, result, _ = _run_cli(["train"], {"FINETUNE_RUN_SPEC": '{"kind": "TrainingRun"}'}, tmp_path)
    assert code == 2
    assert result["reason"] == "InvalidSpec" and "runSpec.attempt" in result["message"]


def test_missing_secret_exits_2_naming_the_variables(store_env: dict[str, Any], tmp_path: Path) -> None:
    spec = {**run_spec(store_env["model"], store_env["data"], store_env["out"]), "storage": store_env["storage"]}
    code, result, _ = _run_cli(["train"], {"FINETUNE_RUN_SPEC": json.dumps(spec)}, tmp_path)
    assert code == 2
    assert result["reason"] == "MissingCredentials"
    assert "FINETUNE_BASE_MODEL_AWS_ACCESS_KEY_ID" in result["message"]


def test_unreachable_store_is_retriable(store_env: dict[str, Any], tmp_path: Path) -> None:
    from devcluster.controlplane import free_port

    spec = {
        **run_spec(store_env["model"], store_env["data"], store_env["out"]),
        "storage": {"s3Endpoint": f"http://127.0.0.1:{free_port()}", "s3Secure": False},
    }
    env = {**store_env["env"], "FINETUNE_RUN_SPEC": json.dumps(spec), "FINETUNE_STORAGE_RETRY_DELAYS": "0.05"}
    code, result, _ = _run_cli(["train"], env, tmp_path)
    assert code == 1
    assert result["reason"] == "StorageUnavailable" and "unreachable after 2 tries" in result["message"]


def test_bad_dataset_exits_2_with_file_line_and_field(store_env: dict[str, Any], minio: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 7}\n')
    uri = minio.upload_file("datasets", "bad/train.jsonl", bad)
    spec = {**run_spec(store_env["model"], uri, store_env["out"]), "storage": store_env["storage"]}
    code, result, _ = _run_cli(["prepare"], {**store_env["env"], "FINETUNE_RUN_SPEC": json.dumps(spec)}, tmp_path)
    assert code == 2
    assert result == {
        "result": "failed",
        "reason": "DataError",
        "message": "train.jsonl line 2: field 'output' must be a string, got int",
    }


def test_prepare_reports_what_training_would_see(store_env: dict[str, Any], tmp_path: Path) -> None:
    spec = {**run_spec(store_env["model"], store_env["data"], store_env["out"]), "storage": store_env["storage"]}
    started = time.monotonic()
    done = subprocess.run(
        [*TRAINER, "prepare"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **store_env["env"], "FINETUNE_RUN_SPEC": json.dumps(spec)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "format alpaca; 32 rows read, 32 kept" in done.stdout
    assert time.monotonic() - started < 120


def test_merge_publishes_a_full_model_that_loads_without_peft(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from finetune_trainer.recipes.sft import SFTRecipe

    data = write_jsonl(support_rows(16), tmp_path / "support.jsonl")
    out = f"file://{tmp_path}/out/"
    spec = run_spec(f"file://{tiny_model}", f"file://{data}", out, maxSteps=5, saveSteps=5)
    spec["job"]["output"] = {"merge": True}
    spec["output"]["mergedModelUri"] = out + "merged/"
    result = SFTRecipe(TrainingRunSpec.model_validate(spec), tmp_path / "work", {}, ProgressReporter(None)).run()
    assert result.merged_model is not None and result.merged_model.uri == out + "merged/"
    merged = tmp_path / "merged-copy"
    manifest = fetch_verified(LocalStore(), out + "merged/", merged)
    assert manifest["kind"] == "merged-model"
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in name for name, _ in model.named_parameters())


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_ranks_under_torchrun_stay_in_step_and_publish_once(store_env: dict[str, Any], tmp_path: Path) -> None:
    """`finetune-trainer train` with torchrun's PET_* variables, as a one-pod job with two CPU ranks runs:
    gloo DDP, the same LoRA weights on both ranks at the end, one adapter (rank 0's), one result per pod."""
    out = store_env["out"].replace("/attempt-1/", "/two-ranks/attempt-1/")
    spec = {
        **run_spec(store_env["model"], store_env["data"], out, maxSteps=12, saveSteps=6),
        "storage": store_env["storage"],
    }
    spec["job"]["distributed"] = {"processesPerNode": 2}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    pet = {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(_free_port()),
    }
    work = tmp_path / "work"
    code, result, log = _run_cli(
        ["train", "--spec", str(spec_file), "--workdir", str(work)], {**store_env["env"], **pet}, tmp_path, 600
    )
    assert code == 0, log[-4000:]
    assert result["result"] == "succeeded" and result["rank"] == 0, result
    assert result["adapter"]["uri"] == out + "adapter/"
    assert result["metrics"]["steps"] == 12
    rank1 = json.loads((work / "ranks" / "rank-1.json").read_text())
    assert rank1["result"] == "succeeded" and "adapter" not in rank1
    assert rank1["weightsSha256"] == result["weightsSha256"], "the two ranks' LoRA weights differ"
    store = store_for(out, "OUTPUT", TrainingRunSpec.model_validate(spec).storage, store_env["env"])
    assert store.list_children(out) == ["adapter", "checkpoints"]  # rank 1 published nothing of its own

    # A restarted group resumes from rank 0's checkpoint on both ranks (what a restarted Job does).
    spec["job"]["training"]["maxSteps"] = 18
    spec_file.write_text(json.dumps(spec))
    code, result, log = _run_cli(
        ["train", "--spec", str(spec_file), "--workdir", str(tmp_path / "again")],
        {**store_env["env"], **pet, "PET_MASTER_PORT": str(_free_port())},
        tmp_path,
        600,
    )
    assert code == 0, log[-4000:]
    assert result["resumedFromStep"] == 12 and result["metrics"]["steps"] == 18, result
    rank1 = json.loads((tmp_path / "again" / "ranks" / "rank-1.json").read_text())
    assert rank1["weightsSha256"] == result["weightsSha256"]
