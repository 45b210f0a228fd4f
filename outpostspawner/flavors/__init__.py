"""Flavors (machine sizes with limits) and credits of the Outposts.

- :mod:`.model`: flavor and credit answers validated, the per-user view, the
  check before a start
- :mod:`.config`: ``c.OutpostFlavors``, which Outposts are asked
- :mod:`.service`: the Hub process's cache, fetches and per-user answers
- :mod:`.form`: the default spawn form
"""

from __future__ import annotations

from typing import Any

from .config import OutpostFlavors
from .service import flavors_service

__all__ = ["OutpostFlavors", "flavors_service", "post_auth_hook"]


async def post_auth_hook(authenticator: Any, handler: Any, auth_model: dict) -> dict:
    """For ``c.Authenticator.post_auth_hook``: ask the Outposts for the user's
    flavors at login (``POST /userflavors``) and keep them in
    ``auth_state["outpost_flavors"]`` (needs ``enable_auth_state``), where the
    spawner and the spawn form find them. Call it from your own hook to combine::

        from outpostspawner.flavors import post_auth_hook
        c.Authenticator.post_auth_hook = post_auth_hook
    """
    flavors = await flavors_service(authenticator.config).at_login(auth_model)
    if flavors:
        state = auth_model.get("auth_state")
        if not isinstance(state, dict):
            state = auth_model["auth_state"] = {}
        state["outpost_flavors"] = flavors
    return auth_model
