"""``/hub/api/users/progress/events/{user}[/{server}]``: progress events pushed by
the remote side while a server starts."""

from __future__ import annotations

from jupyterhub.scopes import needs_scope
from tornado import web

from ..events import sanitize_event
from .base import OutpostAPIHandler


class EventsAPIHandler(OutpostAPIHandler):
    """``POST`` adds an event (``failed: true`` fails the start, or stops a running
    server); ``GET`` returns ``{events, active, ready}``."""

    @needs_scope("read:servers")
    async def get(self, user_name: str, server_name: str = ""):
        _, spawner = self.find_spawner(user_name, server_name)
        events = getattr(spawner, "events", None)
        self.finish(
            {
                "events": events.to_list() if events is not None else [],
                "active": spawner.active,
                "ready": spawner.ready,
            }
        )

    @needs_scope("access:servers")
    async def post(self, user_name: str, server_name: str = ""):
        body = self.json_body(max_bytes=16 * 1024)
        user, spawner = self.find_spawner(user_name, server_name)
        try:
            event = sanitize_event(body)  # the schema; add_event escapes the HTML
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        add_event = getattr(spawner, "add_event", None)
        if add_event is None:
            raise web.HTTPError(400, "this server does not take progress events")
        if spawner.pending == "spawn":
            try:
                await add_event(event)
            except ValueError as e:
                raise web.HTTPError(400, str(e)) from None
            if event.get("failed"):
                reason = event.get("message") or "reported by the server"
                spawner.fail_pending(reason)
                self.log.info("%s: start failed by the remote side", spawner._log_name)
        elif event.get("failed") and spawner.ready:
            spawner.events.append(sanitize_event(event, trusted=False))
            self.log.info("%s: stopped on a failure reported by the remote side", spawner._log_name)
            await self.stop_single_user(user, server_name)
        else:
            raise web.HTTPError(409, "the server is not starting")
        self.set_status(204)
        self.finish()
