"""status.progress.history: a bounded loss curve from the Trainer's log_history (pure; no model)."""

from __future__ import annotations

import json

from finetune_operator.api.training_status import HISTORY_POINTS, Progress
from finetune_trainer.progress import loss_history


def _log(steps: int, eval_every: int) -> list[dict[str, float | int]]:
    """A log_history as the Trainer writes it: a loss entry per step, a separate eval entry every few."""
    log: list[dict[str, float | int]] = []
    for step in range(1, steps + 1):
        log.append({"step": step, "loss": 5.0 - step / steps, "learning_rate": 1e-4})
        if step % eval_every == 0:
            log.append({"step": step, "eval_loss": 5.5 - step / steps})
    log.append({"step": steps, "train_loss": 4.2, "train_runtime": 12.0})  # the summary entry has no "loss"
    return log


def test_a_short_run_keeps_every_point_with_both_losses_on_one_step() -> None:
    history = loss_history(_log(10, eval_every=5))
    assert [p["step"] for p in history] == list(range(1, 11))
    assert history[4] == {"step": 5, "loss": 4.5, "evalLoss": 5.0}
    assert "evalLoss" not in history[0]


def test_a_long_run_is_bounded_keeps_its_ends_and_its_evaluations_and_validates() -> None:
    history = loss_history(_log(10_000, eval_every=500))
    assert len(history) == HISTORY_POINTS
    steps = [p["step"] for p in history]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 10_000
    assert sum("evalLoss" in p for p in history) == 16  # 20 evaluations, a quarter of the budget
    size = len(json.dumps(Progress.model_validate({"history": history}).to_json_dict()["history"]))
    print(f"history of a 10,000-step run: {len(history)} points, {size} bytes of status JSON")
    assert size < 4096


def test_nan_losses_and_entries_without_a_step_are_left_out() -> None:
    history = loss_history([{"loss": 1.0}, {"step": 1, "loss": float("nan")}, {"step": 2, "loss": 2.0}])
    assert history == [{"step": 2, "loss": 2.0}]
    assert loss_history([]) == []
