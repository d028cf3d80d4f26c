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


def loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    model.train()
    out = model(**batch)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return out.loss.detach(), out.logits.detach(), grads


def assert_same_loss_and_grads(got: tuple[Any, Any, list[Any]], expected: tuple[Any, Any, list[Any]]) -> None:
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    assert len(got[2]) == len(expected[2]) > 0
    for got_grad, expected_grad in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-3, atol=1e-5)


def published_adapter(tiny_model: Path, folder: Path, seed: int = 0) -> str:
    """A LoRA adapter with random (not zero) B matrices, published with its manifest as training
    publishes one: the tuned model then really differs from its base, which an untrained LoRA does not."""
    from finetune_trainer.model import apply_lora, load_base_model
    from finetune_trainer.storage import LocalStore, publish

    torch.manual_seed(seed)
    adapter = apply_lora(load_base_model(tiny_model, None, CPU, False), LoraSettings(r=8, alpha=16, dropout=0.0))
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    adapter.save_pretrained(folder / "lora")
    uri = f"file://{folder}/adapter/"
    publish(LocalStore(), folder / "lora", uri, {"kind": "adapter"})
    return uri


def evaluation_spec(
    model: Path,
    benchmarks: list[dict[str, Any]],
    report: Path,
    *,
    adapter: str | None = None,
    quantization: dict[str, Any] | None = None,
    **evaluation: Any,
) -> Any:
    """The EvaluationRunSpec an evaluation pod gets for `model` (plus `adapter`), as the operator resolves it
    for an EvalRun with these benchmarks and settings (`thresholds`, `generation`, ...)."""
    from finetune_operator.api.contract import EvaluationRunSpec

    resolved: dict[str, Any] = {"baseModel": {"uri": f"file://{model}"}}
    if adapter is not None:
        resolved["adapter"] = {"uri": adapter}
    if quantization is not None:
        resolved["quantization"] = quantization
    return EvaluationRunSpec.model_validate(
        {
            "attempt": 1,
            "trainerImage": "test",
            "evaluation": {"model": {"baseModel": {"uri": f"file://{model}"}}, "benchmarks": benchmarks, **evaluation},
            "model": resolved,
            "reportUri": f"file://{report}/",
        }
    )
