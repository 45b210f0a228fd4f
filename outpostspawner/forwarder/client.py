"""A client of the forwarder's control API (see :mod:`.server`), for the Hub.

Talks to a supervised forwarder over its Unix socket, or to a standalone one
over HTTP(S) with a bearer token. Every request has a timeout.

Connections are kept alive (HTTP/1.1) and reused: a forward on an existing SSH
connection takes a fraction of a millisecond in the forwarder, and a new
connection per request would cost more than that.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from urllib.parse import quote, urlsplit

from .errors import ForwardError, ForwarderUnavailable

#: the environment variable a supervised forwarder reads its bearer token from
TOKEN_ENV = "OUTPOSTSPAWNER_FORWARDER_TOKEN"

#: the largest answer accepted (the list of a few thousand forwards is ~2 MB)
MAX_ANSWER = 64 * 1024 * 1024
#: requests at once per client (more wait for a free connection)
MAX_CONNECTIONS = 32
CONNECT_TIMEOUT = 5.0


class _Stale(Exception):
    """A reused connection was closed by the forwarder before it answered."""


class _BadAnswer(Exception):
    """Not an HTTP answer we understand."""


class _Connection:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


async def _read_answer(reader: asyncio.StreamReader, method: str) -> tuple[int, bytes, bool]:
    """Read one HTTP/1.x answer: ``(status, body, keep_alive)``.

    :raises _Stale: the connection closed before the first byte of the answer
    """
    line = await reader.readline()
    if not line:
        raise _Stale()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _BadAnswer("no HTTP status line")
    version, code = parts[0], int(parts[1])
    headers: dict[bytes, bytes] = {}
    size = 0
    while True:
        line = await reader.readline()
        size += len(line)
        if size > 65536:
            raise _BadAnswer("headers too long")
        if line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        name, sep, value = line.partition(b":")
        if not sep:
            raise _BadAnswer("malformed header")
        headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get(b"connection", b"").lower() != b"close"
    if version == b"HTTP/1.0":
        keep_alive = headers.get(b"connection", b"").lower() == b"keep-alive"
    if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
        return code, b"", keep_alive
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            size_line = await reader.readline()
            try:
                n = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadAnswer("malformed chunk") from None
            if n == 0:
                # trailers, up to the empty line
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return code, bytes(body), keep_alive
            if len(body) + n > MAX_ANSWER:
                raise _BadAnswer("answer too large")
            body += await reader.readexactly(n)
            await reader.readline()  # CRLF after the chunk
    length = headers.get(b"content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise _BadAnswer("malformed Content-Length") from None
        if n < 0 or n > MAX_ANSWER:
            raise _BadAnswer("answer too large")
        return code, await reader.readexactly(n), keep_alive
    # no length: the body ends with the connection
    body = await reader.read(MAX_ANSWER + 1)
    rest = body
    while rest and len(body) <= MAX_ANSWER:
        rest = await reader.read(MAX_ANSWER + 1 - len(body))
        body += rest
    if len(body) > MAX_ANSWER:
        raise _BadAnswer("answer too large")
    return code, body, False


class ForwarderClient:
    """Ask one forwarder.

    :param url: base URL of a standalone forwarder, e.g. ``http://forwarder:8080``
    :param unix_socket: path of a supervised forwarder's socket (instead of ``url``)
    :param token: the bearer token
    :param timeout: default request timeout in seconds
    :param ca_certs: CA bundle to verify an ``https://`` URL (default: system CAs)
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
        self.unix_socket = unix_socket
        if unix_socket:
            self.base_url = "http://forwarder"
            self._host_header = "forwarder"
            self._prefix = ""
            self._tls = False
            self._host, self._port = "", 0
        elif url:
            self.base_url = url.rstrip("/")
            parts = urlsplit(self.base_url)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or not self.base_url.isascii()
                or not self.base_url.isprintable()
            ):
                raise ValueError(f"invalid forwarder URL {url!r}")
            self._tls = parts.scheme == "https"
            self._host = parts.hostname
            self._port = parts.port or (443 if self._tls else 80)
            self._host_header = parts.netloc.rpartition("@")[2]
            self._prefix = parts.path
        else:
            raise ValueError("url or unix_socket is required")
        self.where = unix_socket or self.base_url
        self.token = token
        self.timeout = timeout
        self.ca_certs = ca_certs
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    def close(self) -> None:
        """Close the kept-alive connections; requests made later open new ones."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # loading the CA certificates reads files: not on the event loop
            self._ssl = await asyncio.to_thread(ssl.create_default_context, cafile=self.ca_certs)
        return self._ssl

    async def _open(self) -> _Connection:
        try:
            if self.unix_socket:
                opening = asyncio.open_unix_connection(self.unix_socket)
            else:
                tls = await self._ssl_context() if self._tls else None
                opening = asyncio.open_connection(
                    self._host, self._port, ssl=tls, server_hostname=self._host if tls else None
                )
            reader, writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) cannot be reached: no connection "
                f"within {CONNECT_TIMEOUT:g} s"
            ) from None
        except (OSError, ssl.SSLError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) cannot be reached: {reason}"
            ) from None
        return _Connection(reader, writer)

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) < MAX_CONNECTIONS and not conn.writer.is_closing():
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()

    async def _limited(self, method: str, raw: bytes) -> tuple[int, bytes]:
        async with self._slots:
            return await self._exchange(method, raw)

    async def _exchange(self, method: str, raw: bytes) -> tuple[int, bytes]:
        """Send one request and read the answer, on a kept-alive connection when
        there is one. A kept-alive connection that turns out to be closed (the
        forwarder closed it, or restarted) is replaced once."""
        while True:
            conn = self._idle.pop() if self._idle else await self._open()
            try:
                conn.writer.write(raw)
                await conn.writer.drain()
                code, body, keep_alive = await _read_answer(conn.reader, method)
            except (_Stale, ConnectionError) as e:
                conn.close()
                if conn.reused:
                    continue
                raise ConnectionError("the connection closed before the answer") from e
            except BaseException:
                conn.close()
                raise
            if keep_alive:
                self._release(conn)
            else:
                conn.close()
            return code, body

    async def request(
        self, method: str, path: str, body: dict | None = None, timeout: float | None = None
    ) -> dict:
        """One request; the parsed JSON answer.

        :raises ForwardError: the forwarder's error answer
        :raises ForwarderUnavailable: no answer, or not a JSON answer
        """
        if not (self.token.isascii() and self.token.isprintable()) or " " in self.token:
            raise ForwarderUnavailable(
                f"The token for the SSH forwarder ({self.where}) is not valid "
                "(only printable ASCII characters without spaces)."
            )
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {self._prefix}{path} HTTP/1.1\r\n"
            f"Host: {self._host_header}\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        timeout = timeout or self.timeout
        try:
            code, answer = await asyncio.wait_for(
                self._limited(method, head.encode("ascii") + payload), timeout
            )
        except asyncio.TimeoutError:
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) did not answer within {timeout:g} s"
            ) from None
        except (OSError, asyncio.IncompleteReadError, _BadAnswer) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) did not answer: {reason}"
            ) from None
        try:
            data = json.loads(answer or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ForwarderUnavailable(
                f"The SSH forwarder ({self.where}) gave an invalid answer ({code})."
            )
        if code >= 400:
            raise ForwardError(
                str(data.get("error") or "error"),
                str(data.get("message") or f"The SSH forwarder answered {code}."),
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
