"""``POST /hub/api/users/setuptunnel/{user}[/{server}]``: a server (or its
Outpost) reports where it runs, for a start that is waiting for its address."""

from __future__ import annotations

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

MAX_BODY = 4096


class SetupTunnelAPIHandler(APIHandler):
    """Accepts ``{"service": "host:port"}`` and nothing else."""

    @needs_scope("access:servers")
    async def post(self, user_name: str, server_name: str = ""):
        if len(self.request.body) > MAX_BODY:
            raise web.HTTPError(413, "request body too large")
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, "no such server")
        spawner = user.spawners[server_name]
        body = self.get_json_body()
        if not isinstance(body, dict) or set(body) != {"service"}:
            self.log.warning(
                "setuptunnel for %s refused: fields %s",
                spawner._log_name,
                repr(sorted(body)[:10] if isinstance(body, dict) else type(body).__name__)[:200],
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
