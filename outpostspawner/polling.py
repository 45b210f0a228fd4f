"""One timer for the polls of all servers, spread evenly over each interval.

JupyterHub gives every running server a ``PeriodicCallback`` of its own, started
when the server starts: after a Hub restart all of them start together, and
servers started in a burst are polled in bursts, many polls (and many answers)
in the same turns of the event loop while the Hub's own API waits. A
:class:`PollScheduler` per event loop instead polls each server on a grid of its
own, ``interval`` apart at a stable *phase*: an offset within the interval
derived from the server's name, the same after a restart. Servers are thus
spread evenly over the interval whatever their start times, jitter moves single
polls off the grid without moving the grid, and a turn of the event loop starts
at most :data:`POLLS_PER_TURN` polls, leaving the rest for the next turns.

With a ``window`` > 0 (``poll_batch_window``, 5 ms by default) the scheduler
wakes up at most once per window (at multiples of it) and starts every poll that
fell due since in one pass: on the spread grid a small window joins only
neighbouring polls, which saves wake-ups of the event loop and of the HTTP
client (the Hub's CPU) without bursts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: the most polls one turn of the event loop starts; more that are due wait a turn
POLLS_PER_TURN = 4


def phase_of(key: str, interval: float) -> float:
    """A stable offset in ``[0, interval)`` for ``key`` (a server's name)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) / 2**32 * interval


class PollHandle:
    """The polling of one server; :meth:`stop` ends it (JupyterHub's
    ``Spawner.stop_polling`` calls it as it would a ``PeriodicCallback``'s)."""

    __slots__ = ("callback", "interval", "jitter", "grid", "due", "stopped")

    def __init__(self, callback: Callable[[], Awaitable], interval: float, jitter: float):
        self.callback = callback
        self.interval = interval
        self.jitter = jitter
        #: the point of this server's grid the next poll belongs to (loop time)
        self.grid = 0.0
        self.due = 0.0
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def is_running(self) -> bool:
        return not self.stopped

    def jittered(self) -> float:
        """The next poll's time: the grid point moved by up to +- ``jitter``/2 of
        the interval (as tornado's ``PeriodicCallback`` jitters)."""
        if self.jitter:
            return self.grid + self.interval * self.jitter * (random.random() - 0.5)
        return self.grid

    def advance(self, now: float) -> None:
        """Move the grid to its next point after ``now`` (a poll that took longer
        than an interval skips the turns it missed, keeping the phase)."""
        self.grid += self.interval
        if self.grid <= now:
            self.grid += math.ceil((now - self.grid) / self.interval + 1e-9) * self.interval


class PollScheduler:
    """Starts each poll at its time, at most :data:`POLLS_PER_TURN` per turn of the
    event loop; with ``window`` > 0, all that are due once per window."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float = 0.0):
        if window < 0:
            raise ValueError("window must be >= 0")
        self._loop = loop
        self.window = window
        self._heap: list[tuple[float, int, PollHandle]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._timer_when = 0.0
        self._running: set[asyncio.Task] = set()

    def add(
        self,
        callback: Callable[[], Awaitable],
        interval: float,
        jitter: float,
        key: str | None = None,
    ) -> PollHandle:
        """Poll with ``callback`` every ``interval`` seconds (``jitter`` as
        ``Spawner.poll_jitter``). With a ``key``, the polls fall on the key's phase
        of the interval (wall clock), the first within one interval from now;
        without, the first comes one interval from now."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        handle = PollHandle(callback, interval, jitter)
        now = self._loop.time()
        if key is None:
            handle.grid = now + interval
        else:
            wall = time.time()
            phase = phase_of(key, interval)
            turns = math.floor((wall - phase) / interval) + 1
            handle.grid = now + (phase + turns * interval - wall)
        self._push(handle, max(now, handle.jittered()))
        return handle

    def __len__(self) -> int:
        """Handles waiting for their turn (stopped ones until their turn comes)."""
        return len(self._heap)

    def _push(self, handle: PollHandle, due: float) -> None:
        handle.due = due
        heapq.heappush(self._heap, (due, next(self._order), handle))
        self._arm()

    def _arm(self) -> None:
        """Set the timer for the first due poll (with a window: rounded up to the
        next multiple of it, so that everything due within one window runs in the
        same pass)."""
        if not self._heap:
            return
        when = self._heap[0][0]
        if self.window:
            when = math.ceil(when / self.window) * self.window
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
        limit = math.inf if self.window else POLLS_PER_TURN
        heap = self._heap
        started = 0
        while heap and heap[0][0] <= until and started < limit:
            handle = heapq.heappop(heap)[2]
            if not handle.stopped:
                task = self._loop.create_task(self._poll(handle))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                started += 1
        if heap and heap[0][0] <= until:
            # more are due: the next turn, after what else is waiting (API requests)
            self._timer_when = until
            self._timer = self._loop.call_soon(self._pass)
        else:
            self._arm()

    async def _poll(self, handle: PollHandle) -> None:
        try:
            await handle.callback()
        except Exception:
            log.exception("poll callback %r failed", handle.callback)
        if handle.stopped:
            return
        now = self._loop.time()
        handle.advance(now)
        self._push(handle, max(now, handle.jittered()))

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


def get_scheduler(window: float = 0.0) -> PollScheduler:
    """The scheduler of the running event loop for ``window``."""
    loop = asyncio.get_running_loop()
    per_loop = _schedulers.setdefault(loop, {})
    scheduler = per_loop.get(window)
    if scheduler is None:
        scheduler = per_loop[window] = PollScheduler(loop, window)
    return scheduler
