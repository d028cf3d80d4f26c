"""QLoRA throughput and memory: our trainer's configuration vs a plain HF Trainer baseline, side by side.

    python bench/gpu_qlora.py                 # Llama-3.1-8B architecture, random weights, seq 2048, batch 2 (GPU)
    python bench/gpu_qlora.py --tiny          # the same code path on CPU with a tiny config (smoke run)

No weights are downloaded: a random-initialised model of the real architecture costs exactly what the
real one costs per token. Each variant loads the same saved checkpoint with the same 4-bit NF4
quantization and LoRA (r=16, all linear layers) and trains on the same variable-length examples:

- baseline: HF Trainer + peft + bitsandbytes as a tutorial sets it up: batches padded to their
  longest example, reentrant gradient checkpointing, default AdamW, logits for the whole batch.
- ours-unpacked: our model setup with `training.packing: false` (padded batches), to isolate packing.
- ours-plain: packed, with the CPU fast paths (fastpath.py: per-example attention, cheaper dropout
  masks) switched off, to isolate them; the same as "ours" on a GPU, where they are not used.
- ours-all-logits: packed, with the output head run on every token rather than on the loss
  positions only (pack.loss_positions), to isolate that.
- ours: what `finetune-trainer` does (SFTRecipe's model, collator and arguments): padding-free
  packing, logits only where a label counts, non-reentrant checkpointing, paged 8-bit AdamW on GPU,
  the CPU fast paths on CPU; and
  "ours+liger" adds Liger's fused kernels (fused linear cross-entropy never materialises the
  128k-vocabulary logits) when installed; "ours+liger-gpu-embed" is the same with the input
  embedding's table left in GPU memory (hostembed.py moves it to host memory on CUDA), to isolate that.

`--nproc N` measures scaling instead: the "ours" variant under torchrun with 1 and with N GPUs of this
machine (DDP, each rank its own GPU, as a FineTuneJob with `resources.gpus: N` runs), and prints the
scaling efficiency, tokens/s at N GPUs / (N x tokens/s at 1), with tokens counted over all ranks.
With fewer GPUs than N it says the figure is pending; `--tiny --nproc 2` runs the same code path
with gloo on CPU, where the figure means nothing (the ranks share the cores).

`--preference` measures memory instead: SFT and DPO on the same pairs, each in a fresh process so
each has its own peak (peak RSS on CPU, peak GPU memory on CUDA), both with our model setup and
padded batches (`training.packing: false`, as TRL's preference trainers need). "sft" trains on
prompt + chosen; "dpo" is TRL's DPOTrainer as `objective: dpo` runs it (reference log-probabilities
from the same loaded base through a frozen copy of the adapter); "dpo+ref-model" hands DPOTrainer a
second loaded base as its reference, what the first avoids. The target: dpo <= 1.3 x sft.

Printed per variant: real (non-pad) tokens/s, padded-token fraction, peak GPU memory, MFU (6 x params
per real token, over the GPU's dense bf16 peak; attention not counted), and what the model itself
holds (its tensors' bytes by kind, wherever they are: the floor under the peak). `--layers N` keeps
the architecture's widths with N decoder layers, to measure those bytes at full width on a CPU.
Ratios are against the baseline of this run. "batch 2" means 2 rows per step: 2 padded examples for
the baseline, 2 packed rows of up to seq-len tokens (several examples each) for ours, which is what
packing is for.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image"), str(REPO / "hack")]

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Result:
    variant: str
    tokens_per_second: float
    padded_fraction: float
    peak_memory_gib: float
    mfu: float | None
    step_seconds: float
    loss: float
    resident_gib: dict[str, float]


def resident_gib(model: Any) -> dict[str, float]:
    """The model's own bytes by kind (GiB): what stays allocated all run, under every activation.

    4-bit weights count their packed bytes plus their quantization state (absmax, and with double
    quantization its own absmax and code); a table kept in host memory is counted apart."""
    from finetune_trainer.hostembed import HostEmbedding

    kinds = {"4-bit weights": 0, "other frozen": 0, "trainable": 0, "in host memory": 0}
    for parameter in model.parameters():
        if parameter.requires_grad:
            kinds["trainable"] += parameter.nbytes
            continue
        state = getattr(parameter, "quant_state", None)
        if state is None:
            kinds["other frozen"] += parameter.nbytes
            continue
        nested = [state.state2.absmax, state.state2.code] if state.nested else []
        kinds["4-bit weights"] += parameter.nbytes + sum(t.nbytes for t in (state.absmax, state.code, *nested))
    for buffer in model.buffers():
        kinds["other frozen"] += buffer.nbytes
    for module in model.modules():
        if isinstance(module, HostEmbedding):
            kinds["in host memory"] += module.table.nbytes
    return {kind: round(size / 2**30, 3) for kind, size in kinds.items()}


def llama_config(tiny: bool) -> Any:
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            vocab_size=4096,
            hidden_size=256,
            intermediate_size=704,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        )
    # Llama-3.1-8B
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def save_random_model(config: Any, dest: Path, device: str) -> int:
    import torch
    from transformers import LlamaForCausalLM

    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return params


def examples(count: int, max_len: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """Chat-SFT-like lengths (log-uniform from 64 to max_len); loss on the second half (the "response")."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        length = int(math.exp(rng.uniform(math.log(64), math.log(max_len))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        half = length // 2
        rows.append({"input_ids": ids, "labels": [-100] * half + ids[half:]})
    return rows


def load_baseline(model_dir: Path, cuda: bool, dtype_name: str) -> Any:
    """How tutorials set QLoRA up: peft's prepare_model_for_kbit_training (fp32 upcast, reentrant checkpointing)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, dtype_name)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=dtype, device_map={"": 0 if cuda else "cpu"}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )


def load_ours(
    model_dir: Path,
    device: Any,
    liger: bool,
    packing: bool,
    fast_paths: bool = True,
    loss_positions: bool = True,
    host_embeddings: bool = True,
) -> Any:
    """Exactly what SFTRecipe.setup_model does (the same function); returns its ModelSetup."""
    from finetune_operator.api.common import Quantization
    from finetune_operator.api.finetunejob import LoraSettings
    from finetune_trainer.model import setup_model

    setup = setup_model(
        model_dir,
        device,
        quantization=Quantization(),
        lora=LoraSettings(r=16, alpha=32, dropout=0.05),
        packing=packing,
        gradient_checkpointing=True,
        fused_kernels=liger,
        fast_paths=fast_paths,
        loss_positions=loss_positions,
        host_embeddings=host_embeddings,
    )
    if liger != setup.fused_kernels:
        raise RuntimeError("liger-kernel requested but not applied (needs CUDA and liger-kernel)")
    return setup


PROFILED_STEPS = 2


class Timer:
    """Times optimizer steps after a warm-up, with the GPU synchronised at each boundary; with a
    profile folder, profiles PROFILED_STEPS more steps after the timed ones (so the profiler's own
    overhead stays out of tokens/s) and writes where their time went."""

    def __init__(self, warmup: int, steps: int, cuda: bool, profile: Path | None = None) -> None:
        self.warmup, self.steps, self.cuda, self.profile = warmup, steps, cuda, profile
        self.start: float | None = None
        self.end: float | None = None
        self.tokens_at_start = self.tokens_at_end = 0
        self.profiler: Any = None
        self.summary = ""

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps + (PROFILED_STEPS if self.profile else 0)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                timer.on_step_end(state.global_step, state.num_input_tokens_seen)

        return _Callback()

    def on_step_end(self, step: int, tokens: int) -> None:
        if step == self.warmup:
            self._sync()
            self.start, self.tokens_at_start = time.perf_counter(), tokens
        if step == self.warmup + self.steps:
            self._sync()
            self.end, self.tokens_at_end = time.perf_counter(), tokens
            if self.profile:
                self._start_profiler()
        if self.profiler is not None and step == self.total_steps:
            self._sync()
            self.profiler.stop()
            self.summary = profile_summary(self.profiler, self.cuda, time.perf_counter() - (self.end or 0.0))
            self.profiler = None

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities)
        self.profiler.start()

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def profile_summary(profiler: Any, cuda: bool, wall: float) -> str:
    """The ops that took the most time (GPU kernel time on CUDA, CPU time otherwise), and on CUDA how
    busy the GPU was: well under 100 % means the step waits on the CPU launching small kernels."""
    from torch.autograd import DeviceType

    events = profiler.key_averages()
    head = f"{PROFILED_STEPS} steps profiled, {wall:.2f} s"
    if cuda:
        # The kernels' own rows, as the table's total counts them: a CPU op's device time repeats theirs.
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        launches = sum(e.count for e in kernels) // PROFILED_STEPS
        head += f"; GPU busy {busy:.2f} s ({busy / wall:.0%}); {launches} kernels per step"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return head + "\n" + events.table(sort_by=key, row_limit=25)


def run_variant(
    name: str, model_dir: Path, data: list[dict[str, list[int]]], args: argparse.Namespace, params: int, config: Any
) -> Result:
    import torch
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast, Trainer, TrainingArguments

    from finetune_trainer.data.encode import padding_fraction
    from finetune_trainer.data.pack import pack_rows
    from finetune_trainer.distributed import Ranks, strategy_arguments
    from finetune_trainer.model import Device, make_collator, pick_device, resolve_optimizer

    cuda = torch.cuda.is_available()
    ranks = Ranks.from_env(os.environ)
    picked = pick_device(args.dtype, cuda, cuda and torch.cuda.is_bf16_supported())
    device = Device(picked.kind, picked.dtype_name, ranks.local_rank if cuda else 0)
    packed = name in {"ours", "ours-plain", "ours-all-logits", "ours+liger", "ours+liger-gpu-embed"}
    padded_lengths = [len(r["input_ids"]) for r in data[: (args.warmup + args.steps) * args.batch_size]]
    if packed:
        setup = load_ours(
            model_dir,
            device,
            liger=name.startswith("ours+liger"),
            packing=True,
            fast_paths=name != "ours-plain",
            loss_positions=name != "ours-all-logits",
            host_embeddings=name != "ours+liger-gpu-embed",
        )
        model = setup.model
        train: list[dict[str, list[int]]] = pack_rows(data, args.seq_len)  # bins of up to seq_len tokens
        collator: Any = make_collator(True, None, setup.loss_logits_only)
        optim = resolve_optimizer("auto", device)
        padded = 0.0  # packed rows are flattened into one sequence: no pad tokens at all
    elif name == "ours-unpacked":
        # Our model setup with packing switched off (training.packing: false): what packing alone buys.
        model = load_ours(model_dir, device, liger=False, packing=False).model
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=_dummy_tokenizer(), pad_token="<pad>")
        collator = make_collator(False, tokenizer)
        optim = resolve_optimizer("auto", device)
        train = data
        padded = padding_fraction(padded_lengths, args.batch_size)
    else:
        model = load_baseline(model_dir, cuda, device.dtype_name)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=_dummy_tokenizer(), pad_token="<pad>")
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        optim = "adamw_torch"
        train = data
        padded = padding_fraction(padded_lengths, args.batch_size)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = Timer(args.warmup, args.steps, cuda, args.profile)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=tempfile.mkdtemp(),
            per_device_train_batch_size=args.batch_size,
            max_steps=timer.total_steps,
            learning_rate=2e-4,
            optim=optim,
            bf16=device.dtype_name == "bfloat16",
            use_cpu=not cuda,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            include_num_input_tokens_seen="all" if packed else "non_padding",
            seed=0,
            data_seed=0,
            **strategy_arguments("ddp", device.kind, ranks, 300),
        ),
        train_dataset=train,  # a list is a map-style dataset; `datasets` is not needed here
        data_collator=collator,
        callbacks=[timer.callback()],
    )
    output = trainer.train()
    elapsed = (timer.end or 0.0) - (timer.start or 0.0)
    tokens = timer.tokens_at_end - timer.tokens_at_start
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        (args.profile / f"{name}.txt").write_text(timer.summary + "\n")
        print(f"{name}: {timer.summary.splitlines()[0]}; ops in {args.profile / name}.txt")
    tps = tokens / elapsed if elapsed > 0 else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    mfu = None
    if cuda:
        gpu = torch.cuda.get_device_name()
        peak_flops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
        if peak_flops:
            mfu = tps * 6 * params / (peak_flops * 1e12)  # 6N per token; attention FLOPs not counted
    result = Result(
        name,
        round(tps, 1),
        round(padded, 4),
        round(peak, 2),
        round(mfu, 4) if mfu else None,
        round(elapsed / max(args.steps, 1), 3),
        round(float(output.training_loss), 4),
        resident_gib(model),
    )
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.tokens_per_second)[len(runs) // 2]


def speedups(rounds: dict[str, list[Result]]) -> dict[str, float]:
    """Each variant over the baseline of the same round (same spell of the machine), median over rounds."""
    base = [r.tokens_per_second for r in rounds["baseline"]]
    return {
        name: statistics.median(r.tokens_per_second / b for r, b in zip(runs, base, strict=True) if b)
        for name, runs in rounds.items()
        if all(base)
    }


def _dummy_tokenizer() -> Any:
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))


PREFERENCE_VARIANTS = ("sft", "dpo", "dpo+ref-model")


def _word_tokenizer(vocab: int) -> Any:
    """Token i is the word `w<i>`: random ids become text that TRL tokenises back to the same ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def preference_worker(args: argparse.Namespace, variant: str, config: Any) -> int:
    """One variant of --preference in this (fresh) process; writes its figures to --worker-json."""
    import resource

    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from finetune_trainer.model import load_base_model, pick_device, resolve_optimizer

    cuda = torch.cuda.is_available()
    device = pick_device(args.dtype, cuda, cuda and torch.cuda.is_bf16_supported())
    model_dir = args.worker_json.parent / "model"
    tokenizer = _word_tokenizer(config.vocab_size)
    rng = random.Random(0)
    third = args.seq_len // 3

    def words(count: int) -> str:
        return " ".join(f"w{rng.randrange(3, config.vocab_size)}" for _ in range(count))

    rows = [{"prompt": words(third), "chosen": words(third), "rejected": words(third)} for _ in range(64)]
    model = load_ours(model_dir, device, liger=False, packing=False).model
    timer = Timer(args.warmup, args.steps, cuda)
    common: dict[str, Any] = {
        "output_dir": tempfile.mkdtemp(),
        "per_device_train_batch_size": args.batch_size,
        "max_steps": timer.total_steps,
        "learning_rate": 2e-5,
        "optim": resolve_optimizer("auto", device),
        "bf16": device.dtype_name == "bfloat16",
        "use_cpu": not cuda,
        "report_to": [],
        "save_strategy": "no",
        "remove_unused_columns": False,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "gradient_checkpointing": False,  # set up on the model already
    }
    if variant == "sft":
        encoded = []
        for row in rows:
            prompt, chosen = tokenizer(row["prompt"])["input_ids"], tokenizer(row["chosen"])["input_ids"]
            encoded.append({"input_ids": prompt + chosen, "labels": [-100] * len(prompt) + chosen})
        trainer: Any = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=encoded,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[timer.callback()],
        )
    else:
        from trl import DPOConfig, DPOTrainer

        reference = None
        if variant == "dpo+ref-model":
            from finetune_operator.api.common import Quantization

            reference = load_base_model(model_dir, Quantization(), device, False)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=DPOConfig(**common, max_length=args.seq_len, disable_dropout=False),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[timer.callback()],
        )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    elapsed = (timer.end or 0.0) - (timer.start or 0.0)
    figures = {
        "variant": variant,
        "peak RSS GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak GPU GiB": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "s/step": round(elapsed / max(args.steps, 1), 3),
    }
    args.worker_json.write_text(json.dumps(figures))
    return 0


def preference_memory(args: argparse.Namespace, config: Any) -> int:
    """SFT vs DPO (vs DPO with a second reference model), each in its own process, side by side."""
    import torch
    from record import record

    cuda = torch.cuda.is_available()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        params = save_random_model(config, Path(folder) / "model", "cpu")
        print(f"random model: {params / 1e9:.2f}B parameters ({config.num_hidden_layers} layers)")
        for variant in PREFERENCE_VARIANTS:
            out = Path(folder) / f"{variant}.json"
            same = ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
            same += ["--warmup", str(args.warmup), "--dtype", args.dtype, *(["--tiny"] if args.tiny else [])]
            same += ["--layers", str(args.layers)] if args.layers else []
            command = [sys.executable, str(Path(__file__).resolve()), *same, "--preference-worker", variant]
            subprocess.run([*command, "--worker-json", str(out), "--no-record"], check=True)
            results.append(json.loads(out.read_text()))
    key = "peak GPU GiB" if cuda else "peak RSS GiB"
    sft = results[0][key]
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\n{device}, seq {args.seq_len}, batch {args.batch_size} pairs, {config.num_hidden_layers} layers")
    print(f"{'variant':<15} {key:>13} {'x sft':>6} {'s/step':>8}")
    for r in results:
        print(f"{r['variant']:<15} {r[key]:>13.3f} {r[key] / sft:>6.2f} {r['s/step']:>8.3f}")
    record(
        "gpu_qlora.py --preference",
        {
            "device": device,
            "layers": config.num_hidden_layers,
            "seq": args.seq_len,
            **{f"{r['variant']} {key}": r[key] for r in results},
            "dpo x sft": round(results[1][key] / sft, 2),
            "dpo+ref-model x sft": round(results[2][key] / sft, 2),
        },
        enabled=not args.no_record,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke run)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layers", type=int, help="decoder layers (default: the architecture's)")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="compute dtype (auto: bf16 on GPU)"
    )
    parser.add_argument("--variants", default="baseline,ours,ours+liger,ours+liger-gpu-embed")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the variants round-robin N times (every other round reversed), keep medians",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help=f"profile {PROFILED_STEPS} more steps per variant after the timed ones; write DIR/<variant>.txt",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    parser.add_argument(
        "--nproc", type=int, help="scaling: the 'ours' variant on 1 and on N GPUs under torchrun (DDP), side by side"
    )
    parser.add_argument(
        "--preference", action="store_true", help="memory: SFT vs DPO on the same pairs, each in its own process"
    )
    parser.add_argument("--worker-json", type=Path, help=argparse.SUPPRESS)  # a worker of --nproc or --preference
    parser.add_argument("--preference-worker", choices=PREFERENCE_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nproc:
        return scaling(args)
    import torch

    cuda = torch.cuda.is_available()
    if args.tiny:
        args.seq_len = min(args.seq_len, 256)
    config = llama_config(args.tiny)
    if args.layers:
        config.num_hidden_layers = args.layers
    if args.preference_worker:
        return preference_worker(args, args.preference_worker, config)
    if args.preference:
        return preference_memory(args, config)
    variants = args.variants.split(",")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        skipped = [name for name in variants if name.startswith("ours+liger")]
        if skipped:
            print(f"liger-kernel not installed: skipping {', '.join(skipped)}")
            variants = [name for name in variants if name not in skipped]
    if args.worker_json:
        return scaling_worker(args, config)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder) / "model"
        started = time.perf_counter()
        params = save_random_model(config, model_dir, "cuda" if cuda else "cpu")
        print(f"random model: {params / 1e9:.2f}B parameters, saved in {time.perf_counter() - started:.0f}s")
        # Enough examples for the packed variants too (each of their rows holds several examples).
        data = examples((args.warmup + args.steps) * args.batch_size * 8, args.seq_len, config.vocab_size, seed=0)
        rounds: dict[str, list[Result]] = {name: [] for name in variants}
        for index in range(args.rounds):
            # Round-robin, so a slow spell of the machine hits every variant; every other round in
            # reverse (ABBA), so a drift in its speed favours no variant for running first.
            for name in variants if index % 2 == 0 else variants[::-1]:
                rounds[name].append(run_variant(name, model_dir, data, args, params, config))
        results = [median_run(rounds[name]) for name in variants]
    base = next((r for r in results if r.variant == "baseline"), None)
    speedup = speedups(rounds) if base else {}
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(
        f"\n{device}, seq {args.seq_len}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up"
        + (f", medians of {args.rounds} rounds (x base: of the per-round ratios)" if args.rounds > 1 else "")
    )
    if args.rounds > 1:
        for name, runs in rounds.items():
            print(f"  {name}: tokens/s by round {[r.tokens_per_second for r in runs]}")
    print(
        f"{'variant':<21} {'tokens/s':>10} {'x base':>7} {'padded':>7} {'peak GiB':>9} {'x base':>7} "
        f"{'MFU':>6} {'loss':>7}"
    )
    for r in results:
        speed = f"{speedup[r.variant]:.2f}" if r.variant in speedup else "-"
        memory = f"{r.peak_memory_gib / base.peak_memory_gib:.2f}" if base and base.peak_memory_gib else "-"
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "-"
        print(
            f"{r.variant:<21} {r.tokens_per_second:>10.1f} {speed:>7} {r.padded_fraction:>7.1%} "
            f"{r.peak_memory_gib:>9.2f} {memory:>7} {mfu:>6} {r.loss:>7.3f}"
        )
    print(f"\nthe model's own tensors, GiB ({config.num_hidden_layers} layers):")
    for r in results:
        print(f"  {r.variant:<21} " + ", ".join(f"{kind} {size:.3f}" for kind, size in r.resident_gib.items()))
    from record import record

    for r in results:
        host = r.resident_gib["in host memory"]
        record(
            "gpu_qlora.py",
            {
                "device": device,
                "seq x batch": f"{args.seq_len} x {args.batch_size}",
                "variant": r.variant,
                "tokens/s": round(r.tokens_per_second, 1),
                "x baseline": round(speedup[r.variant], 2) if r.variant in speedup else "-",
                "padded": f"{r.padded_fraction:.1%}",
                "peak GiB": round(r.peak_memory_gib, 2) if r.peak_memory_gib else "-",
                "memory x baseline": round(r.peak_memory_gib / base.peak_memory_gib, 2)
                if base and base.peak_memory_gib
                else "-",
                "MFU": f"{r.mfu:.1%}" if r.mfu is not None else "-",
                "model GiB (device + host)": f"{sum(r.resident_gib.values()) - host:.2f} + {host:.2f}",
            },
            enabled=not args.no_record,
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "args": vars(args) | {"json": str(args.json)},
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
    return 0


def scaling_worker(args: argparse.Namespace, config: Any) -> int:
    """One rank of a --nproc run: every rank builds the same random model (seed 0) and trains "ours";
    rank 0 writes the result (tokens counted over all ranks by the Trainer)."""
    import torch
    import torch.distributed as dist

    from finetune_trainer import distributed

    ranks = distributed.Ranks.from_env(os.environ)
    model_dir = args.worker_json.parent / "model"
    if ranks.main and not model_dir.exists():
        save_random_model(config, model_dir, "cpu")
    if ranks.distributed:
        distributed.init(ranks, "cuda" if torch.cuda.is_available() else "cpu", timeout_seconds=300)
        dist.barrier()  # the others wait for rank 0's model
    data = examples((args.warmup + args.steps) * args.batch_size * 8, args.seq_len, config.vocab_size, seed=0)
    result = run_variant("ours", model_dir, data, args, 0, config)  # no MFU: scaling is the figure here
    if ranks.main:
        args.worker_json.write_text(json.dumps(asdict(result)))
    return 0


def _torchrun(args: argparse.Namespace, nproc: int, folder: Path) -> Result:
    """The "ours" variant with `nproc` ranks on this machine (one: a plain process, as a one-GPU
    FineTuneJob runs); rank 0's figures."""
    out = folder / f"ranks-{nproc}.json"
    same = ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    same += ["--warmup", str(args.warmup), "--dtype", args.dtype, *(["--tiny"] if args.tiny else [])]
    same += ["--layers", str(args.layers)] if args.layers else []
    script = str(Path(__file__).resolve())
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    subprocess.run([*launcher, script, *same, "--worker-json", str(out), "--no-record"], check=True)
    return Result(**json.loads(out.read_text()))


def scaling(args: argparse.Namespace) -> int:
    """Tokens/s at 1 and at N GPUs, one after the other in this run; the efficiency, or why it is pending."""
    import torch
    from record import record

    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name() if gpus else "CPU"
    if not args.tiny and gpus < max(args.nproc, 2):
        print(f"scaling efficiency at {args.nproc} GPUs: pending (this machine has {gpus} GPU(s); needs {args.nproc})")
        record(
            "gpu_qlora.py --nproc",
            {"device": device, "GPUs": gpus, "nproc": args.nproc, "scaling efficiency": "pending"},
            enabled=not args.no_record,
        )
        return 0
    with tempfile.TemporaryDirectory() as folder:
        one = _torchrun(args, 1, Path(folder))
        many = _torchrun(args, args.nproc, Path(folder))
    efficiency = many.tokens_per_second / (args.nproc * one.tokens_per_second)
    print(
        f"\n{device} x{gpus}, seq {args.seq_len}, batch {args.batch_size} per rank: "
        f"1 rank {one.tokens_per_second:.1f} tokens/s, {args.nproc} ranks {many.tokens_per_second:.1f} tokens/s; "
        f"scaling efficiency {efficiency:.2f}" + (" (CPU smoke run: ranks share the cores)" if not gpus else "")
    )
    record(
        "gpu_qlora.py --nproc",
        {
            "device": device,
            "GPUs": gpus,
            "nproc": args.nproc,
            "tokens/s at 1": round(one.tokens_per_second, 1),
            "tokens/s at N": round(many.tokens_per_second, 1),
            "scaling efficiency": round(efficiency, 3),
        },
        enabled=not args.no_record,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
