"""status.progress of a Trainer-based recipe: step, epoch, loss, rates and ETA from the Trainer's state."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from finetune_operator.api.training_status import HISTORY_POINTS

from .errors import Interrupted
from .report import ProgressReporter, last_logged

log = logging.getLogger("finetune_trainer")


def _evenly(points: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """`limit` of `points`, evenly spaced, the first and the last always among them."""
    if len(points) <= limit:
        return points
    if limit <= 1:
        return points[-limit:] if limit else []
    return [points[round(i * (len(points) - 1) / (limit - 1))] for i in range(limit)]


def loss_history(log_history: Sequence[Mapping[str, Any]], limit: int = HISTORY_POINTS) -> list[dict[str, Any]]:
    """status.progress.history: the Trainer's log_history as at most `limit` {step, loss, evalLoss} points.

    Computed afresh from the whole log each time, rather than kept as a running buffer, so a resumed
    attempt (whose Trainer restores log_history from the checkpoint) draws the same curve as one that
    never stopped. Validation points are rarer and worth more, so they get up to a quarter of the
    budget first; a step logged with both losses is one point.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        for key, name in (("loss", "loss"), ("eval_loss", "evalLoss")):
            value = entry.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                by_step.setdefault(step, {"step": step})[name] = round(float(value), 6)
    points = [by_step[step] for step in sorted(by_step)]
    evaluated = _evenly([p for p in points if "evalLoss" in p], limit // 4)
    trained = [p for p in points if "evalLoss" not in p]
    kept = evaluated + _evenly(trained, limit - len(evaluated))
    return sorted(kept, key=lambda point: int(point["step"]))


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
        history = loss_history(state.log_history)
        if history:
            fields["history"] = history
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
