"""The reconcile queue and the per-resource locks: in memory, shared by every kind.

After a restart the operator lists and reconciles everything anyway, so nothing here is persisted.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

Key = tuple[str, str]
"""A resource's key: (kind/namespace, name)."""


class KeyedLocks:
    """One lock per resource: reconciles of one FineTuneJob woken by different watches never interleave."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}

    def __call__(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def discard(self, key: Key) -> None:
        with self._guard:
            self._locks.pop(key, None)


class DelayedCalls:
    """The operator's reconcile queue: at most one pending call per key, now or after a delay.

    Watch events only queue a reconcile of their resource and return, so kopf drops each event's
    body at once. Run inline in the handler, a burst of 1000 jobs kept nearly every event of the
    burst decoded while it waited for a thread (peak RSS: docs/benchmarks.md, "Operator scale");
    queued, the events for one resource that arrive before its reconcile starts share that
    reconcile, which reads the state at the time it runs. Rechecks (outcomes that change with time,
    retries) go through the same queue. The worker threads take what is due from one heap only when
    they are free, so a backlog stays in the heap, where later events for the same resource join it.

    Every call runs in a copy of the context of the first handler that scheduled one: kopf.event()
    finds kopf's operator-wide event queue through context variables, which a bare thread lacks.
    One context, not one per call: kopf's context also holds the handler's cause, the watch event
    itself, so a context per queued call kept a whole burst's events decoded (peak RSS at 1000
    suspended jobs, same page).
    """

    WORKERS = 16
    """Threads that run reconciles: their API calls, not the CPU, bound them."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Key]] = []
        self._pending: dict[Key, tuple[int, Callable[[], None], float]] = {}
        self._context: contextvars.Context | None = None
        self._tokens = itertools.count()
        self._workers = workers
        self._threads: list[threading.Thread] = []

    def schedule(self, key: Key, delay: float, call: Callable[[], None]) -> None:
        """Run `call` after `delay` seconds, or at the key's pending call's time if that is sooner.

        The new call replaces the pending one but never postpones it: a recheck queued by a reconcile
        must not delay the reconcile that an event queued meanwhile.
        """
        due = time.monotonic() + max(delay, 0.0)
        with self._cond:
            if self._context is None:
                self._context = contextvars.copy_context()
            pending = self._pending.get(key)
            if pending is not None:
                due = min(due, pending[2])
            token = next(self._tokens)
            self._pending[key] = (token, call, due)
            heapq.heappush(self._heap, (due, token, key))
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
                    for i in range(self._workers)
                ]
                for thread in self._threads:
                    thread.start()
            self._cond.notify()

    def cancel(self, key: Key) -> None:
        with self._cond:
            self._pending.pop(key, None)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _next_due(self) -> tuple[Key, Callable[[], None], contextvars.Context]:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                due, token, key = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                entry = self._pending.get(key)
                if entry is not None and entry[0] == token:  # else replaced or cancelled since
                    del self._pending[key]
                    assert self._context is not None  # set by the schedule() that queued it
                    return key, entry[1], self._context.copy()

    def _work(self) -> None:
        while True:
            _run_logged(*self._next_due())


def _run_logged(key: Key, call: Callable[[], None], context: contextvars.Context) -> None:
    try:
        context.run(call)
    except Exception:  # a pool thread has nobody to raise to
        logging.getLogger(__name__).exception("reconcile of %s/%s failed", *key)
