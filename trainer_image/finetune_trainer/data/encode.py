"""Examples -> token ids and labels, with the loss only on what the model should learn to write.

Chat and prompt/response examples are rendered with the tokenizer's chat template (or a ChatML-style
fallback when it has none) and labels are masked outside the assistant turns, located by character
offsets so that any template works. The fallback template is saved with the adapter's tokenizer, so
inference renders prompts the way training did.
"""

from __future__ import annotations

from typing import Any

from .formats import Example

IGNORE = -100
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give the tokenizer a chat template if it has none; True if the fallback was installed."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return text


def _chat_spans(tokenizer: Any, messages: tuple[tuple[str, str], ...]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns."""
    dicts = [{"role": role, "content": content} for role, content in messages]
    full = _render(tokenizer, dicts, generation_prompt=False)
    spans = []
    for index, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        start = len(_render(tokenizer, dicts[:index], generation_prompt=True)) if index else 0
        end = len(_render(tokenizer, dicts[: index + 1], generation_prompt=False))
        spans.append((start, end))
    return full, spans


def segments(example: Example, tokenizer: Any, use_template: bool) -> tuple[str, list[tuple[int, int]]]:
    """(text, trainable character spans) of one example."""
    eos = tokenizer.eos_token or ""
    if example.kind == "text":
        text = example.text + eos
        return text, [(0, len(text))]
    if use_template:
        messages = example.messages or (("user", example.prompt), ("assistant", example.completion))
        return _chat_spans(tokenizer, messages)
    if example.kind == "chat":
        text, spans, cursor = "", [], 0
        for role, content in example.messages:
            piece = f"{role}: {content}\n"
            if role == "assistant":
                spans.append((cursor + len(role) + 2, cursor + len(piece)))
            text += piece
            cursor += len(piece)
        return text + eos, [*spans[:-1], (spans[-1][0], len(text) + len(eos))]
    prompt = example.prompt + "\n"
    return prompt + example.completion + eos, [(len(prompt), len(prompt) + len(example.completion) + len(eos))]


CHARS_PER_TOKEN_BOUND = 64
"""No token of a real vocabulary spans more characters than this, so the first `max_length` tokens of
a text lie within its first max_length * 64 characters: the rest is cut before tokenising. A 50 MB row
would otherwise be tokenised whole (with offsets) only to be cut to max_length tokens afterwards:
gigabytes of memory for nothing (docs/benchmarks.md, "Data preparation memory")."""


def encode(
    example: Example, tokenizer: Any, max_length: int, use_template: bool, completion_only: bool
) -> tuple[dict[str, list[int]], bool]:
    """(token ids and labels, whether the example was cut to max_length tokens)."""
    text, spans = segments(example, tokenizer, use_template)
    limit = max_length * CHARS_PER_TOKEN_BOUND
    cut = len(text) > limit
    encoded = tokenizer(
        text[:limit] if cut else text,
        add_special_tokens=not use_template,
        return_offsets_mapping=True,
        truncation=True,
        max_length=max_length,
    )
    ids: list[int] = encoded["input_ids"]
    offsets = encoded["offset_mapping"]
    labels = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        inside = any(s <= start < e for s, e in spans) and end > start
        labels.append(token if inside or not completion_only else IGNORE)
    covered = max((end for _, end in offsets), default=0)
    truncated = cut or (len(ids) >= max_length and covered < len(text.rstrip()))
    return {"input_ids": ids, "labels": labels}, truncated


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of pad tokens when consecutive examples are padded to the longest in their batch."""
    total = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        total += max(batch) * len(batch)
        padded += max(batch) * len(batch) - sum(batch)
    return padded / total if total else 0.0
