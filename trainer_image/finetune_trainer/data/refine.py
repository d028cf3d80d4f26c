"""Refinement before tokenisation: exact dedupe, length filters, a sample cap; counts what each dropped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from finetune_operator.api.finetunejob import Refinement

from .formats import Example


@dataclass
class RefineReport:
    read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {why}" for why, count in sorted(self.dropped.items())) or "none"
        return f"{self.read} rows read, {self.kept} kept (dropped: {reasons})"


def refine(examples: Iterable[Example], rules: Refinement) -> tuple[list[Example], RefineReport]:
    report = RefineReport()
    seen: set[Example] = set()
    kept: list[Example] = []
    for example in examples:
        report.read += 1
        size = len(example.content())
        if size < rules.min_chars:
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
