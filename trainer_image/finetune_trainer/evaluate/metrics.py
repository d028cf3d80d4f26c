"""Scores of generated answers against references. Pure functions, checked against hand-computed values.

exact_match and f1 follow the SQuAD v1.1 evaluation script: answers are normalised (lower case,
punctuation and the articles a/an/the removed, whitespace collapsed) before comparison, and F1 is
the harmonic mean of token precision and recall. One case differs: when prediction and reference
both normalise to empty, F1 is 1.0, the SQuAD v2.0 script's rule (v1.1 scores it 0). Exact match
already calls such a pair equal in both versions, and a model that answers "The." to a reference
of "the" should not score 0 F1 for agreeing. BLEU is sacreBLEU's corpus BLEU and ROUGE-L is
rouge-score's F-measure, the reference implementations, rescaled to 0-1 like the others.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: a match (SQuAD v2.0); one empty: nothing in common
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def faithfulness(prediction: str, source: str) -> float:
    """Share of the answer's normalised tokens that occur in the source passage.

    1 - faithfulness is a crude hallucination rate: words the model wrote that its source never
    mentioned. An empty answer claims nothing and scores 1.
    """
    tokens = normalize_answer(prediction).split()
    if not tokens:
        return 1.0
    supported = set(normalize_answer(source).split())
    return sum(token in supported for token in tokens) / len(tokens)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU / 100: sacreBLEU with 13a tokenisation, up to 4-grams and the brevity penalty.

    `effective_order` leaves out n-gram orders that no reference is long enough to have; without it
    every benchmark of one- to three-word answers would score 0 however right the answers were.
    """
    from sacrebleu.metrics import BLEU

    scorer = BLEU(effective_order=True)
    return float(scorer.corpus_score(list(predictions), [list(references)]).score) / 100


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per pair (rouge-score, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def perplexity(total_nll: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per predicted token)."""
    return math.exp(total_nll / tokens) if tokens else math.inf


def score_generations(
    metrics: Sequence[str], predictions: Sequence[str], references: Sequence[str], sources: Sequence[str] | None
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(corpus-level score per metric, per-sample scores) for generation tasks."""
    per_sample: list[dict[str, float]] = [{} for _ in predictions]
    totals: dict[str, float] = {}
    rouge = rouge_l(predictions, references) if "rouge_l" in metrics else []
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        sample = per_sample[index]
        if "exact_match" in metrics:
            sample["exact_match"] = exact_match(prediction, reference)
        if "f1" in metrics:
            sample["f1"] = token_f1(prediction, reference)
        if "rouge_l" in metrics:
            sample["rouge_l"] = rouge[index]
        if "faithfulness" in metrics and sources is not None:
            sample["faithfulness"] = faithfulness(prediction, sources[index])
    for metric in metrics:
        if metric == "bleu":
            totals["bleu"] = bleu(predictions, references)
        elif metric != "perplexity":
            totals[metric] = mean([sample[metric] for sample in per_sample if metric in sample])
    return totals, per_sample


LogProb = tuple[float, int]
"""An answer's summed log-probability and its number of tokens."""


def preferred(chosen: LogProb, rejected: LogProb, normalised: bool) -> float:
    """1 when the chosen answer has the higher log-probability (per token when `normalised`, so the
    longer answer is not penalised for its length), 0 when the rejected one has, and 0.5 for a tie."""
    if normalised:
        c, r = chosen[0] / max(chosen[1], 1), rejected[0] / max(rejected[1], 1)
    else:
        c, r = chosen[0], rejected[0]
    return 1.0 if c > r else 0.5 if c == r else 0.0


def preference_accuracy(chosen: Sequence[LogProb], rejected: Sequence[LogProb], normalised: bool) -> float:
    """Share of pairs where the chosen answer is preferred (see `preferred`)."""
    wins = [preferred(c, r, normalised) for c, r in zip(chosen, rejected, strict=True)]
    return mean(wins)
