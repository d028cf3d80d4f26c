"""The operator's reconcile queue: one pending call per resource, run by free worker threads in the
first scheduler's context."""

from __future__ import annotations

import contextvars
import threading
import time

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


def test_a_later_recheck_never_postpones_a_pending_reconcile() -> None:
    calls = DelayedCalls(workers=1)
    release, started, done = threading.Event(), threading.Event(), threading.Event()
    calls.schedule(("ftj/b", "busy"), 0, lambda: (started.set(), release.wait(5)))
    assert started.wait(5)  # the only worker is taken, so the next call stays pending
    queued = time.monotonic()
    calls.schedule(("ftj/a", "x"), 0, lambda: None)  # a watch event's reconcile, due now
    calls.schedule(("ftj/a", "x"), 60, done.set)  # a recheck planned meanwhile: replaces, keeps "now"
    release.set()
    assert done.wait(5)
    assert time.monotonic() - queued < 5


def test_events_queued_while_every_worker_is_busy_share_one_reconcile() -> None:
    calls = DelayedCalls(workers=1)
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []
    calls.schedule(("ftj/a", "busy"), 0, lambda: (started.set(), release.wait(5), ran.append("busy")))
    assert started.wait(5)
    for _ in range(50):  # a burst of events for one resource while the only worker is taken
        calls.schedule(("ftj/a", "x"), 0, lambda: ran.append("x"))
    assert calls.pending() == 1
    release.set()
    deadline = time.monotonic() + 5
    while calls.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert ran == ["busy", "x"]


def test_calls_run_in_the_first_schedulers_context_not_their_own() -> None:
    calls = DelayedCalls(workers=2)
    seen: list[str] = []
    done = threading.Event()

    def schedule(who: str, name: str) -> None:
        WHO.set(who)
        calls.schedule(("ftj/a", name), 0.01, lambda: (seen.append(WHO.get("none")), len(seen) == 2 and done.set()))

    contextvars.copy_context().run(schedule, "first handler", "y")
    contextvars.copy_context().run(schedule, "later handler", "z")
    assert done.wait(5)
    # kopf.event() needs kopf's context variables in a queued reconcile, and the later handler's
    # context (which holds its watch event) is not kept
    assert seen == ["first handler", "first handler"]
