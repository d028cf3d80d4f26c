"""The input embedding kept in host memory computes what the on-device one computes.

The swap is made on CUDA only; here the same swap runs on CPU (the table "leaves" for host memory
and the rows come back to the CPU), through the same functions setup_model calls, in its order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_operator.api.common import Quantization
from finetune_operator.api.finetunejob import LoraSettings
from finetune_trainer import hostembed
from finetune_trainer.model import apply_lora, load_base_model, prepare_for_training

from .setups import CPU, assert_same_loss_and_grads, loss_and_grads, packed_batch

LORA = LoraSettings(r=8, alpha=16, dropout=0.0)


def test_applies_only_where_it_frees_gpu_memory_and_changes_nothing_else(tiny_model: Path) -> None:
    model = load_base_model(tiny_model, None, CPU, False)
    assert hostembed.applies(model, "cuda", ["all-linear"])
    assert not hostembed.applies(model, "cpu", ["all-linear"])  # already in host memory
    assert not hostembed.applies(model, "cuda", ["q_proj", "embed_tokens"])  # it trains

    model.lm_head.weight = model.model.embed_tokens.weight  # tied: the head needs it on the GPU
    assert not hostembed.applies(model, "cuda", ["all-linear"])

    class ScaledEmbedding(torch.nn.Embedding):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return super().forward(input) * 2.0

    untied = load_base_model(tiny_model, None, CPU, False)
    weight = untied.model.embed_tokens.weight
    untied.set_input_embeddings(ScaledEmbedding(weight.shape[0], weight.shape[1]))
    assert not hostembed.applies(untied, "cuda", ["all-linear"])


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("quantization", [None, Quantization()], ids=["lora", "qlora-nf4"])
def test_same_loss_and_gradients_with_the_table_in_host_memory(
    tiny_model: Path, quantization: Quantization | None, reentrant: bool, tmp_path: Path
) -> None:
    """Reentrant checkpointing needs the embedding's output to require grad (the hook that
    prepare_for_training registers must land on the swapped module)."""
    results = []
    for hosted in (False, True):
        torch.manual_seed(0)
        model = load_base_model(tiny_model, quantization, CPU, False)
        table = model.get_input_embeddings().weight
        if hosted:
            host = hostembed.keep_on_host(model)
            assert model.get_input_embeddings() is host
            assert host.weight.data_ptr() == table.data_ptr()  # the same rows, moved (here: kept) once
        model = prepare_for_training(model, gradient_checkpointing=True, reentrant=reentrant)
        model = apply_lora(model, LORA)
        names = {name for name, _ in model.named_parameters()}
        assert any("embed_tokens" in name for name in names) is not hosted  # no parameter, no optimizer state
        assert any("embed_tokens" in key for key in model.state_dict()) is not hosted
        batch = packed_batch([7, 30, 1, 12], model.config.vocab_size)
        results.append(loss_and_grads(model, batch))
    on_device, in_host = results
    model.save_pretrained(tmp_path / "adapter")  # the adapter alone, as without the swap
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    torch.testing.assert_close(in_host[1], on_device[1])  # logits
    assert_same_loss_and_grads(in_host, on_device)


def test_a_device_move_leaves_the_table_in_host_memory(tiny_model: Path) -> None:
    """Trainer moves an unquantized model to its device: the table must stay behind."""
    model = load_base_model(tiny_model, None, CPU, False)
    host = hostembed.keep_on_host(model)
    model.to(torch.float64)
    assert host.table.dtype == torch.float32
    out: Any = model.get_input_embeddings()(torch.tensor([[3, 4]]))
    assert out.shape == (1, 2, model.config.hidden_size)
