"""What a start needs of the flavors: the check before the request, the push URL
in the env and whether the user's authentication goes along."""

from __future__ import annotations

from typing import Any

from ..errors import OutpostSpawnError
from .model import refusal
from .service import flavors_service


def _choice(spawner: Any, user_options: dict) -> tuple[str | None, Any]:
    """The chosen system (``None`` unless a string: ``user_options`` may use the
    key for something else) and flavor."""
    cfg = flavors_service(spawner.config).cfg
    system = user_options.get(cfg.system_key)
    return system if isinstance(system, str) else None, user_options.get(cfg.flavor_key)


def running_of(spawner: Any, system: Any, flavor: Any) -> int:
    """The user's other active servers of ``flavor`` on ``system``."""
    service = flavors_service(spawner.config)
    keys = service.cfg.system_key, service.cfg.flavor_key
    count = 0
    for other in spawner.user.spawners.values():
        if other is spawner or not other.active:
            continue
        options = other.user_options or {}
        if options.get(keys[0]) == system and options.get(keys[1]) == flavor:
            count += 1
    return count


async def check_start(spawner: Any, user_options: dict) -> None:
    """Refuse a start of an unknown or full flavor before any request.

    :raises OutpostSpawnError: with the message the Outpost would give
    """
    service = flavors_service(spawner.config)
    if not service.cfg.check_before_start:
        return
    system, flavor = _choice(spawner, user_options)
    if system is None or (system not in service.shared and system not in service.cfg.outposts):
        return  # flavors unknown for this system: the Outpost decides
    flavors = (await service.for_user(spawner.user)).get(system)
    reason = refusal(flavors, flavor, spawner.outpost_name, running_of(spawner, system, flavor))
    if reason is not None:
        raise OutpostSpawnError(reason, reason="flavor", status_code=419)


def begin(spawner: Any) -> None:
    """A spawner was created: the Hub's flavors are fetched if they were not yet."""
    flavors_service(spawner.config).begin()


def usage_changed(spawner: Any) -> None:
    """A start or stop of the user's server: their per-user flavors (whose
    ``current`` counts the Outpost reported) are asked again next time."""
    flavors_service(spawner.config).forget(spawner.user.name)


def start_env(spawner: Any, user_options: dict, api_url: str) -> dict[str, str]:
    """``JUPYTERHUB_FLAVORS_UPDATE_URL`` for a configured system (``custom_env`` may
    override it)."""
    service = flavors_service(spawner.config)
    system, _ = _choice(spawner, user_options)
    if not service.cfg.set_update_url or system not in service.cfg.outposts:
        return {}
    return {"JUPYTERHUB_FLAVORS_UPDATE_URL": f"{api_url}/outpostflavors/{system}"}


def sends_authentication(spawner: Any, user_options: dict, auth_state: dict | None) -> bool:
    """Whether the start body carries the user's ``authentication``: when the user
    has per-user flavors, or the system's flavors are asked per user."""
    if auth_state and auth_state.get("outpost_flavors"):
        return True
    service = flavors_service(spawner.config)
    system, _ = _choice(spawner, user_options)
    entry = service.cfg.outposts.get(system) if system is not None else None
    return isinstance(entry, dict) and entry.get("user_flavors", True) is not False
