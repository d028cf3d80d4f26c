"""Supervised fine-tuning (QLoRA/LoRA) of a causal LM: the `finetune-trainer train` recipe for objective sft.

    recipe = SFTRecipe(run, workdir, environ, reporter)
    result = recipe.run()   # setup (inputs, tokenizer, data, model) -> train (resume, OOM backoff) -> publish

What is SFT's own: the data pipeline (formats, refinement, chat-template rendering with the loss on
the responses, packing) and transformers' Trainer with the packed collator. The lifecycle around
them is training.AdapterTraining, shared with the preference recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import TrainingRunSpec

from ..data import PreparedData, prepare
from ..model import make_collator
from ..report import ProgressReporter
from ..training import AdapterTraining, TrainerParts, TrainingRecipe


class SFTRecipe(TrainingRecipe):
    def __init__(
        self, run: TrainingRunSpec, workdir: Path, environ: Mapping[str, str], reporter: ProgressReporter
    ) -> None:
        self.spec = run.job
        self.training = AdapterTraining(
            run,
            workdir,
            environ,
            reporter,
            prepare=self._prepare,
            make_trainer=self._trainer,
            packing=self.spec.training.packing,
        )

    def _prepare(self, data_dir: Path, tokenizer: Any) -> PreparedData:
        t = self.spec.training
        return prepare(
            data_dir,
            self.spec.dataset,
            tokenizer,
            max_length=t.max_seq_length,
            batch_size=self.training.batch_size,
            seed=t.seed,
            packing=t.packing,
        )

    def _trainer(self, parts: TrainerParts) -> Any:
        from transformers import Trainer, TrainingArguments

        return Trainer(
            model=parts.model,
            args=TrainingArguments(**parts.arguments),
            train_dataset=parts.data.train,
            eval_dataset=parts.data.eval,
            data_collator=make_collator(self.spec.training.packing, parts.tokenizer, parts.setup.loss_logits_only),
            callbacks=parts.callbacks,
        )
