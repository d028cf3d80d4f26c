"""Preference pairs: rows -> checked (prompt, chosen, rejected) -> refined -> the rows TRL's trainers read.

Both of TRL's layouts are read. Standard: prompt, chosen and rejected are strings. Conversational:
the prompt is a list of messages and chosen/rejected are message lists ending in the assistant's
answer; without a prompt column, the two conversations' shared leading turns are the prompt. A pair
that cannot teach a preference (no prompt, an empty side, chosen equal to rejected) is dropped and
counted beside the refinement rules' drops; a value of the wrong type is bad input that names its file
and line, as in the SFT formats. TRL tokenises the pairs itself; they are also measured here, the
same way, so that `finetune-trainer prepare` shows what training will see before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from finetune_operator.api.finetunejob import ColumnMapping, DatasetSource

from ..errors import InputError
from . import describe
from .formats import column, detect_format, messages_of
from .load import Row, read_rows
from .refine import RefineReport, refine

Messages = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Pair:
    prompt: Messages
    """A string prompt is one user turn."""
    chosen: str
    rejected: str
    conversational: bool

    def content(self) -> str:
        return "\n".join([*(text for _, text in self.prompt), self.chosen, self.rejected])

    def response(self) -> str:
        return self.chosen  # both sides are known non-empty here (pair_or_reason)


def _side(row: Row, name: str) -> Messages | str | None:
    value = row.data.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return messages_of(row, name, last_from_assistant=False) if value else ""
    raise InputError(
        f"{row.where()}: field '{name}' must be a string or a list of messages, got {type(value).__name__}"
    )


def _shared_turns(chosen: Messages, rejected: Messages) -> Messages:
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared]


def _answer(row: Row, name: str, side: Messages | str, prompt: Messages) -> str:
    """The assistant's answer on one side: the string, or the one assistant message after the prompt."""
    if isinstance(side, str):
        return side
    rest = side[len(prompt) :] if side[: len(prompt)] == prompt else side
    if len(rest) != 1 or rest[0][0] != "assistant":
        raise InputError(
            f"{row.where()}: '{name}' must be one assistant message after the prompt (got roles "
            f"{[role for role, _ in rest]})"
        )
    return rest[0][1]


def pair_or_reason(row: Row, columns: ColumnMapping | None) -> Pair | str:
    """The row's pair, or why it was dropped."""
    names = {field: column(columns, field) for field in ("prompt", "chosen", "rejected")}
    chosen, rejected = _side(row, names["chosen"]), _side(row, names["rejected"])
    prompt_value = _side(row, names["prompt"])
    if not chosen or not rejected:
        return "empty chosen or rejected"
    conversational = not isinstance(chosen, str)
    if isinstance(prompt_value, str) and prompt_value.strip():
        prompt: Messages = (("user", prompt_value),)
    elif isinstance(prompt_value, tuple) and prompt_value:
        prompt, conversational = prompt_value, True
    elif isinstance(chosen, tuple) and isinstance(rejected, tuple):
        prompt = _shared_turns(chosen, rejected)
    else:
        prompt = ()
    if not prompt or not any(text.strip() for _, text in prompt):
        return "missing prompt"
    answers = _answer(row, names["chosen"], chosen, prompt), _answer(row, names["rejected"], rejected, prompt)
    if not answers[0].strip() or not answers[1].strip():
        return "empty chosen or rejected"
    if answers[0].strip() == answers[1].strip():
        return "chosen equals rejected"
    return Pair(prompt, answers[0], answers[1], conversational)


def load_pairs(path: Path, spec: DatasetSource) -> tuple[list[Pair], RefineReport]:
    rows = read_rows(path)
    first = next(rows, None)
    if first is None:
        raise InputError(f"{describe(path)}: the dataset is empty")
    if spec.format == "auto" and detect_format(first, spec.columns) != "preference":
        raise InputError(
            f"{first.where()}: objective dpo and orpo train on preference pairs: columns prompt, chosen and rejected "
            f"(or spec.dataset.columns naming yours); this row has {sorted(first.data)}"
        )
    report = RefineReport()

    def pairs() -> Any:
        for row in chain([first], rows):  # streamed, as data.load_examples reads SFT rows
            got = pair_or_reason(row, spec.columns)
            if isinstance(got, str):
                report.read += 1
                report.dropped[got] += 1
            else:
                yield got

    kept, report = refine(pairs(), spec.refine, report)
    if not kept:
        raise InputError(f"{describe(path)}: no usable preference pairs left ({report.summary()})")
    return kept, report


def _plain_prompt(prompt: Messages) -> str:
    """The SFT plain layouts of data/encode.py: `prompt\\n` for one user turn, `role: text` lines otherwise."""
    if len(prompt) == 1 and prompt[0][0] == "user":
        return prompt[0][1] + "\n"
    return "".join(f"{role}: {text}\n" for role, text in prompt) + "assistant: "


def trl_row(pair: Pair, use_template: bool) -> dict[str, Any]:
    """TRL's conversational layout when the chat template renders the pair, else its standard one."""
    if use_template:
        turn = [{"role": role, "content": text} for role, text in pair.prompt]
        return {
            "prompt": turn,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        }
    return {"prompt": _plain_prompt(pair.prompt), "chosen": pair.chosen, "rejected": pair.rejected}


def token_lengths(row: dict[str, Any], tokenizer: Any) -> tuple[int, int, int]:
    """(prompt, prompt + chosen, prompt + rejected) in tokens, as TRL's DPO and ORPO trainers tokenise them."""

    def count(prompt: Any, answer: Any) -> int:
        if isinstance(prompt, str):
            return len(tokenizer(prompt + (answer or ""))["input_ids"])
        text = tokenizer.apply_chat_template(prompt + (answer or []), tokenize=False, add_generation_prompt=not answer)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count(row["prompt"], None), count(row["prompt"], row["chosen"]), count(row["prompt"], row["rejected"])


@dataclass
class PreparedPairs:
    train: Any  # datasets.Dataset of TRL rows
    eval: Any | None
    report: RefineReport
    train_examples: int
    train_tokens: int
    format: str = "preference"

    def summary(self) -> str:
        return (
            f"format preference; {self.report.summary()}; {self.train_examples} train pairs "
            f"({self.train_tokens} tokens, chosen and rejected both counted)"
        )


def prepare_pairs(
    path: Path,
    spec: DatasetSource,
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int | None,
    seed: int,
) -> PreparedPairs:
    from datasets import Dataset

    from .encode import ensure_chat_template

    pairs, report = load_pairs(path, spec)
    use_template = spec.apply_chat_template
    if use_template:
        ensure_chat_template(tokenizer)
    report.max_length = max_length
    rows, tokens = [], []
    for pair in pairs:
        row = trl_row(pair, use_template)
        prompt, with_chosen, with_rejected = token_lengths(row, tokenizer)
        if max_prompt_length is not None and prompt > max_prompt_length:
            report.dropped[f"prompt longer than maxPromptLength={max_prompt_length} tokens"] += 1
        elif prompt >= max_length:
            # TRL would drop it silently: no response token would be left after the cut.
            report.dropped[f"prompt fills maxSeqLength={max_length} tokens"] += 1
        else:
            report.truncated += max(with_chosen, with_rejected) > max_length
            rows.append(row)
            tokens.append(min(with_chosen, max_length) + min(with_rejected, max_length))
    report.kept = len(rows)
    if not rows:
        raise InputError(f"{describe(path)}: no usable preference pairs left ({report.summary()})")
    order = list(range(len(rows)))
    dataset, evaluation = Dataset.from_list(rows), None
    if spec.validation_split > 0 and len(rows) * spec.validation_split >= 1:
        parts = Dataset.from_dict({"index": order}).train_test_split(test_size=spec.validation_split, seed=seed)
        train_index, eval_index = parts["train"]["index"], parts["test"]["index"]
        dataset, evaluation = dataset.select(train_index), dataset.select(eval_index)
        tokens = [tokens[i] for i in train_index]
    return PreparedPairs(dataset, evaluation, report, len(dataset), sum(tokens))
