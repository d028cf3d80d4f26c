"""The fast paths compute what the plain paths compute: same logits, loss and gradients, same dropout law."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from finetune_operator.api.common import Quantization
from finetune_operator.api.finetunejob import LoraSettings
from finetune_trainer import fastpath
from finetune_trainer.model import head_takes_positions, make_collator, setup_model
from tests.trainer.setups import CPU, assert_same_loss_and_grads, deterministic_setup, loss_and_grads, packed_batch


def test_segment_bounds_follow_restarting_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert fastpath.segment_bounds(positions) == [0, 3, 5, 9]
    assert fastpath.segment_bounds(torch.arange(6)[None]) is None


def test_used_only_for_packed_training_on_cpu() -> None:
    assert fastpath.use_on("cpu", packing=True)
    assert not fastpath.use_on("cpu", packing=False)
    assert not fastpath.use_on("cuda", packing=True)


def _reentrant(model: Any) -> bool:
    return bool(model.get_base_model().model.layers[0]._gradient_checkpointing_func.keywords["use_reentrant"])


@pytest.mark.parametrize("quantization", [None, Quantization()], ids=["lora", "qlora-nf4"])
def test_segment_attention_matches_masked_sdpa(tiny_model: Path, quantization: Quantization | None) -> None:
    """Dropout off so both runs are deterministic: only the attention differs between them."""
    results = []
    split: list[list[int] | None] = []
    spy = mock.patch.object(fastpath, "segment_bounds", side_effect=lambda p: split.append(bounds(p)) or split[-1])
    bounds = fastpath.segment_bounds
    for fast in (False, True):
        setup = deterministic_setup(tiny_model, quantization, fast_paths=fast)
        assert setup.cpu_fast_paths is fast
        assert setup.model.config._attn_implementation == (fastpath.SEGMENT_ATTENTION if fast else "sdpa")
        assert _reentrant(setup.model) is fast  # the same recomputation, cheaper hooks on CPU
        batch = packed_batch([7, 30, 1, 12], setup.model.config.vocab_size)
        with spy:
            results.append(loss_and_grads(setup.model, batch))
    # 2 layers, forward + checkpointed recomputation, each split into the 4 examples
    assert split == [[0, 7, 37, 38, 50]] * 4
    plain, fast_result = results
    torch.testing.assert_close(fast_result[1], plain[1], rtol=1e-4, atol=1e-4)  # logits
    assert_same_loss_and_grads(fast_result, plain)


def test_segment_attention_falls_back_for_padded_batches(tiny_model: Path) -> None:
    """A padded batch (generation, packing off) must still honour its attention mask."""
    fastpath.register_segment_attention()
    outputs = []
    for attention in ("sdpa", fastpath.SEGMENT_ATTENTION):
        from finetune_trainer.model import load_base_model

        model = load_base_model(tiny_model, None, CPU, False, attention=attention).eval()
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


@pytest.mark.parametrize("quantization", [None, Quantization()], ids=["lora", "qlora-nf4"])
def test_logits_on_loss_positions_only_keep_loss_and_gradients(
    tiny_model: Path, quantization: Quantization | None
) -> None:
    """Half of each example is prompt: the head skips those positions, the loss and LoRA gradients
    (the output head's included, through every layer) stay those of the full head."""
    results = []
    for positions in (False, True):
        setup = deterministic_setup(tiny_model, quantization, loss_positions=positions)
        assert setup.loss_logits_only is positions
        collator = make_collator(True, None, setup.loss_logits_only)
        batch = packed_batch([7, 30, 1, 12], setup.model.config.vocab_size, prompt=0.5, collator=collator)
        results.append(loss_and_grads(setup.model, batch))
    every, kept = results
    counted = 4 + 15 + 0 + 6  # the labelled tail of each example; the 1-token one has none
    assert every[1].shape[1] == 50
    assert kept[1].shape[1] == counted
    assert_same_loss_and_grads(kept, every)


def test_loss_positions_need_packing_and_a_head_that_takes_them(tiny_model: Path) -> None:
    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    padded = setup_model(tiny_model, CPU, quantization=None, lora=lora, packing=False, gradient_checkpointing=True)
    assert not padded.loss_logits_only  # (B, T) rows cannot share one list of positions
    assert _reentrant(padded.model)  # the CPU fast path that needs no packing

    class OldStyleLM(torch.nn.Module):
        def forward(self, input_ids: Any = None, labels: Any = None) -> Any:
            return input_ids

    assert not head_takes_positions(OldStyleLM())
    assert head_takes_positions(padded.model.get_base_model())
