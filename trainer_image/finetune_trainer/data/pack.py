"""Padding-free packing: examples are bin-packed into rows of at most maxSeqLength tokens.

Each row keeps per-example position_ids (restarting at 0), so attention never crosses examples
(transformers derives the block-diagonal causal mask, or flash-attention's varlen boundaries, from
them), and the first label of every example is masked so no token learns to predict across a
boundary. A batch is then flattened into one row: no pad token is ever computed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

IGNORE = -100


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of examples per bin, every bin's total length <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    for index in order:
        size = min(lengths[index], capacity)
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, chosen = free.pop(slot)
        else:
            space, chosen = capacity, len(bins)
            bins.append([])
        bins[chosen].append(index)
        bisect.insort(free, (space - size, chosen))
    return bins


def pack_rows(rows: Sequence[dict[str, list[int]]], capacity: int) -> list[dict[str, list[int]]]:
    packed = []
    for members in pack_lengths([len(r["input_ids"]) for r in rows], capacity):
        input_ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in members:
            ids, labs = rows[index]["input_ids"][:capacity], rows[index]["labels"][:capacity]
            input_ids += ids
            labels += [IGNORE, *labs[1:]]
            positions += list(range(len(ids)))
        packed.append({"input_ids": input_ids, "labels": labels, "position_ids": positions})
    return packed


def loss_positions(labels: Any) -> dict[str, Any]:
    """``logits_to_keep`` and ``shift_labels`` for a (1, T) row: the output head runs only where the
    next token counts in the loss.

    Prompts, system turns and each example's first token are labelled IGNORE, so their logits are
    computed and thrown away: in chat SFT that is often half the rows' tokens, and the head is the
    widest matrix product (vocabulary x hidden) with a softmax over the vocabulary behind it. The
    loss keeps its terms and its normaliser (the same labels count), so it is unchanged. A batch
    with no counted token gets nothing (the model then keeps every logit, as before).
    """
    following = labels[0, 1:]
    keep = (following != IGNORE).nonzero().reshape(-1)
    if keep.numel() == 0:
        return {}
    return {"logits_to_keep": keep, "shift_labels": following[keep].unsqueeze(0)}


class PackedCollator:
    """Flattens a batch of packed rows into a single row of shape (1, total tokens), positions kept;
    with ``loss_logits_only`` the batch also says which positions need logits (loss_positions)."""

    def __init__(self, loss_logits_only: bool = False) -> None:
        self.loss_logits_only = loss_logits_only

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for feature in features:
            for key in batch:
                batch[key] += list(feature[key])
        tensors = {key: torch.tensor([values], dtype=torch.long) for key, values in batch.items()}
        if self.loss_logits_only:
            tensors |= loss_positions(tensors["labels"])
        return tensors
