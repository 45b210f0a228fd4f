"""A client of the forwarder's control API (see :mod:`.server`), for the Hub.

Talks to a supervised forwarder over its Unix socket, or to a standalone one
over HTTP(S) with a bearer token. Every request has a timeout.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

from tornado.httpclient import HTTPRequest
from tornado.netutil import Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .errors import ForwardError, ForwarderUnavailable


class _UnixResolver(Resolver):
    """Sends every connection of the client to one Unix socket."""

    def initialize(self, path: str) -> None:
        self.path = path

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        return [(socket.AF_UNIX, self.path)]


class ForwarderClient:
    """Ask one forwarder.

    :param url: base URL of a standalone forwarder, e.g. ``http://forwarder:8080``
    :param unix_socket: path of a supervised forwarder's socket (instead of ``url``)
    :param token: the bearer token
    :param timeout: default request timeout in seconds
    """

    def __init__(
        self,
        url: str = "",
        *,
        unix_socket: str = "",
        token: str,
        timeout: float = 30.0,
        ca_certs: str | None = None,
    ):
        if unix_socket:
            self.base_url = "http://forwarder"
            resolver = _UnixResolver(path=unix_socket)
        elif url:
            self.base_url = url.rstrip("/")
            resolver = None
        else:
            raise ValueError("url or unix_socket is required")
        self.where = unix_socket or self.base_url
        self.token = token
        self.timeout = timeout
        self.ca_certs = ca_certs
        kw = {"resolver": resolver} if resolver else {}
        self._http = SimpleAsyncHTTPClient(force_instance=True, max_clients=64, **kw)

    def close(self) -> None:
        self._http.close()

    async def request(
        self, method: str, path: str, body: dict | None = None, timeout: float | None = None
    ) -> dict:
        """One request; the parsed JSON answer.

        :raises ForwardError: the forwarder's error answer
        :raises ForwarderUnavailable: no answer, or not a JSON answer
        """
        req = HTTPRequest(
            self.base_url + path,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            body=None if body is None else json.dumps(body),
            connect_timeout=5,
            request_timeout=timeout or self.timeout,
            ca_certs=self.ca_certs,
        )
        try:
            resp = await self._http.fetch(req, raise_error=False)
        except OSError as e:
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) cannot be reached: {e.strerror or e}"
            ) from None
        if resp.code == 599:
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) did not answer: {resp.error}"
            )
        try:
            data = json.loads(resp.body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) gave an invalid answer ({resp.code})."
            )
        if resp.code >= 400:
            raise ForwardError(
                str(data.get("error") or "error"),
                str(data.get("message") or f"The SSH forwarder answered {resp.code}."),
            )
        return data

    async def health(self, timeout: float = 5) -> dict:
        return await self.request("GET", "/health", timeout=timeout)

    async def list(self) -> list[dict]:
        return (await self.request("GET", "/forwards"))["forwards"]

    async def get(self, forward_id: str) -> dict | None:
        try:
            return (await self.request("GET", f"/forwards/{quote(forward_id, safe='')}"))["forward"]
        except ForwardError as e:
            if e.code == "not_found":
                return None
            raise

    async def add(
        self, spec: dict, timeout: float | None = None, *, keep: bool = False
    ) -> tuple[dict, bool]:
        """Make (or keep) a forward; see ``PUT /forwards/<id>``.

        :param keep: keep and retry a forward that cannot be made now
        :returns: ``(forward, created)``
        """
        query = "?keep=1" if keep else ""
        data = await self.request(
            "PUT", f"/forwards/{quote(spec['id'], safe='')}{query}", spec, timeout=timeout
        )
        return data["forward"], bool(data.get("created"))

    async def remove(self, forward_id: str, timeout: float | None = None) -> bool:
        data = await self.request(
            "DELETE", f"/forwards/{quote(forward_id, safe='')}", timeout=timeout
        )
        return bool(data.get("removed"))
