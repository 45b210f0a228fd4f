"""What the endpoints share: finding the server and reading a small JSON body."""

from __future__ import annotations

import functools
import json
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

#: the largest request body any endpoint reads
MAX_BODY = 64 * 1024


class OutpostAPIHandler(APIHandler):
    """Base for the Hub endpoints the remote side calls."""

    def json_body(self, max_bytes: int = MAX_BODY) -> Any:
        """The parsed JSON body; 413 when too large, 400 when not JSON."""
        if len(self.request.body) > max_bytes:
            raise web.HTTPError(413, "request body too large")
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None

    def find_spawner(self, user_name: str, server_name: str):
        """The spawner of an existing server, else 404."""
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, "no such server")
        return user, user.spawners[server_name]


def needs_custom_scope(scope: str):
    """Like JupyterHub's ``needs_scope``, for a ``custom:`` scope, which JupyterHub
    knows only once ``c.JupyterHub.custom_scopes`` is loaded."""

    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if not self.current_user:
                raise web.HTTPError(403, "Missing or invalid credentials.")
            if scope not in self.parsed_scopes:
                self.log.warning("Not authorizing %s: requires %s", self.request.path, scope)
                raise web.HTTPError(403, f"Action is not authorized: requires {scope}")
            return method(self, *args, **kwargs)

        return wrapper

    return decorator
