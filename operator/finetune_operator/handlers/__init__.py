"""Importing this package registers every kopf handler."""

from . import finetunejob, lifecycle

__all__ = ["finetunejob", "lifecycle"]
