"""QLoRA on CPU: bitsandbytes' 4-bit layers against a dequantised reference, and gradients that survive
an evaluation between training steps.

What it proves: the 4-bit forward and its input gradient are those of the dequantised weights, and a
training step after an eval-mode forward computes the same LoRA gradients as one without it. What it
does not: anything about quality (the model is a tiny random one).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from finetune_operator.api.common import Quantization
from finetune_trainer.model import keep_trainable_4bit_layout
from tests.trainer.setups import deterministic_setup, packed_batch

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.functional import dequantize_4bit, has_avx512bf16  # noqa: E402

REPACKS = pytest.mark.skipif(
    not has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights for inference only on AVX512-BF16 CPUs"
)


def _layer() -> torch.nn.Module:
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 96, bias=False)
    layer = bnb.nn.Linear4bit(64, 96, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    return layer.to("cpu")


def _reference(layer: torch.nn.Module) -> torch.Tensor:
    return dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.float32).clone()


@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 16, 64), (3, 5, 64)])
def test_the_4bit_forward_and_input_gradient_are_those_of_the_dequantised_weights(shape: tuple[int, ...]) -> None:
    layer = _layer()
    weight = _reference(layer)
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    got = x.grad
    x.grad = None
    expected = x @ weight.t()
    expected.sum().backward()
    assert got is not None and torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(got, x.grad, atol=1e-5)


@REPACKS
def test_an_eval_forward_no_longer_cuts_the_gradient_of_a_layer_kept_trainable() -> None:
    """The cause of the gemv_4bit warning: an eval forward repacks the weight, and the next training
    forward has no backward. Untouched, the input gradient is None; kept trainable, it is the reference."""
    for keep in (False, True):
        layer = _layer()
        weight = _reference(layer)
        if keep:
            assert keep_trainable_4bit_layout(layer) == 1
        layer.eval()
        with torch.no_grad():
            layer(torch.randn(2, 8, 64))
        layer.train()
        x = torch.randn(2, 8, 64, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer(x).sum().backward()
        gemv = [w for w in caught if "gemv_4bit" in str(w.message)]
        if keep:
            assert gemv == [] and x.grad is not None
            assert torch.allclose(x.grad, torch.ones(2, 8, 96) @ weight, atol=1e-4)
        else:
            assert gemv and x.grad is None  # bitsandbytes as it is: the gradient stops here


def _lora_grads(tiny_model: Path, evaluate_first: bool) -> dict[str, torch.Tensor]:
    model = deterministic_setup(tiny_model, Quantization()).model
    batch = packed_batch([12, 9], model.config.vocab_size)
    if evaluate_first:  # what Trainer.evaluate does between steps (validationSplit)
        model.eval()
        with torch.no_grad():
            model(**batch)
    model.train()
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@REPACKS
def test_a_training_step_after_an_evaluation_gets_every_lora_gradient(tiny_model: Path) -> None:
    before = _lora_grads(tiny_model, evaluate_first=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = _lora_grads(tiny_model, evaluate_first=True)
    assert [str(w.message) for w in caught if "gemv_4bit" in str(w.message)] == []
    assert after.keys() == before.keys() and len(before) > 0
    # lora_B starts at zero, so at the first step only B gets a gradient; for the first layer's B it
    # must come back through every frozen 4-bit layer above it.
    lora_b = [name for name in before if "lora_B" in name]
    assert lora_b and all(before[name].abs().sum() > 0 and after[name].abs().sum() > 0 for name in lora_b)
    for name, grad in before.items():
        assert torch.allclose(after[name], grad, atol=1e-5, rtol=1e-4), name
