"""Trainer callbacks, each with one narrow collaborator: a progress sink, a stop flag, a checkpoint syncer.

They know nothing of the recipe that uses them, so any recipe on transformers' Trainer (SFT, DPO)
plugs in the same three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback


class ProgressSink(Protocol):
    def started(self, step: int) -> None:
        """Training (re)starts at `step`: the clock for rates and the ETA."""

    def report(self, *, force: bool = False) -> None:
        """Report progress as of the Trainer's state now (rate-limited unless forced)."""


class StopFlag(Protocol):
    @property
    def requested(self) -> bool: ...


class Syncer(Protocol):
    def sync(self, local: Path, step: int) -> None: ...


class ProgressCallback(TrainerCallback):  # type: ignore[misc]
    """status.progress on every log (rate-limited by the reporter) and at the end."""

    def __init__(self, progress: ProgressSink) -> None:
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.progress.started(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.progress.report()

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.progress.report(force=True)


class GracefulStop(TrainerCallback):  # type: ignore[misc]
    """After SIGTERM, save (and so sync) a checkpoint at the end of the current step, then stop.

    A deleted, drained or preempted pod gets SIGTERM and a grace period (60 s in our pods) before
    SIGKILL; one step plus an adapter-sized upload fits, so the next pod loses no steps at all
    instead of up to saveSteps.
    """

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        if self.stop.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class CheckpointSync(TrainerCallback):  # type: ignore[misc]
    """Every saveSteps the Trainer writes a checkpoint locally; this publishes it to <output>/checkpoints/."""

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if local.is_dir():
            self.syncer.sync(local, state.global_step)
