"""Which generated pairs are kept: exact and near duplicates, lengths, grounding in the chunk, language.

Near duplicates are found with MinHash over word 3-grams (32 permutations) and locality-sensitive hashing
(8 bands of 4 rows: pairs of Jaccard 0.8 meet in some band with probability 0.985, of 0.5 with 0.40), then
confirmed on the signatures' estimate. What the filters remember grows with the pairs kept (about 0.6 KB
each: 255 MB peak for 280,452 pairs kept from a 200 MB document, docs/benchmarks.md), not with the
documents' size.
Language is told by the share of each language's most common words: enough for prose, not for a list of
names or numbers (such a chunk counts as the language it is not sure of, and is kept).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from finetune_operator.api.dataset import Filters

from .synth import Pair

_WORDS = re.compile(r"\w+", re.UNICODE)
PERMUTATIONS = 32
BANDS = 8
_PRIME = (1 << 61) - 1
_RNG = np.random.default_rng(20260101)
_A = _RNG.integers(1, _PRIME, PERMUTATIONS, dtype=np.uint64)
_B = _RNG.integers(0, _PRIME, PERMUTATIONS, dtype=np.uint64)


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


LANGUAGE_WORDS: dict[str, frozenset[str]] = {
    "en": _set("the of and to in is that for it with as was on are be by this from or which an"),
    "de": _set("der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als"),
    "fr": _set("le la les de des et en un une du est que qui dans pour pas sur au par avec"),
    "es": _set("el la de que y en los se del las un por con no una su para es al lo"),
    "it": _set("il di che la e per un in è del una non sono della le si con al gli"),
    "nl": _set("de het een en van in is dat op te zijn met voor niet aan er ook als"),
    "pt": _set("o a de que e do da em um para com não uma os no se na por mais as"),
}


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def language(text: str) -> str | None:
    """The language whose common words make up the largest share of the text (at least 5%), or None."""
    tokens = words(text)
    if not tokens:
        return None
    counts = Counter(tokens)
    share = {lang: sum(counts[w] for w in common) / len(tokens) for lang, common in LANGUAGE_WORDS.items()}
    best = max(share, key=lambda lang: share[lang])
    return best if share[best] >= 0.05 else None


def grounding(answer: str, chunk: str) -> float:
    """Share of the answer's words that occur in the chunk: the EvalRun's faithfulness, on the training data."""
    answer_words = words(answer)
    if not answer_words:
        return 0.0
    known = set(words(chunk))
    return sum(1 for w in answer_words if w in known) / len(answer_words)


def minhash(text: str) -> bytes:
    tokens = words(text)
    grams = {" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))}
    values = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
    # (a * x + b) mod p per permutation; x < 2^32 and a < 2^61 overflow uint64, which only reshuffles: the
    # minimum of a fixed pseudo-random map is all MinHash needs.
    hashed = (_A[:, None] * values[None, :] + _B[:, None]) % np.uint64(_PRIME)
    return (hashed.min(axis=1) & np.uint64(0xFFFFFFFF)).astype(np.uint32).tobytes()


@dataclass
class PairFilter:
    """The filters of one build, with what they have seen; `drop` says why a pair goes, None if it stays."""

    settings: Filters
    dropped: Counter[str] = field(default_factory=Counter)
    seen: set[bytes] = field(default_factory=set)
    bands: dict[int, int] = field(default_factory=dict)
    signatures: list[bytes] = field(default_factory=list)
    languages: dict[int, str | None] = field(default_factory=dict)

    def drop(self, pair: Pair, chunk: str, chunk_key: int) -> str | None:
        reason = self._reason(pair, chunk, chunk_key)
        if reason is not None:
            self.dropped[reason] += 1
        return reason

    def _reason(self, pair: Pair, chunk: str, chunk_key: int) -> str | None:
        rules = self.settings
        if len(pair.question.split()) < rules.min_question_words:
            return "shortQuestion"
        answer_words = len(pair.answer.split())
        if answer_words < rules.min_answer_words:
            return "shortAnswer"
        if answer_words > rules.max_answer_words:
            return "longAnswer"
        if rules.grounding and grounding(pair.answer, chunk) < rules.grounding:
            return "ungrounded"
        if rules.languages:
            if chunk_key not in self.languages:
                self.languages = {chunk_key: language(chunk)}  # pairs of one chunk come together
            found = self.languages[chunk_key]
            if found is not None and found not in rules.languages:
                return "language"
        text = f"{pair.question}\n{pair.answer}"
        if rules.dedupe:
            digest = hashlib.blake2b(" ".join(words(text)).encode(), digest_size=12).digest()
            if digest in self.seen:
                return "duplicate"
            self.seen.add(digest)
        if rules.near_dedupe is not None and self._near_duplicate(text, rules.near_dedupe):
            return "nearDuplicate"
        return None

    def _near_duplicate(self, text: str, threshold: float) -> bool:
        signature = minhash(text)
        width = 4 * PERMUTATIONS // BANDS  # bytes per band (uint32 values)
        keys = [hash((band, signature[band * width : (band + 1) * width])) for band in range(BANDS)]
        mine = np.frombuffer(signature, dtype=np.uint32)
        for key in keys:
            other = self.bands.get(key)
            if other is not None:
                theirs = np.frombuffer(self.signatures[other], dtype=np.uint32)
                if float(np.mean(theirs == mine)) >= threshold:
                    return True
        index = len(self.signatures)
        self.signatures.append(signature)
        for key in keys:
            self.bands.setdefault(key, index)
        return False
