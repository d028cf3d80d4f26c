"""Batched generation, perplexity and answer log-probabilities: the ways a benchmark runs a model.

Generation pads on the left (decoder-only models continue from the last position, so every
prompt must end there) and groups prompts of similar length into a batch, which keeps padding,
and so wasted compute, low; outputs come back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.evaluation import GenerationSettings

from ..data.encode import ensure_chat_template

FALLBACK_STOP = "<|im_end|>"


@dataclass(frozen=True)
class Prompter:
    """Renders questions the way the trainer rendered training prompts."""

    tokenizer: Any
    chat_template: bool

    def render(self, question: str) -> str:
        if self.chat_template:
            ensure_chat_template(self.tokenizer)
            text: str = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            return text
        return question + "\n"  # the trainer's plain prompt/completion layout

    @property
    def add_special_tokens(self) -> bool:
        return not self.chat_template  # a chat template writes its own BOS


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS, plus the end-of-turn marker of the ChatML fallback template when the vocabulary has it."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    marker = tokenizer.convert_tokens_to_ids(FALLBACK_STOP)
    if isinstance(marker, int) and marker != tokenizer.unk_token_id and marker not in ids:
        ids.append(marker)
    return ids


def _cut_at_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return list(ids[:position])
    return list(ids)


def generate(
    model: Any,
    prompter: Prompter,
    questions: Sequence[str],
    settings: GenerationSettings,
    *,
    on_batch: Callable[[int], None] = lambda _: None,
    batch_size: int | None = None,
) -> list[str]:
    import torch

    tokenizer = prompter.tokenizer
    tokenizer.padding_side = "left"
    prompts = [prompter.render(q) for q in questions]
    lengths = [len(tokenizer(p, add_special_tokens=prompter.add_special_tokens)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    stops = stop_token_ids(tokenizer)
    size = batch_size or settings.batch_size
    sampling = settings.temperature > 0
    extra: dict[str, Any] = {"temperature": settings.temperature, "top_p": settings.top_p} if sampling else {}
    outputs = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        batch = tokenizer(
            [prompts[i] for i in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=prompter.add_special_tokens,
        ).to(device)
        with torch.inference_mode():
            generated = model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=sampling,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops or None,
                **extra,
            )
        new_tokens = generated[:, batch["input_ids"].shape[1] :].tolist()
        for index, ids in zip(chunk, new_tokens, strict=True):
            outputs[index] = tokenizer.decode(_cut_at_stop(ids, stops), skip_special_tokens=True).strip()
        on_batch(len(chunk))
    return outputs


def negative_log_likelihood(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, on_batch: Callable[[int], None] = lambda _: None
) -> tuple[float, int]:
    """(summed NLL, predicted tokens) over `texts`: perplexity is exp(nll / tokens)."""
    import torch
    from torch.nn import functional

    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True).to(device)
        with torch.inference_mode():
            logits = model(**batch).logits.float()
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        shifted, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        total += float(functional.cross_entropy(shifted, targets, ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
        on_batch(len(chunk))
    return total, count


def answer_log_probs(
    model: Any,
    prompter: Prompter,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int,
) -> list[tuple[float, int]]:
    """(summed log-probability, tokens) of each answer after its prompt, rendered as the trainer renders
    a prompt: what a preference benchmark compares between the chosen and the rejected response."""
    import torch

    tokenizer = prompter.tokenizer
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    special = prompter.add_special_tokens
    results: list[tuple[float, int]] = []
    for start in range(0, len(prompts), batch_size):
        rendered = [prompter.render(p) for p in prompts[start : start + batch_size]]
        texts = [r + a for r, a in zip(rendered, answers[start : start + batch_size], strict=True)]
        starts = [len(tokenizer(r, add_special_tokens=special)["input_ids"]) for r in rendered]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=special).to(device)
        with torch.inference_mode():
            logits = model(**batch).logits.float()
        # Position t predicts token t + 1.
        token_logps = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        for row, first in enumerate(starts):
            end = int(batch["attention_mask"][row].sum())
            span = token_logps[row, first - 1 : end - 1]
            results.append((float(span.sum()), int(span.numel())))
    return results
