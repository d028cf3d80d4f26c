"""Seeded set-ups the trainer's equivalence tests share: two runs that may differ only by what a test switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from finetune_operator.api.common import Quantization
from finetune_operator.api.finetunejob import LoraSettings
from finetune_trainer.data.pack import PackedCollator
from finetune_trainer.model import Device, setup_model

CPU = Device("cpu", "float32")


def packed_batch(lengths: list[int], vocab: int, prompt: float = 0.0, collator: Any = None) -> dict[str, Any]:
    """Packed examples whose first `prompt` fraction (at least the first token) is labelled IGNORE."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in lengths:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        masked = max(1, int(length * prompt))
        rows.append({"input_ids": ids, "labels": [-100] * masked + ids[masked:], "position_ids": list(range(length))})
    return dict((collator or PackedCollator())(rows))


def deterministic_setup(tiny_model: Path, quantization: Quantization | None, **switch: bool) -> Any:
    """Packed, checkpointed, LoRA dropout off and the same seed: runs differ only by `switch`."""
    torch.manual_seed(0)
    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    return setup_model(
        tiny_model, CPU, quantization=quantization, lora=lora, packing=True, gradient_checkpointing=True, **switch
    )
