"""The model toolkit every recipe shares: device, base model, quantization, LoRA, fast paths, collator.

Pure setup steps, each a function: recipes (recipes/) and the benchmark (bench/gpu_qlora.py) call
the same ones, so what the benchmark measures is what a FineTuneJob runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator.api.common import Quantization
from finetune_operator.api.finetunejob import LoraSettings

from . import fastpath, hostembed
from .data.pack import PackedCollator


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    dtype_name: str  # "bfloat16", "float16" or "float32"
    index: int = 0  # the GPU of this rank: its local rank under torchrun


def pick_device(compute_dtype: str, cuda: bool, bf16_supported: bool) -> Device:
    """bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU (most CPUs lack fast half precision)."""
    if not cuda:
        return Device("cpu", "float32" if compute_dtype == "auto" else compute_dtype)
    if compute_dtype == "auto":
        return Device("cuda", "bfloat16" if bf16_supported else "float16")
    return Device("cuda", compute_dtype)


def resolve_optimizer(name: str, device: Device) -> str:
    if name != "auto":
        return name
    return "paged_adamw_8bit" if device.kind == "cuda" else "adamw_torch"


def load_base_model(
    model_dir: Path,
    quantization: Quantization | None,
    device: Device,
    trust_remote_code: bool,
    *,
    attention: str = "sdpa",
    sharded: bool = False,
) -> Any:
    """The frozen base: bitsandbytes 4/8-bit for qlora (quantized while loading), the compute dtype for lora.

    `sharded` (FSDP): no device map; FSDP places the shards, rank 0 alone reading the weights."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, device.dtype_name)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": attention,
    }
    if not sharded:
        kwargs["device_map"] = {"": device.index if device.kind == "cuda" else "cpu"}
    if quantization is not None and quantization.bits == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    elif quantization is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def prepare_for_training(model: Any, gradient_checkpointing: bool, reentrant: bool = False) -> Any:
    """Freeze the base and checkpoint activations: non-reentrant (PyTorch's recommended flavour) unless
    `reentrant`, which the CPU fast paths ask for (fastpath.py: the same recomputation, with less
    per-tensor hook overhead). The embeddings' output requires grad either way, so the reentrant
    flavour sees an input that needs a gradient although the whole base is frozen.

    Unlike peft's prepare_model_for_kbit_training, norms, embeddings and the output head stay in the
    compute dtype: its fp32 upcast costs ~2 GiB on an 8B model (a 128k-vocabulary embedding and head)
    and buys nothing under bf16 training, where RMSNorm already computes in fp32 internally.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    keep_trainable_4bit_layout(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()
    return model


def keep_trainable_4bit_layout(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; the number of layers.

    On a CPU with AVX512-BF16, a Linear4bit's first forward in eval mode (the Trainer's evaluation of
    the validation split) repacks its weight for `gemv_4bit` and never packs it back. Every training
    forward after that runs `gemv_4bit`, which has no backward: the gradient stops at each frozen 4-bit
    layer, so all LoRA weights below the last layer stop learning, and torch warns "gemv_4bit: an
    autograd kernel was not registered" at every step (tests/trainer/test_fastpath.py shows both).
    A model that trains keeps the layout the backward needs; evaluation-only models keep the fast one."""
    layers = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            layers += 1
    return layers


def apply_fused_kernels(model: Any, device: Device) -> bool:
    """Liger's Triton kernels on CUDA when installed (the trainer image has them); the fused linear
    cross-entropy never materialises the (tokens x vocabulary) logits."""
    if device.kind != "cuda":
        return False
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    _apply_liger_kernel_to_instance(model=model)
    return True


def apply_lora(model: Any, lora: LoraSettings, adapter: Path | None = None) -> Any:
    """A new adapter of shape `lora`, or the published `adapter` to train further (its own shape kept)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    targets: str | list[str] = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    return get_peft_model(
        model,
        LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
        ),
    )


def head_takes_positions(model: Any) -> bool:
    """Whether the model's forward takes a tensor ``logits_to_keep`` and hands ``shift_labels`` to
    transformers' causal-LM loss: true of transformers' own causal LMs, checked because remote code
    may not be."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    parameters = inspect.signature(model.forward).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return "logits_to_keep" in parameters and takes_kwargs and getattr(model, "loss_function", None) is ForCausalLMLoss


@dataclass(frozen=True)
class ModelSetup:
    model: Any
    fused_kernels: bool
    cpu_fast_paths: bool
    host_embeddings: bool  # the input embedding's table is in host memory (hostembed.py)
    loss_logits_only: bool  # for make_collator: the head runs on loss positions only (pack.loss_positions)


def setup_model(
    model_dir: Path,
    device: Device,
    *,
    quantization: Quantization | None,
    lora: LoraSettings,
    packing: bool,
    gradient_checkpointing: bool,
    adapter: Path | None = None,
    trust_remote_code: bool = False,
    fused_kernels: bool = True,
    fast_paths: bool = True,
    loss_positions: bool = True,
    host_embeddings: bool = True,
    sharded: bool = False,
) -> ModelSetup:
    """Base model (-> input embedding to host memory, CUDA) -> frozen (+ activation checkpointing) -> fused
    kernels (CUDA) -> LoRA (+ CPU fast paths).

    The benchmark calls this too, so what it measures is what a FineTuneJob runs; it switches the
    optimisations off one by one to measure each. Reentrant checkpointing, the one CPU fast path that
    needs no packing, is used on CPU packed or not. Logits on loss positions only need packed
    (flattened) batches; Liger's fused head is left as measured on the GPU, where it already never
    materialises the logits."""
    fast = fast_paths and fastpath.use_on(device.kind, packing)
    attention = fastpath.register_segment_attention() if fast else "sdpa"
    model = load_base_model(model_dir, quantization, device, trust_remote_code, attention=attention, sharded=sharded)
    hosted = not sharded and host_embeddings and hostembed.applies(model, device.kind, lora.target_modules)
    if hosted:
        hostembed.keep_on_host(model)
    model = prepare_for_training(model, gradient_checkpointing, reentrant=fast_paths and device.kind == "cpu")
    fused = fused_kernels and apply_fused_kernels(model, device)
    loss_logits_only = loss_positions and packing and not fused and head_takes_positions(model)
    model = apply_lora(model, lora, adapter)
    if fast:
        fastpath.use_mask_dropout(model)
    return ModelSetup(model, fused, fast, hosted, loss_logits_only)


def make_collator(packing: bool, tokenizer: Any, loss_logits_only: bool = False) -> Any:
    if packing:
        return PackedCollator(loss_logits_only)
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def device_for(quantization: Quantization | None, local_rank: int = 0) -> Device:
    """The device this rank trains or evaluates on, with the dtype the spec asks for (or the best one)."""
    import torch

    compute = quantization.compute_dtype if quantization else "auto"
    cuda = torch.cuda.is_available()
    device = pick_device(compute, cuda, cuda and torch.cuda.is_bf16_supported())
    return Device(device.kind, device.dtype_name, local_rank if cuda else 0)


def load_tokenizer(source: Path, trust_remote_code: bool) -> Any:
    """The tokenizer, padding with EOS where the model defines no pad token (most causal LMs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
