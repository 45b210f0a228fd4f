"""Flavors: what each Outpost offers (e.g. machine sizes) and how much is in use.

``POST /hub/api/outpostflavors/{system}`` (scope ``custom:outpostflavors:set``):
an Outpost pushes its current flavors. ``GET /hub/api/outpostflavors``: a logged-in
user reads them, with the per-user flavors of ``auth_state["outpost_flavors"]``
applied to a copy, never to the shared cache.
"""

from __future__ import annotations

import copy
from typing import Any

from jupyterhub.user import User
from tornado import web

from ..addresses import is_valid_host
from .base import OutpostAPIHandler, needs_custom_scope

SET_SCOPE = "custom:outpostflavors:set"
MAX_SYSTEMS = 1000

#: system name -> flavors, as the Outposts last reported them (one per Hub process)
flavors_cache: dict[str, dict] = {}


def _check_flavors(value: Any) -> dict:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in value.items()
    ):
        raise web.HTTPError(400, "flavors must be an object of objects")
    return value


def user_flavors(cache: dict[str, dict], per_user: Any) -> dict[str, dict]:
    """The flavors one user sees.

    :param cache: the shared flavors (not modified)
    :param per_user: ``auth_state["outpost_flavors"]``: a system mapped to ``False``
        is hidden; mapped to a dict it replaces that system's flavors, keeping the
        shared ``current`` usage counts
    """
    result = copy.deepcopy(cache)
    if not isinstance(per_user, dict):
        return result
    for system, flavors in per_user.items():
        if flavors is False:
            result.pop(system, None)
        elif isinstance(flavors, dict):
            mine = copy.deepcopy(flavors)
            shared = cache.get(system, {})
            for name, flavor in mine.items():
                usage = shared.get(name)
                if isinstance(flavor, dict) and isinstance(usage, dict) and "current" in usage:
                    flavor["current"] = usage["current"]
            result[system] = mine
    return result


class FlavorsAPIHandler(OutpostAPIHandler):
    @needs_custom_scope(SET_SCOPE)
    async def post(self, system: str):
        if not is_valid_host(system):
            raise web.HTTPError(400, "invalid system name")
        flavors = _check_flavors(self.json_body())
        if system not in flavors_cache and len(flavors_cache) >= MAX_SYSTEMS:
            raise web.HTTPError(400, "too many systems")
        flavors_cache[system] = flavors
        self.set_status(204)
        self.finish()


class UserFlavorsAPIHandler(OutpostAPIHandler):
    async def get(self):
        user = self.current_user
        if not isinstance(user, User):
            raise web.HTTPError(403, "a logged-in user is required")
        auth_state = await user.get_auth_state() or {}
        self.finish(user_flavors(flavors_cache, auth_state.get("outpost_flavors")))
