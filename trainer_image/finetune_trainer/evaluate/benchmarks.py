"""A benchmark's dataset -> the inputs, references and sources an evaluation scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune_operator.api.evaluation import Benchmark

from ..data.load import read_rows
from ..errors import InputError


@dataclass(frozen=True)
class Rows:
    """One benchmark's inputs, read from its dataset."""

    inputs: list[str]
    references: list[str]
    """The reference answers; a preference benchmark's chosen responses."""
    sources: list[str] | None
    rejected: list[str] | None = None
    """A preference benchmark's rejected responses."""


def read_benchmark(path: Path, benchmark: Benchmark) -> Rows:
    """Questions/answers (or texts) of a benchmark; a missing column is bad input that names the row."""
    data = benchmark.dataset
    wanted = {
        "perplexity": [data.text_column],
        "preference": [data.prompt_column, data.chosen_column, data.rejected_column],
    }.get(benchmark.task, [data.question_column, data.answer_column])
    if data.context_column and benchmark.task != "preference":
        wanted.append(data.context_column)
    columns: dict[str, list[str]] = {name: [] for name in wanted}
    for count, row in enumerate(read_rows(path)):
        if benchmark.max_samples is not None and count >= benchmark.max_samples:
            break
        for name in wanted:
            value = row.data.get(name)
            if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
                raise InputError(
                    f"benchmark {benchmark.name}: {row.where()}: column {name!r} is missing or not text "
                    f"(set dataset.{_setting(benchmark, name)})"
                )
            columns[name].append(str(value))
    first = columns[wanted[0]]
    if not first:
        raise InputError(f"benchmark {benchmark.name}: {benchmark.dataset.uri} has no rows")
    if benchmark.task == "perplexity":
        return Rows(inputs=first, references=[], sources=None)
    if benchmark.task == "preference":
        return Rows(inputs=first, references=columns[wanted[1]], sources=None, rejected=columns[wanted[2]])
    sources = columns[data.context_column] if data.context_column else None
    # A source passage goes into the prompt the way the trainer renders alpaca `input`.
    inputs = [f"{q}\n\n{s}" for q, s in zip(first, sources, strict=True)] if sources else first
    return Rows(inputs=inputs, references=columns[data.answer_column], sources=sources)


def _setting(benchmark: Benchmark, name: str) -> str:
    """The dataset field that names column `name`, for the message."""
    data = benchmark.dataset
    if benchmark.task == "perplexity":
        return "textColumn"
    if benchmark.task == "preference":
        fields = {data.prompt_column: "promptColumn", data.chosen_column: "chosenColumn"}
        return fields.get(name, "rejectedColumn")
    return "questionColumn/answerColumn" if name != data.context_column else "contextColumn"
