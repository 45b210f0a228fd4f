"""The forwarder's control API: JSON over HTTP, on a Unix socket or TCP.

Every request except ``GET /health`` needs ``Authorization: Bearer <token>``.

``GET /health``
    ``{"status": "ok", "instance": ..., "pid": ..., "forwards": n, "connections": n}``
``GET /forwards``
    ``{"forwards": [<forward>, ...]}``
``GET /forwards/<id>``
    ``{"forward": <forward>}`` or 404
``PUT /forwards/<id>``
    body: a forward (see :class:`~.options.ForwardSpec`); answers when it listens
    or failed: ``{"forward": <forward>, "created": true|false}``. The same forward
    again is kept (``created: false``); a different one under the same id
    replaces it. With ``?keep=1`` a forward that cannot be made now is kept
    and retried (the answer shows its ``state`` and ``error``).
``DELETE /forwards/<id>``
    ``{"removed": true|false}``

Errors: ``{"error": <code>, "message": <text>}`` with the status of
:data:`~.core.STATUS`.
"""

from __future__ import annotations

import hmac
import json
import logging

from tornado import web
from tornado.httpserver import HTTPServer

from .core import Forwarder
from .errors import STATUS, ForwardError
from .options import ConfigError, ForwardSpec, check_forward_id

log = logging.getLogger("outpostspawner.forwarder")

MAX_BODY = 64 * 1024


class _Handler(web.RequestHandler):
    public = False

    def initialize(self, forwarder: Forwarder, token: str):
        self.forwarder = forwarder
        self._token = token

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self):
        if self.public:
            return
        auth = self.request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if (
            scheme.lower() != "bearer"
            or not self._token
            or not hmac.compare_digest(given.strip().encode(), self._token.encode())
        ):
            self.fail(ForwardError("unauthorized", "A valid bearer token is required."))
            raise web.Finish()

    def fail(self, error: ForwardError) -> None:
        self.set_status(STATUS.get(error.code, 500))
        self.finish(error.to_dict())

    def write_error(self, status_code, **kwargs):
        self.finish({"error": "internal", "message": self._reason})

    def log_exception(self, typ, value, tb):
        if isinstance(value, web.HTTPError):
            return super().log_exception(typ, value, tb)
        log.error("%s %s failed", self.request.method, self.request.path, exc_info=(typ, value, tb))


class HealthHandler(_Handler):
    public = True

    def get(self):
        self.finish({"status": "ok", **self.forwarder.status()})


class ForwardsHandler(_Handler):
    def get(self):
        self.finish({"forwards": self.forwarder.list()})


class ForwardHandler(_Handler):
    def _id(self, forward_id: str) -> str | None:
        try:
            return check_forward_id(forward_id)
        except ConfigError as e:
            self.fail(ForwardError("invalid", str(e)))
            return None

    def get(self, forward_id):
        d = self.forwarder.get(forward_id)
        if d is None:
            return self.fail(ForwardError("not_found", "No such forward."))
        self.finish({"forward": d})

    async def put(self, forward_id):
        if self._id(forward_id) is None:
            return
        try:
            body = json.loads(self.request.body or b"null")
            spec = ForwardSpec.from_dict(body, forward_id=forward_id)
        except (ValueError, ConfigError) as e:  # JSONDecodeError is a ValueError
            return self.fail(ForwardError("invalid", str(e)))
        try:
            keep = self.get_query_argument("keep", "") in ("1", "true", "yes")
            forward, created = await self.forwarder.add(spec, keep=keep)
        except ForwardError as e:
            return self.fail(e)
        self.finish({"forward": forward, "created": created})

    async def delete(self, forward_id):
        if self._id(forward_id) is None:
            return
        self.finish({"removed": await self.forwarder.remove(forward_id)})


def make_app(forwarder: Forwarder, token: str) -> web.Application:
    """The tornado application of the control API."""
    kw = {"forwarder": forwarder, "token": token}
    return web.Application(
        [
            (r"/health", HealthHandler, kw),
            (r"/forwards", ForwardsHandler, kw),
            (r"/forwards/([^/]+)", ForwardHandler, kw),
        ],
        log_function=_log_request,
    )


def _log_request(handler: web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.WARNING
    log.log(
        level,
        "%d %s %s %.1fms",
        status,
        handler.request.method,
        handler.request.path,
        1000 * handler.request.request_time(),
    )


def make_server(forwarder: Forwarder, token: str, ssl_options=None) -> HTTPServer:
    """An :class:`~tornado.httpserver.HTTPServer` for the control API; add sockets
    with ``listen()`` or ``add_socket(bind_unix_socket(path))``."""
    return HTTPServer(make_app(forwarder, token), ssl_options=ssl_options, max_body_size=MAX_BODY)
