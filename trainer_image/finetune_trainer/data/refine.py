"""Refinement before tokenisation: exact dedupe, length filters, a sample cap; counts what each dropped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from finetune_operator.api.finetunejob import Refinement


class Refinable(Hashable, Protocol):
    """An SFT example or a preference pair: hashable (dedupe), with the text the length rules measure."""

    def content(self) -> str: ...

    def response(self) -> str: ...


Item = TypeVar("Item", bound=Refinable)


@dataclass
class RefineReport:
    read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    """Kept examples cut to maxSeqLength tokens (tokenisation fills this in)."""
    max_length: int | None = None

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {why}" for why, count in sorted(self.dropped.items())) or "none"
        text = f"{self.read} rows read, {self.kept} kept (dropped: {reasons})"
        if self.truncated:
            text += f"; {self.truncated} truncated to maxSeqLength={self.max_length} tokens"
        return text


def refine(
    examples: Iterable[Item], rules: Refinement, report: RefineReport | None = None
) -> tuple[list[Item], RefineReport]:
    """Apply the rules in order; `report` may already count rows dropped before (preference.py's bad pairs)."""
    report = report or RefineReport()
    seen: set[Item] = set()
    kept: list[Item] = []
    for example in examples:
        report.read += 1
        size = len(example.content())
        if not example.response().strip():
            # Nothing to learn: training on it would teach the prompt template alone.
            report.dropped["empty response"] += 1
        elif size < rules.min_chars:
            report.dropped[f"shorter than minChars={rules.min_chars}"] += 1
        elif rules.max_chars is not None and size > rules.max_chars:
            report.dropped[f"longer than maxChars={rules.max_chars}"] += 1
        elif rules.dedupe and example in seen:
            report.dropped["exact duplicates"] += 1
        elif rules.max_samples is not None and len(kept) >= rules.max_samples:
            report.dropped[f"beyond maxSamples={rules.max_samples}"] += 1
        else:
            seen.add(example)
            kept.append(example)
    report.kept = len(kept)
    return kept, report
