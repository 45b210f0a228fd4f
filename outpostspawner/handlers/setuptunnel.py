"""``POST /hub/api/users/setuptunnel/{user}[/{server}]``: a server (or its
Outpost) reports where it runs, for a start that is waiting for its address."""

from __future__ import annotations

from jupyterhub.scopes import needs_scope
from tornado import web

from .base import OutpostAPIHandler


class SetupTunnelAPIHandler(OutpostAPIHandler):
    """Accepts ``{"service": "host:port"}`` and nothing else: the SSH node, user,
    key, port and options come from the Hub's configuration only."""

    @needs_scope("access:servers")
    async def post(self, user_name: str, server_name: str = ""):
        body = self.json_body(max_bytes=4096)
        _, spawner = self.find_spawner(user_name, server_name)
        if not isinstance(body, dict) or set(body) != {"service"}:
            self.log.warning(
                "setuptunnel for %s refused: fields %s",
                spawner._log_name,
                repr(
                    sorted(map(str, body))[:10] if isinstance(body, dict) else type(body).__name__
                )[:200],
            )
            raise web.HTTPError(400, 'the body must be {"service": "host:port"}')
        receive = getattr(spawner, "receive_service_address", None)
        if receive is None:
            raise web.HTTPError(400, "this server does not take a reported address")
        try:
            receive(body["service"])
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        self.log.info("%s reported its address", spawner._log_name)
        self.set_status(202)
        self.finish({})
