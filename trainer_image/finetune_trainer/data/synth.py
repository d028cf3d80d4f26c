"""Chunks -> instruction pairs: deterministic templates from structure, or a model's Q:/A: replies.

Template answers are always spans of their chunk (a sentence, or the blanked term of a cloze), so every
template pair is grounded by construction; a model's pairs are checked by the grounding filter instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from finetune_operator.api.dataset import TemplateGeneration

from .chunking import Chunk, sentences

_STOP = """a an and are as at be been but by for from has have in into is it its of on or that the their there
these this to was were which with will would can may must should not"""
STOPWORDS = frozenset(_STOP.split())
_DEFINITION = re.compile(
    r"^(?:The |An? )?(?P<term>[A-Za-z][\w\-]*(?: [\w\-]+){0,5}?) "
    r"(?P<verb>is|are) (?P<rest>(?:a|an|the|one of|any) .{8,})$|"
    r"^(?:The |An? )?(?P<term2>[A-Za-z][\w\-]*(?: [\w\-]+){0,5}?) (?P<verb2>means|refers to) (?P<rest2>.{8,})$"
)
"""'X is a/an/the ...' and 'X means/refers to ...': a definition, not any sentence with 'is' (a passive voice)."""
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]+|\d[\d.,%]*")


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str


def heading_pair(chunk: Chunk) -> Pair | None:
    if not chunk.heading:
        return None
    lead = sentences(chunk.text)[:2]
    if not lead:
        return None
    return Pair(f"What does the document say about {chunk.heading}?", " ".join(lead))


def definition_pairs(chunk: Chunk) -> Iterator[Pair]:
    for sentence in sentences(chunk.text):
        found = _DEFINITION.match(sentence.strip())
        if found is None:
            continue
        term = found.group("term") or found.group("term2")
        if term.split()[0].lower() not in STOPWORDS:
            verb = "are" if found.group("verb") == "are" else "is"
            yield Pair(f"What {verb} {term}?", sentence.strip())


def _key_term(sentence: str) -> str | None:
    """The sentence's most specific word: a number, else a capitalised word not at its start, else the longest
    word of six letters or more that is not a stopword (the first of equals)."""
    words = [m.group() for m in _WORD.finditer(sentence)]
    numbers = [w.rstrip(".,") for w in words if w[0].isdigit()]
    if numbers:
        return numbers[0]
    names = [w for w in words[1:] if w[0].isupper() and w.lower() not in STOPWORDS and len(w) > 2]
    if names:
        return max(names, key=len)
    long = [w for w in words if len(w) >= 6 and w.lower() not in STOPWORDS]
    return max(long, key=len) if long else None


def cloze_pairs(chunk: Chunk) -> Iterator[Pair]:
    for sentence in sentences(chunk.text):
        if len(sentence.split()) < 8:
            continue
        term = _key_term(sentence)
        if term is None:
            continue
        blanked = re.sub(rf"(?<![\w-]){re.escape(term)}(?![\w-])", "_____", sentence, count=1)
        if blanked != sentence:
            yield Pair(f'Fill in the blank: "{blanked.strip()}"', term)


def template_pairs(chunk: Chunk, settings: TemplateGeneration) -> list[Pair]:
    """Up to settings.perChunk pairs, heading first, then definitions, then clozes (each kind if asked for)."""
    pairs: list[Pair] = []
    if "heading" in settings.questions and (pair := heading_pair(chunk)) is not None:
        pairs.append(pair)
    if "definition" in settings.questions:
        pairs += definition_pairs(chunk)
    if "cloze" in settings.questions:
        pairs += cloze_pairs(chunk)
    return pairs[: settings.per_chunk]


_QA = re.compile(r"^\s*(?:\d+[.)]\s*)?(Q|A|Question|Answer)\s*[:.]\s*(.*)$", re.IGNORECASE)


def parse_reply(reply: str) -> list[Pair]:
    """`Q: ...` / `A: ...` lines of a model's reply as pairs (an answer may run over several lines)."""
    pairs: list[Pair] = []
    question: str | None = None
    answer: list[str] | None = None
    for line in [*reply.splitlines(), "Q:"]:
        found = _QA.match(line)
        if found is None:
            if answer is not None and line.strip():
                answer.append(line.strip())
            continue
        if found.group(1)[0].upper() == "Q":
            if question and answer:
                pairs.append(Pair(question, " ".join(answer).strip()))
            question, answer = found.group(2).strip(), None
        elif question:
            answer = [found.group(2).strip()]
    return [p for p in pairs if p.question and p.answer]


def render_prompt(prompt: str, chunk: Chunk, pairs: int) -> str:
    return prompt.replace("{chunk}", chunk.text).replace("{pairs}", str(pairs))


def batches(items: Sequence[Chunk], size: int) -> Iterator[Sequence[Chunk]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
