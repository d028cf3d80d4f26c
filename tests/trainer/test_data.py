"""The data pipeline: formats, refinement, loss masking, packing, and bad input with exact messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_operator.api.finetunejob import DatasetSource
from finetune_trainer.data import load_examples, prepare
from finetune_trainer.data.encode import FALLBACK_CHAT_TEMPLATE, IGNORE, encode, padding_fraction
from finetune_trainer.data.formats import Example
from finetune_trainer.data.pack import PackedCollator, loss_positions, pack_lengths, pack_rows
from finetune_trainer.errors import InputError

ALPACA = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Translate", "input": "chat", "output": "cat"},
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    }
]
COMPLETION = [{"prompt": "The capital of France is", "completion": " Paris."}]
TEXT = [{"text": "Paris is the capital of France."}]


def _source(path: Path, **fields: Any) -> DatasetSource:
    return DatasetSource.model_validate({"uri": f"file://{path}", **fields})


@pytest.mark.parametrize(
    ("rows", "fmt", "kind"),
    [(ALPACA, "alpaca", "pair"), (CHAT, "chat", "chat"), (COMPLETION, "completion", "pair"), (TEXT, "text", "text")],
)
def test_each_format_is_detected_and_normalised(write: Any, rows: list[dict[str, Any]], fmt: str, kind: str) -> None:
    path = write("data.jsonl", rows)
    examples, report, detected = load_examples(path, _source(path))
    assert detected == fmt
    assert examples[0].kind == kind
    assert report.read == report.kept == len(rows)


def test_alpaca_input_is_appended_to_the_instruction(write: Any) -> None:
    path = write("data.jsonl", ALPACA)
    examples, _, _ = load_examples(path, _source(path))
    assert examples[1] == Example(kind="pair", prompt="Translate\n\nchat", completion="cat")


def test_column_mapping(write: Any) -> None:
    path = write("data.jsonl", [{"question": "Capital of France?", "answer": "Paris."}])
    examples, _, fmt = load_examples(
        path, _source(path, format="completion", columns={"prompt": "question", "completion": "answer"})
    )
    assert (fmt, examples[0].prompt, examples[0].completion) == ("completion", "Capital of France?", "Paris.")


def test_csv_json_and_parquet_files_in_a_folder(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "a.csv").write_text("prompt,completion\nhello,world\n")
    (folder / "b.json").write_text('[{"prompt": "one", "completion": "two"}]')
    pq.write_table(pa.table({"prompt": ["three"], "completion": ["four"]}), folder / "c.parquet")
    examples, report, fmt = load_examples(folder, _source(folder))
    assert fmt == "completion" and report.kept == 3
    assert [e.prompt for e in examples] == ["hello", "one", "three"]


def test_refinement_counts_what_each_rule_dropped(write: Any) -> None:
    rows = [
        {"text": "short"},
        {"text": "a" * 50},
        {"text": "a" * 50},
        {"text": "b" * 60},
        {"text": "c" * 500},
        {"text": "d" * 70},
    ]
    path = write("data.jsonl", rows)
    examples, report, _ = load_examples(path, _source(path, refine={"minChars": 10, "maxChars": 100, "maxSamples": 2}))
    assert [len(e.text) for e in examples] == [50, 60]
    assert dict(report.dropped) == {
        "shorter than minChars=10": 1,
        "exact duplicates": 1,
        "longer than maxChars=100": 1,
        "beyond maxSamples=2": 1,
    }
    assert report.summary() == (
        "6 rows read, 2 kept (dropped: 1 beyond maxSamples=2, 1 exact duplicates, "
        "1 longer than maxChars=100, 1 shorter than minChars=10)"
    )


def test_dedupe_can_be_switched_off(write: Any) -> None:
    path = write("data.jsonl", [{"text": "same text here"}] * 3)
    examples, _, _ = load_examples(path, _source(path, refine={"dedupe": False}))
    assert len(examples) == 3


def test_loss_only_on_the_response(tokenizer: Any) -> None:
    example = Example(kind="pair", prompt="Capital of France?", completion="Paris.")
    item, _ = encode(example, tokenizer, 128, use_template=False, completion_only=True)
    trained = tokenizer.decode(
        [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label != IGNORE]
    )
    assert trained.strip() == "Paris.</s>"
    everything, _ = encode(example, tokenizer, 128, use_template=False, completion_only=False)
    assert IGNORE not in everything["labels"]


def test_chat_template_fallback_and_assistant_only_loss(tokenizer: Any, write: Any) -> None:
    path = write("data.jsonl", CHAT)
    tok = _copy(tokenizer)  # the session tokenizer must stay template-free
    data = prepare(path, _source(path, validationSplit=0), tok, max_length=256, batch_size=1, seed=0, packing=False)
    assert data.fallback_template and tok.chat_template == FALLBACK_CHAT_TEMPLATE
    row = data.train[0]
    trained = tok.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE])
    assert trained == "Paris.<|im_end|>\n"
    assert "Capital of France?" in tok.decode(row["input_ids"])


def _copy(tokenizer: Any) -> Any:
    import copy

    return copy.deepcopy(tokenizer)


def test_a_row_with_nothing_to_learn_is_dropped_and_counted(write: Any) -> None:
    rows = [
        *ALPACA,
        {"instruction": "Say nothing", "output": "  "},
        {"messages": [*CHAT[0]["messages"][:2], {"role": "assistant", "content": ""}]},
    ]
    path = write("data.jsonl", rows[:3])
    examples, report, _ = load_examples(path, _source(path))
    assert len(examples) == 2 and report.dropped == {"empty response": 1}
    path = write("chat.jsonl", [*CHAT, rows[3]])
    examples, report, _ = load_examples(path, _source(path))
    assert len(examples) == 1 and report.dropped == {"empty response": 1}


class _Recording:
    """The tokenizer, recording the length of every text it is asked to tokenise."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.lengths.append(len(text))
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The pipeline sets chat_template on the tokenizer it is given: it belongs to the real one.
        target = self if name in ("_tokenizer", "lengths") else self._tokenizer
        object.__setattr__(target, name, value)


def test_a_huge_row_is_cut_before_tokenising_and_counted_as_truncated(tokenizer: Any, write: Any) -> None:
    """A 1 MB response with maxSeqLength 64: only the characters 64 tokens can reach are tokenised (a
    50 MB row made the tokenizer take ~9 GB), and the summary counts the row as truncated."""
    from finetune_trainer.data.encode import CHARS_PER_TOKEN_BOUND

    rows = [{"prompt": "Describe", "completion": "word " * 200_000}, {"prompt": "short", "completion": "answer"}]
    path = write("data.jsonl", rows)
    recording = _Recording(_copy(tokenizer))
    data = prepare(path, _source(path), recording, max_length=64, batch_size=2, seed=0, packing=False)
    assert max(recording.lengths) <= 64 * CHARS_PER_TOKEN_BOUND
    assert data.report.truncated == 1 and data.train_examples == 2
    assert "1 truncated to maxSeqLength=64 tokens" in data.summary()
    assert max(len(ids) for ids in data.train["input_ids"]) == 64


def test_truncation_that_leaves_no_response_drops_the_row(tokenizer: Any, write: Any) -> None:
    rows = [{"prompt": "word " * 200, "completion": "answer"}, {"prompt": "short", "completion": "answer"}]
    path = write("data.jsonl", rows)
    data = prepare(
        path, _source(path, validationSplit=0), _copy(tokenizer), max_length=32, batch_size=1, seed=0, packing=False
    )
    assert len(data.train) == 1
    assert data.report.dropped["no response tokens within maxSeqLength=32"] == 1


def test_best_fit_packing_respects_capacity() -> None:
    lengths = [700, 600, 500, 400, 300, 200, 100, 2048]
    bins = pack_lengths(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], 1024) for i in b) <= 1024 for b in bins)
    assert len(bins) == 4  # 2048 alone (truncated), and 3 full-ish bins for the rest (2800 tokens)


def test_packed_rows_restart_positions_and_mask_boundaries() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    [packed] = pack_rows(rows, 8)
    assert packed["input_ids"] == [1, 2, 3, 4, 5]
    assert packed["position_ids"] == [0, 1, 2, 0, 1]
    assert packed["labels"] == [-100, 2, 3, -100, 5]  # no token learns to predict across a boundary
    batch = PackedCollator()([packed, packed])
    assert batch["input_ids"].shape == (1, 10)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 0, 1]]
    assert "logits_to_keep" not in batch


def test_loss_positions_are_where_the_next_token_counts() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5, 6], "labels": [-100, -100, 6]}]
    batch = PackedCollator(loss_logits_only=True)(pack_rows(rows, 8))
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, -100, 6]]  # the model still gets every label
    assert batch["logits_to_keep"].tolist() == [0, 1, 4]  # positions 0, 1 predict 2, 3; position 4 predicts 6
    assert batch["shift_labels"].tolist() == [[2, 3, 6]]
    assert loss_positions(torch.tensor([[-100, -100, 7]]))["logits_to_keep"].tolist() == [1]
    assert loss_positions(torch.tensor([[-100, -100]])) == {}  # nothing counts: the head keeps every logit


def test_packing_removes_padding(tokenizer: Any, write: Any) -> None:
    rows = [{"prompt": f"question {i} " + "x " * (i * 7 % 40), "completion": f"answer {i}"} for i in range(40)]
    path = write("data.jsonl", rows)
    packed = prepare(
        path, _source(path, validationSplit=0), _copy(tokenizer), max_length=256, batch_size=4, seed=0, packing=True
    )
    unpacked = prepare(
        path, _source(path, validationSplit=0), _copy(tokenizer), max_length=256, batch_size=4, seed=0, packing=False
    )
    assert packed.padded_fraction_unpacked == unpacked.padded_fraction_unpacked > 0.2
    assert len(packed.train) < len(unpacked.train) / 3
    assert sum(len(r) for r in packed.train["input_ids"]) == unpacked.train_tokens
    print(f"padded-token fraction without packing: {unpacked.padded_fraction_unpacked:.1%}; with packing: 0%")


def test_padding_fraction() -> None:
    assert padding_fraction([10, 10, 10, 10], 2) == 0
    assert padding_fraction([10, 30], 2) == pytest.approx(20 / 60)


def test_validation_split(tokenizer: Any, write: Any) -> None:
    path = write("data.jsonl", [{"text": f"example number {i}"} for i in range(20)])
    data = prepare(
        path, _source(path, validationSplit=0.2), _copy(tokenizer), max_length=64, batch_size=2, seed=0, packing=False
    )
    assert (len(data.train), len(data.eval)) == (16, 4)


BAD_INPUTS = [
    ("empty file", "data.jsonl", "", "data.jsonl: the dataset is empty"),
    ("invalid JSON line", "data.jsonl", '{"text": "ok"}\n{"text": "broken"\n', "data.jsonl line 2: invalid JSON"),
    ("not an object", "data.jsonl", '["a", "b"]\n', "data.jsonl line 1: expected a JSON object, got list"),
    ("non-UTF-8", "data.jsonl", b'{"text": "caf\xe9"}\n', "data.jsonl line 1: not valid UTF-8"),
    ("missing columns", "data.jsonl", [{"question": "q", "reply": "a"}], "cannot tell the dataset format from columns"),
    (
        "missing field for format",
        "data.jsonl",
        [{"instruction": "i", "output": "o"}, {"instruction": "i2"}],
        "data.jsonl line 2: field 'output' is missing",
    ),
    (
        "wrong type",
        "data.jsonl",
        [{"prompt": "p", "completion": 42}],
        "data.jsonl line 1: field 'completion' must be a string, got int",
    ),
    (
        "bad chat message",
        "data.jsonl",
        [{"messages": [{"role": "robot", "content": "hi"}]}],
        "data.jsonl line 1: messages[0] must be an object with role (system/user/assistant) and string content;"
        " its role is 'robot'",
    ),
    (
        "a long unknown role, quoted and cut",
        "data.jsonl",
        [{"messages": [{"role": "r" * 500, "content": "hi"}, {"role": "assistant", "content": "ok"}]}],
        "its role is '" + "r" * 76 + "...",
    ),
    (
        "JSON broken at the end of a line",
        "data.jsonl",
        '{"text": "ok"}\n{"instruction": "a long enough instruction", "output": "y"\n',
        "data.jsonl line 2: invalid JSON (Expecting ',' delimiter at column 59)",
    ),
    (
        "every row empty",
        "data.jsonl",
        [{"instruction": "", "input": "", "output": ""}] * 5,
        "no usable rows left (5 rows read, 0 kept (dropped: 5 empty response))",
    ),
    (
        "chat ends with the user",
        "data.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}]}],
        "the last message of 'messages' must be from the assistant",
    ),
    ("all rows filtered", "data.jsonl", [{"text": "tiny"}, {"text": "tiny2"}], "no usable rows left"),
    ("JSON that is not a list", "data.json", '{"rows": 1}', "data.json: expected a JSON list of objects"),
    ("unsupported extension", "data.txt", "hello", "unsupported file type '.txt'"),
    ("corrupt parquet", "data.parquet", b"PAR1 not really", "data.parquet: not a readable Parquet file"),
]


@pytest.mark.parametrize(("case", "name", "content", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_row_and_field(write: Any, case: str, name: str, content: Any, message: str) -> None:
    path = write(name, content)
    with pytest.raises(InputError) as caught:
        load_examples(path, _source(path, refine={"minChars": 10}))
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(InputError, match=r"no \.jsonl, \.json, \.csv, \.parquet files"):
        load_examples(tmp_path / "ds", _source(tmp_path / "ds"))


def test_the_quickstart_dataset_has_no_duplicates(tmp_path: Path) -> None:
    """The example a user copies: every row a different question (it used to be 64 rows read, 32 kept)."""
    from tinymodel import support_rows, write_jsonl

    path = write_jsonl(support_rows(), tmp_path / "support.jsonl")
    examples, report, _ = load_examples(path, _source(path))
    assert report.read == report.kept == len(examples) == 32 and not report.dropped
