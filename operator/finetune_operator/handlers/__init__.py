"""Importing this package registers every kopf handler."""

from . import children, common, evalrun, finetunejob, lifecycle

__all__ = ["children", "common", "evalrun", "finetunejob", "lifecycle"]
