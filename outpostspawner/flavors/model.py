"""Flavors and credits as the Outposts report them: validated, merged per user, and
checked before a start.

A flavor answer (``GET /flavors/``, ``POST /userflavors``, a push to
``/hub/api/outpostflavors/{system}``) maps flavor names to
``{max, current, maxPerUser?, weight, display_name, description, runtime?}``.
Everything here is remote input: it is validated and bounded, a bad answer is a
:class:`FlavorError`, never an unhandled exception.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

MAX_FLAVORS = 200
MAX_TEXT = 1000
MAX_CREDITS_BYTES = 16 * 1024
#: flavor and system names: what an Outpost's YAML keys reasonably are
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,99}")
_RUNTIME_UNITS = ("weeks", "days", "hours", "minutes", "seconds")


class FlavorError(ValueError):
    """A flavors or credits answer of the wrong shape."""


def _count(value: Any, what: str, *, allow_unlimited: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlavorError(f"'{what}' must be an integer")
    low = -1 if allow_unlimited else 0
    if not low <= value < 10**9:
        raise FlavorError(f"'{what}' is out of range")
    return value


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FlavorError(f"'{what}' must be a string")
    return value[:MAX_TEXT]


def _runtime(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value or set(value) - set(_RUNTIME_UNITS):
        raise FlavorError(f"'runtime' must be a dict of {', '.join(_RUNTIME_UNITS)}")
    for unit, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount < 1e6:
            raise FlavorError(f"'runtime.{unit}' must be a number >= 0")
    return dict(value)


def parse_flavor(value: Any) -> dict:
    """One validated flavor, with only the known fields."""
    if not isinstance(value, dict):
        raise FlavorError("a flavor must be an object")
    flavor = {
        "max": _count(value.get("max", -1), "max", allow_unlimited=True),
        "current": _count(value.get("current", 0), "current"),
        "weight": _count(value.get("weight", 0), "weight", allow_unlimited=True),
        "display_name": _text(value.get("display_name"), "display_name"),
        "description": _text(value.get("description"), "description"),
    }
    if value.get("maxPerUser") is not None:
        flavor["maxPerUser"] = _count(value["maxPerUser"], "maxPerUser", allow_unlimited=True)
    runtime = _runtime(value.get("runtime"))
    if runtime is not None:
        flavor["runtime"] = runtime
    return flavor


def parse_flavors(value: Any) -> dict[str, dict]:
    """A validated flavors answer: ``{name: flavor}``.

    :raises FlavorError: when the answer or one of its flavors is malformed
    """
    if not isinstance(value, dict):
        raise FlavorError("flavors must be an object of objects")
    if len(value) > MAX_FLAVORS:
        raise FlavorError(f"at most {MAX_FLAVORS} flavors per system")
    result = {}
    for name, flavor in value.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise FlavorError(f"invalid flavor name {json.dumps(str(name))[:110]}")
        try:
            result[name] = parse_flavor(flavor)
        except FlavorError as e:
            raise FlavorError(f"flavor {name}: {e}") from None
    return result


def parse_credits(value: Any) -> dict:
    """A credits answer: any JSON object, bounded in size (shown, never interpreted)."""
    if not isinstance(value, dict):
        raise FlavorError("credits must be an object")
    if len(json.dumps(value)) > MAX_CREDITS_BYTES:
        raise FlavorError("the credits answer is too large")
    return value


def user_view(shared: dict[str, dict], per_user: Any) -> dict[str, dict]:
    """The flavors one user sees.

    :param shared: system -> flavors, as the Outposts report them for the Hub (not modified)
    :param per_user: system -> the user's flavors (``POST /userflavors``, or
        ``auth_state["outpost_flavors"]``); ``False`` hides a system; a dict replaces
        that system's flavors, keeping the shared ``current`` counts (the usage is the
        Outpost's, not the user's)
    """
    result = copy.deepcopy(shared)
    if not isinstance(per_user, dict):
        return result
    for system, flavors in per_user.items():
        if flavors is False:
            result.pop(system, None)
        elif isinstance(flavors, dict):
            try:
                mine = parse_flavors(flavors)  # a copy
            except FlavorError as e:
                log.warning("per-user flavors of %s ignored: %s", system, e)
                continue
            usage = shared.get(system, {})
            for name, flavor in mine.items():
                counted = usage.get(name)
                if isinstance(flavor, dict) and isinstance(counted, dict) and "current" in counted:
                    flavor["current"] = counted["current"]
            result[system] = mine
    return result


def refusal(
    flavors: dict[str, dict] | None, flavor: Any, name: str, running_of_flavor: int
) -> str | None:
    """Why a start of ``flavor`` must be refused before any request, or ``None``.

    The messages are those the JupyterHub Outpost gives (its 419 refusals).

    :param flavors: the user's flavors of the system (``None``: unknown, let the Outpost decide)
    :param name: the server's name at the Outpost
    :param running_of_flavor: the user's active servers of that flavor on that system
    """
    if not flavors:
        return None
    if not isinstance(flavor, str) or flavor not in flavors:
        allowed = sorted(flavors)
        return (
            f"{name} - Start with flavor {flavor} not allowed. Allowed values for user: {allowed}"
        )
    spec = flavors[flavor]
    if not isinstance(spec, dict):
        return None
    per_user = spec.get("maxPerUser")
    if isinstance(per_user, int) and per_user >= 0 and running_of_flavor >= per_user:
        return (
            f"{name} - Start with flavor {flavor} not allowed. "
            f"Each user may only start {per_user} of {flavor}"
        )
    most, current = spec.get("max", -1), spec.get("current", 0)
    if isinstance(most, int) and most >= 0 and isinstance(current, int) and current >= most:
        return f"{name} - Start with flavor {flavor} not allowed. Maximum ({most}) already reached."
    return None
