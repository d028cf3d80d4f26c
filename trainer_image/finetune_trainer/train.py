"""The training recipe: one class, fixed lifecycle (torchtune-style), one code path for CPU and GPU.

    recipe = TrainingRecipe(run, workdir, environ, reporter)
    result = recipe.run()   # fetch -> tokenizer -> data -> model -> train (resume, OOM backoff) -> publish

Only the LoRA adapter trains; it is saved in PEFT's own format so any PEFT or vLLM user can load it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator.api.common import Quantization
from finetune_operator.api.contract import TrainerResult, TrainingRunSpec
from finetune_operator.api.finetunejob import Artifact, LoraSettings, Provenance, TrainingMetrics

from . import __version__, fastpath, hostembed
from .data import PreparedData, prepare
from .data.pack import PackedCollator
from .errors import InputError, Interrupted, OutOfMemory
from .report import ProgressReporter
from .storage import Store, fetch, fetch_verified, join, publish, read_manifest, store_for

log = logging.getLogger("finetune_trainer")
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(name: str) -> int | None:
    digits = name.removeprefix(CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    dtype_name: str  # "bfloat16", "float16" or "float32"


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
    attention: str = "sdpa",
) -> Any:
    """The frozen base: bitsandbytes 4/8-bit for qlora (quantized while loading), the compute dtype for lora."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, device.dtype_name)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": attention,
        "device_map": {"": 0 if device.kind == "cuda" else "cpu"},
    }
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
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()
    return model


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


def apply_lora(model: Any, lora: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

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
    trust_remote_code: bool = False,
    fused_kernels: bool = True,
    fast_paths: bool = True,
    loss_positions: bool = True,
    host_embeddings: bool = True,
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
    model = load_base_model(model_dir, quantization, device, trust_remote_code, attention)
    hosted = host_embeddings and hostembed.applies(model, device.kind, lora.target_modules)
    if hosted:
        hostembed.keep_on_host(model)
    model = prepare_for_training(model, gradient_checkpointing, reentrant=fast_paths and device.kind == "cpu")
    fused = fused_kernels and apply_fused_kernels(model, device)
    loss_logits_only = loss_positions and packing and not fused and head_takes_positions(model)
    model = apply_lora(model, lora)
    if fast:
        fastpath.use_mask_dropout(model)
    return ModelSetup(model, fused, fast, hosted, loss_logits_only)


def make_collator(packing: bool, tokenizer: Any, loss_logits_only: bool = False) -> Any:
    if packing:
        return PackedCollator(loss_logits_only)
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


class TrainingRecipe:
    def __init__(
        self, run: TrainingRunSpec, workdir: Path, environ: Mapping[str, str], reporter: ProgressReporter
    ) -> None:
        import torch

        self.run_spec = run
        self.spec = run.job
        self.workdir = workdir
        self.environ = environ
        self.reporter = reporter
        quantization = self.spec.quantization
        compute = quantization.compute_dtype if quantization else "auto"
        cuda = torch.cuda.is_available()
        self.device = pick_device(compute, cuda, cuda and torch.cuda.is_bf16_supported())
        if self.device.kind == "cpu" and self.device.dtype_name == "float16":
            raise InputError(
                "quantization.computeDtype float16 is not supported on CPU; use auto or float32", reason="InvalidSpec"
            )
        self.batch_size = self.spec.training.batch_size
        self.accumulation = self.spec.training.gradient_accumulation_steps
        self.backoff_note: str | None = None
        self.stores: dict[str, Store] = {}
        self.training = False
        self.stop_requested = False

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> TrainerResult:
        started = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._terminated)
        self._progress("fetching the base model and dataset", force=True)
        self._fetch_inputs()
        self._setup_tokenizer()
        self._setup_data()
        self._setup_model()
        resume = self._resume_point()
        self.training = True
        output = self._train(resume)
        self.training = False
        if self.stop_requested:
            step = self.trainer.state.global_step
            raise Interrupted(
                f"terminated (SIGTERM) at step {step}; its checkpoint is synced to "
                f"{join(self.run_spec.output.checkpoints_uri, checkpoint_name(step))}/ and the next pod resumes there"
            )
        return self._publish(output, resume, time.monotonic() - started)

    def _terminated(self, signum: int, _frame: Any) -> None:
        """SIGTERM: finish the current step and checkpoint it (GracefulStop); before training, just stop."""
        if not self.training:
            raise Interrupted("terminated (SIGTERM) before training started; nothing to save")
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self.stop_requested = True

    def _store(self, role: str, uri: str) -> Store:
        if role not in self.stores:
            self.stores[role] = store_for(uri, role, self.run_spec.storage, self.environ)  # type: ignore[arg-type]
        return self.stores[role]

    def _fetch_inputs(self) -> None:
        self.model_dir = self.workdir / "base-model"
        self.data_dir = self.workdir / "dataset"
        base_uri = self.spec.base_model.uri
        base_store = self._store("BASE_MODEL", base_uri)
        manifest = read_manifest(base_store, base_uri)  # None for hf:// and for user-uploaded folders
        if manifest is not None:
            fetch_verified(base_store, base_uri, self.model_dir)
            self.model_revision = _digest(manifest)
        else:
            self.model_revision = fetch(base_store, base_uri, self.model_dir)
            if base_uri.startswith("hf://") and "@" in base_uri:
                self.model_revision = base_uri.rsplit("@", 1)[1].split("/")[0]
        if not (self.model_dir / "config.json").exists():
            raise InputError(f"{base_uri}: not a Hugging Face model folder (no config.json)")
        self.dataset_sha256 = fetch(self._store("DATASET", self.spec.dataset.uri), self.spec.dataset.uri, self.data_dir)

    def _setup_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_dir, trust_remote_code=self.spec.base_model.trust_remote_code
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _setup_data(self) -> None:
        self._progress("preparing the dataset", force=True)
        t = self.spec.training
        self.data: PreparedData = prepare(
            self.data_dir,
            self.spec.dataset,
            self.tokenizer,
            max_length=t.max_seq_length,
            batch_size=self.batch_size,
            seed=t.seed,
            packing=t.packing,
        )
        log.info("dataset: %s", self.data.summary())

    def _setup_model(self) -> None:
        self._progress("loading the base model", force=True)
        setup = setup_model(
            self.model_dir,
            self.device,
            quantization=self.spec.quantization,
            lora=self.spec.lora,
            packing=self.spec.training.packing,
            gradient_checkpointing=self.spec.training.gradient_checkpointing,
            trust_remote_code=self.spec.base_model.trust_remote_code,
        )
        self.model, self.fused_kernels = setup.model, setup.fused_kernels
        self.loss_logits_only = setup.loss_logits_only
        trainable, total = self.model.get_nb_trainable_parameters()
        log.info(
            "model: %s on %s/%s (fused kernels: %s, CPU fast paths: %s, logits on loss positions only: %s, "
            "input embedding in host memory: %s); %d of %d parameters on the device train (%.2f%%)",
            type(self.model.get_base_model()).__name__,
            self.device.kind,
            self.device.dtype_name,
            self.fused_kernels,
            setup.cpu_fast_paths,
            setup.loss_logits_only,
            setup.host_embeddings,
            trainable,
            total,
            100 * trainable / total,
        )

    # --- checkpoints and resume ------------------------------------------------------------------

    def _resume_point(self) -> tuple[int, Path] | None:
        """The newest complete (manifest-bearing) checkpoint synced by an earlier pod of this attempt."""
        uri = self.run_spec.output.checkpoints_uri
        store = self._store("OUTPUT", uri)
        steps = sorted((s, name) for name in store.list_children(uri) if (s := checkpoint_step(name)) is not None)
        for step, name in reversed(steps):
            if read_manifest(store, join(uri, name)) is None:
                continue  # upload interrupted before the manifest: not a checkpoint
            local = self.workdir / "resume" / name
            fetch_verified(store, join(uri, name), local)
            log.info("resuming from %s (step %d)", join(uri, name), step)
            return step, local
        return None

    def sync_checkpoint(self, local: Path, step: int) -> None:
        """Upload a checkpoint (manifest last), then drop older remote ones; the newest complete one always survives."""
        uri = self.run_spec.output.checkpoints_uri
        store = self._store("OUTPUT", uri)
        target = join(uri, checkpoint_name(step))
        publish(store, local, target, {"step": step, "kind": "checkpoint", "trainerVersion": __version__})
        for name in store.list_children(uri):
            older = checkpoint_step(name)
            if older is not None and older < step:
                store.delete_prefix(join(uri, name) + "/")
        self.reporter.report(self._progress_fields(), checkpoint={"uri": target + "/", "step": step}, force=True)
        log.info("checkpoint of step %d synced to %s", step, target)

    # --- training ------------------------------------------------------------------------------

    def _arguments(self) -> Any:
        from transformers import TrainingArguments

        t = self.spec.training
        has_eval = self.data.eval is not None
        return TrainingArguments(
            output_dir=str(self.workdir / "run"),
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.batch_size,
            gradient_accumulation_steps=self.accumulation,
            learning_rate=t.learning_rate,
            num_train_epochs=t.epochs or 1.0,
            max_steps=t.max_steps or -1,
            lr_scheduler_type=t.scheduler,
            warmup_steps=t.warmup_ratio,
            weight_decay=t.weight_decay,
            optim=resolve_optimizer(t.optimizer, self.device),
            logging_steps=t.logging_steps,
            logging_first_step=True,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=1,
            eval_strategy=("steps" if t.eval_steps else "epoch") if has_eval else "no",
            eval_steps=t.eval_steps,
            seed=t.seed,
            data_seed=t.seed,
            gradient_checkpointing=False,  # already set up on the model (see _setup_model)
            bf16=self.device.kind == "cuda" and self.device.dtype_name == "bfloat16",
            fp16=self.device.kind == "cuda" and self.device.dtype_name == "float16",
            use_cpu=self.device.kind == "cpu",
            report_to=[],
            remove_unused_columns=False,
            # Packed batches hold no padding (and no attention_mask to count it by).
            include_num_input_tokens_seen="all" if self.spec.training.packing else "non_padding",
            dataloader_num_workers=0,
            disable_tqdm=not sys.stderr.isatty(),
        )

    def _trainer(self) -> Any:
        from transformers import Trainer

        from .callbacks import CheckpointSync, GracefulStop, ProgressCallback

        trainer = Trainer(
            model=self.model,
            args=self._arguments(),
            train_dataset=self.data.train,
            eval_dataset=self.data.eval,
            data_collator=make_collator(self.spec.training.packing, self.tokenizer, self.loss_logits_only),
            callbacks=[ProgressCallback(self), GracefulStop(self), CheckpointSync(self)],
        )
        self.trainer = trainer
        return trainer

    def _train(self, resume: tuple[int, Path] | None) -> Any:
        import torch

        self._progress("training", force=True)
        checkpoint = str(resume[1]) if resume else None
        try:
            return self._trainer().train(resume_from_checkpoint=checkpoint)
        except torch.OutOfMemoryError as error:
            # Backoff only before the first optimizer step: later, the memory high-water mark is known
            # to fit and an OOM means something else changed.
            if self.trainer.state.global_step > 0 or self.batch_size == 1 or self.backoff_note:
                raise OutOfMemory(f"CUDA out of memory at batchSize={self.batch_size}: {error}") from error
            self.batch_size //= 2
            self.accumulation *= 2
            self.backoff_note = (
                f"out of GPU memory at the first step; retrying with batchSize={self.batch_size} and "
                f"gradientAccumulationSteps={self.accumulation} (same effective batch)"
            )
            log.warning("%s", self.backoff_note)
            torch.cuda.empty_cache()
            self._progress(self.backoff_note, force=True)
            return self._trainer().train(resume_from_checkpoint=checkpoint)

    # --- progress and publishing -----------------------------------------------------------------

    def _progress_fields(self, message: str | None = None) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {"message": message} if message else {}
        state = trainer.state
        total = state.max_steps or None
        fields: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if total:
            fields["totalSteps"] = total
            fields["percent"] = min(100, int(100 * state.global_step / total))
        losses = [h for h in state.log_history if "loss" in h]
        if losses:
            fields["loss"] = round(float(losses[-1]["loss"]), 6)
            fields["learningRate"] = float(losses[-1].get("learning_rate", 0.0))
        evals = [h for h in state.log_history if "eval_loss" in h]
        if evals:
            fields["evalLoss"] = round(float(evals[-1]["eval_loss"]), 6)
        elapsed = time.monotonic() - self.train_started if hasattr(self, "train_started") else 0.0
        if elapsed > 0 and state.num_input_tokens_seen:
            fields["tokensPerSecond"] = round(state.num_input_tokens_seen / elapsed, 2)
        if elapsed > 0 and total and state.global_step > self.first_step:
            rate = (state.global_step - self.first_step) / elapsed
            fields["etaSeconds"] = int((total - state.global_step) / rate)
        note = message or self.backoff_note
        if note:
            fields["message"] = note[:1024]
        return fields

    def _progress(self, message: str, force: bool = False) -> None:
        log.info("%s", message)
        self.reporter.report(self._progress_fields(message), force=force)

    def _publish(self, output: Any, resume: tuple[int, Path] | None, runtime: float) -> TrainerResult:
        self._progress("publishing the adapter", force=True)
        out = self.run_spec.output
        local = self.workdir / "adapter"
        self.model.save_pretrained(local)
        self.tokenizer.save_pretrained(local)
        metrics = output.metrics
        evaluation = self.trainer.evaluate() if self.data.eval is not None else {}
        provenance = Provenance(
            base_model_revision=self.model_revision[:256],
            dataset_sha256=self.dataset_sha256,
            trainer_image=self.run_spec.trainer_image,
            trainer_version=__version__,
        )
        hyperparameters = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        metadata = {
            "kind": "adapter",
            "baseModel": self.spec.base_model.uri,
            "datasetUri": self.spec.dataset.uri,
            "provenance": provenance.to_json_dict(),
            "spec": hyperparameters,
        }
        adapter = publish(self._store("OUTPUT", out.adapter_uri), local, out.adapter_uri, metadata)
        merged = self._publish_merged(metadata) if self.spec.output.merge and out.merged_model_uri else None
        seen = self.trainer.state.num_input_tokens_seen or 0
        train_runtime = float(metrics.get("train_runtime", runtime))
        result = TrainerResult(
            result="succeeded",
            adapter=Artifact(uri=adapter.uri, sha256=adapter.manifest_sha256, size_bytes=adapter.size_bytes),
            merged_model=merged,
            metrics=TrainingMetrics(
                train_loss=_finite(metrics.get("train_loss")),
                eval_loss=_finite(evaluation.get("eval_loss")),
                steps=self.trainer.state.global_step,
                train_samples=len(self.data.train),
                tokens_per_second=round(seen / train_runtime, 2) if train_runtime > 0 else None,
                runtime_seconds=round(runtime, 2),
            ),
            provenance=provenance,
            resumed_from_step=resume[0] if resume else None,
            message=self.backoff_note,
        )
        self.reporter.report({**self._progress_fields(), "percent": 100, "message": "adapter published"}, force=True)
        return result

    def _publish_merged(self, metadata: dict[str, Any]) -> Artifact:
        """Merge into a full-precision reload of the base (merging into 4-bit weights would lose precision)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        self._progress("merging the adapter into the base model", force=True)
        dtype = torch.bfloat16 if self.device.dtype_name == "bfloat16" else torch.float32
        base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        merged = PeftModel.from_pretrained(base, self.workdir / "adapter").merge_and_unload()
        local = self.workdir / "merged"
        merged.save_pretrained(local)
        self.tokenizer.save_pretrained(local)
        uri = self.run_spec.output.merged_model_uri or ""
        published = publish(self._store("OUTPUT", uri), local, uri, {**metadata, "kind": "merged-model"})
        return Artifact(uri=published.uri, sha256=published.manifest_sha256, size_bytes=published.size_bytes)

    def start_clock(self, step: int) -> None:
        self.train_started = time.monotonic()
        self.first_step = step


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
