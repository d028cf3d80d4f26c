"""An LLM judge: prompts, verdict parsing and the figures, whichever model or server writes the verdicts.

Pairwise grading asks about every question twice, tuned answer first and then baseline answer
first, because judges prefer a position (Zheng et al., "Judging LLM-as-a-Judge", 2023, measured it
for GPT-4 and Claude): a win counts only as often as the judge gives it, so a judge that always picks
the first answer scores the tuned model 0.5 with every question's two verdicts in disagreement. A
verdict with no readable mark is counted and kept, never dropped.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from finetune_operator.api.evaluation import GenerationSettings
from finetune_operator.api.harness import JudgeEndpoint, JudgeScale, JudgeSettings

from ..errors import InputError
from .generate import Prompter, generate

Side = Literal["first", "second", "tie"]
Outcome = Literal["tuned", "baseline", "tie"]
_MARK = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SIDES: dict[str, Side] = {"A": "first", "B": "second", "C": "tie"}


class Judge(Protocol):
    """Writes one verdict per prompt, in order."""

    def verdicts(self, prompts: Sequence[str]) -> list[str]: ...


def pairwise_prompt(rubric: str, question: str, first: str, second: str, reference: str | None) -> str:
    parts = [
        "You are an impartial judge. Compare the two assistant answers to the user's question below.",
        rubric,
        f"[Question]\n{question}",
    ]
    if reference is not None:
        parts.append(f"[Reference answer]\n{reference}")
    parts += [
        f"[Answer A]\n{first}",
        f"[Answer B]\n{second}",
        'Explain your judgement briefly, then end with your verdict: "[[A]]" if answer A is better, "[[B]]" if '
        'answer B is better, "[[C]]" for a tie.',
    ]
    return "\n\n".join(parts)


def single_prompt(rubric: str, scale: JudgeScale, question: str, answer: str, reference: str | None) -> str:
    parts = ["You are an impartial judge. Rate the assistant's answer to the user's question below.", rubric]
    parts.append(f"[Question]\n{question}")
    if reference is not None:
        parts.append(f"[Reference answer]\n{reference}")
    parts += [
        f"[Answer]\n{answer}",
        f"Explain your rating briefly, then end with it on a scale of {scale.min} to {scale.max} in double "
        f'brackets, e.g. "Rating: [[{(scale.min + scale.max) // 2}]]".',
    ]
    return "\n\n".join(parts)


def parse_side(text: str) -> Side | None:
    """The verdict's mark; none, or marks that contradict each other, is unparsed."""
    marks = set(_MARK.findall(text))
    return _SIDES[marks.pop()] if len(marks) == 1 else None


def parse_rating(text: str, scale: JudgeScale) -> float | None:
    """The last `[[n]]` of the verdict, if it lies on the scale."""
    found = _RATING.findall(text)
    if not found:
        return None
    rating = float(found[-1])
    return rating if scale.min <= rating <= scale.max else None


def _outcome(side: Side | None, tuned_first: bool) -> Outcome | None:
    if side is None or side == "tie":
        return side
    return "tuned" if (side == "first") == tuned_first else "baseline"


@dataclass(frozen=True)
class PairwiseTally:
    """What a pairwise judge said of every question, both orders, mapped back to the two models."""

    tuned_first: list[Outcome | None]
    baseline_first: list[Outcome | None]

    @classmethod
    def of(cls, tuned_first: Sequence[Side | None], baseline_first: Sequence[Side | None]) -> PairwiseTally:
        return cls([_outcome(s, True) for s in tuned_first], [_outcome(s, False) for s in baseline_first])

    @property
    def parsed(self) -> list[Outcome]:
        return [o for o in (*self.tuned_first, *self.baseline_first) if o is not None]

    @property
    def both_parsed(self) -> list[tuple[Outcome, Outcome]]:
        return [(a, b) for a, b in zip(self.tuned_first, self.baseline_first, strict=True) if a and b]

    def counts(self) -> dict[str, int]:
        parsed = self.parsed
        return {
            "questions": len(self.tuned_first),
            "verdicts": 2 * len(self.tuned_first),
            "unparsed": 2 * len(self.tuned_first) - len(parsed),
            "tunedWins": parsed.count("tuned"),
            "baselineWins": parsed.count("baseline"),
            "ties": parsed.count("tie"),
            "orderDisagreements": sum(a != b for a, b in self.both_parsed),
        }

    def metrics(self) -> dict[str, float]:
        """Rates over parsed verdicts; with none parsed, no wins or ties and disagreement 1 (nothing agreed)."""
        counts, parsed, pairs = self.counts(), len(self.parsed), self.both_parsed
        return {
            "win_rate": counts["tunedWins"] / parsed if parsed else 0.0,
            "tie_rate": counts["ties"] / parsed if parsed else 0.0,
            "order_disagreement": counts["orderDisagreements"] / len(pairs) if pairs else 1.0,
            "judge_unparsed": counts["unparsed"] / counts["verdicts"] if counts["verdicts"] else 0.0,
        }


def single_metrics(ratings: Sequence[float | None]) -> dict[str, float]:
    """Mean rating over parsed verdicts (0 with none) and the unparsed share."""
    parsed = [r for r in ratings if r is not None]
    return {
        "judge_score": sum(parsed) / len(parsed) if parsed else 0.0,
        "judge_unparsed": (len(ratings) - len(parsed)) / len(ratings) if ratings else 0.0,
    }


@dataclass(frozen=True)
class Grading:
    """A judge benchmark's figures: its metrics per model, the counts, and every raw verdict."""

    tuned: dict[str, float]
    baseline: dict[str, float]
    counts: dict[str, int]
    verdicts: list[list[dict[str, Any]]]
    """Per question, each verdict: which order or model it was about, the raw text, what was read from it."""


def grade_pairwise(
    judge: Judge,
    settings: JudgeSettings,
    questions: Sequence[str],
    *,
    tuned: Sequence[str],
    baseline: Sequence[str],
    references: Sequence[str | None],
) -> Grading:
    rubric = settings.rubric
    prompts = [
        pairwise_prompt(rubric, q, t, b, r) for q, t, b, r in zip(questions, tuned, baseline, references, strict=True)
    ]
    prompts += [
        pairwise_prompt(rubric, q, b, t, r) for q, t, b, r in zip(questions, tuned, baseline, references, strict=True)
    ]
    raw = judge.verdicts(prompts)
    count = len(questions)
    sides = [parse_side(text) for text in raw]
    tally = PairwiseTally.of(sides[:count], sides[count:])
    verdicts = [
        [
            {"order": "tuned-first", "raw": raw[i], "verdict": tally.tuned_first[i]},
            {"order": "baseline-first", "raw": raw[count + i], "verdict": tally.baseline_first[i]},
        ]
        for i in range(count)
    ]
    return Grading(tally.metrics(), {}, tally.counts(), verdicts)


def grade_single(
    judge: Judge,
    settings: JudgeSettings,
    questions: Sequence[str],
    *,
    answers: dict[str, Sequence[str]],
    references: Sequence[str | None],
) -> Grading:
    """Ratings of each model's answers (`answers`: model label -> its answers, `tuned` first)."""
    rubric, scale = settings.rubric, settings.scale
    labels = list(answers)
    prompts = [
        single_prompt(rubric, scale, q, a, r)
        for label in labels
        for q, a, r in zip(questions, answers[label], references, strict=True)
    ]
    raw = judge.verdicts(prompts)
    ratings = [parse_rating(text, scale) for text in raw]
    count = len(questions)
    by_label = {label: ratings[i * count : (i + 1) * count] for i, label in enumerate(labels)}
    metrics = {label: single_metrics(values) for label, values in by_label.items()}
    verdicts = [
        [{"model": label, "raw": raw[n * count + i], "rating": by_label[label][i]} for n, label in enumerate(labels)]
        for i in range(count)
    ]
    counts = {"verdicts": len(raw), "unparsed": sum(r is None for r in ratings)}
    return Grading(metrics["tuned"], metrics.get("baseline", {}), counts, verdicts)


class ModelJudge:
    """A judge model loaded in this pod, decoding greedily through the evaluation's batched generation."""

    def __init__(self, model: Any, tokenizer: Any, settings: JudgeSettings, batch_size: int) -> None:
        self.model = model
        self.prompter = Prompter(tokenizer, chat_template=True)
        self.settings = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=batch_size)

    def verdicts(self, prompts: Sequence[str]) -> list[str]:
        return generate(self.model, self.prompter, prompts, self.settings)


class EndpointJudge:
    """A judge behind an OpenAI-compatible `/chat/completions`, asked one prompt at a time, greedily."""

    def __init__(
        self,
        endpoint: JudgeEndpoint,
        api_key: str | None,
        max_tokens: int,
        field: str,
    ) -> None:
        self.endpoint = endpoint
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.field = field

    def verdicts(self, prompts: Sequence[str]) -> list[str]:
        return [self._ask(prompt) for prompt in prompts]

    def _ask(self, prompt: str) -> str:
        body = {
            "model": self.endpoint.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.endpoint.url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.endpoint.timeout_seconds) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode(errors="replace")
            if 400 <= error.code < 500 and error.code != 429:  # the request itself is wrong: retrying cannot help
                raise InputError(f"{self.field}: {url} answered {error.code}: {detail}") from error
            raise
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise InputError(
                f"{self.field}: {url} did not answer as an OpenAI-compatible chat completions API: "
                f"{json.dumps(answer)[:300]}"
            ) from error
        return str(text or "")
