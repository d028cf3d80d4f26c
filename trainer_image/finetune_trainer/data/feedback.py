"""User feedback records, read line by line, and the training rows they become.

A record is one JSON object per line: `{"id", "prompt", "response", "rating" (1-5), "correction"?,
"timestamp"?}` (docs/continuous-learning.md). A bad line is named (file and line) and skipped; the good
lines beside it are used. Ids are the unit of consumption: a record whose id a run already consumed is
never counted again, and a repeated id counts once.

Rows, in the layout of the template's dataset so that one file reader and one format serve the whole
training set:

- sft: every correction is a row (prompt -> correction), and so is every answer rated at least
  `positiveAtLeast` (prompt -> response);
- dpo / orpo: a correction and the response it corrects are a pair (chosen, rejected); a low rating
  without a correction says what is wrong but not what is right, so it is counted, never trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator.api.finetunejob import ColumnMapping
from finetune_operator.api.schedule import FeedbackCounts, FeedbackTrigger

from .formats import Format, column

RATINGS = range(1, 6)
_TEXT_FIELDS = ("prompt", "response")


@dataclass(frozen=True)
class Feedback:
    id: str
    prompt: str
    response: str
    rating: int
    correction: str | None
    where: str


def _record(value: Any, where: str) -> Feedback | str:
    """The record on one line, or why it is not one."""
    if not isinstance(value, dict):
        return f"{where}: expected a JSON object, got {type(value).__name__}"
    ident = value.get("id")
    if not isinstance(ident, str | int) or isinstance(ident, bool) or str(ident) == "":
        return f"{where}: field 'id' is missing (a string that names the record)"
    for name in _TEXT_FIELDS:
        if not isinstance(value.get(name), str) or not value[name].strip():
            return f"{where}: field '{name}' must be a non-empty string"
    rating = value.get("rating")
    if (
        isinstance(rating, bool)
        or not isinstance(rating, int | float)
        or rating != int(rating)
        or rating not in RATINGS
    ):
        return f"{where}: rating {json.dumps(rating)} is not on the 1-5 scale (an integer from 1, worst, to 5, best)"
    correction = value.get("correction")
    if correction is not None and (not isinstance(correction, str) or not correction.strip()):
        return f"{where}: field 'correction' must be a non-empty string when present"
    return Feedback(str(ident), value["prompt"], value["response"], int(rating), correction, where)


def read_feedback(files: Iterable[tuple[str, Path]]) -> tuple[list[Feedback], list[str]]:
    """Every valid record of the JSONL files (name as shown, local path), first occurrence of an id kept,
    and a problem per bad line."""
    records: dict[str, Feedback] = {}
    problems: list[str] = []
    for name, path in files:
        for where, value in _lines(name, path, problems):
            found = _record(value, where)
            if isinstance(found, str):
                problems.append(found)
            elif found.id not in records:
                records[found.id] = found
    return list(records.values()), problems


def _lines(name: str, path: Path, problems: list[str]) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{name} line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as error:
                problems.append(f"{where}: invalid JSON ({error.msg} at column {error.colno})")


def counts(records: Sequence[Feedback], consumed: set[str], trigger: FeedbackTrigger, invalid: int) -> FeedbackCounts:
    negative = [r for r in records if r.rating <= trigger.negative_at_most]
    return FeedbackCounts(
        records=len(records),
        negative=len(negative),
        pending_negative=sum(1 for r in negative if r.id not in consumed),
        corrections=sum(1 for r in records if r.correction),
        positive=sum(1 for r in records if r.rating >= trigger.positive_at_least),
        consumed=sum(1 for r in records if r.id in consumed),
        invalid=invalid,
    )


def _sft_row(fmt: Format, columns: ColumnMapping | None, prompt: str, answer: str) -> dict[str, Any]:
    name = lambda field: column(columns, field)  # noqa: E731
    if fmt == "alpaca":
        return {name("instruction"): prompt, name("input"): "", name("output"): answer}
    if fmt == "chat":
        return {name("messages"): [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    if fmt == "completion":
        return {name("prompt"): prompt, name("completion"): answer}
    if fmt == "text":
        return {name("text"): f"{prompt}\n{answer}"}
    raise ValueError(f"no SFT row in the {fmt} layout")


def training_rows(
    records: Sequence[Feedback], trigger: FeedbackTrigger, fmt: Format, columns: ColumnMapping | None
) -> list[dict[str, Any]]:
    """The rows the records add to a training set in the dataset's own layout (see the module docstring)."""
    if fmt == "preference":
        return [
            {
                column(columns, "prompt"): r.prompt,
                column(columns, "chosen"): r.correction,
                column(columns, "rejected"): r.response,
            }
            for r in records
            if r.correction and r.correction.strip() != r.response.strip()
        ]
    rows = []
    for record in records:
        if record.correction:
            rows.append(_sft_row(fmt, columns, record.prompt, record.correction))
        elif record.rating >= trigger.positive_at_least:
            rows.append(_sft_row(fmt, columns, record.prompt, record.response))
    return rows
