"""A tiny stand-in for a single-user server.

Reads ``JUPYTERHUB_SERVICE_URL`` (and ``JUPYTERHUB_USER``) from the environment,
listens on that URL's host and port and answers every GET below the URL's path:
``{"version": "dummy"}`` for paths starting with ``api``, ``{"ok": true, "user":
...}`` for everything else. Exits cleanly on SIGTERM or SIGINT.

Run it as ``python -m outpostspawner.testing.dummy_server`` or by file path; it
only needs the standard library and tornado.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from urllib.parse import urlsplit

from tornado import web

log = logging.getLogger("outpostspawner.testing.dummy_server")

try:  # answered like jupyterhub-singleuser does, so the Hub does not warn about it
    from jupyterhub._version import __version__ as _HUB_VERSION
except ImportError:  # pragma: no cover - the server also runs without JupyterHub
    _HUB_VERSION = ""


class _DummyHandler(web.RequestHandler):
    def initialize(self, prefix: str, user: str | None) -> None:
        self.prefix = prefix
        self.user = user

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        if _HUB_VERSION:
            self.set_header("X-JupyterHub-Version", _HUB_VERSION)

    def get(self, *args: str) -> None:
        rest = self.request.path[len(self.prefix) :]
        if rest == "api" or rest.startswith("api/"):
            self.finish(json.dumps({"version": "dummy"}))
        else:
            self.finish(json.dumps({"ok": True, "user": self.user}))


class _NotFound(web.RequestHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def prepare(self) -> None:
        self.set_status(404)
        self.finish(json.dumps({"error": "not found"}))


def make_app(prefix: str = "/", user: str | None = None) -> web.Application:
    """The dummy server's tornado application.

    :param prefix: URL path the server answers below, e.g. ``/user/alice/``.
    :param user: user name reported in the answers.
    """
    prefix = prefix.rstrip("/") + "/"
    pattern = re.escape(prefix.rstrip("/")) + r"(/.*)?"
    handler_args = {"prefix": prefix, "user": user}
    return web.Application(
        [web.url(pattern, _DummyHandler, handler_args)], default_handler_class=_NotFound
    )


def parse_service_url(url: str) -> tuple[str, int, str]:
    """Split a ``JUPYTERHUB_SERVICE_URL`` into host, port and path.

    :param url: e.g. ``http://127.0.0.1:8888/user/alice/``.
    :returns: ``(host, port, path)``.
    """
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"JUPYTERHUB_SERVICE_URL needs a host and a port: {url!r}")
    return parts.hostname, parts.port, parts.path or "/"


async def serve(url: str, user: str | None) -> None:
    """Serve until SIGTERM or SIGINT.

    :param url: the service URL to listen on.
    :param user: user name reported in the answers.
    """
    host, port, path = parse_service_url(url)
    server = make_app(path, user).listen(port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"dummy server listening on http://{host}:{port}{path}", flush=True)
    await stop.wait()
    server.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=2)
    except asyncio.TimeoutError:
        log.warning("dummy server: connections still open at exit")
    print("dummy server stopped", flush=True)


def main() -> int:
    """Entry point: serve ``$JUPYTERHUB_SERVICE_URL``."""
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if not url:
        print("JUPYTERHUB_SERVICE_URL is not set", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(serve(url, os.environ.get("JUPYTERHUB_USER")))
    except ValueError as e:
        print(str(e), file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
