"""The LLM judge: verdict parsing, the pairwise tally in both orders, and single-answer ratings.

Stand-in judges here implement the recipe's own `Judge` protocol (a seam the code defines): they show
the arithmetic and the position-bias check, not that any real judge is good. The tiny-model judge
and the endpoint judge on a real vLLM server are in tests/trainer/test_judge_models.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from finetune_operator.api.harness import JudgeScale, JudgeSettings
from finetune_trainer.evaluate.judge import (
    PairwiseTally,
    grade_pairwise,
    grade_single,
    parse_rating,
    parse_side,
)

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "2 + 2?", "Largest planet?"]
TUNED = ["Paris", "Red", "4", "Jupiter"]
BASELINE = ["Lyon", "Purple", "5", "Jupiter"]
SETTINGS = JudgeSettings.model_validate({"model": {"uri": "s3://m/judge/"}})


class Scripted:
    """A judge that answers from a function of the prompt, and records what it was asked."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def verdicts(self, prompts: Sequence[str]) -> list[str]:
        self.prompts += prompts
        return [self.answer(p) if callable(self.answer) else str(self.answer) for p in prompts]


@pytest.mark.parametrize(
    ("text", "side"),
    [
        ("A is more accurate. [[A]]", "first"),
        ("Verdict: [[ B ]]", "second"),
        ("Both are fine [[C]]", "tie"),
        ("I prefer A. Final: [[A]]. To repeat: [[A]]", "first"),
        ("[[A]] ... on second thought [[B]]", None),  # contradicts itself: unparsed, not the last word
        ("Answer A is better.", None),
        ("[A]", None),
        ("", None),
    ],
)
def test_a_pairwise_verdict_is_read_only_from_its_mark(text: str, side: str | None) -> None:
    assert parse_side(text) == side


@pytest.mark.parametrize(
    ("text", "rating"),
    [("Rating: [[7]]", 7.0), ("[[3]] then [[8.5]]", 8.5), ("[[11]]", None), ("[[0]]", None), ("seven", None)],
)
def test_a_rating_off_the_scale_or_missing_is_unparsed(text: str, rating: float | None) -> None:
    assert parse_rating(text, JudgeScale()) == rating


def test_a_judge_that_always_prefers_the_first_answer_wins_half_and_disagrees_with_itself_always() -> None:
    """The position-bias check: asked in both orders, a judge that only looks at position gives each
    model one verdict per question, so the win rate is 0.5 and every question's two verdicts disagree."""
    judge = Scripted("Answer A is better. [[A]]")
    grading = grade_pairwise(judge, SETTINGS, QUESTIONS, tuned=TUNED, baseline=BASELINE, references=[None] * 4)
    assert grading.tuned == {"win_rate": 0.5, "tie_rate": 0.0, "order_disagreement": 1.0, "judge_unparsed": 0.0}
    assert grading.counts["tunedWins"] == grading.counts["baselineWins"] == 4
    # Both orders were asked, for every question: tuned answer first, then the baseline's first.
    assert len(judge.prompts) == 8
    for i, prompt in enumerate(judge.prompts[:4]):
        assert prompt.index(f"[Answer A]\n{TUNED[i]}") < prompt.index(f"[Answer B]\n{BASELINE[i]}")
    for i, prompt in enumerate(judge.prompts[4:]):
        assert prompt.index(f"[Answer A]\n{BASELINE[i]}") < prompt.index(f"[Answer B]\n{TUNED[i]}")
    assert [v["order"] for v in grading.verdicts[0]] == ["tuned-first", "baseline-first"]


def test_a_consistent_judge_gives_the_better_model_every_win() -> None:
    """A judge that picks whichever answer is the true one, wherever it stands: no disagreement."""
    truth = dict(zip(QUESTIONS, TUNED, strict=True))

    def answer(prompt: str) -> str:
        question = next(q for q in QUESTIONS if q in prompt)
        first = prompt.split("[Answer A]\n", 1)[1].split("\n\n", 1)[0]
        second = prompt.split("[Answer B]\n", 1)[1].split("\n\n", 1)[0]
        if first == second:
            return "[[C]]"
        return "[[A]]" if first == truth[question] else "[[B]]"

    grading = grade_pairwise(
        Scripted(answer), SETTINGS, QUESTIONS, tuned=TUNED, baseline=BASELINE, references=[None] * 4
    )
    # Three questions won twice each, one tie (both said "Jupiter") twice: 6 wins, 2 ties of 8 verdicts.
    assert grading.tuned == {"win_rate": 0.75, "tie_rate": 0.25, "order_disagreement": 0.0, "judge_unparsed": 0.0}


def test_unparsed_verdicts_are_counted_kept_and_left_out_of_the_rates() -> None:
    replies = iter(["[[A]]", "no idea", "[[B]]", "[[A]] or [[B]]", "[[B]]", "[[B]]", "[[C]]", "I cannot tell"])
    judge = Scripted(lambda _: next(replies))
    grading = grade_pairwise(judge, SETTINGS, QUESTIONS, tuned=TUNED, baseline=BASELINE, references=[None] * 4)
    # tuned-first: tuned, -, baseline, - ; baseline-first: tuned, tuned, tie, -
    assert grading.counts == {
        "questions": 4,
        "verdicts": 8,
        "unparsed": 3,
        "tunedWins": 3,
        "baselineWins": 1,
        "ties": 1,
        "orderDisagreements": 1,  # question 1 and 3 have both verdicts: (tuned, tuned) agree, (baseline, tie) not
    }
    assert grading.tuned["judge_unparsed"] == 3 / 8
    assert grading.tuned["win_rate"] == 3 / 5 and grading.tuned["tie_rate"] == 1 / 5
    assert grading.tuned["order_disagreement"] == 1 / 2
    raw = [v["raw"] for question in grading.verdicts for v in question]
    assert sorted(raw) == sorted(
        ["[[A]]", "no idea", "[[B]]", "[[A]] or [[B]]", "[[B]]", "[[B]]", "[[C]]", "I cannot tell"]
    )
    assert sum(v["verdict"] is None for question in grading.verdicts for v in question) == 3


def test_with_no_readable_verdict_nothing_is_won_and_nothing_agreed() -> None:
    tally = PairwiseTally.of([None, None], [None, None])
    assert tally.metrics() == {"win_rate": 0.0, "tie_rate": 0.0, "order_disagreement": 1.0, "judge_unparsed": 1.0}


def test_single_mode_rates_each_model_and_reports_the_mean() -> None:
    settings = JudgeSettings.model_validate({"mode": "single", "model": {"uri": "s3://m/j/"}, "scale": {"max": 5}})
    ratings = {"Paris": "[[5]]", "Lyon": "[[1]]", "Red": "[[4]]", "Purple": "[[9]]", "4": "[[5]]", "5": "hmm"}

    def answer(prompt: str) -> str:
        given = prompt.split("[Answer]\n", 1)[1].split("\n\n", 1)[0]
        return ratings.get(given, "[[3]]")

    judge = Scripted(answer)
    grading = grade_single(
        judge,
        settings,
        QUESTIONS,
        answers={"tuned": TUNED, "baseline": BASELINE},
        references=["Paris", None, None, None],
    )
    assert grading.tuned == {"judge_score": pytest.approx((5 + 4 + 5 + 3) / 4), "judge_unparsed": 0.0}
    # Baseline: 1, unparsed (9 is off the 1-5 scale), unparsed, 3.
    assert grading.baseline == {"judge_score": 2.0, "judge_unparsed": 0.5}
    assert grading.counts == {"verdicts": 8, "unparsed": 2}
    assert "[Reference answer]\nParis" in judge.prompts[0] and "on a scale of 1 to 5" in judge.prompts[0]
    assert [v["model"] for v in grading.verdicts[0]] == ["tuned", "baseline"]
