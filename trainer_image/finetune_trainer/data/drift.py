"""How far new documents drift from what the model was trained on: a cheap statistic, no model needed.

The Jensen-Shannon divergence, base 2, between the word distributions (lower-cased runs of letters and
digits) of the new documents and of the reference text. It is 0 for the same distribution and 1 for
distributions with no word in common, symmetric, and defined when a word appears on one side only, which
is the point. It sees vocabulary, not meaning: a paraphrase in the same words does not drift, a new
product name does. The counts are streamed, so a large document costs memory per distinct word, not per
byte.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CHUNK = 1 << 20


def words(texts: Iterable[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for text in texts:
        found.update(w.lower() for w in _WORD.findall(text))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def file_texts(path: Path) -> Iterator[str]:
    """The text of a document: every string of a JSON/JSONL record, else the file read as UTF-8 (bad bytes
    replaced), in chunks cut at whitespace."""
    if path.suffix.lower() in {".jsonl", ".json"}:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    yield from _strings(json.loads(line))
                except json.JSONDecodeError:
                    yield line
        return
    with path.open(encoding="utf-8", errors="replace") as handle:
        rest = ""
        while chunk := handle.read(_CHUNK):
            text = rest + chunk
            cut = max(text.rfind(" "), text.rfind("\n"))
            rest, text = (text[cut:], text[:cut]) if cut > 0 else ("", text)
            yield text
        yield rest


def jensen_shannon(first: Counter[str], second: Counter[str]) -> float:
    """JSD(P || Q) in bits, between 0 and 1; 0 when either side is empty (nothing to compare)."""
    total_p, total_q = sum(first.values()), sum(second.values())
    if not total_p or not total_q:
        return 0.0
    divergence = 0.0
    for word in first.keys() | second.keys():
        p, q = first.get(word, 0) / total_p, second.get(word, 0) / total_q
        m = (p + q) / 2
        if p:
            divergence += p * math.log2(p / m) / 2
        if q:
            divergence += q * math.log2(q / m) / 2
    return min(max(divergence, 0.0), 1.0)
