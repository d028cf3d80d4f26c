"""The operator's reconcile queue: one pending call per resource, run by free worker threads in the
first scheduler's context."""

from __future__ import annotations

import contextvars
import threading
import time

from finetune_operator.workqueue import DelayedCalls

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who")


def _occupy_the_only_worker(calls: DelayedCalls) -> threading.Event:
    """Keep the worker busy until the returned event is set, so that what is scheduled meanwhile
    stays pending however slow the machine is."""
    release, started = threading.Event(), threading.Event()
    calls.schedule(("ftj/b", "busy"), 0, lambda: (started.set(), release.wait(5)))
    assert started.wait(5)
    return release


def test_a_new_schedule_replaces_the_pending_call_and_cancel_drops_it() -> None:
    calls = DelayedCalls(workers=1)
    ran: list[str] = []
    done = threading.Event()
    release = _occupy_the_only_worker(calls)
    calls.schedule(("ftj/a", "x"), 0.05, lambda: ran.append("first"))
    calls.schedule(("ftj/a", "x"), 0.1, lambda: (ran.append("second"), done.set()))
    calls.schedule(("ftj/a", "y"), 0, lambda: ran.append("cancelled"))  # due first: would run first
    calls.cancel(("ftj/a", "y"))
    release.set()
    assert done.wait(5)
    assert ran == ["second"] and calls.pending() == 0


def test_a_later_recheck_never_postpones_a_pending_reconcile() -> None:
    calls = DelayedCalls(workers=1)
    done = threading.Event()
    release = _occupy_the_only_worker(calls)
    queued = time.monotonic()
    calls.schedule(("ftj/a", "x"), 0, lambda: None)  # a watch event's reconcile, due now
    calls.schedule(("ftj/a", "x"), 60, done.set)  # a recheck planned meanwhile: replaces, keeps "now"
    release.set()
    assert done.wait(5)
    assert time.monotonic() - queued < 5


def test_events_queued_while_every_worker_is_busy_share_one_reconcile() -> None:
    calls = DelayedCalls(workers=1)
    ran: list[str] = []
    done = threading.Event()
    release = _occupy_the_only_worker(calls)
    for _ in range(50):  # a burst of events for one resource while the only worker is taken
        calls.schedule(("ftj/a", "x"), 0, lambda: (ran.append("x"), done.set()))
    assert calls.pending() == 1
    release.set()
    assert done.wait(5)
    time.sleep(0.1)  # room for a second run, had the burst queued more than one
    assert ran == ["x"]


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
