"""Requests sent again and again through prepared libcurl handles.

A poll is the same request every few seconds for as long as its server runs.
tornado's curl client sets every request up from scratch: some forty options, the
header list, a Python callback per response header line, then an
``HTTPResponse`` with parsed headers and timings. Most of the Hub's CPU for
polling went there. A :class:`PreparedRequest` is set up once, by tornado's own
code so that every ``request_kwargs`` option means exactly what it means for the
other requests, and is then sent again as it is; a :class:`CurlDriver` runs the
handles on the asyncio event loop through one ``CurlMulti`` (which keeps the
connections to each Outpost alive, shared by all handles).

:func:`prepare` returns ``None`` where a request cannot be reused (a streaming or
header callback, or a tornado without the internals used here): the caller then
sends it the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
from io import BytesIO

import pycurl
from tornado import httputil
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPRequest

try:  # tornado's own merge of a request with the client's defaults
    from tornado.httpclient import _RequestProxy
except ImportError:  # pragma: no cover - a tornado that renamed it
    _RequestProxy = None  # type: ignore[assignment,misc]

_log = logging.getLogger(__name__)

_IN, _OUT = pycurl.POLL_IN, pycurl.POLL_OUT


def _ignore_header(line: bytes) -> None:
    return None


class PreparedRequest:
    """One request set up once on its own libcurl handle, sent any number of times
    (one at a time: :attr:`busy` while in flight)."""

    __slots__ = ("curl", "buffer", "busy", "__weakref__")

    def __init__(self, curl: pycurl.Curl, buffer: BytesIO):
        self.curl = curl
        self.buffer = buffer
        self.busy = False

    def close(self) -> None:
        self.curl.close()


def prepare(client: CurlAsyncHTTPClient, request: HTTPRequest) -> PreparedRequest | None:
    """Set ``request`` up on a new handle as ``client`` would for one send."""
    setup = getattr(client, "_curl_setup_request", None)
    if _RequestProxy is None or setup is None:
        return None
    if request.streaming_callback is not None or request.header_callback is not None:
        return None
    request.headers = httputil.HTTPHeaders(request.headers)
    proxy = _RequestProxy(request, client.defaults)
    curl = pycurl.Curl()
    # tornado's write callback reads this flag; its _finish reads the rest
    curl.info = {"body_too_large": False}
    buffer = BytesIO()
    try:
        setup(curl, proxy, buffer, httputil.HTTPHeaders())
    except Exception:
        curl.close()
        raise
    # the answer's headers are not used: no Python call per header line
    curl.setopt(pycurl.HEADERFUNCTION, _ignore_header)
    # the Hub runs threads; libcurl must not use signals for its timeouts there
    curl.setopt(pycurl.NOSIGNAL, 1)
    return PreparedRequest(curl, buffer)


class CurlDriver:
    """Runs prepared handles on an asyncio event loop through one ``CurlMulti``.

    :param maxconnects: connections kept open in the multi's cache (libcurl's
        default, four per handle added at once, is too few for many polls in flight
        to several Outposts)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, maxconnects: int):
        self._loop = loop
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAXCONNECTS, maxconnects)
        self._fds: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: dict[pycurl.Curl, asyncio.Future] = {}
        self._closed = False

    async def send(self, prepared: PreparedRequest, max_body_size: int) -> tuple[int, bytes]:
        """Send ``prepared`` once.

        :returns: the HTTP status and the body
        :raises CurlError: when no answer came (code 599, libcurl's ``errno``)
        """
        if self._closed:
            raise CurlError(pycurl.E_ABORTED_BY_CALLBACK, "the client is closed")
        curl, buffer = prepared.curl, prepared.buffer
        buffer.seek(0)
        buffer.truncate()
        curl.info["body_too_large"] = False
        done = self._loop.create_future()
        self._multi.add_handle(curl)
        self._waiting[curl] = done
        prepared.busy = True
        try:
            try:
                await done
            except CurlError as e:
                if curl.info["body_too_large"]:
                    raise CurlError(
                        e.errno, f"body exceeded max_body_size of {max_body_size} bytes"
                    ) from None
                raise
            return curl.getinfo(pycurl.RESPONSE_CODE), buffer.getvalue()
        finally:
            if self._waiting.pop(curl, None) is not None and not self._closed:
                # cancelled while in flight: the handle leaves the multi now
                self._multi.remove_handle(curl)
            prepared.busy = False

    # --- libcurl's callbacks: tell the event loop what to watch -------------------

    def _on_socket(self, event: int, fd: int, multi: object, data: object) -> None:
        loop = self._loop
        old = self._fds.pop(fd, 0)
        new = 0 if event == pycurl.POLL_REMOVE else event & (_IN | _OUT)
        if old & _IN and not new & _IN:
            loop.remove_reader(fd)
        if old & _OUT and not new & _OUT:
            loop.remove_writer(fd)
        if new & _IN and not old & _IN:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if new & _OUT and not old & _OUT:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        if new:
            self._fds[fd] = new

    def _on_timer(self, msecs: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if msecs >= 0:
            self._timer = self._loop.call_later(msecs / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, event: int) -> None:
        if self._closed:
            return
        multi = self._multi
        while True:
            try:
                ret, _ = multi.socket_action(fd, event)
            except pycurl.error as e:
                ret = e.args[0]
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        while True:
            queued, ok, failed = multi.info_read()
            for curl in ok:
                self._finish(curl, None)
            for curl, errno, message in failed:
                self._finish(curl, CurlError(errno, message))
            if not queued:
                break

    def _finish(self, curl: pycurl.Curl, error: CurlError | None) -> None:
        self._multi.remove_handle(curl)
        done = self._waiting.pop(curl, None)
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def close(self) -> None:
        """End every request in flight and release the multi's connections."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for fd, flags in self._fds.items():
            if flags & _IN:
                self._loop.remove_reader(fd)
            if flags & _OUT:
                self._loop.remove_writer(fd)
        self._fds.clear()
        for curl, done in list(self._waiting.items()):
            self._multi.remove_handle(curl)
            if not done.done():
                done.set_exception(CurlError(pycurl.E_ABORTED_BY_CALLBACK, "the client closed"))
        self._waiting.clear()
        self._multi.close()
