"""The operator's rechecks: one pending call per resource, run later in the scheduler's context."""

from __future__ import annotations

import contextvars
import threading

from finetune_operator.kube import DelayedCalls

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who")


def test_a_new_schedule_replaces_the_pending_call_and_cancel_drops_it() -> None:
    calls = DelayedCalls(workers=1)
    ran: list[str] = []
    done = threading.Event()
    calls.schedule(("ftj/a", "x"), 0.05, lambda: ran.append("first"))
    calls.schedule(("ftj/a", "x"), 0.1, lambda: (ran.append("second"), done.set()))
    calls.schedule(("ftj/a", "y"), 0.05, lambda: ran.append("cancelled"))
    calls.cancel(("ftj/a", "y"))
    assert done.wait(5)
    assert ran == ["second"] and calls.pending() == 0


def test_calls_run_in_the_context_they_were_scheduled_from() -> None:
    calls = DelayedCalls(workers=2)
    seen: list[str] = []
    done = threading.Event()

    def schedule() -> None:
        WHO.set("handler")
        calls.schedule(("ftj/a", "z"), 0.01, lambda: (seen.append(WHO.get("none")), done.set()))

    contextvars.copy_context().run(schedule)
    assert done.wait(5)
    assert seen == ["handler"]  # kopf.event() needs kopf's context variables in a recheck
