"""Tiny models and datasets made on the spot: no weights or data come from a hub (none is reachable here).

`make_tiny_model` trains a byte-level BPE tokenizer on the dataset's own text and saves a
random-initialised Llama-architecture model with it, in Hugging Face format, so the trainer loads it
exactly as it would load a real one. Small enough to fine-tune with real 4-bit QLoRA on a CPU in seconds.

    python hack/tinymodel.py OUT_DIR      # OUT_DIR/model/ and OUT_DIR/support.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PRODUCTS = ["Atlas", "Beacon", "Comet", "Delta", "Ember", "Falcon", "Glacier", "Harbor"]
ACTIONS = [
    ("reset my password", "open Settings, choose Security, then Reset password; a link arrives by email"),
    ("export my data", "open Settings, choose Privacy, then Export; the archive is ready within an hour"),
    ("cancel my plan", "open Billing, choose Plan, then Cancel; you keep access until the period ends"),
    ("add a teammate", "open Team, choose Invite, then enter their email; they join after accepting"),
]


def support_rows(count: int | None = None) -> list[dict[str, str]]:
    """Alpaca-format support answers with a fixed structure a tiny model can learn in a few dozen steps.

    By default every product-action pair once (32 rows, no duplicates: an example dataset is what a
    user copies). A larger `count` repeats them, for benchmarks that want more prompts."""
    count = len(PRODUCTS) * len(ACTIONS) if count is None else count
    rows = []
    for index in range(count):
        product = PRODUCTS[index % len(PRODUCTS)]
        question, answer = ACTIONS[(index // len(PRODUCTS)) % len(ACTIONS)]
        rows.append(
            {
                "instruction": f"How do I {question} in {product}?",
                "input": "",
                "output": f"In {product}, {answer}.",
            }
        )
    return rows


CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("India", "Delhi"),
    ("Spain", "Madrid"),
    ("Cuba", "Havana"),
    ("Italy", "Rome"),
    ("Ghana", "Accra"),
]


def capital_rows() -> list[dict[str, str]]:
    """A QA benchmark small enough for the tiny model to memorise: question/answer columns."""
    return [{"question": f"What is the capital of {country}?", "answer": city} for country, city in CAPITALS]


def capital_training_rows() -> list[dict[str, str]]:
    """The same facts as alpaca rows, to fine-tune on."""
    return [{"instruction": row["question"], "input": "", "output": row["answer"]} for row in capital_rows()]


UPBEAT = ["amber", "bright", "calm", "clear", "crisp", "eager", "fresh", "gentle", "glad", "keen", "lively", "merry"]
GLOOMY = ["dull", "grim", "harsh", "limp", "murky", "numb", "pale", "rough", "sour", "stale", "tense", "vague"]
PLACES = ["river", "stone", "cloud", "field", "tower", "garden", "bridge", "forest", "harbor", "meadow"]


LM_EVAL_TASK = """\
# An lm-evaluation-harness task over a local JSONL file: what an EvalRun's lmEval benchmark runs offline.
task: capitals_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/capitals-mc.jsonl   # relative to the task folder (lmEval.include)
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def capital_choice_rows() -> list[dict[str, Any]]:
    """The capitals as multiple choice: each answer among three choices, in a varying place."""
    wrong = ["Berlin", "Madrid", "Rome", "Lisbon"]
    rows = []
    for i, row in enumerate(capital_rows()):
        choices = [c for c in wrong if c != row["answer"]][:2]
        choices.insert(i % 3, row["answer"])
        rows.append({"question": row["question"], "choices": choices, "label": i % 3})
    return rows


def write_lm_eval_tasks(folder: Path) -> Path:
    """The capitals_mc task YAML and its data, as a folder an EvalRun's lmEval.include points at."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "capitals_mc.yaml").write_text(LM_EVAL_TASK)
    write_jsonl(capital_choice_rows(), folder / "data" / "capitals-mc.jsonl")
    return folder


def preference_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Pairs with a learnable rule that a random model cannot know: after "up" the upbeat word is chosen,
    after "down" the gloomy one. Every pair of words appears both ways round, so a model that merely
    likes some words over others scores about 0.5, and only reading the prompt scores higher."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        key, good, bad = rng.choice(["up", "down"]), rng.choice(UPBEAT), rng.choice(GLOOMY)
        chosen, rejected = (good, bad) if key == "up" else (bad, good)
        rows.append(
            {"prompt": f"{key} {rng.choice(PLACES)} {rng.choice(PLACES)}", "chosen": chosen, "rejected": rejected}
        )
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_tokenizer(corpus: list[str], vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer trained on `corpus` (no chat template: the trainer's fallback applies)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_tiny_model(
    dest: Path, corpus: list[str], seed: int = 0, vocab_size: int = 320, layers: int = 2, hidden: int = 128
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = make_tokenizer(corpus, vocab_size)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    fast.save_pretrained(dest)
    return dest


def corpus_of(rows: list[dict[str, str]]) -> list[str]:
    return [" ".join(str(v) for v in row.values()) for row in rows]


def make_quickstart(out: Path) -> tuple[Path, Path]:
    """The tiny model (its tokenizer knows the support and the capitals text) and the support dataset;
    capitals-train.jsonl and capitals-qa.jsonl are written next to it for the evaluation examples, and
    preference-pairs.jsonl and preference-held-out.jsonl for the preference examples, and the folder
    lm-eval-tasks/ for the lm-evaluation-harness example."""
    rows = support_rows()
    data = write_jsonl(rows, out / "support.jsonl")
    write_jsonl(capital_training_rows(), out / "capitals-train.jsonl")
    write_jsonl(capital_rows(), out / "capitals-qa.jsonl")
    write_jsonl(preference_rows(256, seed=1), out / "preference-pairs.jsonl")
    write_jsonl(preference_rows(64, seed=2), out / "preference-held-out.jsonl")
    write_lm_eval_tasks(out / "lm-eval-tasks")
    model = make_tiny_model(out / "model", corpus_of(rows) + corpus_of(capital_rows()))
    return model, data


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/finetune-quickstart")
    model_dir, data_file = make_quickstart(target)
    print(f"model: {model_dir}\ndataset: {data_file}")
