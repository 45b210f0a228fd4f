"""Progress events shown on JupyterHub's spawn-pending page.

:class:`EventLog` keeps a bounded list of events for one spawner, wakes readers
when one arrives, and round-trips through the spawner's state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timezone
from html import escape
from typing import Any

_KEYS = {"progress", "message", "html_message", "failed", "ready"}


def make_event(
    message: str, *, progress: int | None = None, failed: bool = False, details: str = ""
) -> dict[str, Any]:
    """A progress event whose HTML is built from escaped text only.

    :param message: plain text
    :param progress: 0-100, or None to keep the bar where it is
    :param failed: marks the spawn as failed
    :param details: optional plain-text detail shown folded under the message
    """
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    html = f"{escape(stamp)}: {escape(message)}"
    if details:
        html = f"<details><summary>{html}</summary><pre>{escape(details)}</pre></details>"
    event: dict[str, Any] = {"failed": failed, "message": message, "html_message": html}
    if progress is not None:
        event["progress"] = progress
    return event


def sanitize_event(event: Any, *, trusted: bool = True) -> dict[str, Any]:
    """Keep only the known keys of an event, with their proper types.

    :param trusted: ``False`` for events from the remote side: their
        ``html_message`` is escaped, so it shows as text
    :raises ValueError: if ``event`` is not a dict or a field has a wrong type
    """
    if not isinstance(event, dict):
        raise ValueError(f"an event must be a dict, not {type(event).__name__}")
    out: dict[str, Any] = {}
    for key in _KEYS & event.keys():
        val = event[key]
        if key == "progress":
            if isinstance(val, bool) or not isinstance(val, int | float):
                raise ValueError("event progress must be a number")
            out[key] = max(0, min(100, int(val)))
        elif key in ("failed", "ready"):
            if not isinstance(val, bool):
                raise ValueError(f"event {key} must be a bool")
            out[key] = val
        else:
            if not isinstance(val, str):
                raise ValueError(f"event {key} must be a string")
            out[key] = val[:10_000]
    if not trusted and "html_message" in out:
        out["html_message"] = escape(out["html_message"])
    return out


class EventLog:
    """A bounded, awaitable list of progress events.

    When full, the oldest events are dropped but the first one is kept, so the
    page still shows how the start began.

    :param maxlen: the most events kept
    """

    def __init__(self, maxlen: int = 100, events: Iterable[dict] = ()):
        self.maxlen = max(2, maxlen)
        self._first: dict | None = None
        self._rest: deque[dict] = deque(maxlen=self.maxlen - 1)
        self._count = 0  # events ever appended, for readers' positions
        self._changed = asyncio.Event()
        for e in events:
            self._store(e)

    def _store(self, event: dict) -> None:
        if self._first is None:
            self._first = event
        else:
            self._rest.append(event)
        self._count += 1

    def append(self, event: dict) -> None:
        """Add an event and wake the readers."""
        self._store(event)
        self._notify()

    def _notify(self) -> None:
        # wake everyone waiting on the current event; later waiters get a new one
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def clear(self) -> None:
        """Drop all events; readers keep their place and see only new ones."""
        self._first = None
        self._rest.clear()
        self._notify()

    def __len__(self) -> int:
        return (self._first is not None) + len(self._rest)

    def __iter__(self):
        if self._first is not None:
            yield self._first
        yield from self._rest

    def to_list(self) -> list[dict]:
        return list(self)

    @property
    def last(self) -> dict | None:
        if self._rest:
            return self._rest[-1]
        return self._first

    def _since(self, seen: int) -> tuple[list[dict], int]:
        """Events appended after the first ``seen``, and the new position."""
        new = self._count - seen
        if new <= 0:
            return [], self._count
        events = list(self)
        return (events[-new:] if new < len(events) else events), self._count

    async def follow(self, done: asyncio.Future | None = None) -> AsyncIterator[dict]:
        """Yield every event, present and future, until one has ``failed`` set
        or ``done`` completes.

        :param done: e.g. the spawn future; when it finishes the remaining events
            are yielded and the iteration ends
        """
        seen = 0
        while True:
            events, seen = self._since(seen)
            for event in events:
                yield event
                if event.get("failed"):
                    return
            if done is not None and done.done():
                events, seen = self._since(seen)
                for event in events:
                    yield event
                return
            changed = self._changed
            waiters = [asyncio.ensure_future(changed.wait())]
            if done is not None:
                waiters.append(done)
            try:
                await asyncio.wait(waiters, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiters[0].cancel()
