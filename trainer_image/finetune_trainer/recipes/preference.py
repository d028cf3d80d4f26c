"""Preference training (DPO, ORPO) of a QLoRA/LoRA adapter through TRL: `finetune-trainer train` for
objective dpo or orpo.

    recipe = PreferenceRecipe(run, workdir, environ, reporter)
    result = recipe.run()   # the same lifecycle as SFT (training.AdapterTraining), with TRL's trainer

What is the objective's own: preference pairs (data/preference.py) and TRL's `DPOTrainer` or
`ORPOTrainer` in place of transformers' Trainer; the loss code is TRL's, not ours. DPO's reference
model is the loaded base itself: TRL computes the reference log-probabilities through a frozen copy of
the starting adapter (zero-initialised for a new adapter, so exactly the base; the SFT adapter when
`spec.adapter` is set), a few megabytes, never a second model. ORPO needs no reference at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import TrainingRunSpec

from ..data.preference import PreparedPairs, prepare_pairs
from ..report import ProgressReporter
from ..training import AdapterTraining, TrainerParts, TrainingRecipe


class PreferenceRecipe(TrainingRecipe):
    def __init__(
        self, run: TrainingRunSpec, workdir: Path, environ: Mapping[str, str], reporter: ProgressReporter
    ) -> None:
        self.spec = run.job
        self.settings = self.spec.effective_preference
        # Preference batches are padded pairs: TRL's preference trainers do not pack.
        self.training = AdapterTraining(
            run, workdir, environ, reporter, prepare=self._prepare, make_trainer=self._trainer, packing=False
        )

    def _prepare(self, data_dir: Path, tokenizer: Any) -> PreparedPairs:
        t = self.spec.training
        return prepare_pairs(
            data_dir,
            self.spec.dataset,
            tokenizer,
            max_length=t.max_seq_length,
            max_prompt_length=self.settings.max_prompt_length,
            seed=t.seed,
        )

    def _config(self, arguments: dict[str, Any]) -> Any:
        # lora.dropout is the user's to set: TRL would switch dropout off by default.
        shared = {**arguments, "beta": self.settings.beta, "max_length": self.spec.training.max_seq_length}
        shared["disable_dropout"] = False
        if self.spec.objective == "orpo":
            from trl.experimental.orpo import ORPOConfig

            # Its batches name their inputs per side, which the Trainer's token counter cannot find.
            shared["include_num_input_tokens_seen"] = "no"
            return ORPOConfig(**shared)
        from trl import DPOConfig

        return DPOConfig(**shared, loss_type=[self.settings.loss_type or "sigmoid"])

    def _trainer(self, parts: TrainerParts) -> Any:
        if self.spec.objective == "orpo":
            from trl.experimental.orpo import ORPOTrainer as Trainer
        else:
            from trl import DPOTrainer as Trainer
        return Trainer(
            model=parts.model,
            args=self._config(parts.arguments),
            train_dataset=parts.data.train,
            eval_dataset=parts.data.eval,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
        )
