"""Failures the trainer reports with a reason; the exit code tells the Job whether to retry."""

from __future__ import annotations

from finetune_operator.api.contract import EXIT_INVALID_INPUT

EXIT_RETRIABLE = 1


class TrainerError(Exception):
    """A failure with a CamelCase reason for the FineTuneJob's Failed condition."""

    reason = "TrainerError"
    exit_code = EXIT_RETRIABLE


class InputError(TrainerError):
    """Bad input that no retry can fix (exit code 2: the Job does not retry)."""

    reason = "DataError"
    exit_code = EXIT_INVALID_INPUT

    def __init__(self, message: str, reason: str = "DataError") -> None:
        super().__init__(message)
        self.reason = reason


class StorageUnavailable(TrainerError):  # noqa: N818  (the reason users see, verbatim)
    """The object store stayed unreachable through every retry (retriable: the Job tries again)."""

    reason = "StorageUnavailable"


class Interrupted(TrainerError):  # noqa: N818
    """SIGTERM (pod deleted, node drained, preempted): retriable, the next pod resumes from the checkpoint."""

    reason = "Interrupted"
    exit_code = 143  # 128 + SIGTERM, what a container killed by SIGTERM reports


class OutOfMemory(TrainerError):  # noqa: N818
    """The GPU ran out of memory even after the batch-size backoff; retrying the same spec cannot help."""

    reason = "OutOfMemory"
    exit_code = EXIT_INVALID_INPUT


class RendezvousFailed(TrainerError):  # noqa: N818
    """The ranks of a group could not meet (pod 0's address never resolved): retriable with the group."""

    reason = "RendezvousFailed"
