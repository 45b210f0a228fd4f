"""Flavors and credits of the reference Outpost, as the JupyterHub Outpost has them.

Flavors come from a YAML file (``flavors_path``, else ``$OUTPOST_FLAVORS_PATH``,
else ``/mnt/flavors/flavors.yaml`` when it exists) or a dict: ``{name: {max,
maxPerUser, weight, display_name, description, runtime}}``, ``max`` counting the
services of all Hubs together (-1: unlimited), ``runtime`` a ``timedelta`` dict.
The answers add ``current``, the running services of each flavor. A start names its
flavor in ``user_options.flavor``; with flavors configured, a start without a valid
flavor or over a limit is refused with a 419 and the JupyterHub Outpost's messages.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from .records import ServiceRecord

FLAVORS_PATH_ENV = "OUTPOST_FLAVORS_PATH"
DEFAULT_FLAVORS_PATH = "/mnt/flavors/flavors.yaml"


def load_flavors(path: str) -> dict[str, dict]:
    """The flavors of a YAML file (a mapping of names to mappings)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in data.items()
    ):
        raise ValueError(f"{path}: flavors must be a mapping of names to mappings")
    return data


def configured_flavors(flavors: dict | None, path: str | None) -> dict[str, dict] | None:
    """``flavors`` if given, else those of the YAML file, else ``None`` (no flavors)."""
    if flavors is not None:
        return {k: dict(v) for k, v in flavors.items()}
    path = path or os.environ.get(FLAVORS_PATH_ENV)
    if path is None and os.path.exists(DEFAULT_FLAVORS_PATH):
        path = DEFAULT_FLAVORS_PATH
    return load_flavors(path) if path else None


def flavor_of(record: ServiceRecord) -> Any:
    return (record.body.get("user_options") or {}).get("flavor")


def user_id_of(body: dict) -> int | None:
    """The integer ``JUPYTERHUB_USER_ID`` of a start body's env, else ``None``."""
    try:
        return int((body.get("env") or {}).get("JUPYTERHUB_USER_ID"))
    except (TypeError, ValueError):
        return None


def runtime_seconds(flavor: dict) -> float | None:
    runtime = flavor.get("runtime")
    if not isinstance(runtime, dict) or not runtime:
        return None
    return datetime.timedelta(**runtime).total_seconds()


class Flavors:
    """The flavors and credits one reference Outpost offers.

    :param flavors: the flavors for every Hub.
    :param user_flavors: ``(hub, authentication) -> flavors | None``: a user's own
        flavors (``POST /userflavors``; ``None``: those of the Hub).
    :param credits: what ``GET /credits/`` answers.
    :param user_credits: ``(hub, authentication) -> dict`` for ``POST /usercredits``.
    :param max_per_user: services one user of a Hub may run at once (all flavors).
    """

    def __init__(
        self,
        flavors: dict[str, dict] | None,
        user_flavors: Callable[[str, Any], dict | None] | None = None,
        credits: dict | None = None,
        user_credits: Callable[[str, Any], dict] | None = None,
        max_per_user: int | None = None,
    ) -> None:
        self.flavors = flavors
        self.user_flavors = user_flavors
        self.credits = dict(credits or {})
        self.user_credits = user_credits
        self.max_per_user = max_per_user

    @property
    def enabled(self) -> bool:
        return self.flavors is not None

    def with_current(
        self, flavors: dict[str, dict] | None, services: Iterable[ServiceRecord]
    ) -> dict[str, dict]:
        """``flavors`` with ``current``: services of each, all Hubs together."""
        records = list(services)
        return {
            name: {**spec, "current": sum(1 for r in records if flavor_of(r) == name)}
            for name, spec in (flavors or {}).items()
        }

    def for_user(self, hub: str, authentication: Any) -> dict[str, dict] | None:
        if self.user_flavors is not None:
            own = self.user_flavors(hub, authentication)
            if own is not None:
                return own
        return self.flavors

    def refusal(self, hub: str, body: dict, services: Iterable[ServiceRecord]) -> str | None:
        """Why the start ``body`` must be refused (the 419 message), or ``None``."""
        if not self.enabled:
            return None
        records = list(services)
        name = body["name"]
        user_id = user_id_of(body)
        mine = [r for r in records if r.hub == hub and user_id_of(r.body) == user_id]
        limit = self.max_per_user
        if limit is not None and user_id is not None and len(mine) >= limit:
            return (
                f"User with user id {user_id} of {hub} has reached the maximum limit "
                f"of services ({limit})"
            )
        flavors = self.for_user(hub, body.get("authentication")) or {}
        flavor = (body.get("user_options") or {}).get("flavor")
        prefix = f"{name} - Start with flavor {flavor} not allowed."
        if not isinstance(flavor, str) or flavor not in flavors:
            return f"{prefix} Allowed values for user: {list(flavors)}"
        spec = flavors[flavor]
        per_user = spec.get("maxPerUser")
        of_flavor = [r for r in records if flavor_of(r) == flavor]
        if (
            isinstance(per_user, int)
            and per_user >= 0
            and user_id is not None
            and sum(1 for r in of_flavor if any(r is m for m in mine)) >= per_user
        ):
            return f"{prefix} Each user may only start {per_user} of {flavor}"
        most = spec.get("max", -1)
        if isinstance(most, int) and most >= 0 and len(of_flavor) >= most:
            return f"{prefix} Maximum ({most}) already reached."
        return None

    def runtime_of(self, hub: str, body: dict) -> float | None:
        """Seconds the service may run (its flavor's ``runtime``), else ``None``."""
        flavors = self.for_user(hub, body.get("authentication")) or {}
        spec = flavors.get((body.get("user_options") or {}).get("flavor"))
        return runtime_seconds(spec) if isinstance(spec, dict) else None
