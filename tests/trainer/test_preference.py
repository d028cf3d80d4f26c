"""Preference training (DPO, ORPO through TRL) on CPU: pairs read and refined, adapters trained, scored
by the EvalRun preference benchmark, reloaded, started from an earlier adapter, resumed after SIGKILL.

What this proves: the plumbing (our data pipeline into TRL's trainers, the reference model taken from
the loaded base, checkpoints, publishing, the benchmark's log-probability comparison) and that a
preference rule the random base cannot know is learned from pairs alone. The rule (hack/tinymodel.py
`preference_rows`: after "up" the upbeat word wins, after "down" the gloomy one) has every word pair
both ways round, so the base scores about 0.5 and only an adapter that reads the prompt scores more.
It says nothing about preference quality on real models or data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import wait_for
from finetune_operator.api.contract import TrainerResult, TrainingRunSpec
from finetune_operator.api.finetunejob import DatasetSource
from finetune_trainer.data import load_examples
from finetune_trainer.data.load import Row
from finetune_trainer.data.preference import load_pairs, pair_or_reason, prepare_pairs
from finetune_trainer.errors import InputError
from finetune_trainer.report import ProgressReporter
from tests.trainer.setups import evaluation_spec
from tinymodel import corpus_of, make_tiny_model, preference_rows, write_jsonl

TRAINER = [sys.executable, "-m", "finetune_trainer.cli"]
TRAIN, HELD_OUT = preference_rows(256, seed=1), preference_rows(64, seed=2)


@pytest.fixture(scope="module")
def pairs_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preference")
    model = make_tiny_model(root / "model", [*corpus_of(TRAIN + HELD_OUT), "user assistant"])
    return {
        "root": root,
        "model": model,
        "train": write_jsonl(TRAIN, root / "pairs.jsonl"),
        "held": write_jsonl(HELD_OUT, root / "held-out.jsonl"),
    }


def preference_spec(setup: dict[str, Path], out: Path, objective: str, **job: Any) -> dict[str, Any]:
    training = {
        "maxSteps": 150,
        "learningRate": 0.002,
        "batchSize": 8,
        "gradientAccumulationSteps": 1,
        "maxSeqLength": 64,
        "warmupRatio": 0.0,
        "scheduler": "constant",
        "saveSteps": 50,
        "loggingSteps": 10,
        **job.pop("training", {}),
    }
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "TrainingRun",
        "attempt": 1,
        "trainerImage": "test",
        "job": {
            "baseModel": {"uri": f"file://{setup['model']}"},
            "dataset": {"uri": f"file://{setup['train']}", "validationSplit": 0.0},
            "objective": objective,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "training": training,
            "resources": {"gpus": 0},
            **job,
        },
        "output": {
            "uri": f"file://{out}/",
            "adapterUri": f"file://{out}/adapter/",
            "checkpointsUri": f"file://{out}/ckpt/",
        },
    }


def pairwise_accuracy(setup: dict[str, Path], adapter: Path, work: Path) -> tuple[float, float]:
    """(tuned, baseline) preference_accuracy on the held-out pairs, through the EvalRun recipe."""
    from finetune_trainer.recipes.evaluate import EvaluationRecipe

    benchmark = {
        "name": "held-out-pairs",
        "dataset": {"uri": f"file://{setup['held']}"},
        "task": "preference",
        "metrics": ["preference_accuracy", "preference_accuracy_raw"],
    }
    spec = evaluation_spec(
        setup["model"],
        [benchmark],
        work / "report",
        adapter=f"file://{adapter}/",
        quantization={"bits": 4},
        thresholds={"preference_accuracy": 0.8},
    )
    result = EvaluationRecipe(spec, work, {}, ProgressReporter(None)).run()
    assert result.evaluation is not None
    accuracy = next(s for s in result.evaluation.summary if s.metric == "preference_accuracy")
    report = json.loads((work / "report" / "results.json").read_text())
    assert report["missed"] == (
        [] if accuracy.value >= 0.8 else ["preference_accuracy " + f"{accuracy.value:.4g} < 0.8"]
    )
    assert accuracy.baseline is not None
    return accuracy.value, accuracy.baseline


def _train(spec: dict[str, Any], work: Path) -> tuple[TrainerResult, Any]:
    from finetune_trainer.recipes.preference import PreferenceRecipe

    recipe = PreferenceRecipe(TrainingRunSpec.model_validate(spec), work, {}, ProgressReporter(None))
    return recipe.run(), recipe


def _loads_with_peft(setup: dict[str, Path], adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["model"]), adapter)
    assert list(tuned.peft_config) == ["default"]
    # The frozen reference copy TRL keeps while training is not published with the adapter.
    assert not (adapter / "ref").exists()


@pytest.fixture(scope="module")
def dpo_adapter(pairs_setup: dict[str, Path]) -> tuple[Path, TrainerResult, Any]:
    out = pairs_setup["root"] / "dpo"
    result, recipe = _train(preference_spec(pairs_setup, out, "dpo"), pairs_setup["root"] / "dpo-work")
    return out / "adapter", result, recipe


def test_dpo_learns_the_preference_rule(pairs_setup: dict[str, Path], dpo_adapter: Any, tmp_path: Path) -> None:
    adapter, result, recipe = dpo_adapter
    assert result.result == "succeeded" and result.metrics is not None and result.metrics.steps == 150
    # The last logged batch's reward accuracy on training pairs, kept in status.metrics.
    assert result.metrics.reward_accuracy is not None and result.metrics.reward_accuracy > 0.5
    assert result.metrics.reward_margin is not None and result.metrics.reward_margin > 0
    fields = recipe.training.progress.fields()
    assert 0 <= fields["rewardAccuracy"] <= 1 and "rewardMargin" in fields
    tuned, baseline = pairwise_accuracy(pairs_setup, adapter, tmp_path)
    print(f"DPO: held-out pairwise accuracy {baseline:.3f} (base) -> {tuned:.3f} (adapter)")
    assert 0.3 <= baseline <= 0.7, baseline
    assert tuned >= 0.9, tuned
    _loads_with_peft(pairs_setup, adapter)


def test_orpo_learns_the_preference_rule_without_a_reference(pairs_setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "orpo"
    spec = preference_spec(pairs_setup, out, "orpo", preference={"beta": 1.0}, training={"maxSteps": 300})
    result, _ = _train(spec, tmp_path / "work")
    assert result.result == "succeeded"
    tuned, baseline = pairwise_accuracy(pairs_setup, out / "adapter", tmp_path / "eval")
    print(f"ORPO: held-out pairwise accuracy {baseline:.3f} (base) -> {tuned:.3f} (adapter)")
    assert 0.3 <= baseline <= 0.7, baseline
    assert tuned >= 0.8, tuned
    _loads_with_peft(pairs_setup, out / "adapter")


def test_a_job_starts_from_an_earlier_adapter(pairs_setup: dict[str, Path], dpo_adapter: Any, tmp_path: Path) -> None:
    """Five steps at a negligible learning rate from the DPO adapter keep its accuracy: a new adapter
    would score the base's ~0.5. Its own shape (r=16) is kept although `lora` asks for r=4."""
    start, _, _ = dpo_adapter
    spec = preference_spec(
        pairs_setup,
        tmp_path / "next",
        "dpo",
        adapter={"uri": f"file://{start}/"},
        training={"maxSteps": 5, "learningRate": 1e-9},
    )
    spec["job"]["lora"]["r"] = 4
    result, _ = _train(spec, tmp_path / "work")
    assert result.result == "succeeded"
    config = json.loads((tmp_path / "next" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16
    tuned, _ = pairwise_accuracy(pairs_setup, tmp_path / "next" / "adapter", tmp_path / "eval")
    assert tuned >= 0.9, tuned


def test_a_killed_dpo_run_resumes_from_the_synced_step(pairs_setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "resume"
    spec = preference_spec(pairs_setup, out, "dpo", training={"maxSteps": 200, "saveSteps": 20})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    result_file = tmp_path / "result.json"
    env = {**os.environ, "FINETUNE_TERMINATION_LOG": str(result_file)}

    def trainer() -> subprocess.Popen[bytes]:
        command = [*TRAINER, "train", "--spec", str(spec_file), "--workdir", str(tmp_path / "w")]
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def synced() -> list[Path]:
        return sorted((out / "ckpt").glob("checkpoint-*/manifest.json"))

    first = trainer()
    wait_for(lambda: synced() or first.poll() is not None, 300, "a synced DPO checkpoint")
    assert first.poll() is None, "training finished before it could be interrupted"
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = synced()
    second = trainer()
    output = second.communicate(timeout=600)[0].decode()
    assert second.returncode == 0, output[-3000:]
    result = TrainerResult.model_validate_json(result_file.read_text())
    assert result.resumed_from_step is not None and result.resumed_from_step >= 20, output[-2000:]
    assert f"checkpoint-{result.resumed_from_step:08d}" in str(killed_at[-1])
    assert result.metrics is not None and result.metrics.steps == 200
    print(f"DPO killed after {killed_at[-1].parent.name}; resumed from step {result.resumed_from_step}; finished 200")


def test_dpo_on_two_ranks_keeps_them_in_step(pairs_setup: dict[str, Path], tmp_path: Path) -> None:
    """Two gloo ranks in one pod (torchrun's PET_* variables): TRL's DPO under DDP ends with the same LoRA
    weights on both ranks, and rank 0 alone publishes."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ranks"
    spec = preference_spec(pairs_setup, out, "dpo", training={"maxSteps": 12, "saveSteps": 6})
    spec["job"]["distributed"] = {"processesPerNode": 2}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    pet = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1"}
    env = {**os.environ, **pet, "PET_MASTER_PORT": str(port), "FINETUNE_TERMINATION_LOG": str(tmp_path / "r.json")}
    work = tmp_path / "work"
    done = subprocess.run(
        [*TRAINER, "train", "--spec", str(spec_file), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "r.json").read_text())
    rank1 = json.loads((work / "ranks" / "rank-1.json").read_text())
    assert result["result"] == rank1["result"] == "succeeded" and result["metrics"]["steps"] == 12
    assert rank1["weightsSha256"] == result["weightsSha256"], "the two ranks' LoRA weights differ"
    assert (out / "adapter" / "adapter_model.safetensors").exists() and "adapter" not in rank1


# --- bad input: each pair problem is dropped and counted, or named with its file and line ------------


def _row(**data: Any) -> Row:
    return Row(data, "pairs.jsonl", 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"prompt": "up a", "chosen": "glad", "rejected": "glad"}, "chosen equals rejected"),
        ({"prompt": "up a", "chosen": "glad", "rejected": " "}, "empty chosen or rejected"),
        ({"prompt": "up a", "chosen": "glad"}, "empty chosen or rejected"),
        ({"chosen": "glad", "rejected": "dull"}, "missing prompt"),
        ({"prompt": "", "chosen": "glad", "rejected": "dull"}, "missing prompt"),
        (
            {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
            "missing prompt",
        ),
    ],
)
def test_a_pair_that_cannot_teach_a_preference_is_dropped_with_its_reason(data: dict[str, Any], reason: str) -> None:
    assert pair_or_reason(_row(**data), None) == reason


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"prompt": "up a", "chosen": 7, "rejected": "dull"},
            "pairs.jsonl line 3: field 'chosen' must be a string or a list",
        ),
        (
            {"prompt": "up a", "chosen": [{"role": "user", "content": "x"}], "rejected": "dull"},
            "pairs.jsonl line 3: 'chosen' must be one assistant message after the prompt",
        ),
        (
            {"prompt": "up a", "chosen": [{"role": "robot", "content": "x"}], "rejected": "dull"},
            "pairs.jsonl line 3: chosen[0] must be an object with role",
        ),
    ],
)
def test_a_malformed_pair_names_its_file_line_and_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        pair_or_reason(_row(**data), None)


def test_conversational_pairs_take_their_shared_turns_as_the_prompt() -> None:
    user = {"role": "user", "content": "up river"}
    pair = pair_or_reason(
        _row(
            chosen=[user, {"role": "assistant", "content": "glad"}],
            rejected=[user, {"role": "assistant", "content": "dull"}],
        ),
        None,
    )
    assert not isinstance(pair, str)
    assert (pair.prompt, pair.chosen, pair.rejected, pair.conversational) == (
        (("user", "up river"),),
        "glad",
        "dull",
        True,
    )


def test_refinement_counts_every_drop_and_keeps_the_good_pairs(write: Any, tokenizer: Any) -> None:
    good = {"prompt": "up river stone", "chosen": "glad", "rejected": "dull"}
    rows = [
        good,
        good,  # duplicate pair
        {"prompt": "down a", "chosen": "x", "rejected": "x"},
        {"prompt": "", "chosen": "glad", "rejected": "dull"},
        {"prompt": "field " * 60, "chosen": "glad", "rejected": "dull"},
        {"prompt": "down field", "chosen": "dull", "rejected": "glad"},
    ]
    spec = DatasetSource.model_validate({"uri": "file:///d", "validationSplit": 0})
    data = prepare_pairs(write("pairs.jsonl", rows), spec, tokenizer, max_length=256, max_prompt_length=60, seed=0)
    assert data.report.read == 6 and data.train_examples == 2
    assert dict(data.report.dropped) == {
        "exact duplicates": 1,
        "chosen equals rejected": 1,
        "missing prompt": 1,
        "prompt longer than maxPromptLength=60 tokens": 1,
    }
    assert "6 rows read, 2 kept" in data.summary()
    assert data.train[0]["prompt"][0] == {"role": "user", "content": "up river stone"}


def test_column_mapping_reads_a_users_own_names(write: Any) -> None:
    spec = DatasetSource.model_validate(
        {"uri": "file:///d", "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}}
    )
    pairs, report = load_pairs(write("pairs.jsonl", [{"question": "up a", "good": "glad", "bad": "dull"}]), spec)
    assert (pairs[0].chosen, pairs[0].rejected, report.kept) == ("glad", "dull", 1)


def test_a_dataset_with_no_usable_pair_is_a_data_error_naming_the_file(write: Any) -> None:
    spec = DatasetSource.model_validate({"uri": "file:///d"})
    path = write("pairs.jsonl", [{"prompt": "up", "chosen": "a", "rejected": "a"}] * 3)
    with pytest.raises(InputError, match=r"^pairs.jsonl: no usable preference pairs left \(3 rows read, 0 kept"):
        load_pairs(path, spec)


def test_objective_and_data_must_agree(write: Any) -> None:
    spec = DatasetSource.model_validate({"uri": "file:///d"})
    sft_rows = write("alpaca.jsonl", [{"instruction": "up", "output": "glad"}])
    with pytest.raises(InputError, match=r"^alpaca.jsonl line 1: objective dpo and orpo train on preference pairs"):
        load_pairs(sft_rows, spec)
    pairs = write("pairs.jsonl", [{"prompt": "up", "chosen": "glad", "rejected": "dull"}])
    with pytest.raises(InputError, match=r"^pairs.jsonl line 1: these are preference pairs .* spec.objective dpo"):
        load_examples(pairs, spec)
