"""Injectable faults for the reference Outpost.

A :class:`Fault` describes one way the Outpost misbehaves for a class of
requests; a :class:`FaultPlan` holds the active faults and hands out the first
one that matches a request.
"""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

#: request classes a fault can apply to ("any" matches all of them)
ACTIONS = frozenset({"start", "poll", "stop", "list", "any"})
#: the kinds of misbehaviour
KINDS = frozenset({"delay", "status", "419", "hang", "bad_json", "drop", "crash"})


def spawner_error(
    message: str, *, cls: str = "Exception", module: str = "builtins", tb: str | None = None
) -> dict[str, Any]:
    """The 419 body of a failed remote spawner call.

    :param message: the exception message (``args[0]``).
    :param cls: exception class name.
    :param module: module of the exception class.
    :param tb: traceback text; a short synthetic one if not given.
    """
    if tb is None:
        tb = (
            "Traceback (most recent call last):\n"
            '  File "outpost", line 1, in start\n'
            f"{cls}: {message}\n"
        )
    return {"module": module, "class": cls, "args": [message], "traceback": tb, "kwargs": {}}


@dataclass(eq=False)
class Fault:
    """One injected fault.

    :param action: which requests it applies to: ``"start"`` (POST /services),
        ``"poll"`` (GET /services/{name}/{start_id}), ``"stop"`` (DELETE
        /services/{name}/{start_id}), ``"list"`` (GET /services/) or ``"any"``
        (all of these plus ping and flavors; never the ``/_faults`` endpoint).
    :param kind: ``"delay"`` (sleep ``delay`` seconds, then answer normally),
        ``"status"`` (answer ``status`` with ``body`` or ``{"error": "injected"}``),
        ``"419"`` (answer 419 with a spawner-error body), ``"hang"`` (never answer),
        ``"bad_json"`` (200 with a body that is not JSON), ``"drop"`` (close the
        connection without an answer) or ``"crash"`` (start only: the service
        process is started but exits at once).
    :param count: apply to the next ``count`` matching requests, then disappear;
        ``None`` applies forever.
    :param delay: seconds to sleep for ``"delay"``.
    :param status: HTTP status for ``"status"``.
    :param body: JSON body for ``"status"``; the message (``args[0]``) for ``"419"``.
    :param match_name: only requests for this service name match (list requests
        carry no name and never match a fault with ``match_name``).
    """

    action: str
    kind: str
    _: KW_ONLY
    count: int | None = None
    delay: float = 0.0
    status: int = 500
    body: Any = None
    match_name: str | None = None
    #: how often this fault was applied so far
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(
                f"unknown fault action {self.action!r}, expected one of {sorted(ACTIONS)}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}, expected one of {sorted(KINDS)}")
        if self.kind == "crash" and self.action not in ("start", "any"):
            raise ValueError("fault kind 'crash' applies to action 'start' only")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise ValueError(f"fault count must be None or a positive integer, not {self.count!r}")
        if (
            isinstance(self.delay, bool)
            or not isinstance(self.delay, int | float)
            or self.delay < 0
        ):
            raise ValueError(f"fault delay must be a number >= 0, not {self.delay!r}")
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError(f"fault status must be an integer, not {self.status!r}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be 100-599, not {self.status}")
        if self.match_name is not None and not isinstance(self.match_name, str):
            raise ValueError("fault match_name must be a string or None")

    def matches(self, action: str, name: str | None) -> bool:
        """Whether this fault applies to a request.

        :param action: the request's action ("start", "poll", "stop", "list" or
            "other" for ping/flavors).
        :param name: the service name of the request, if it has one.
        """
        if self.action not in ("any", action):
            return False
        if self.kind == "crash" and action != "start":
            return False
        return self.match_name is None or self.match_name == name

    def response(self) -> tuple[int, bytes]:
        """Status and body answered by a ``"status"``, ``"419"`` or ``"bad_json"`` fault."""
        if self.kind == "bad_json":
            return 200, b"not json{"
        if self.kind == "419":
            message = str(self.body) if self.body is not None else "injected failure"
            return 419, json.dumps(spawner_error(message)).encode()
        if self.kind == "status":
            body = self.body if self.body is not None else {"error": "injected"}
            return self.status, json.dumps(body).encode()
        raise ValueError(f"fault kind {self.kind!r} has no fixed response")

    def to_dict(self) -> dict[str, Any]:
        """The fault as a JSON-compatible dict (as accepted by :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build a fault from a JSON object.

        :param data: dict with ``action`` and ``kind`` and optionally ``count``,
            ``delay``, ``status``, ``body``, ``match_name``.
        :raises ValueError: on a malformed description.
        """
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        allowed = {"action", "kind", "count", "delay", "status", "body", "match_name", "hits"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "action" not in data or "kind" not in data:
            raise ValueError("a fault needs 'action' and 'kind'")
        kwargs = {k: v for k, v in data.items() if k not in ("action", "kind", "hits")}
        return cls(data["action"], data["kind"], **kwargs)


class FaultPlan:
    """The ordered list of active faults; the first matching fault wins."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        """Activate a fault.

        :param fault: the fault; it is applied after all faults added before it.
        :returns: the same fault (its ``hits`` counts its applications).
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, not {type(fault).__name__}")
        self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        """Deactivate one fault (no error if it is not active).

        :param fault: the fault to remove.
        """
        self._faults = [f for f in self._faults if f is not fault]

    def clear(self) -> None:
        """Deactivate all faults."""
        self._faults.clear()

    def take(self, action: str, name: str | None = None) -> Fault | None:
        """Find the fault for a request and count it as applied.

        :param action: the request's action.
        :param name: the service name of the request, if any.
        :returns: the fault to apply, or ``None``.
        """
        for fault in self._faults:
            if fault.matches(action, name):
                fault.hits += 1
                if fault.count is not None and fault.hits >= fault.count:
                    self.remove(fault)
                return fault
        return None

    @property
    def active(self) -> list[Fault]:
        """A copy of the active faults, in order."""
        return list(self._faults)

    def __len__(self) -> int:
        return len(self._faults)

    def __iter__(self):
        return iter(list(self._faults))
