"""One controller per kind: what it gathers from kopf's indices, how it plans, what wakes it.

A new kind is a module here with `gather`, `plan` and a `CONTROLLER`, listed in CONTROLLERS; the
generic reconcile loop, the handlers and the executor need no change.
"""

from __future__ import annotations

from typing import Any

from . import dataset, evalrun, finetunejob, model, schedule
from .base import Controller

CONTROLLERS: dict[str, Controller[Any]] = {
    c.kind.kind: c
    for c in (finetunejob.CONTROLLER, evalrun.CONTROLLER, model.CONTROLLER, schedule.CONTROLLER, dataset.CONTROLLER)
}
"""Every kind's controller by kind name; api.KINDS and this registry list the same kinds (a unit test checks)."""

__all__ = ["CONTROLLERS", "Controller"]
