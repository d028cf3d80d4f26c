"""The CPU fast paths compute what the plain paths compute: same logits and gradients, same dropout law."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from finetune_operator.api.common import Quantization
from finetune_operator.api.finetunejob import LoraSettings
from finetune_trainer import fastpath
from finetune_trainer.data.pack import PackedCollator
from finetune_trainer.train import Device, setup_model

CPU = Device("cpu", "float32")


def test_segment_bounds_follow_restarting_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert fastpath.segment_bounds(positions) == [0, 3, 5, 9]
    assert fastpath.segment_bounds(torch.arange(6)[None]) is None


def test_used_only_for_packed_training_on_cpu() -> None:
    assert fastpath.use_on("cpu", packing=True)
    assert not fastpath.use_on("cpu", packing=False)
    assert not fastpath.use_on("cuda", packing=True)


def _packed_batch(lengths: list[int], vocab: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in lengths:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100, *ids[1:]], "position_ids": list(range(length))})
    return dict(PackedCollator()(rows))


def _loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    model.train()
    out = model(**batch)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("quantization", [None, Quantization()], ids=["lora", "qlora-nf4"])
def test_segment_attention_matches_masked_sdpa(tiny_model: Path, quantization: Quantization | None) -> None:
    """Dropout off so both runs are deterministic: only the attention differs between them."""
    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    results = []
    split: list[list[int] | None] = []
    spy = mock.patch.object(fastpath, "segment_bounds", side_effect=lambda p: split.append(bounds(p)) or split[-1])
    bounds = fastpath.segment_bounds
    for fast in (False, True):
        torch.manual_seed(0)
        setup = setup_model(
            tiny_model,
            CPU,
            quantization=quantization,
            lora=lora,
            packing=True,
            gradient_checkpointing=True,
            fast_paths=fast,
        )
        assert setup.cpu_fast_paths is fast
        assert setup.model.config._attn_implementation == (fastpath.SEGMENT_ATTENTION if fast else "sdpa")
        batch = _packed_batch([7, 30, 1, 12], setup.model.config.vocab_size)
        with spy:
            results.append(_loss_and_grads(setup.model, batch))
    # 2 layers, forward + checkpointed recomputation, each split into the 4 examples
    assert split == [[0, 7, 37, 38, 50]] * 4
    (loss_plain, logits_plain, grads_plain), (loss_fast, logits_fast, grads_fast) = results
    torch.testing.assert_close(logits_fast, logits_plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-5, atol=1e-5)
    assert len(grads_fast) == len(grads_plain) > 0
    for fast_grad, plain_grad in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-3, atol=1e-5)


def test_segment_attention_falls_back_for_padded_batches(tiny_model: Path) -> None:
    """A padded batch (generation, packing off) must still honour its attention mask."""
    fastpath.register_segment_attention()
    outputs = []
    for attention in ("sdpa", fastpath.SEGMENT_ATTENTION):
        from finetune_trainer.train import load_base_model

        model = load_base_model(tiny_model, None, CPU, False, attention).eval()
        ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
        mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
        with torch.no_grad():
            outputs.append(model(input_ids=ids, attention_mask=mask).logits)
    torch.testing.assert_close(outputs[1], outputs[0])


def test_mask_dropout_keeps_the_dropout_law() -> None:
    dropout = fastpath._mask_dropout_class()(0.25)
    x = torch.ones(200_000)
    y = dropout(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.01)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.75])
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout: expectation preserved
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_lora_dropouts_swapped_and_adapter_unchanged(tiny_model: Path, tmp_path: Path) -> None:
    lora = LoraSettings(r=8, alpha=16, dropout=0.1)
    setup = setup_model(tiny_model, CPU, quantization=None, lora=lora, packing=True, gradient_checkpointing=False)
    layers = [m for m in setup.model.modules() if hasattr(m, "lora_dropout")]
    kinds = {type(d).__name__ for m in layers for d in m.lora_dropout.values()}
    assert kinds == {"MaskDropout"}
    setup.model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
