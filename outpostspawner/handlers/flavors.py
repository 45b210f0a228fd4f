"""Flavors: what each Outpost offers (e.g. machine sizes) and how much is in use.

``POST /hub/api/outpostflavors/{system}`` (scope ``custom:outpostflavors:set``):
an Outpost pushes its current flavors. ``GET /hub/api/outpostflavors``: a
logged-in user reads the flavors they see (see :mod:`outpostspawner.flavors`);
``?credits=1`` adds ``{"credits": ...}`` next to them as
``{"flavors": ..., "credits": ...}``.
"""

from __future__ import annotations

from jupyterhub.user import User
from tornado import web

from ..addresses import is_valid_host
from ..flavors import flavors_service
from ..flavors.model import FlavorError, user_view
from .base import OutpostAPIHandler, needs_custom_scope

SET_SCOPE = "custom:outpostflavors:set"
MAX_SYSTEMS = 1000

__all__ = ["FlavorsAPIHandler", "UserFlavorsAPIHandler", "user_flavors"]

#: kept for code that imported it: the per-user view of a flavors dict
user_flavors = user_view


class FlavorsAPIHandler(OutpostAPIHandler):
    @needs_custom_scope(SET_SCOPE)
    async def post(self, system: str):
        if not is_valid_host(system):
            raise web.HTTPError(400, "invalid system name")
        body = self.json_body()
        service = flavors_service(self.settings.get("config"))
        if system not in service.shared and len(service.shared) >= MAX_SYSTEMS:
            raise web.HTTPError(400, "too many systems")
        try:
            service.push(system, body)
        except FlavorError as e:
            raise web.HTTPError(400, str(e)) from None
        self.set_status(204)
        self.finish()


class UserFlavorsAPIHandler(OutpostAPIHandler):
    async def get(self):
        user = self.current_user
        if not isinstance(user, User):
            raise web.HTTPError(403, "a logged-in user is required")
        service = flavors_service(self.settings.get("config"))
        flavors = await service.for_user(user)
        if self.get_argument("credits", "") in ("1", "true"):
            self.finish({"flavors": flavors, "credits": await service.credits_for_user(user)})
        else:
            self.finish(flavors)
