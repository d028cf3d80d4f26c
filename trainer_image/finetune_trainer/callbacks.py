"""Trainer callbacks: progress to the FineTuneJob, checkpoints to the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from .train import TrainingRecipe


class ProgressCallback(TrainerCallback):  # type: ignore[misc]
    """status.progress on every log (rate-limited by the reporter) and at the end."""

    def __init__(self, recipe: TrainingRecipe) -> None:
        self.recipe = recipe

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.recipe.start_clock(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.recipe.reporter.report(self.recipe._progress_fields())

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.recipe.reporter.report(self.recipe._progress_fields(), force=True)


class GracefulStop(TrainerCallback):  # type: ignore[misc]
    """After SIGTERM, save (and so sync) a checkpoint at the end of the current step, then stop.

    A deleted, drained or preempted pod gets SIGTERM and a grace period (60 s in our pods) before
    SIGKILL; one step plus an adapter-sized upload fits, so the next pod loses no steps at all
    instead of up to saveSteps.
    """

    def __init__(self, recipe: TrainingRecipe) -> None:
        self.recipe = recipe

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        if self.recipe.stop_requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class CheckpointSync(TrainerCallback):  # type: ignore[misc]
    """Every saveSteps the Trainer writes a checkpoint locally; this publishes it to <output>/checkpoints/."""

    def __init__(self, recipe: TrainingRecipe) -> None:
        self.recipe = recipe

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if local.is_dir():
            self.recipe.sync_checkpoint(local, state.global_step)
