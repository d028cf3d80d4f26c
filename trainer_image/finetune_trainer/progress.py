"""status.progress of a Trainer-based recipe: step, epoch, loss, rates and ETA from the Trainer's state."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from .errors import Interrupted
from .report import ProgressReporter, last_logged

log = logging.getLogger("finetune_trainer")


class TrainerProgress:
    """The ProgressSink of callbacks.ProgressCallback: what the reporter sends, read off the Trainer."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter
        self.trainer: Any = None
        """Set once the Trainer exists; before, progress is just a message."""
        self.note: str | None = None
        """A standing remark (e.g. the OOM backoff) carried by every report."""
        self.train_started: float | None = None
        self.first_step = 0

    def started(self, step: int) -> None:
        self.train_started = time.monotonic()
        self.first_step = step

    def fields(self, message: str | None = None) -> dict[str, Any]:
        if self.trainer is None:
            return {"message": message} if message else {}
        state = self.trainer.state
        total = state.max_steps or None
        fields: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if total:
            fields["totalSteps"] = total
            fields["percent"] = min(100, int(100 * state.global_step / total))
        loss = last_logged(state.log_history, "loss")
        if loss:
            fields["loss"] = round(float(loss["loss"]), 6)
            fields["learningRate"] = float(loss.get("learning_rate", 0.0))
        rewards = last_logged(state.log_history, "rewards/accuracies")
        if rewards:  # TRL's preference trainers log them (dpo, orpo)
            fields["rewardAccuracy"] = round(float(rewards["rewards/accuracies"]), 4)
            fields["rewardMargin"] = round(float(rewards.get("rewards/margins", 0.0)), 6)
        evaluation = last_logged(state.log_history, "eval_loss")
        if evaluation:
            fields["evalLoss"] = round(float(evaluation["eval_loss"]), 6)
        elapsed = time.monotonic() - self.train_started if self.train_started is not None else 0.0
        if elapsed > 0 and state.num_input_tokens_seen:
            fields["tokensPerSecond"] = round(state.num_input_tokens_seen / elapsed, 2)
        if elapsed > 0 and total and state.global_step > self.first_step:
            rate = (state.global_step - self.first_step) / elapsed
            fields["etaSeconds"] = int((total - state.global_step) / rate)
        note = message or self.note
        if note:
            fields["message"] = note[:1024]
        return fields

    def report(self, *, force: bool = False, **extra: Any) -> None:
        self.reporter.report(self.fields(), force=force, **extra)

    def say(self, message: str) -> None:
        """A step of the recipe (fetching, loading, publishing): logged and reported at once."""
        log.info("%s", message)
        self.reporter.report(self.fields(message), force=True)


class StopRequest:
    """SIGTERM (pod deleted, node drained, preempted): during training, finish the step and checkpoint
    it (callbacks.GracefulStop); before training, stop at once."""

    def __init__(self) -> None:
        self.training = False
        self._requested = False

    @property
    def requested(self) -> bool:
        return self._requested

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._terminated)

    def _terminated(self, signum: int, _frame: Any) -> None:
        if not self.training:
            raise Interrupted("terminated (SIGTERM) before training started; nothing to save")
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self._requested = True
