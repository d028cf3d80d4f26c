"""CPU fast paths for packed LoRA training: same maths, less work (measured in docs/benchmarks.md).

On CUDA, flash-attention's varlen kernels and fused dropout already do this; on CPU neither exists:
- a flattened packed batch went through SDPA with a block-diagonal mask, i.e. attention over all
  its tokens (a 1 x 1024 batch of 7 examples pays ~7x the attention FLOPs of the examples alone);
  ``segment_sdpa`` runs causal SDPA per example instead, found from the restarting position_ids;
- ``nn.Dropout`` on CPU draws its mask with ``bernoulli_``, 2.5x slower than ``rand_like >= p``,
  and LoRA applies it to the input of every adapted projection (twice under activation
  checkpointing: the recomputed forward draws it again);
- non-reentrant activation checkpointing runs Python hooks for every tensor a layer saves, which
  the many small LoRA ops of a CPU step feel (1.03-1.06x per step, bench/trainer_switch.py style);
  on CPU, packed or not, training checkpoints reentrantly (train.setup_model), the same recomputation.
All are chosen only on CPU (``use_on`` for the two that need packed batches); the GPU path keeps
SDPA, ``nn.Dropout`` and non-reentrant checkpointing until measured.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

SEGMENT_ATTENTION = "finetune_segment_sdpa"


def use_on(device_kind: str, packing: bool) -> bool:
    return device_kind == "cpu" and packing


def segment_bounds(position_ids: Any) -> list[int] | None:
    """Start offsets of the packed examples in a (1, T) row, plus T; None for a single example.

    An example starts wherever the position does not follow on from the previous token, the rule
    transformers uses to detect packed sequences (find_packed_sequence_indices).
    """
    positions = position_ids.reshape(-1)
    starts = ((positions[1:] - positions[:-1]) != 1).nonzero().reshape(-1) + 1
    if starts.numel() == 0:
        return None
    return [0, *starts.tolist(), positions.numel()]


def segment_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal SDPA per packed example; anything else (padded batches, generation) goes to plain SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (
        position_ids is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2] == position_ids.shape[-1]
    )
    bounds = segment_bounds(position_ids) if packed else None
    if bounds is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            scale=scaling,
            is_causal=True,
        )
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_segment_attention() -> str:
    """Registers the attention (and SDPA's mask builder, for the padded fallback) under SEGMENT_ATTENTION."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)
    return SEGMENT_ATTENTION


@functools.cache
def _mask_dropout_class() -> Any:
    import torch

    class MaskDropout(torch.nn.Module):  # type: ignore[misc]
        """Inverted dropout with a uniform-threshold mask: the same distribution as nn.Dropout."""

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: Any) -> Any:
            if not self.training or self.p == 0.0:
                return x
            # One buffer, turned in place into the scaled keep-mask: a third faster than x * (r >= p) * scale.
            mask = torch.rand_like(x)
            mask.ge_(self.p).mul_(1.0 / (1.0 - self.p))
            return x * mask

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return MaskDropout


def use_mask_dropout(model: Any) -> int:
    """Swaps peft's LoRA dropouts for MaskDropout; returns how many (dropouts hold no weights: the
    saved adapter is unchanged)."""
    import torch

    mask_dropout = _mask_dropout_class()
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                dropouts[name] = mask_dropout(dropout.p)
                swapped += 1
    return swapped
