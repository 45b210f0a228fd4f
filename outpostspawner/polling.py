"""One timer for the polls of all servers.

JupyterHub gives every running server a ``PeriodicCallback`` of its own. With
hundreds of servers the Hub wakes up for every poll separately, and each poll's
request goes out alone. A :class:`PollScheduler` per event loop instead wakes up
at most once per ``tick`` (at multiples of it) and starts the polls of all
servers that have fallen due since, so their requests go out together and the
shared HTTP client handles them in one pass. Each server keeps its own interval
and jitter, as with JupyterHub.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import weakref
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PollHandle:
    """The polling of one server; :meth:`stop` ends it (JupyterHub's
    ``Spawner.stop_polling`` calls it as it would a ``PeriodicCallback``'s)."""

    __slots__ = ("callback", "interval", "jitter", "due", "stopped")

    def __init__(self, callback: Callable[[], Awaitable], interval: float, jitter: float):
        self.callback = callback
        self.interval = interval
        self.jitter = jitter
        self.due = 0.0
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def is_running(self) -> bool:
        return not self.stopped

    def next_interval(self) -> float:
        if self.jitter:
            # as tornado's PeriodicCallback: +- jitter/2 of the interval
            return self.interval * (1 + self.jitter * (random.random() - 0.5))
        return self.interval


class PollScheduler:
    """Starts due polls at most once per ``tick`` seconds, in one pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float):
        if tick <= 0:
            raise ValueError("tick must be positive")
        self._loop = loop
        self.tick = tick
        self._heap: list[tuple[float, int, PollHandle]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._running: set[asyncio.Task] = set()

    def add(self, callback: Callable[[], Awaitable], interval: float, jitter: float) -> PollHandle:
        """Poll with ``callback`` every ``interval`` seconds (``jitter`` as
        ``Spawner.poll_jitter``), the first time one interval from now."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        handle = PollHandle(callback, interval, jitter)
        self._push(handle, self._loop.time() + handle.next_interval())
        return handle

    def __len__(self) -> int:
        """Handles waiting for their turn (stopped ones until their turn comes)."""
        return len(self._heap)

    def _push(self, handle: PollHandle, due: float) -> None:
        handle.due = due
        heapq.heappush(self._heap, (due, next(self._order), handle))
        self._arm()

    def _arm(self) -> None:
        """Set the timer for the first due poll, rounded up to the next multiple of
        ``tick``: everything due within one tick runs in the same pass."""
        if not self._heap:
            return
        when = math.ceil(self._heap[0][0] / self.tick) * self.tick
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._pass)

    def _pass(self) -> None:
        self._timer = None
        # the planned time, not the clock: a timer may fire a hair early
        until = max(self._loop.time(), self._timer_when)
        heap = self._heap
        while heap and heap[0][0] <= until:
            handle = heapq.heappop(heap)[2]
            if not handle.stopped:
                task = self._loop.create_task(self._poll(handle))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        self._arm()

    async def _poll(self, handle: PollHandle) -> None:
        try:
            await handle.callback()
        except Exception:
            log.exception("poll callback %r failed", handle.callback)
        if handle.stopped:
            return
        # keep the rate: the next turn follows the previous one, not the end of this
        # poll; a poll that took longer than an interval waits one interval from now
        now = self._loop.time()
        due = handle.due + handle.next_interval()
        if due <= now:
            due = now + handle.next_interval()
        self._push(handle, due)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, _, handle in self._heap:
            handle.stopped = True
        self._heap.clear()


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, PollScheduler]] = (
    weakref.WeakKeyDictionary()
)


def get_scheduler(tick: float) -> PollScheduler:
    """The scheduler of the running event loop for ``tick``."""
    loop = asyncio.get_running_loop()
    per_loop = _schedulers.setdefault(loop, {})
    scheduler = per_loop.get(tick)
    if scheduler is None:
        scheduler = per_loop[tick] = PollScheduler(loop, tick)
    return scheduler
