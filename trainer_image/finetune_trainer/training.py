"""The lifecycle every adapter-training recipe shares: inputs -> tokenizer -> data -> model -> train -> publish.

    training = AdapterTraining(run, workdir, environ, reporter, prepare=..., make_trainer=..., packing=...)
    training.setup(); training.publish(training.train())

A recipe supplies what its objective changes, as two functions: how the dataset becomes training rows
(`prepare`) and which Trainer trains them (`make_trainer`). The rest is this one code path for every
objective, so SFT and DPO cannot drift apart in it: fetching and verifying the inputs, a starting
adapter, QLoRA, resuming from the newest checkpoint, the OOM backoff, SIGTERM, rank roles and
publishing. Only the LoRA adapter trains; it is saved in PEFT's own format so any PEFT or vLLM user
can load it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from finetune_operator.api.contract import TrainerResult, TrainingRunSpec

from . import distributed
from .callbacks import CheckpointSync, GracefulStop, ProgressCallback
from .checkpoints import CheckpointSyncer, checkpoint_name, fetch_checkpoint, newest_checkpoint
from .data.refine import RefineReport
from .errors import InputError, Interrupted, OutOfMemory
from .inputs import FetchedModel, Stores, fetch_model
from .model import ModelSetup, device_for, load_tokenizer, resolve_optimizer, setup_model
from .model_card import TRAINER_STATE
from .progress import StopRequest, TrainerProgress
from .publish import adapter_result, publish_adapter, publish_merged
from .report import ProgressReporter
from .storage import fetch, fetch_verified, join

log = logging.getLogger("finetune_trainer")


class Prepared(Protocol):
    """A recipe's training data: data.PreparedData (SFT) or data.preference.PreparedPairs."""

    train: Any
    eval: Any | None
    report: RefineReport
    train_examples: int

    def summary(self) -> str: ...


@dataclass(frozen=True)
class TrainerParts:
    """What a recipe's `make_trainer` builds its Trainer from."""

    model: Any
    tokenizer: Any
    data: Any  # the recipe's own Prepared
    setup: ModelSetup
    arguments: dict[str, Any]
    """TrainingArguments keywords every objective shares (a TRL config takes them too)."""
    callbacks: list[Any]


class AdapterTraining:
    def __init__(
        self,
        run: TrainingRunSpec,
        workdir: Path,
        environ: Mapping[str, str],
        reporter: ProgressReporter,
        *,
        prepare: Callable[[Path, Any], Prepared],
        make_trainer: Callable[[TrainerParts], Any],
        packing: bool,
    ) -> None:
        self.run_spec = run
        self.spec = run.job
        self.workdir = workdir
        self.prepare = prepare
        self.make_trainer = make_trainer
        self.packing = packing
        self.stores = Stores(run.storage, environ)
        self.ranks = distributed.Ranks.from_env(environ)
        self.device = device_for(self.spec.quantization, self.ranks.local_rank)
        if self.device.kind == "cpu" and self.device.dtype_name == "float16":
            raise InputError(
                "quantization.computeDtype float16 is not supported on CPU; use auto or float32", reason="InvalidSpec"
            )
        self.batch_size = self.spec.training.batch_size
        self.accumulation = self.spec.training.gradient_accumulation_steps
        self.progress = TrainerProgress(reporter)
        self.stop = StopRequest()
        self.agreed_stop = distributed.AgreedStop(self.stop)
        self.sharded = self.ranks.distributed and self.spec.distributed.strategy == "fsdp"
        self.started = time.monotonic()
        self.base: FetchedModel | None = None
        self.adapter_dir: Path | None = None
        self.dataset_sha256 = ""
        self.tokenizer: Any = None
        self.data: Any = None
        self.setup_info: ModelSetup | None = None
        self.model: Any = None
        self.trainer: Any = None
        self.resume: tuple[int, Path] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> TrainerResult:
        self.started = time.monotonic()
        self.stop.install()
        distributed.init(self.ranks, self.device.kind, self.spec.distributed.timeout_seconds)
        self.setup()
        return self.publish(self.train())

    def setup(self) -> None:
        self.setup_data()
        self.setup_model()

    def setup_data(self) -> Prepared:
        """Fetch the base model, starting adapter and dataset, load the tokenizer, read and tokenise the
        data: all that `finetune-trainer prepare` shows, and nothing that needs the weights in memory."""
        self.progress.say("fetching the base model and dataset")
        base_uri, data_uri = self.spec.base_model.uri, self.spec.dataset.uri
        self.base = fetch_model(self.stores("BASE_MODEL", base_uri), base_uri, self.workdir / "base-model")
        if self.spec.adapter is not None:
            start = self.spec.adapter.source().uri  # the operator resolved a fineTuneJobRef into it
            self.adapter_dir = self.workdir / "start-adapter"
            fetch_verified(self.stores("ADAPTER", start), start, self.adapter_dir)
        data_dir = self.workdir / "dataset"
        self.dataset_sha256 = fetch(self.stores("DATASET", data_uri), data_uri, data_dir)
        # A starting adapter carries the tokenizer (and chat template) it was trained with.
        own = self.adapter_dir is not None and (self.adapter_dir / "tokenizer_config.json").exists()
        source = self.adapter_dir if own and self.adapter_dir else self.base.path
        self.tokenizer = load_tokenizer(source, self.spec.base_model.trust_remote_code)
        self.progress.say("preparing the dataset")
        self.data = self.prepare(data_dir, self.tokenizer)
        # In status.progress too: what was dropped or truncated is what a user asks about first.
        self.progress.say(f"dataset: {self.data.summary()}")
        return self.data

    def setup_model(self) -> None:
        assert self.base is not None, "setup_data() first"
        self.progress.say("loading the base model")
        setup = setup_model(
            self.base.path,
            self.device,
            quantization=self.spec.quantization,
            lora=self.spec.lora,
            adapter=self.adapter_dir,
            packing=self.packing,
            gradient_checkpointing=self.spec.training.gradient_checkpointing,
            trust_remote_code=self.spec.base_model.trust_remote_code,
            sharded=self.sharded,
        )
        self.setup_info, self.model = setup, setup.model
        trainable, total = self.model.get_nb_trainable_parameters()
        log.info(
            "model: %s on %s/%s (objective %s, starting adapter: %s, fused kernels: %s, CPU fast paths: %s, logits "
            "on loss positions only: %s, input embedding in host memory: %s); %d of %d parameters on the device "
            "train (%.2f%%)",
            type(self.model.get_base_model()).__name__,
            self.device.kind,
            self.device.dtype_name,
            self.spec.objective,
            self.spec.adapter.source().uri if self.spec.adapter else "none",
            setup.fused_kernels,
            setup.cpu_fast_paths,
            setup.loss_logits_only,
            setup.host_embeddings,
            trainable,
            total,
            100 * trainable / total,
        )

    def train(self) -> Any:
        """Train from the newest synced checkpoint, if any; the Trainer's output. After SIGTERM the
        step in flight is checkpointed and Interrupted raised, so the next pod resumes there."""
        checkpoints = self.run_spec.output.checkpoints_uri
        store = self.stores("OUTPUT", checkpoints)
        # Every rank resumes from the step rank 0 found: a checkpoint synced while the others listed
        # would otherwise split them.
        newest = distributed.agree(newest_checkpoint(store, checkpoints))
        self.resume = (newest[0], fetch_checkpoint(store, checkpoints, newest[1], self.workdir)) if newest else None
        self.stop.training = True
        output = self._train_backing_off(str(self.resume[1]) if self.resume else None)
        self.stop.training = False
        if self.agreed_stop.stopped:
            step = self.trainer.state.global_step
            raise Interrupted(
                f"terminated (SIGTERM) at step {step}; its checkpoint is synced to "
                f"{join(checkpoints, checkpoint_name(step))}/ and the next pod resumes there"
            )
        return output

    def publish(self, output: Any) -> TrainerResult:
        assert self.base is not None and self.data is not None
        runtime = time.monotonic() - self.started
        # Under DDP evaluation is a collective: every rank evaluates its share, before any leaves.
        evaluation = self.trainer.evaluate() if self.data.eval is not None else {}
        local = self.workdir / "adapter"
        if self.sharded:
            # The adapter's shards are gathered into one file: a collective, on every rank.
            self.trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
            self.trainer.save_model(str(local))
        # Only several ranks report it (they compare it); hashing the adapter is not free on a large one.
        weights = distributed.trainable_sha256(self.model) if self.ranks.distributed else None
        if not self.ranks.main:
            message = f"rank {self.ranks.rank} of {self.ranks.world_size} trained; rank 0 publishes"
            return TrainerResult(result="succeeded", message=message, rank=self.ranks.rank, weights_sha256=weights)
        self.progress.say("publishing the adapter")
        out = self.run_spec.output
        if not self.sharded:
            # The trained adapter alone: TRL's DPO keeps a frozen "ref" copy of the start beside it.
            self.model.save_pretrained(local, selected_adapters=["default"])
        self.tokenizer.save_pretrained(local)
        # The log history beside the adapter, in the Trainer's own format: the model card draws its loss curve.
        self.trainer.state.save_to_json(str(local / TRAINER_STATE))
        store = self.stores("OUTPUT", out.adapter_uri)
        adapter = publish_adapter(store, local, self.run_spec, self.base.revision, self.dataset_sha256)
        merged = None
        if self.spec.output.merge and out.merged_model_uri:
            self.progress.say("merging the adapter into the base model")
            merged = publish_merged(
                self.stores("OUTPUT", out.merged_model_uri),
                self.base.path,
                local,
                self.workdir / "merged",
                out.merged_model_uri,
                dtype_name=self.device.dtype_name,
                tokenizer=self.tokenizer,
                metadata=adapter.metadata,
            )
        result = adapter_result(
            adapter,
            output.metrics,
            evaluation,
            merged=merged,
            state=self.trainer.state,
            train_samples=self.data.train_examples,  # examples, not the packed rows they fill
            truncated_examples=self.data.report.truncated,
            runtime=runtime,
            resumed_from_step=self.resume[0] if self.resume else None,
            message=self.progress.note,
        )
        if self.ranks.distributed:
            result = result.model_copy(update={"rank": 0, "weights_sha256": weights})
        done = {**self.progress.fields(), "percent": 100, "message": "adapter published"}
        self.progress.reporter.report(done, force=True)
        return result

    # --- training ------------------------------------------------------------------------------

    def arguments(self) -> dict[str, Any]:
        """TrainingArguments keywords of the spec; a TRL config (a TrainingArguments subclass) takes them too."""
        assert self.data is not None
        t = self.spec.training
        has_eval = self.data.eval is not None
        return {
            "output_dir": str(self.workdir / "run"),
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.accumulation,
            "learning_rate": t.learning_rate,
            "num_train_epochs": t.epochs or 1.0,
            "max_steps": t.max_steps or -1,
            "lr_scheduler_type": t.scheduler,
            "warmup_steps": t.warmup_ratio,
            "weight_decay": t.weight_decay,
            "optim": resolve_optimizer(t.optimizer, self.device),
            "logging_steps": t.logging_steps,
            "logging_first_step": True,
            "save_strategy": "steps",
            "save_steps": t.save_steps,
            "save_total_limit": 1,
            "eval_strategy": ("steps" if t.eval_steps else "epoch") if has_eval else "no",
            "eval_steps": t.eval_steps,
            "seed": t.seed,
            "data_seed": t.seed,
            "gradient_checkpointing": False,  # already set up on the model (model.setup_model)
            "bf16": self.device.kind == "cuda" and self.device.dtype_name == "bfloat16",
            "fp16": self.device.kind == "cuda" and self.device.dtype_name == "float16",
            "use_cpu": self.device.kind == "cpu",
            "report_to": [],
            "remove_unused_columns": False,
            # Packed batches hold no padding (and no attention_mask to count it by).
            "include_num_input_tokens_seen": "all" if self.packing else "non_padding",
            "dataloader_num_workers": 0,
            "disable_tqdm": not sys.stderr.isatty(),
            **distributed.strategy_arguments(
                self.spec.distributed.strategy, self.device.kind, self.ranks, self.spec.distributed.timeout_seconds
            ),
        }

    def _trainer(self) -> Any:
        assert self.setup_info is not None
        checkpoints = self.run_spec.output.checkpoints_uri
        syncer = CheckpointSyncer(self.stores("OUTPUT", checkpoints), checkpoints, self._synced)
        callbacks = [
            ProgressCallback(self.progress),
            GracefulStop(self.agreed_stop),
            # Rank 0 alone uploads; every rank resumes from what it uploaded.
            *([CheckpointSync(syncer)] if self.ranks.main else []),
        ]
        parts = TrainerParts(self.model, self.tokenizer, self.data, self.setup_info, self.arguments(), callbacks)
        self.trainer = self.make_trainer(parts)
        self.progress.trainer = self.trainer
        return self.trainer

    def _synced(self, uri: str, step: int) -> None:
        self.progress.report(force=True, checkpoint={"uri": uri, "step": step})

    def _train_backing_off(self, checkpoint: str | None) -> Any:
        import torch

        self.progress.say("training")
        try:
            return self._trainer().train(resume_from_checkpoint=checkpoint)
        except torch.OutOfMemoryError as error:
            # Backoff only before the first optimizer step: later, the memory high-water mark is known
            # to fit and an OOM means something else changed.
            # Not under several ranks either: one rank retrying alone would leave its peers waiting.
            started = self.trainer.state.global_step > 0
            if started or self.batch_size == 1 or self.progress.note or self.ranks.distributed:
                raise OutOfMemory(f"CUDA out of memory at batchSize={self.batch_size}: {error}") from error
            self.batch_size //= 2
            self.accumulation *= 2
            self.progress.note = (
                f"out of GPU memory at the first step; retrying with batchSize={self.batch_size} and "
                f"gradientAccumulationSteps={self.accumulation} (same effective batch)"
            )
            log.warning("%s", self.progress.note)
            torch.cuda.empty_cache()
            self.progress.say(self.progress.note)
            return self._trainer().train(resume_from_checkpoint=checkpoint)


class TrainingRecipe:
    """What a training recipe offers its caller (cli.py, tests): the lifecycle of the AdapterTraining it
    holds. A recipe sets `training` in its `__init__` and adds only what its objective changes."""

    training: AdapterTraining

    def run(self) -> TrainerResult:
        return self.training.run()

    def setup(self) -> None:
        self.training.setup()

    def setup_data(self) -> Prepared:
        return self.training.setup_data()

    def train(self) -> Any:
        return self.training.train()

    def publish(self, output: Any) -> TrainerResult:
        return self.training.publish(output)

    @property
    def model(self) -> Any:
        return self.training.model
