"""The data pipeline: load -> normalise -> refine -> tokenise -> split (packing happens in the collator)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from finetune_operator.api.finetunejob import DatasetSource

from ..errors import InputError
from .encode import IGNORE, encode, ensure_chat_template, padding_fraction
from .formats import Example, Format, detect_format, normalise
from .load import read_rows
from .pack import pack_rows
from .refine import RefineReport, refine


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any | None
    format: Format
    report: RefineReport
    fallback_template: bool
    train_tokens: int
    train_examples: int
    padded_fraction_unpacked: float

    def summary(self) -> str:
        return (
            f"format {self.format}; {self.report.summary()}; {self.train_examples} train examples "
            f"({self.train_tokens} tokens) in {len(self.train)} rows; without packing, padding would waste "
            f"{self.padded_fraction_unpacked:.1%} of the tokens"
        )


def describe(path: Path) -> str:
    """The dataset's file names for messages (a downloaded dataset lives in a folder named after its role)."""
    if not path.is_dir():
        return path.name
    names = sorted(p.name for p in path.rglob("*") if p.is_file())
    if not names:
        return path.name
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def load_examples(path: Path, spec: DatasetSource) -> tuple[list[Example], RefineReport, Format]:
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{describe(path)}: the dataset is empty")
    fmt: Format = detect_format(first, spec.columns) if spec.format == "auto" else spec.format
    if fmt == "preference":
        raise InputError(
            f"{first.where()}: these are preference pairs (chosen/rejected); train them with spec.objective dpo or "
            "orpo, or give spec.dataset.format for an SFT layout"
        )
    examples = (normalise(row, fmt, spec.columns) for row in chain([first], rows))
    kept, report = refine(examples, spec.refine)
    if not kept:
        raise InputError(f"{describe(path)}: no usable rows left ({report.summary()})")
    return kept, report, fmt


def prepare(
    path: Path, spec: DatasetSource, tokenizer: Any, *, max_length: int, batch_size: int, seed: int, packing: bool
) -> PreparedData:
    """Examples ready for the Trainer; with `packing`, rows are bins of examples up to max_length tokens."""
    from datasets import Dataset

    examples, report, fmt = load_examples(path, spec)
    use_template = spec.apply_chat_template and fmt != "text"
    fallback = ensure_chat_template(tokenizer) if use_template else False
    encoded = []
    report.max_length = max_length
    for example in examples:
        item, truncated = encode(example, tokenizer, max_length, use_template, spec.completion_only_loss)
        if all(label == IGNORE for label in item["labels"]):
            report.dropped[f"no response tokens within maxSeqLength={max_length}"] += 1
            continue
        report.truncated += truncated
        encoded.append(item)
    report.kept = len(encoded)
    if not encoded:
        raise InputError(f"{describe(path)}: no usable rows left ({report.summary()})")
    dataset = Dataset.from_list(encoded)
    evaluation = None
    if spec.validation_split > 0 and len(dataset) * spec.validation_split >= 1:
        parts = dataset.train_test_split(test_size=spec.validation_split, seed=seed)
        dataset, evaluation = parts["train"], parts["test"]
    lengths = [len(ids) for ids in dataset["input_ids"]]
    if packing:
        dataset = Dataset.from_list(pack_rows(list(dataset), max_length))
        if evaluation is not None:
            evaluation = Dataset.from_list(pack_rows(list(evaluation), max_length))
    return PreparedData(
        train=dataset,
        eval=evaluation,
        format=fmt,
        report=report,
        fallback_template=fallback,
        train_tokens=sum(lengths),
        train_examples=len(lengths),
        padded_fraction_unpacked=padding_fraction(lengths, batch_size),
    )
