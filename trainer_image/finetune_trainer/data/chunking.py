"""Blocks -> chunks within a token budget, along the document's own structure.

A chunk never spans two sections (a heading starts a new one), gathers whole paragraphs while they fit,
cuts a longer paragraph between sentences (a sentence longer than the budget between words), and starts
with the last sentences of the chunk before it in the same section, up to `overlap` tokens. Tokens are
words and punctuation marks: no tokenizer is loaded, and the budget means the same for every model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .documents import Block

TOKEN = re.compile(r"\w+|[^\w\s]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def count_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text) if s.strip()]


@dataclass(frozen=True)
class Chunk:
    """A passage: its text, the heading of its section, and where it starts in its document."""

    index: int
    text: str
    heading: str
    place: str


def _pieces(text: str, budget: int) -> Iterator[tuple[str, int]]:
    """A paragraph as (sentence-or-shorter piece, tokens), each within the budget."""
    for sentence in sentences(text):
        tokens = count_tokens(sentence)
        if tokens <= budget:
            yield sentence, tokens
            continue
        words = sentence.split()
        piece: list[str] = []
        size = 0
        for word in words:
            cost = count_tokens(word)
            if piece and size + cost > budget:
                yield " ".join(piece), size
                piece, size = [], 0
            piece.append(word)
            size += cost
        if piece:
            yield " ".join(piece), size


def chunk_blocks(blocks: Iterable[Block], max_tokens: int, overlap: int) -> Iterator[Chunk]:
    """Chunks of at most `max_tokens` tokens, lazily (a document is never held whole)."""
    heading = ""
    body: list[tuple[str, int]] = []
    size = 0
    carried = 0
    place = ""
    index = 0

    def flush(keep_overlap: bool) -> Iterator[Chunk]:
        nonlocal body, size, carried, index
        if len(body) > carried:
            yield Chunk(index, " ".join(text for text, _ in body), heading, place)
            index += 1
        tail: list[tuple[str, int]] = []
        kept = 0
        for text, tokens in reversed(body if keep_overlap else []):
            if kept + tokens > overlap:
                break
            tail.insert(0, (text, tokens))
            kept += tokens
        body, size, carried = tail, kept, len(tail)

    for block in blocks:
        if block.kind in ("heading", "break"):
            yield from flush(keep_overlap=False)
            heading = block.text if block.kind == "heading" else ""
            continue
        if block.kind != "paragraph":
            continue
        for piece, tokens in _pieces(block.text, max_tokens):
            if size + tokens > max_tokens:
                yield from flush(keep_overlap=True)
                if size + tokens > max_tokens:  # the overlap and this piece do not fit together
                    body, size, carried = [], 0, 0
            if len(body) == carried:
                place = block.place
            body.append((piece, tokens))
            size += tokens
    yield from flush(keep_overlap=False)
